//! `flow apply` on plans of exec steps: limits, failure policy, retries, resume, locks,
//! interrupts, report and metrics — through the real binary, no servers needed.

mod exec_support;

use std::time::{Duration, Instant};

use exec_support::{max_overlap, timed, wait_for_file, Step, TestPlan};

/// 16 independent steps, global bound 3; the 8 that use connection `db` (bound 2) and
/// the 8 that use `lake` (no bound). Each sleeps so that overlap happens if allowed.
#[test]
fn running_tasks_never_exceed_the_global_or_connection_limit() {
    let mut p = TestPlan::new("limits");
    p.concurrency = 3;
    p.connections.insert("db".into(), (Some(2), None));
    p.connections.insert("lake".into(), (None, None));
    let mut db_ids = Vec::new();
    for i in 0..16 {
        let id = format!("s{i:02}");
        let conn = if i % 2 == 0 { "db" } else { "lake" };
        if conn == "db" {
            db_ids.push(id.clone());
        }
        p.steps
            .push(Step::new(&id, &timed("times", "sleep 0.15")).uses(conn));
    }
    p.write();
    let run = p.apply(&[]);
    assert_eq!(run.code, 0, "{}", run.show());
    let lines = p.lines("times");
    assert_eq!(lines.len(), 32, "every step ran once: {lines:?}");
    let global = max_overlap(&lines, None);
    let db = max_overlap(&lines, Some(&db_ids));
    eprintln!("max overlap: global {global} (limit 3), db {db} (limit 2)");
    assert!(global <= 3, "global overlap {global} > 3");
    assert!(db <= 2, "db overlap {db} > 2");
    assert!(
        global >= 2,
        "the bound allowed parallelism but none happened"
    );
}

#[test]
fn pause_between_spaces_starts_on_a_connection() {
    let mut p = TestPlan::new("pause");
    p.concurrency = 4;
    p.connections
        .insert("db".into(), (None, Some("300ms".into())));
    for i in 0..4 {
        p.steps
            .push(Step::new(&format!("s{i}"), &timed("times", "true")).uses("db"));
    }
    p.write();
    let run = p.apply(&[]);
    assert_eq!(run.code, 0, "{}", run.show());
    let mut starts: Vec<u128> = p
        .lines("times")
        .iter()
        .filter(|l| l.starts_with("start "))
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
        .collect();
    starts.sort();
    for w in starts.windows(2) {
        let gap = Duration::from_nanos((w[1] - w[0]) as u64);
        assert!(gap >= Duration::from_millis(290), "starts {gap:?} apart");
    }
}

