//! Crash safety: SIGKILL `flow apply` at random moments, `--resume` each time, and
//! check that the state never lost or invented work.
//!
//! Every step appends its id to `markers` when it starts. After the last resume:
//! - every task is done;
//! - a task that no resume reported as `re-run` has exactly one marker: a completion
//!   is never lost and nothing runs twice;
//! - a task reported as `re-run` k times has at most 1 + k markers: only a task that
//!   was running at a kill runs again, and each re-run is announced.

mod exec_support;

use std::collections::BTreeMap;
use std::time::Duration;

use exec_support::{Step, TestPlan};

#[test]
fn sigkill_at_random_moments_loses_nothing_and_reruns_only_interrupted_tasks() {
    let seed = std::env::var("FLOW_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("crash test seed {seed} (FLOW_CRASH_SEED={seed} replays it)");
    let mut rng = fastrand::Rng::with_seed(seed);

    // 10 chains of 8 steps plus a fan-in, 3 at a time, 20–120 ms each: about 3 s of
    // work, so most of the runs below are killed part-way.
    let mut p = TestPlan::new("crash");
    p.concurrency = 3;
    let mut last = Vec::new();
    for c in 0..10 {
        for k in 0..8 {
            let id = format!("c{c}-{k}");
            let ms = rng.u32(20..120);
            let mut step = Step::new(
                &id,
                &format!("echo \"$FLOW_TASK_ID\" >> markers; sleep 0.{ms:03}"),
            );
            if k > 0 {
                step = step.after(&[&format!("c{c}-{}", k - 1)]);
            }
            p.steps.push(step);
        }
        last.push(format!("c{c}-7"));
    }
    let last: Vec<&str> = last.iter().map(String::as_str).collect();
    p.steps
        .push(Step::new("end", "echo \"$FLOW_TASK_ID\" >> markers").after(&last));
    p.write();
    let total = p.steps.len();

    let mut reruns: BTreeMap<String, usize> = BTreeMap::new();
    let mut kills = 0;
    for round in 0..8 {
        let (mut child, err) = p.spawn_apply(&["--resume"], &format!("run{round}"));
        std::thread::sleep(Duration::from_millis(rng.u64(100..700)));
        let finished = child.try_wait().unwrap().is_some();
        if !finished {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
            kills += 1;
        }
        child.wait().unwrap();
        let stderr = std::fs::read_to_string(&err).unwrap();
        for id in rerun_ids(&stderr) {
            *reruns.entry(id).or_default() += 1;
        }
        // Give the killed shell steps a moment to die with their parent.
        std::thread::sleep(Duration::from_millis(50));
    }
    let final_run = p.apply(&["--resume"]);
    assert_eq!(final_run.code, 0, "{}", final_run.show());
    for id in rerun_ids(&final_run.stderr) {
        *reruns.entry(id).or_default() += 1;
    }

    let status = p.task_status();
    assert_eq!(status.len(), total);
    assert!(
        status.values().all(|(s, _)| s == "done"),
        "every task is done: {status:?}"
    );
    let mut markers: BTreeMap<String, usize> = BTreeMap::new();
    for line in p.lines("markers") {
        *markers.entry(line).or_default() += 1;
    }
    let mut twice = 0;
    for step in &p.steps {
        let n = markers.get(&step.id).copied().unwrap_or(0);
        let k = reruns.get(&step.id).copied().unwrap_or(0);
        assert!(n >= 1, "{} never ran", step.id);
        if k == 0 {
            assert_eq!(
                n, 1,
                "{} ran {n} times but was never reported as re-run",
                step.id
            );
        } else {
            assert!(
                n <= 1 + k,
                "{} ran {n} times, re-run reported {k} times",
                step.id
            );
        }
        if n > 1 {
            twice += 1;
        }
    }
    eprintln!(
        "{kills} kills; {} task(s) reported as re-run, {twice} ran more than once, {} tasks",
        reruns.len(),
        total
    );
    assert!(
        kills >= 3,
        "the run was killed at least 3 times (seed {seed})"
    );
}

fn rerun_ids(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("re-run "))
        .filter_map(|rest| rest.split(':').next())
        .map(str::to_string)
        .collect()
}
