//! Bad input of every kind through the real binary, `flow validate` and `flow apply`
//! both, each under a time limit: exit 1 (or the documented code) with a message that
//! names the problem — never a panic (exit 101), never a hang.
//!
//! The plan fixtures are in tests/fixtures/invalid/ (their full messages are golden
//! files, checked by tests/validate.rs); the cases here that need a folder of their
//! own (state, a closed stdout) build it in a temp dir. None needs a server: every
//! plan is refused, or runs only `exec` steps.

use std::io::Read as _;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Generous: every case here finishes in well under a second when it works.
const LIMIT: Duration = Duration::from_secs(60);

fn flow(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flow"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd.env_remove("RUST_LOG");
    cmd.args(args);
    cmd
}

/// Runs `cmd` to the end, or kills it and fails the test after [`LIMIT`].
fn run_limited(mut cmd: Command, what: &str) -> Output {
    cmd.stdin(Stdio::null());
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stdout.read_to_end(&mut b);
        b
    });
    let err_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stderr.read_to_end(&mut b);
        b
    });
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {LIMIT:?} — a hang");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: out_reader.join().unwrap(),
        stderr: err_reader.join().unwrap(),
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts exit `code`, no panic, and every fragment in the output.
fn expect(out: &Output, code: i32, fragments: &[&str], what: &str) {
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("panicked"), "{what}: panicked\n{stderr}");
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: exit code\nstderr:\n{stderr}\nstdout:\n{}",
        text(&out.stdout)
    );
    let all = format!("{stderr}{}", text(&out.stdout));
    for f in fragments {
        assert!(all.contains(f), "{what}: output lacks {f:?}\n{all}");
    }
}

/// Every invalid fixture: validate and apply both refuse it with the same problem.
#[test]
fn bad_plans_exit_1_through_validate_and_apply_and_name_the_problem() {
    let cases: &[(&str, &[&str])] = &[
        // item 13: durations of any size, integers past i64, odd plan names
        (
            "huge_durations",
            &[
                "retry_backoff \"18446744073709551615s\" is longer than the limit of 1h",
                "pause_between \"9999999999999999999999s\" is too large to be a duration",
                "timeout \"1000000000y\" is",
            ],
        ),
        (
            "too_large_integer",
            &["too large", "at most 9223372036854775807"],
        ),
        (
            "long_plan_name",
            &["plan name is 300 characters long", "at most 128"],
        ),
        (
            "dot_plan_name",
            &["plan name \"..\" cannot name a state file"],
        ),
        // item 14: a hostile template nest is refused, not run
        ("hostile_template", &["steps of work"]),
        // item 16: every schema error at once, byte offsets as line:col, one error
        // for one mistake, and what apply would refuse anyway
        (
            "two_unknown_keys",
            &[
                "two_unknown_keys.toml:3:1: unknown key `concurrancy`",
                "two_unknown_keys.toml:8:1: unknown key `max_conurrency`",
                "two_unknown_keys.toml:14:1: unknown key `timout`",
                "3 error(s)",
            ],
        ),
        (
            "non_utf8",
            &[
                "non_utf8.toml:3:19: the plan is not UTF-8",
                "byte 0xe9 at offset 36",
            ],
        ),
        (
            "max_rows_zero",
            &["max_rows must be positive", "1 error(s)"],
        ),
        (
            "unsafe_paths",
            &[
                "table default.up: the `path` template gives an unusable key",
                "table default.abs: the `path` template gives an unusable key",
                "table default.empty: the `path` template gives an unusable key",
                "3 error(s)",
            ],
        ),
        (
            "dot_partition",
            &["partition id \"..\" cannot be part of a task id"],
        ),
        (
            "copy_onto_itself",
            &[
                "table db.events: copy onto itself",
                "table db.clicks: copy onto itself",
                "table db.views: copy onto itself",
            ],
        ),
        (
            "url_credentials",
            &[
                "connection \"ch\": the password in the userinfo of `url`",
                "connection \"lake\": the password in the userinfo of `endpoint`",
            ],
        ),
    ];
    for (name, fragments) in cases {
        let plan = format!("tests/fixtures/invalid/{name}.toml");
        let out = run_limited(flow(&["validate", &plan]), &format!("validate {name}"));
        expect(&out, 1, fragments, &format!("validate {name}"));
        let out = run_limited(
            flow(&["apply", &plan, "--progress", "quiet"]),
            &format!("apply {name}"),
        );
        expect(&out, 1, fragments, &format!("apply {name}"));
        assert!(
            text(&out.stderr).contains("nothing was run"),
            "apply {name}: says nothing ran\n{}",
            text(&out.stderr)
        );
    }
}

