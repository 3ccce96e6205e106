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

/// What the markers of one instance of a step's command say: pid, start, last sign of
/// life (its last tick or its end), whether it reached its end.
#[derive(Debug)]
struct Instance {
    pid: u32,
    start: u128,
    last: u128,
    ended: bool,
}

/// `start|tick|end PID NANOS` lines, grouped by the pid that wrote them, by start time.
fn instances(lines: &[String]) -> Vec<Instance> {
    let mut by_pid: BTreeMap<u32, Instance> = BTreeMap::new();
    for line in lines {
        let parts: Vec<&str> = line.split(' ').collect();
        let [what, pid, t] = parts[..] else {
            panic!("unexpected marker line {line:?}");
        };
        let (pid, t): (u32, u128) = (pid.parse().unwrap(), t.parse().unwrap());
        let i = by_pid.entry(pid).or_insert(Instance {
            pid,
            start: u128::MAX,
            last: 0,
            ended: false,
        });
        match what {
            "start" => i.start = i.start.min(t),
            "tick" => {}
            "end" => i.ended = true,
            other => panic!("unexpected marker {other:?}"),
        }
        i.last = i.last.max(t);
    }
    let mut out: Vec<Instance> = by_pid.into_values().collect();
    out.sort_by_key(|i| i.start);
    out
}

/// Whether `pid` is a running process (a zombie is not: it runs nothing).
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat.rsplit_once(')').map(|(_, rest)| rest.trim_start());
            !state.is_some_and(|s| s.starts_with('Z'))
        }
        Err(_) => false,
    }
}

/// SIGKILL `flow apply` while an exec step's work runs in a background child of its
/// shell (`sh worker.sh & wait`: the shell is flow's child, the worker its grandchild).
/// The worker writes `start`, a `tick` every 0.1 s and `end` after 3 s. After
/// `--resume`: the killed attempt's worker was stopped before the step ran again (no
/// tick of it after the new start, and it never reached its end), the resume said so,
/// the step was done exactly once, and its dependent ran once.
#[test]
fn a_step_of_a_killed_flow_never_runs_beside_its_rerun() {
    let mut p = TestPlan::new("survivor");
    std::fs::write(
        p.file("worker.sh"),
        "echo \"start $$ $(date +%s%N)\" >> markers\n\
         i=0\n\
         while [ $i -lt 30 ]; do echo \"tick $$ $(date +%s%N)\" >> markers; sleep 0.1; i=$((i+1)); done\n\
         echo \"end $$ $(date +%s%N)\" >> markers\n",
    )
    .unwrap();
    p.steps = vec![
        Step::new("work", "sh worker.sh & wait"),
        Step::new("after", "echo after >> ran").after(&["work"]),
    ];
    p.write();

    let (mut child, _) = p.spawn_apply(&[], "killed");
    exec_support::wait_for_file(&p.file("markers"), 20);
    std::thread::sleep(Duration::from_millis(400));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let first = instances(&p.lines("markers"));
    assert_eq!(first.len(), 1, "{first:?}");
    let survivor = first[0].pid;
    assert!(
        running(survivor),
        "the worker of the killed run outlives flow until the next flow command (otherwise this test shows nothing)"
    );

    let status = p.command(&["status", "plan.toml"]).output().unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.contains("left running: step `work` (attempt 1)")
            && status.contains(&format!("{survivor} (sh)")),
        "status names what the killed run left running: {status}"
    );

    let resumed = p.apply(&["--resume"]);
    assert_eq!(resumed.code, 0, "{}", resumed.show());
    assert!(
        resumed.stderr.contains(&format!("{survivor} (sh)")),
        "the resume names the process it stopped: {}",
        resumed.show()
    );
    assert!(
        resumed.stderr.contains("stopped"),
        "the resume says it stopped it: {}",
        resumed.show()
    );
    assert!(!running(survivor), "the killed run's worker is gone");

    let all = instances(&p.lines("markers"));
    assert_eq!(all.len(), 2, "one killed instance, one re-run: {all:?}");
    for pair in all.windows(2) {
        assert!(
            pair[0].last < pair[1].start,
            "instance {} was still running {} ms after instance {} started: {all:?}",
            pair[0].pid,
            (pair[0].last - pair[1].start) / 1_000_000,
            pair[1].pid
        );
    }
    let ends = all.iter().filter(|i| i.ended).count();
    assert_eq!(ends, 1, "the work was completed exactly once: {all:?}");
    assert!(all[1].ended, "the re-run completed it");
    let status = p.task_status();
    assert_eq!(status["work"].0, "done");
    assert_eq!(status["after"].0, "done");
    assert_eq!(p.lines("ran"), vec!["after"]);
}
