//! `flow apply` killed with SIGKILL at random moments, then `--resume`d, for the
//! s3-policy move and for copies: at the end every row is in the target exactly once
//! (same count and checksum as the source had), nothing is left half-done.

mod clickhouse_common;
mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clickhouse_common::{ch, stats};
use flow::engines::clickhouse::Stats;

const KILLS: usize = 6;

fn flow(plan: &Path, resume: bool) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flow"));
    cmd.arg("apply").arg(plan).arg("--progress").arg("quiet");
    if resume {
        cmd.arg("--resume");
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    cmd
}

/// Starts `flow apply`, kills it with SIGKILL after a random delay (unless it ends
/// first), `KILLS` times; then resumes until it succeeds. Returns how many runs were
/// killed mid-way.
fn run_with_kills(plan: &Path, max_delay_ms: u64) -> usize {
    let mut killed = 0;
    let mut resume = false;
    for _ in 0..KILLS {
        let mut child = flow(plan, resume).spawn().expect("flow starts");
        resume = true;
        let delay = Duration::from_millis(fastrand::u64(50..max_delay_ms));
        let start = Instant::now();
        let mut finished = None;
        while start.elapsed() < delay {
            if let Some(status) = child.try_wait().unwrap() {
                finished = Some(status);
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        match finished {
            Some(status) => {
                let out = child.wait_with_output().unwrap();
                assert!(
                    status.success(),
                    "flow apply failed before it was killed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                return killed;
            }
            None => {
                // SIGKILL the process this test started, by its pid.
                nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(child.id() as i32),
                    nix::sys::signal::Signal::SIGKILL,
                )
                .unwrap();
                child.wait().unwrap();
                killed += 1;
            }
        }
    }
    // Resume to the end (a run may be retried once more if the server is slow).
    for attempt in 0..3 {
        let out = flow(plan, true).output().unwrap();
        if out.status.success() {
            return killed;
        }
        eprintln!(
            "resume attempt {attempt} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    panic!("flow apply --resume did not finish");
}

fn write_plan(dir: &Path, body: &str) -> std::path::PathBuf {
    let path = dir.join("plan.toml");
    std::fs::write(&path, body).unwrap();
    path
}

#[test]
fn s3_policy_survives_sigkill_at_random_moments() {
    let url = support::chdb_url();
    let db = support::ChDatabase::new(&url, "crashpolicy");
    let d = db.name();
    db.exec(&format!(
        "CREATE TABLE {d}.events (id UInt64, d Date, s String, n Nullable(Int32)) \
         ENGINE = MergeTree PARTITION BY toYYYYMM(d) ORDER BY id"
    ));
    db.exec(&format!(
        "INSERT INTO {d}.events SELECT number, toDate('2015-01-01') + number % 300, \
         concat('row \"', toString(number), '\",\\n'), if(number % 4 = 0, NULL, toInt32(number)) \
         FROM numbers(200000)"
    ));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let engine = ch(&url);
    let before: Stats = rt.block_on(stats(&engine, &format!("{d}.events"), None));
    let dir = tempfile::tempdir().unwrap();
    let plan = write_plan(
        dir.path(),
        &format!(
            r#"
[plan]
name = "crash-policy"
concurrency = 3
retries = 5
retry_backoff = "200ms"

[connections.ch]
kind = "clickhouse"
url = "{url}"
max_concurrency = 3

[[tables]]
source = "ch"
database = "{d}"
table = "events"
strategy = "s3-policy"
storage_policy = "s3"
keep_old = false
"#
        ),
    );
    let killed = run_with_kills(&plan, 2500);
    eprintln!("s3-policy: {killed} run(s) killed mid-way");
    let after = rt.block_on(stats(&engine, &format!("{d}.events"), None));
    assert_eq!(before, after, "no row lost or duplicated");
    assert_eq!(
        db.exec(&format!(
            "SELECT storage_policy FROM system.tables WHERE database = '{d}' AND name = 'events'"
        ))
        .trim(),
        "s3"
    );
    assert_eq!(
        db.exec(&format!(
            "SELECT groupUniqArray(disk_name) FROM system.parts WHERE database = '{d}' AND table = 'events' AND active AND rows > 0"
        ))
        .trim(),
        "['s3']"
    );
    assert_eq!(
        db.exec(&format!(
            "SELECT groupArray(name) FROM system.tables WHERE database = '{d}' AND name != 'events'"
        ))
        .trim(),
        "[]",
        "no helper table left"
    );
}

#[test]
fn copy_survives_sigkill_at_random_moments() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    // Same server (18.16, through staging tables because of the bound) and across
    // servers (18.16 → modern, streamed).
    for (name, target_url) in [("same", support::ch_url()), ("cross", support::chdb_url())] {
        let src = support::ChDatabase::new(&support::ch_url(), "crashsrc");
        let dst = support::ChDatabase::new(&target_url, "crashdst");
        let s = src.name();
        src.exec(&format!(
            "CREATE TABLE {s}.trips (id UInt64, d Date, s String, x Decimal(18, 4), a Array(String)) \
             ENGINE = MergeTree PARTITION BY toYYYYMM(d) ORDER BY id"
        ));
        src.exec(&format!(
            "INSERT INTO {s}.trips SELECT number, toDate('2015-01-01') + number % 360, \
             concat('a,\"b\"\\n', toString(number)), toDecimal64(number, 4) / 3, [toString(number % 7)] \
             FROM system.numbers LIMIT 300000"
        ));
        let bounds = "d >= '2015-02-01'";
        let source = ch(&support::ch_url());
        let before = rt.block_on(stats(&source, &format!("{s}.trips"), Some(bounds)));
        let dir = tempfile::tempdir().unwrap();
        let plan = write_plan(
            dir.path(),
            &format!(
                r#"
[plan]
name = "crash-copy-{name}"
concurrency = 3
retries = 5
retry_backoff = "200ms"

[connections.src]
kind = "clickhouse"
url = "{}"

[connections.dst]
kind = "clickhouse"
url = "{target_url}"

[[tables]]
source = "src"
database = "{s}"
table = "trips"
lower = "{bounds}"
strategy = "copy"
target = "dst"
target_database = "{}"
"#,
                support::ch_url(),
                dst.name()
            ),
        );
        let killed = run_with_kills(&plan, 2000);
        eprintln!("copy {name}: {killed} run(s) killed mid-way");
        let target = ch(&target_url);
        let after = rt.block_on(stats(&target, &format!("{}.trips", dst.name()), None));
        assert_eq!(before, after, "copy {name}: no row lost or duplicated");
    }
}