/// The secrets of a URL with credentials appear only in the excerpt of the file.
#[test]
fn credentials_in_urls_are_not_repeated_in_messages() {
    let out = run_limited(
        flow(&["validate", "tests/fixtures/invalid/url_credentials.toml"]),
        "validate url_credentials",
    );
    for line in text(&out.stderr)
        .lines()
        .filter(|l| l.starts_with("error:") || l.contains("help:"))
    {
        assert!(
            !line.contains("hunter2") && !line.contains("s3cr3t"),
            "secret echoed: {line}"
        );
    }
}

/// A plan of exec steps only, in `dir`.
fn exec_plan(dir: &Path, extra_plan_keys: &str) -> String {
    let plan = dir.join("plan.toml");
    std::fs::write(
        &plan,
        format!(
            "[plan]\nname = \"bad-state\"\n{extra_plan_keys}\n\n[[steps]]\nid = \"hello\"\nkind = \"exec\"\nrun = \"echo hello\"\n"
        ),
    )
    .unwrap();
    plan.display().to_string()
}

#[test]
fn a_state_folder_that_is_a_file_is_refused_by_validate_and_apply() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("state"), "not a folder").unwrap();
    for state_dir in ["state", "state/below"] {
        let plan = exec_plan(dir.path(), &format!("state_dir = \"{state_dir}\""));
        let fragments = ["cannot hold the plan's state", "is a file, not a folder"];
        let out = run_limited(flow(&["validate", &plan]), "validate");
        expect(
            &out,
            1,
            &fragments,
            &format!("validate, state_dir {state_dir}"),
        );
        let out = run_limited(flow(&["apply", &plan]), "apply");
        expect(
            &out,
            1,
            &fragments,
            &format!("apply, state_dir {state_dir}"),
        );
    }
}

/// Item 15: a 0-byte, a garbage and a foreign SQLite state file are each reported as
/// damaged, with the fix — never taken for "no earlier state" — by apply, status and
/// plan; `--restart` keeps a copy and starts a new one.
#[test]
fn a_damaged_state_database_is_reported_with_the_fix_and_restart_keeps_a_copy() {
    let foreign = {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.db");
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE notes (t TEXT); INSERT INTO notes VALUES ('mine');")
            .unwrap();
        drop(conn);
        std::fs::read(&path).unwrap()
    };
    let cases: [(&str, Vec<u8>, &str); 3] = [
        ("empty", Vec::new(), "the file is empty (0 bytes)"),
        (
            "garbage",
            b"this is not a database at all, just some text".repeat(200),
            "it is not an SQLite database",
        ),
        ("foreign", foreign, "not one flow wrote"),
    ];
    for (name, bytes, problem) in cases {
        let dir = tempfile::tempdir().unwrap();
        let plan = exec_plan(dir.path(), "");
        let state = dir.path().join(".flow");
        std::fs::create_dir_all(&state).unwrap();
        let db = state.join("bad-state.db");
        std::fs::write(&db, &bytes).unwrap();
        let fragments = ["is damaged", problem, "move it away", "--restart"];
        let out = run_limited(flow(&["validate", &plan]), "validate");
        expect(
            &out,
            0,
            &[],
            &format!("validate ({name} state; validate reads no state)"),
        );
        for args in [
            vec!["apply", plan.as_str(), "--progress", "quiet"],
            vec!["apply", plan.as_str(), "--resume", "--progress", "quiet"],
            vec!["status", plan.as_str()],
            vec!["plan", plan.as_str()],
        ] {
            let out = run_limited(flow(&args), &args.join(" "));
            expect(
                &out,
                1,
                &fragments,
                &format!("{} ({name} state)", args.join(" ")),
            );
            assert!(
                !text(&out.stderr).contains("resume: no earlier state"),
                "{name}: damaged state taken for none"
            );
        }
        assert_eq!(
            std::fs::read(&db).unwrap(),
            bytes,
            "{name}: the file is untouched"
        );
        let out = run_limited(
            flow(&["apply", &plan, "--restart", "--progress", "quiet"]),
            "apply --restart",
        );
        expect(
            &out,
            0,
            &["was kept as"],
            &format!("apply --restart ({name} state)"),
        );
        let kept: Vec<_> = std::fs::read_dir(&state)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().contains("bad-state.db.damaged-"))
            .filter(|p| {
                !p.to_string_lossy().ends_with("-wal") && !p.to_string_lossy().ends_with("-shm")
            })
            .collect();
        assert_eq!(kept.len(), 1, "{name}: one copy kept: {kept:?}");
        assert_eq!(
            std::fs::read(&kept[0]).unwrap(),
            bytes,
            "{name}: the copy is the old file"
        );
        let out = run_limited(flow(&["status", &plan]), "status after restart");
        expect(&out, 0, &[], &format!("status after restart ({name})"));
        assert!(text(&out.stdout).contains("hello"), "{}", text(&out.stdout));
    }
}