/// a → b → c with `a` failing; `d` independent. Dependents never start and are
/// recorded as skipped; the run exits non-zero with a summary.
#[test]
fn dependents_of_a_failed_task_never_start() {
    let mut p = TestPlan::new("failure");
    p.concurrency = 1;
    p.steps = vec![
        Step::new("a", "echo a >> ran; echo 'no such table' >&2; exit 3"),
        Step::new("b", "echo b >> ran").after(&["a"]),
        Step::new("c", "echo c >> ran").after(&["b"]),
        Step::new("d", "sleep 0.2; echo d >> ran"),
    ];
    p.write();
    let run = p.apply(&[]);
    assert_eq!(run.code, 1, "{}", run.show());
    let ran = p.lines("ran");
    assert!(
        !ran.contains(&"b".to_string()) && !ran.contains(&"c".to_string()),
        "{ran:?}"
    );
    assert!(
        run.stderr
            .contains("failed a after 1 attempt: command exited with code 3"),
        "{}",
        run.show()
    );
    assert!(
        run.stderr.contains("no such table"),
        "stderr tail in the error: {}",
        run.show()
    );
    assert!(run.stdout.contains("1 failed, 2 skipped"), "{}", run.show());
    assert!(
        run.stderr
            .contains("to resume: flow apply plan.toml --resume"),
        "{}",
        run.show()
    );
    let status = p.task_status();
    assert_eq!(status["a"].0, "failed");
    assert_eq!(status["b"].0, "skipped");
    assert_eq!(status["c"].0, "skipped");
    let report: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(p.file(".flow/failure.report.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(report["outcome"], "failed");
    assert_eq!(report["errors"][0]["task"], "a");
}

#[test]
fn keep_going_lets_independent_branches_finish() {
    let mut p = TestPlan::new("keep-going");
    p.concurrency = 1;
    p.steps = vec![
        Step::new("a", "exit 3"),
        Step::new("b", "echo b >> ran").after(&["a"]),
        Step::new("x", "echo x >> ran"),
        Step::new("y", "echo y >> ran").after(&["x"]),
    ];
    p.write();
    let run = p.apply(&["--keep-going"]);
    assert_eq!(run.code, 1, "{}", run.show());
    let mut ran = p.lines("ran");
    ran.sort();
    assert_eq!(ran, vec!["x", "y"], "{}", run.show());
    assert_eq!(run.ids("skipped"), vec!["b"]);
}

/// Exit 75 (EX_TEMPFAIL) is transient: retried with backoff until it succeeds. Exit 3
/// is permanent: one attempt only.
#[test]
fn only_transient_exit_codes_are_retried() {
    let mut p = TestPlan::new("retries");
    p.retries = 3;
    p.concurrency = 2;
    p.steps = vec![
        Step::new(
            "flaky",
            "echo try >> flaky.log; n=$(wc -l < flaky.log); [ \"$n\" -ge 3 ] || exit 75",
        ),
        Step::new("broken", "echo try >> broken.log; exit 3"),
    ];
    p.write();
    let run = p.apply(&["--keep-going"]);
    assert_eq!(run.code, 1, "{}", run.show());
    assert_eq!(p.lines("flaky.log").len(), 3, "{}", run.show());
    assert_eq!(p.lines("broken.log").len(), 1, "{}", run.show());
    assert_eq!(run.ids("retry"), vec!["flaky", "flaky"], "{}", run.show());
    let status = p.task_status();
    assert_eq!(status["flaky"], ("done".to_string(), 3));
    assert_eq!(status["broken"], ("failed".to_string(), 1));
}

#[test]
fn retries_stop_after_the_limit() {
    let mut p = TestPlan::new("give-up");
    p.retries = 2;
    p.steps = vec![Step::new("always", "echo try >> t.log; exit 75")];
    p.write();
    let run = p.apply(&[]);
    assert_eq!(run.code, 1);
    assert_eq!(p.lines("t.log").len(), 3);
    assert!(
        run.stderr.contains("gave up after 3 attempts"),
        "{}",
        run.show()
    );
}

#[test]
fn a_plain_apply_over_state_asks_for_resume_or_restart() {
    let mut p = TestPlan::new("again");
    p.steps = vec![Step::new("a", "echo a >> ran")];
    p.write();
    assert_eq!(p.apply(&[]).code, 0);
    let run = p.apply(&[]);
    assert_eq!(run.code, 2, "{}", run.show());
    assert!(
        run.stderr.contains("flow apply plan.toml --resume"),
        "{}",
        run.show()
    );
    assert!(
        run.stderr.contains("flow apply plan.toml --restart"),
        "{}",
        run.show()
    );
    let both = p.apply(&["--resume", "--restart"]);
    assert_eq!(both.code, 2, "{}", both.show());
    assert_eq!(p.apply(&["--resume"]).code, 0);
    assert_eq!(p.lines("ran").len(), 1, "resume skipped the done task");
    assert_eq!(p.apply(&["--restart"]).code, 0);
    assert_eq!(p.lines("ran").len(), 2, "restart ran it again");
}

/// Changing a step's command makes it (and what depends on it) dirty, with the reason;
/// a `once` step is kept; `flow state reset` runs a task again.
#[test]
fn resume_says_why_tasks_are_dirty_and_keeps_once_steps() {
    let mut p = TestPlan::new("dirty");
    p.steps = vec![
        Step::new("a", "echo a >> ran"),
        Step::new("b", "echo b >> ran").after(&["a"]),
        Step::new("c", "echo c >> ran").after(&["b"]),
        Step::new("setup", "echo setup >> ran").once(),
    ];
    p.write();
    assert_eq!(p.apply(&[]).code, 0);
    p.steps[1].run = "echo b2 >> ran".into();
    p.steps[3].run = "echo setup2 >> ran".into();
    p.write();
    let run = p.apply(&["--resume"]);
    assert_eq!(run.code, 0, "{}", run.show());
    assert!(
        run.stderr.contains("dirty b: input `run` changed"),
        "{}",
        run.show()
    );
    assert!(
        run.stderr.contains("dirty c: dependency `b` runs again"),
        "{}",
        run.show()
    );
    assert!(
        run.stderr
            .contains("kept setup: input `run` changed; not re-run"),
        "{}",
        run.show()
    );
    let mut started = run.ids("started");
    started.sort();
    assert_eq!(started, vec!["b", "c"]);

    let reset = p
        .command(&["state", "reset", "plan.toml", "set*"])
        .output()
        .unwrap();
    assert!(
        reset.status.success(),
        "{}",
        String::from_utf8_lossy(&reset.stderr)
    );
    let run = p.apply(&["--resume"]);
    assert_eq!(run.ids("started"), vec!["setup"], "{}", run.show());
    assert!(p.lines("ran").contains(&"setup2".to_string()));
}

/// A second apply on the same plan refuses and names the holder: pid and host.
#[test]
fn a_second_apply_refuses_and_names_the_holder() {
    let mut p = TestPlan::new("locked");
    p.steps = vec![Step::new("slow", "touch started; sleep 3")];
    p.write();
    let (mut first, _) = p.spawn_apply(&[], "first");
    wait_for_file(&p.file("started"), 20);
    let second = p.apply(&["--resume"]);
    let host = hostname();
    assert_eq!(second.code, 3, "{}", second.show());
    assert!(
        second
            .stderr
            .contains(&format!("pid {} on host {host}", first.id())),
        "{}",
        second.show()
    );
    let status = p.command(&["status", "plan.toml"]).output().unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains(&format!("running now: pid {}", first.id())),
        "{text}"
    );
    assert!(first.wait().unwrap().success());
    assert_eq!(
        p.apply(&["--resume"]).code,
        0,
        "the lock is released at the end"
    );
}

fn hostname() -> String {
    let out = std::process::Command::new("hostname").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// First Ctrl-C: nothing new starts, running tasks finish, state is saved, the resume
/// command is printed (exit 130). `--resume` then finishes the rest.
#[test]
fn ctrl_c_drains_then_resume_finishes() {
    let mut p = TestPlan::new("interrupt");
    p.concurrency = 2;
    p.steps = vec![
        Step::new("a", "touch a.started; sleep 1; echo a >> ran"),
        Step::new("b", "sleep 1; echo b >> ran"),
        Step::new("c", "echo c >> ran").after(&["a"]),
        Step::new("d", "echo d >> ran").after(&["b"]),
    ];
    p.write();
    let (child, err) = p.spawn_apply(&[], "first");
    wait_for_file(&p.file("a.started"), 20);
    let started = Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = std::fs::read_to_string(err).unwrap();
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "running tasks finished first"
    );
    let mut ran = p.lines("ran");
    ran.sort();
    assert_eq!(ran, vec!["a", "b"], "{stderr}");
    assert!(
        stderr.contains("to resume: flow apply plan.toml --resume"),
        "{stderr}"
    );
    let run = p.apply(&["--resume"]);
    assert_eq!(run.code, 0, "{}", run.show());
    let mut started = run.ids("started");
    started.sort();
    assert_eq!(started, vec!["c", "d"]);
}

/// Second Ctrl-C cancels running tasks (their commands are stopped) and aborts.
#[test]
fn a_second_ctrl_c_cancels_running_tasks() {
    let mut p = TestPlan::new("abort");
    p.steps = vec![Step::new(
        "long",
        "touch started; sleep 30; echo finished >> ran",
    )];
    p.write();
    let (child, err) = p.spawn_apply(&[], "first");
    wait_for_file(&p.file("started"), 20);
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let t = Instant::now();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = std::fs::read_to_string(err).unwrap();
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(t.elapsed() < Duration::from_secs(15), "aborted promptly");
    assert!(p.lines("ran").is_empty(), "the command was stopped");
    assert_eq!(p.task_status()["long"].0, "failed");
}

#[test]
fn report_and_metrics_are_written() {
    let mut p = TestPlan::new("observed");
    p.steps = vec![Step::new("ok", "true"), Step::new("bad", "exit 3")];
    p.write();
    let run = p.apply(&[
        "--keep-going",
        "--metrics-file",
        "m.prom",
        "--format",
        "json",
    ]);
    assert_eq!(run.code, 1, "{}", run.show());
    let report: serde_json::Value = serde_json::from_str(&run.stdout).expect("report on stdout");
    assert_eq!(report["plan"], "observed");
    assert_eq!(report["totals"]["done"], 1);
    assert_eq!(report["totals"]["failed"], 1);
    assert_eq!(report["steps"].as_array().unwrap().len(), 2);
    let metrics = std::fs::read_to_string(p.file("m.prom")).unwrap();
    for name in [
        "migration_start_time",
        "migration_end_time",
        "migration_duration_seconds",
        "total_tables",
        "completed_tables",
        "failed_tables",
        "skipped_tables",
        "total_partitions",
        "completed_partitions",
        "migration_errors_total",
    ] {
        assert!(
            metrics.contains(&format!("\n{name}{{plan=\"observed\"}} ")),
            "{name}: {metrics}"
        );
    }
    assert!(
        metrics.contains("migration_errors_total{plan=\"observed\"} 1"),
        "{metrics}"
    );
}

#[test]
fn metrics_are_served_while_running() {
    let mut p = TestPlan::new("served");
    p.steps = vec![Step::new("slow", "touch started; sleep 2")];
    p.write();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let (child, _) = p.spawn_apply(&["--metrics-addr", &addr], "first");
    wait_for_file(&p.file("started"), 20);
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    assert!(
        body.contains("migration_end_time{plan=\"served\"} 0"),
        "{body}"
    );
    assert!(child.wait_with_output().unwrap().status.success());
}

/// A lock whose holder is gone: refused with the fix, broken by `flow unlock --force`.
#[test]
fn a_stale_lock_is_reported_and_can_be_broken() {
    let mut p = TestPlan::new("stale");
    p.steps = vec![Step::new("a", "echo a >> ran")];
    p.write();
    std::fs::create_dir_all(p.file(".flow")).unwrap();
    let lock_path = p.file(".flow/stale.lock");
    // A pid that is certainly dead, in a record held by an open file description (as
    // when a wedged process keeps the lock but its pid is gone).
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    std::fs::write(
        &lock_path,
        format!(
            "{{\"pid\":{dead},\"host\":\"{}\",\"started_at\":\"{now}\",\"heartbeat_at\":\"{now}\",\"command\":\"flow apply\"}}\n",
            hostname()
        ),
    )
    .unwrap();
    let holder = std::fs::File::open(&lock_path).unwrap();
    holder.lock().unwrap();

    let refused = p.apply(&[]);
    assert_eq!(refused.code, 3, "{}", refused.show());
    assert!(
        refused.stderr.contains(&format!("pid {dead}")),
        "{}",
        refused.show()
    );
    assert!(
        refused.stderr.contains("not running any more"),
        "{}",
        refused.show()
    );
    assert!(
        refused.stderr.contains("flow unlock plan.toml --force"),
        "{}",
        refused.show()
    );

    let look = p.command(&["unlock", "plan.toml"]).output().unwrap();
    assert_eq!(
        look.status.code(),
        Some(3),
        "without --force it only reports"
    );
    let broken = p
        .command(&["unlock", "plan.toml", "--force"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&broken.stdout);
    assert!(broken.status.success(), "{text}");
    assert!(
        text.contains(&format!(
            "broke the lock of plan `stale` held by pid {dead}"
        )),
        "{text}"
    );
    let run = p.apply(&[]);
    assert_eq!(run.code, 0, "{}", run.show());
    drop(holder);
}

/// A killed run leaves its lock record; the next run says so and goes on.
#[test]
fn a_killed_holder_does_not_block_the_next_run() {
    let mut p = TestPlan::new("killed");
    p.steps = vec![Step::new("slow", "touch started; sleep 5")];
    p.write();
    let (mut first, _) = p.spawn_apply(&[], "first");
    wait_for_file(&p.file("started"), 20);
    first.kill().unwrap();
    first.wait().unwrap();
    let run = p.apply(&["--resume"]);
    assert_eq!(run.code, 0, "{}", run.show());
    assert!(
        run.stderr.contains("ended without releasing its lock"),
        "{}",
        run.show()
    );
    assert!(
        run.stderr.contains("re-run slow: was running"),
        "{}",
        run.show()
    );
}

fn signal(pid: u32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).unwrap();
}

/// Rewrites the lock record in place (same file, so the holder's flock still covers
/// it) with a heartbeat 5 minutes old: what a holder stopped for that long leaves.
fn age_heartbeat(lock_path: &std::path::Path) {
    let text = std::fs::read_to_string(lock_path).unwrap();
    let mut record: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    let old = chrono::Utc::now() - chrono::Duration::minutes(5);
    record["heartbeat_at"] = old
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
        .into();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(lock_path)
        .unwrap();
    use std::os::unix::fs::FileExt;
    let text = format!("{record}\n");
    file.set_len(0).unwrap();
    file.write_all_at(text.as_bytes(), 0).unwrap();
}

/// `flow unlock --force` never breaks the lock of a holder alive on this host, even a
/// stopped one whose heartbeat is long silent: it names the pid, says to stop it
/// first, exits 3, and the lock stays.
#[test]
fn unlock_force_refuses_a_live_holder_even_a_stopped_one() {
    let mut p = TestPlan::new("stopped");
    p.steps = vec![Step::new("slow", "touch started; sleep 30")];
    p.write();
    let (mut holder, _) = p.spawn_apply(&[], "holder");
    wait_for_file(&p.file("started"), 20);
    let pid = holder.id();
    signal(pid, nix::sys::signal::Signal::SIGSTOP);
    let lock_path = p.file(".flow/stopped.lock");
    age_heartbeat(&lock_path);

    let forced = p
        .command(&["unlock", "plan.toml", "--force"])
        .output()
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&forced.stdout),
        String::from_utf8_lossy(&forced.stderr)
    );
    let refused = forced.status.code();
    let lock_kept = lock_path.exists();
    // Let the holder go before asserting, so a failure does not leave it stopped.
    signal(pid, nix::sys::signal::Signal::SIGCONT);
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(refused, Some(3), "{out}");
    assert!(out.contains(&format!("pid {pid}")), "{out}");
    assert!(out.contains("stop it first"), "{out}");
    assert!(out.contains(&format!("kill {pid}")), "{out}");
    assert!(lock_kept, "the lock file is still there: {out}");
}

