//! `--keep-going` on ClickHouse 18.16 of the test stack: the split of one table fails
//! (the table does not exist), the independent table is still exported and verified,
//! and the run exits 1 with both outcomes in the summary (a step after the failed
//! table is skipped, a step after the exported one runs). Without `--keep-going` the
//! summary counts the tasks that never started because of the failure.

mod support;

use std::process::Command;

fn plan(dir: &std::path::Path, db: &str) -> std::path::PathBuf {
    let plan = dir.join("plan.toml");
    std::fs::write(
        &plan,
        format!(
            r#"
[plan]
name = "keep-going"
concurrency = 2
retries = 0

[connections.ch]
kind = "clickhouse"
url = "{url}"

[connections.out]
kind = "fs"
path = "out"

[[tables]]
source = "ch"
database = "{db}"
table = "absent"
strategy = "export"
mode = "partition"
target = "out"

[[tables]]
source = "ch"
database = "{db}"
table = "present"
strategy = "export"
mode = "partition"
target = "out"
format = "tsv"

[[steps]]
id = "after-absent"
kind = "exec"
run = "true"
after = ["{db}.absent"]

[[steps]]
id = "after-present"
kind = "exec"
run = "true"
after = ["{db}.present"]
"#,
            url = support::ch_url(),
        ),
    )
    .unwrap();
    plan
}

fn apply(plan: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_flow"))
        .arg("apply")
        .arg(plan)
        .args(["--progress", "plain"])
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_failed_split_does_not_stop_independent_tables() {
    let db = support::ChDatabase::new(&support::ch_url(), "keepgoing");
    db.exec(&format!(
        "CREATE TABLE {}.present (d Date, x UInt32) ENGINE = MergeTree() PARTITION BY toYYYYMM(d) ORDER BY x",
        db.name()
    ));
    db.exec(&format!(
        "INSERT INTO {}.present SELECT toDate('2015-06-01') + number % 60, number FROM system.numbers LIMIT 1000",
        db.name()
    ));
    let dir = tempfile::tempdir().unwrap();
    let plan = plan(dir.path(), db.name());
    let absent_split = format!("{}.absent/split", db.name());
    let present = format!("{}.present", db.name());

    // Without --keep-going: the failure stops the run, and the summary says how many
    // tasks of the other table never started.
    let (code, stdout, stderr) = apply(&plan, &[]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("failed {absent_split}")),
        "{stdout}"
    );
    let line = stdout.lines().next().unwrap_or_default().to_string();
    assert!(line.contains("1 failed"), "{line}");
    assert!(
        !line.contains(" 0 not started"),
        "tasks that never started are counted: {line}"
    );
    assert!(
        !dir.path()
            .join(format!("out/{present}/_manifest.json"))
            .exists(),
        "nothing was exported without --keep-going"
    );

    // With --keep-going: the independent table is exported and verified.
    let (code, stdout, stderr) = apply(&plan, &["--restart", "--keep-going"]);
    assert_eq!(code, 1, "a failure still fails the run\n{stdout}\n{stderr}");
    let summary = stdout.lines().next().unwrap_or_default().to_string();
    assert!(summary.contains("1 failed"), "{summary}");
    assert!(
        summary.contains("7 done in this run") && summary.contains("1 skipped"),
        "the other table (split, 2 × export + verify, manifest) and its step ran; the step after the failed table is skipped: {summary}"
    );
    assert!(
        stdout.contains(&format!("failed {absent_split}")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("skipped 1 task(s) that depend on {absent_split}")),
        "{stdout}"
    );
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join(format!("out/{present}/_manifest.json"))).unwrap_or_else(
            |e| panic!("the independent table is exported ({e})\n{stdout}\n{stderr}"),
        ),
    )
    .unwrap();
    assert_eq!(manifest["rows"], 1000);
    assert_eq!(manifest["partitions"].as_array().unwrap().len(), 2);
    // The split failure is printed once on stderr as it happens, once in the summary.
    let mentions =
        stderr.matches("UNKNOWN_TABLE").count() + stderr.matches("doesn't exist").count();
    assert!(
        mentions <= 1,
        "the failure is printed once on stderr:\n{stderr}"
    );

    let status = Command::new(env!("CARGO_BIN_EXE_flow"))
        .args(["status", "--format", "json"])
        .arg(&plan)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let tasks = v["tasks"].as_array().cloned().unwrap_or_default();
    let status_of = |id: &str| {
        tasks
            .iter()
            .find(|t| t["id"] == id)
            .map(|t| t["status"].as_str().unwrap_or_default().to_string())
    };
    assert_eq!(status_of(&absent_split).as_deref(), Some("failed"), "{v:#}");
    assert_eq!(
        status_of(&format!("{present}/manifest")).as_deref(),
        Some("done"),
        "{v:#}"
    );
    assert_eq!(status_of("after-present").as_deref(), Some("done"), "{v:#}");
    assert_eq!(
        status_of("after-absent").as_deref(),
        Some("skipped"),
        "{v:#}"
    );
}