/// Item 13: `flow … | head` — a closed stdout ends the output quietly; the exit code is
/// the command's own (a finished run is never reported as a crash, 101).
#[test]
fn a_closed_stdout_ends_output_quietly_with_the_commands_own_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let plan = exec_plan(dir.path(), "");
    let cases: Vec<(Vec<&str>, i32)> = vec![
        (
            vec!["validate", "plans/trips.toml", "plans/ch-copy.toml"],
            0,
        ),
        (vec!["validate", "tests/fixtures/invalid/cycle.toml"], 1),
        (vec!["plan", "plans/trips.toml", "--offline"], 0),
        (
            vec!["plan", "plans/trips.toml", "--offline", "--format", "json"],
            0,
        ),
        (vec!["graph", "plans/trips.toml", "--format", "dot"], 0),
        (vec!["schema"], 0),
        (vec!["completions", "bash"], 0),
        (vec!["--help"], 0),
        (vec!["apply", plan.as_str(), "--progress", "quiet"], 0),
        (vec!["status", plan.as_str()], 0),
        (
            vec!["apply", plan.as_str(), "--restart", "--format", "json"],
            0,
        ),
    ];
    for (args, code) in cases {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let mut cmd = flow(&args);
        cmd.stdout(writer)
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        let status = child.wait().unwrap();
        let what = args.join(" ");
        assert!(!stderr.contains("panicked"), "{what}: panicked\n{stderr}");
        assert_eq!(status.code(), Some(code), "{what}\n{stderr}");
    }
}

/// Item 16: off a terminal there are no colour codes, each failure is printed once on
/// stderr (as it happens) and once in the summary on stdout, and the summary counts
/// the tasks that never started because of it.
#[test]
fn a_failure_is_printed_once_without_colour_and_its_dependents_are_counted() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.toml");
    std::fs::write(
        &plan,
        "[plan]\nname = \"fails\"\nretries = 0\n\n\
         [[steps]]\nid = \"boom\"\nkind = \"exec\"\nrun = \"exit 3\"\n\n\
         [[steps]]\nid = \"after-boom\"\nkind = \"exec\"\nrun = \"true\"\nafter = [\"boom\"]\n",
    )
    .unwrap();
    let plan = plan.display().to_string();
    for progress in ["plain", "auto"] {
        let out = run_limited(
            flow(&["apply", &plan, "--restart", "--progress", progress]),
            "apply failing plan",
        );
        expect(&out, 1, &[], &format!("apply --progress {progress}"));
        let stderr = text(&out.stderr);
        let stdout = text(&out.stdout);
        assert!(
            !stderr.contains('\x1b'),
            "colour codes off a terminal:\n{stderr:?}"
        );
        assert!(
            !stdout.contains('\x1b'),
            "colour codes off a terminal:\n{stdout:?}"
        );
        assert_eq!(
            stderr.matches("command exited with code 3").count(),
            1,
            "printed once on stderr:\n{stderr}"
        );
        assert_eq!(
            stdout.matches("command exited with code 3").count(),
            1,
            "once in the summary:\n{stdout}"
        );
        assert!(stdout.contains("1 failed, 1 skipped"), "{stdout}");
    }
}

/// Item 14: expansion is linear in the declared partitions — 100k of them validate
/// (the bound is generous: this takes well under a second in a release build).
#[test]
fn a_plan_with_100k_declared_partitions_validates() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.toml");
    std::fs::write(
        &plan,
        "[plan]\nname = \"wide\"\n\n\
         [connections.ch]\nkind = \"clickhouse\"\nurl = \"http://127.0.0.1:8123\"\n\n\
         [connections.out]\nkind = \"fs\"\npath = \"out\"\n\n\
         [[tables]]\nsource = \"ch\"\ntable = \"wide\"\npartition_expr = \"k\"\n\
         partition_range = { from = 1, to = 100000, step = \"integer\" }\n\
         strategy = \"export\"\ntarget = \"out\"\n",
    )
    .unwrap();
    let out = run_limited(
        flow(&["validate", &plan.display().to_string()]),
        "validate 100k partitions",
    );
    expect(&out, 0, &[], "validate 100k partitions");
    assert!(
        text(&out.stdout).starts_with("ok: "),
        "{}",
        text(&out.stdout)
    );
}