/// A run whose lock is broken and taken by another holder while a slow step runs
/// notices, stops its running step, starts nothing more, and exits 3 naming the
/// holder that has the lock now.
#[test]
fn a_run_that_lost_its_lock_stops_and_names_the_new_holder() {
    let mut p = TestPlan::new("fenced");
    p.steps = vec![
        Step::new("slow", "touch started; sleep 8; echo slow >> ran"),
        Step::new("next", "echo next >> ran").after(&["slow"]),
    ];
    p.write();
    let (first, err) = p.spawn_apply(&[], "first");
    wait_for_file(&p.file("started"), 20);

    // Break the lock (unlink its file) and take a new one, as a second flow would.
    let lock_path = p.file(".flow/fenced.lock");
    std::fs::remove_file(&lock_path).unwrap();
    let taker = std::fs::File::create_new(&lock_path).unwrap();
    taker.lock().unwrap();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let me = std::process::id();
    std::fs::write(
        &lock_path,
        format!(
            "{{\"pid\":{me},\"host\":\"{}\",\"started_at\":\"{now}\",\"heartbeat_at\":\"{now}\",\"command\":\"flow apply plan.toml --resume\"}}\n",
            hostname()
        ),
    )
    .unwrap();
    let taken = Instant::now();

    let out = first.wait_with_output().unwrap();
    let stderr = std::fs::read_to_string(err).unwrap();
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        taken.elapsed() < Duration::from_secs(6),
        "stopped soon after losing the lock, not after the slow step: {:?}",
        taken.elapsed()
    );
    assert!(stderr.contains("lost"), "{stderr}");
    assert!(
        stderr.contains(&format!("pid {me} on host {}", hostname())),
        "names the new holder: {stderr}"
    );
    assert!(
        p.lines("ran").is_empty(),
        "nothing ran on: {:?}",
        p.lines("ran")
    );
    let status = p.task_status();
    assert_eq!(status["slow"].0, "failed", "cancelled: {status:?}");
    assert!(
        ["pending", "skipped"].contains(&status["next"].0.as_str()),
        "never started: {status:?}"
    );
    drop(taker);
    let run = p.apply(&["--resume"]);
    assert_eq!(run.code, 0, "{}", run.show());
    assert_eq!(p.lines("ran"), vec!["slow", "next"]);
}

