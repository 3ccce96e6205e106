//! `flow apply` killed with SIGKILL at random moments, then `--resume`d, for the
//! s3-policy move and for copies: at the end every row is in the target exactly once
//! (same count and checksum as the source had), nothing is left half-done.

mod clickhouse_common;
mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clickhouse_common::{ch, stats, AWKWARD_COLUMNS, AWKWARD_VALUES};
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
    run_with_kills_then(plan, max_delay_ms, || {})
}

/// [`run_with_kills`], calling `before_final` before the runs that must finish.
fn run_with_kills_then(plan: &Path, max_delay_ms: u64, before_final: impl FnOnce()) -> usize {
    let mut before_final = Some(before_final);
    let mut killed = 0;
    let mut resume = false;
    for _ in 0..KILLS {
        let mut child = flow(plan, resume).spawn().expect("flow starts");
        resume = true;
        let delay = Duration::from_millis(fastrand::u64(100..max_delay_ms));
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
                if let Some(f) = before_final.take() {
                    f();
                }
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
    if let Some(f) = before_final.take() {
        f();
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

/// A plan moving `table` of `database` (or every table, `*`) to the `s3` policy, with
/// the seed's pace and retries, dropping the old table at the end.
fn s3_policy_plan(
    dir: &Path,
    name: &str,
    url: &str,
    database: &str,
    table: &str,
) -> std::path::PathBuf {
    write_plan(
        dir,
        &format!(
            r#"
[plan]
name = "{name}"
concurrency = 3
retries = 5
retry_backoff = "200ms"

[connections.ch]
kind = "clickhouse"
url = "{url}"
max_concurrency = 3
# The seed's insert interval; it also stretches the run so the kills land mid-way.
pause_between = "250ms"

[[tables]]
source = "ch"
database = "{database}"
table = "{table}"
strategy = "s3-policy"
storage_policy = "s3"
keep_old = false
"#
        ),
    )
}

/// `table` is on the `s3` policy and every active part with rows is on the S3 disk.
fn assert_on_s3(db: &support::ChDatabase, table: &str) {
    let d = db.name();
    assert_eq!(
        db.exec(&format!(
            "SELECT storage_policy FROM system.tables WHERE database = '{d}' AND name = '{table}'"
        ))
        .trim(),
        "s3",
        "{table}"
    );
    assert_eq!(
        db.exec(&format!(
            "SELECT groupUniqArray(disk_name) FROM system.parts WHERE database = '{d}' \
             AND table = '{table}' AND active AND rows > 0"
        ))
        .trim(),
        "['s3']",
        "{table}: every active part on the S3 disk"
    );
}

/// `events` and `expected` with the same 100,000 rows over 330 days from 2015-01-01.
fn create_events_and_expected(db: &support::ChDatabase) {
    let d = db.name();
    for t in ["events", "expected"] {
        db.exec(&format!(
            "CREATE TABLE {d}.{t} (id UInt64, d Date, s String) \
             ENGINE = MergeTree PARTITION BY toYYYYMM(d) ORDER BY id"
        ));
        db.exec(&format!(
            "INSERT INTO {d}.{t} SELECT number, toDate('2015-01-01') + number % 330, \
             toString(number) FROM numbers(100000)"
        ));
    }
}

/// How a live writer writes: `rows` rows a batch, a batch every `every`; batch `n`
/// dates its rows `day` days after 2015-01-01 (an expression of `{n}` and `number`).
struct Batches {
    rows: u64,
    every: Duration,
    day: &'static str,
}

/// Writes batches into `events`, then the same into `expected` (so a row in `expected`
/// is always in `events` too), until `stop`. Returns the number of batches written.
fn live_writer(
    url: &str,
    d: &str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    batches: Batches,
) -> std::thread::JoinHandle<u64> {
    let (url, d) = (url.to_string(), d.to_string());
    std::thread::spawn(move || {
        let mut n = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let select = format!(
                "SELECT {} + number, toDate('2015-01-01') + {}, 'live' FROM numbers({})",
                1_000_000 + n * batches.rows,
                batches.day.replace("{n}", &n.to_string()),
                batches.rows
            );
            for t in ["events", "expected"] {
                support::ch_exec(&url, &format!("INSERT INTO {d}.{t} {select}"));
            }
            n += 1;
            std::thread::sleep(batches.every);
        }
        n
    })
}

/// A plan moving `events` of `database` with the seed's pace and generous retries, for
/// the runs with rows arriving; `table_keys` are the entry's strategy keys.
fn live_plan(
    dir: &Path,
    name: &str,
    url: &str,
    database: &str,
    table_keys: &str,
) -> std::path::PathBuf {
    write_plan(
        dir,
        &format!(
            r#"
[plan]
name = "{name}"
concurrency = 3
retries = 8
retry_backoff = "300ms"

[connections.ch]
kind = "clickhouse"
url = "{url}"
pause_between = "250ms"

[[tables]]
source = "ch"
database = "{database}"
table = "events"
strategy = "s3-policy"
{table_keys}
"#
        ),
    )
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
    let plan = s3_policy_plan(dir.path(), "crash-policy", &url, d, "events");
    let killed = run_with_kills(&plan, 3000);
    assert!(killed >= 3, "only {killed} run(s) were killed mid-way");
    eprintln!("s3-policy: {killed} run(s) killed mid-way");
    let after = rt.block_on(stats(&engine, &format!("{d}.events"), None));
    assert_eq!(before, after, "no row lost or duplicated");
    assert_on_s3(&db, "events");
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
pause_between = "300ms"

[connections.dst]
kind = "clickhouse"
url = "{target_url}"
pause_between = "300ms"

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
        let killed = run_with_kills(&plan, 1500);
        assert!(
            killed >= 3,
            "copy {name}: only {killed} run(s) were killed mid-way"
        );
        eprintln!("copy {name}: {killed} run(s) killed mid-way");
        let target = ch(&target_url);
        let after = rt.block_on(stats(&target, &format!("{}.trips", dst.name()), None));
        assert_eq!(before, after, "copy {name}: no row lost or duplicated");
    }
}

#[test]
fn s3_policy_with_rows_arriving_survives_sigkill() {
    // Rows keep arriving in the hot months above `upper` while flow is killed and
    // resumed; the per-partition phase moves the bounded months, the catch-up and the
    // swap move the hot ones. Every row written anywhere is also written into
    // `expected`; at the end the moved table must equal it.
    let url = support::chdb_url();
    let db = support::ChDatabase::new(&url, "crashlive");
    let d = db.name().to_string();
    create_events_and_expected(&db);
    let dir = tempfile::tempdir().unwrap();
    let plan = live_plan(
        dir.path(),
        "crash-live",
        &url,
        &d,
        "upper = \"d < '2015-10-01'\"\nstorage_policy = \"s3\"\nkeep_old = false",
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Into the hot months from 2015-10-01 (day 273) on.
    let writer = live_writer(
        &url,
        &d,
        stop.clone(),
        Batches {
            rows: 20,
            every: Duration::from_millis(50),
            day: "273 + ({n} + number) % 90",
        },
    );
    let killed = run_with_kills_then(&plan, 2500, || {
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let batches = writer.join().unwrap();
    eprintln!(
        "live s3-policy: {killed} run(s) killed mid-way, {batches} batches written meanwhile"
    );
    assert!(batches > 10);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let engine = ch(&url);
    let moved = rt.block_on(stats(&engine, &format!("{d}.events"), None));
    let expected = rt.block_on(stats(&engine, &format!("{d}.expected"), None));
    assert_eq!(
        moved, expected,
        "every row, once, including those written during the move"
    );
    assert_eq!(
        db.exec(&format!(
            "SELECT groupUniqArray(disk_name) FROM system.parts WHERE database = '{d}' AND table = 'events' AND active AND rows > 0"
        ))
        .trim(),
        "['s3']"
    );
}

#[test]
fn s3_policy_whole_database_survives_sigkill_at_random_moments() {
    // `table = "*"`: the tables are listed anew by every run, so a kill can land while
    // one table is half moved, another swapped but not cleaned up, a third untouched.
    let url = support::chdb_url();
    let db = support::ChDatabase::new(&url, "crashwhole");
    let d = db.name();
    // Monthly partitions, several parts each.
    db.exec(&format!(
        "CREATE TABLE {d}.events (id UInt64, d Date, s String, n Nullable(Int32)) \
         ENGINE = MergeTree PARTITION BY toYYYYMM(d) ORDER BY id"
    ));
    for start in [0, 60000] {
        db.exec(&format!(
            "INSERT INTO {d}.events SELECT {start} + number, toDate('2015-01-01') + number % 240, \
             concat('row \"', toString(number), '\",\\n'), if(number % 4 = 0, NULL, toInt32(number)) \
             FROM numbers(60000)"
        ));
    }
    // A tuple partition key and awkward values.
    db.exec(&format!(
        "CREATE TABLE {d}.sessions ({AWKWARD_COLUMNS}) ENGINE = MergeTree \
         PARTITION BY (toYYYYMM(d), k) ORDER BY (k, id)"
    ));
    db.exec(&format!(
        "INSERT INTO {d}.sessions SELECT * FROM values('{AWKWARD_COLUMNS}', {})",
        AWKWARD_VALUES.trim().replace('\n', " ")
    ));
    db.exec(&format!(
        "INSERT INTO {d}.sessions SELECT number + 100, toDate('2015-06-01') + number % 120, \
         toDateTime('2015-06-01 00:00:00') + number, if(number % 3 = 0, 'eu', 'us'), toString(number), \
         if(number % 5 = 0, NULL, toInt32(number)), NULL, toDecimal64(number, 4) / 7, \
         [toString(number % 9)], [toInt32(number % 11)] FROM numbers(60000)"
    ));
    // Unpartitioned: one partition, `all`.
    db.exec(&format!(
        "CREATE TABLE {d}.totals (k String, x UInt64, a Array(UInt32)) ENGINE = MergeTree ORDER BY k"
    ));
    db.exec(&format!(
        "INSERT INTO {d}.totals SELECT concat('k', toString(number)), number * 3, [number % 7, number % 13] \
         FROM numbers(40000)"
    ));
    // Not a MergeTree: not listed, not moved, untouched.
    db.exec(&format!(
        "CREATE TABLE {d}.lookup (k String, v UInt32) ENGINE = Memory"
    ));
    db.exec(&format!(
        "INSERT INTO {d}.lookup SELECT toString(number), number FROM numbers(10)"
    ));
    let moved = ["events", "sessions", "totals"];
    let rt = tokio::runtime::Runtime::new().unwrap();
    let engine = ch(&url);
    let before: Vec<Stats> = moved
        .iter()
        .chain(&["lookup"])
        .map(|t| rt.block_on(stats(&engine, &format!("{d}.{t}"), None)))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let plan = s3_policy_plan(dir.path(), "crash-whole", &url, d, "*");
    let killed = run_with_kills(&plan, 5000);
    assert!(killed >= 3, "only {killed} run(s) were killed mid-way");
    eprintln!("whole-database s3-policy: {killed} run(s) killed mid-way");
    for (t, before) in moved.iter().chain(&["lookup"]).zip(&before) {
        let after = rt.block_on(stats(&engine, &format!("{d}.{t}"), None));
        assert_eq!(*before, after, "{t}: no row lost or duplicated");
    }
    for t in moved {
        assert_on_s3(&db, t);
    }
    assert_eq!(
        db.exec(&format!(
            "SELECT engine FROM system.tables WHERE database = '{d}' AND name = 'lookup'"
        ))
        .trim(),
        "Memory"
    );
    assert_eq!(
        db.exec(&format!(
            "SELECT groupArray(name) FROM (SELECT name FROM system.tables WHERE database = '{d}' ORDER BY name)"
        ))
        .trim(),
        "['events','lookup','sessions','totals']",
        "no helper table left"
    );
}

#[test]
fn the_shipped_s3_policy_plan_moves_a_live_table_without_upper() {
    // `plans/s3-policy-table.toml` as shipped (no `upper`), on a table that takes rows in
    // every partition, loaded or not, for the whole run: a partition written to after
    // its load is frozen and re-loaded, rows written after that are caught up, and the
    // run ends once, successfully, with every row moved exactly once.
    let url = support::chdb_url();
    let db = support::ChDatabase::new(&url, "livenoupper");
    let d = db.name().to_string();
    for t in ["events", "expected"] {
        db.exec(&format!(
            "CREATE TABLE {d}.{t} (id UInt64, d Date, s String) \
             ENGINE = MergeTree PARTITION BY toYYYYMM(d) ORDER BY id"
        ));
        db.exec(&format!(
            "INSERT INTO {d}.{t} SELECT number, toDate('2015-01-01') + number % 180, toString(number) \
             FROM numbers(60000)"
        ));
    }
    let shipped = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/plans/s3-policy-table.toml"
    ))
    .unwrap();
    assert!(!shipped.contains("upper"), "the shipped plan has no bound");
    let dir = tempfile::tempdir().unwrap();
    let plan = write_plan(
        dir.path(),
        &shipped.replace("database = \"default\"", &format!("database = \"{d}\"")),
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Every month of the table, and one it did not have before.
    let writer = live_writer(
        &url,
        &d,
        stop.clone(),
        Batches {
            rows: 5,
            every: Duration::from_millis(40),
            day: "({n} * 37 + number * 11) % 200",
        },
    );
    let out = Command::new(env!("CARGO_BIN_EXE_flow"))
        .arg("apply")
        .arg(&plan)
        .args(["--progress", "quiet"])
        .env("FLOW_CHDB_URL", &url)
        .output()
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let batches = writer.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "one run, no resume: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(batches > 20, "rows kept arriving ({batches} batches)");
    // The kept old table gave every partition away, and rows of an insert that raced
    // the swap into it were moved by the swap's own pass: nothing is left behind.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let engine = ch(&url);
    let old = rt.block_on(stats(&engine, &format!("{d}.events__flow_new"), None));
    let moved = rt.block_on(stats(&engine, &format!("{d}.events"), None));
    let expected = rt.block_on(stats(&engine, &format!("{d}.expected"), None));
    assert_eq!(
        moved, expected,
        "every row once, those written during the move too"
    );
    assert_eq!(old.rows, 0, "nothing left in the kept old table");
    assert_on_s3(&db, "events");
}

#[test]
fn s3_policy_in_place_with_rows_arriving_survives_sigkill() {
    // The server moves the parts to volume `cold` of policy `tiered` while rows keep
    // arriving in every month and flow is killed and resumed. At the end the table
    // equals `expected` (into which every row is also written), every row that was
    // there before the move is on S3, and no FREEZE backup is left.
    let url = support::chdb_url();
    let db = support::ChDatabase::new(&url, "crashtier");
    let d = db.name().to_string();
    create_events_and_expected(&db);
    let dir = tempfile::tempdir().unwrap();
    let plan = live_plan(
        dir.path(),
        "crash-tier",
        &url,
        &d,
        "storage_policy = \"tiered\"\nsettings = { to_volume = \"cold\" }",
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // Into every month.
    let writer = live_writer(
        &url,
        &d,
        stop.clone(),
        Batches {
            rows: 20,
            every: Duration::from_millis(50),
            day: "({n} * 7 + number) % 330",
        },
    );
    let killed = run_with_kills_then(&plan, 2500, || {
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let batches = writer.join().unwrap();
    eprintln!("in-place s3-policy: {killed} run(s) killed mid-way, {batches} batches written");
    assert!(batches > 10);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let engine = ch(&url);
    let moved = rt.block_on(stats(&engine, &format!("{d}.events"), None));
    let expected = rt.block_on(stats(&engine, &format!("{d}.expected"), None));
    assert_eq!(
        moved, expected,
        "every row, once, including those written during the move"
    );
    assert_eq!(
        db.exec(&format!(
            "SELECT storage_policy FROM system.tables WHERE database = '{d}' AND name = 'events'"
        ))
        .trim(),
        "tiered"
    );
    let on_s3: u64 = db
        .exec(&format!(
            "SELECT sum(rows) FROM system.parts WHERE database = '{d}' AND table = 'events' \
             AND active AND disk_name = 's3'"
        ))
        .trim()
        .parse()
        .unwrap();
    assert!(
        on_s3 >= 100_000,
        "the rows there before the move are on S3: {on_s3}"
    );
    let ids: Vec<String> = db
        .exec(&format!(
            "SELECT DISTINCT partition_id FROM system.parts WHERE database = '{d}' AND table = 'events' FORMAT TSV"
        ))
        .lines()
        .map(str::to_string)
        .collect();
    let m = flow::engines::clickhouse::tier_move::TierMove {
        ch: engine,
        database: d.clone(),
        table: "events".into(),
        policy: "tiered".into(),
        volume: "cold".into(),
        holder: "crash-tier".into(),
    };
    let disks = db.exec("SELECT path FROM system.disks FORMAT TSV");
    assert_eq!(
        clickhouse_common::kept_parts(&disks, &clickhouse_common::backup_names(&m, &ids)),
        0,
        "no FREEZE backup is left"
    );
    assert_eq!(
        db.exec(&format!(
            "SELECT groupArray(name) FROM system.tables WHERE database = '{d}' AND name LIKE 'events\\_\\_flow%'"
        ))
        .trim(),
        "[]",
        "no lock is left"
    );
}