/// Whether `pid` runs (a zombie does not: it runs nothing).
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

/// The second Ctrl-C stops the step's whole process group, not only its shell: a
/// grandchild that ignores SIGTERM gets SIGKILL after the grace period.
#[test]
fn a_second_ctrl_c_stops_a_grandchild_that_ignores_sigterm() {
    let mut p = TestPlan::new("stubborn");
    p.steps = vec![Step::new(
        "long",
        "(trap '' TERM; exec sleep 30) & echo $! > pid; wait",
    )];
    p.write();
    let (child, err) = p.spawn_apply(&[], "first");
    wait_for_file(&p.file("pid"), 20);
    std::thread::sleep(Duration::from_millis(200));
    let grandchild: u32 = std::fs::read_to_string(p.file("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    signal(child.id(), nix::sys::signal::Signal::SIGINT);
    std::thread::sleep(Duration::from_millis(300));
    signal(child.id(), nix::sys::signal::Signal::SIGINT);
    let out = child.wait_with_output().unwrap();
    let stderr = std::fs::read_to_string(err).unwrap();
    let alive = running(grandchild);
    if alive {
        signal(grandchild, nix::sys::signal::Signal::SIGKILL);
    }
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(
        !alive,
        "the grandchild {grandchild} outlived the cancel: {stderr}"
    );
    assert!(
        stderr.contains(&format!("{grandchild} (sleep)")),
        "the cancel names what it stopped: {stderr}"
    );
}
