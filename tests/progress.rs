//! What `flow apply --progress plain` prints, against the test stack's ClickHouse: the
//! greppable event lines of both phases (the split, then the exports it led to), the
//! `progress` line saying the total grew when the split listed the partitions, and the
//! last `progress` line with the whole run's counts.

mod support;

use std::process::Command;

use support::ChDatabase;

#[test]
fn plain_progress_covers_the_split_and_the_exports_and_ends_with_a_summary() {
    let db = ChDatabase::new(&support::ch_url(), "progress");
    db.exec(&format!(
        "CREATE TABLE {}.t (id UInt64, d Date, s String) ENGINE = MergeTree \
         PARTITION BY toYYYYMM(d) ORDER BY id",
        db.name()
    ));
    // Three months, 10 rows each.
    db.exec(&format!(
        "INSERT INTO {}.t SELECT number, toDate('2015-06-01') + intDiv(number, 10) * 31, \
         concat('row', toString(number)) FROM system.numbers LIMIT 30",
        db.name()
    ));
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("progress.toml");
    std::fs::write(
        &plan,
        format!(
            r#"[plan]
name = "progress"
concurrency = 2

[connections.ch]
kind = "clickhouse"
url = "{url}"

[connections.out]
kind = "fs"
path = "out"

[[tables]]
source = "ch"
database = "{db}"
table = "t"
strategy = "export"
target = "out"
partition_expr = "toYYYYMM(d)"
"#,
            url = support::ch_url(),
            db = db.name(),
        ),
    )
    .unwrap();

    let out = Command::new(env!("CARGO_BIN_EXE_flow"))
        .args(["apply", "--progress", "plain"])
        .arg(&plan)
        .output()
        .expect("flow runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "apply failed:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    let table = format!("{}.t", db.name());
    let position = |what: &dyn Fn(&str) -> bool| lines.iter().position(|l| what(l));

    // Split phase, then the exports, each with its status words.
    let split_done = position(&|l: &str| l.starts_with(&format!("done {table}/split")))
        .unwrap_or_else(|| panic!("no split line:\n{stderr}"));
    assert!(
        lines[..split_done]
            .iter()
            .any(|l| l.starts_with(&format!("started {table}/split"))),
        "{stderr}"
    );
    let exports: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.starts_with(&format!("done {table}/")) && l.contains("/export"))
        .map(|(i, _)| i)
        .collect();
    assert_eq!(exports.len(), 3, "one export per month:\n{stderr}");
    assert!(exports.iter().all(|&i| i > split_done), "{stderr}");

    // The total grew when the split listed the partitions, and said so.
    let grew =
        position(&|l: &str| l.starts_with("progress ") && l.contains("listed the partitions"))
            .unwrap_or_else(|| panic!("no line saying the total grew:\n{stderr}"));
    assert!(split_done < grew && grew < exports[0], "{stderr}");
    assert!(lines[grew].starts_with("progress 1/"), "{}", lines[grew]);

    // The last progress line: every task finished, with the rows; never one progress
    // line per task.
    let progress: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| l.starts_with("progress "))
        .collect();
    let last = *progress.last().unwrap();
    let total: usize = last
        .strip_prefix("progress ")
        .and_then(|l| l.split_once(" tasks"))
        .and_then(|(counts, _)| counts.split_once('/'))
        .map(|(done, total)| {
            assert_eq!(done, total, "every task finished: {last}");
            total.parse().unwrap()
        })
        .unwrap_or_else(|| panic!("no counts in {last:?}"));
    let done_lines = lines.iter().filter(|l| l.starts_with("done ")).count();
    assert_eq!(
        total, done_lines,
        "the total counts every task run:\n{stderr}"
    );
    assert!(last.contains(" in ") && last.contains("30 rows"), "{last}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("plan `progress`: "),
        "the plan's summary follows:\n{stdout}"
    );
    assert!(progress.len() <= 4, "progress lines are bounded:\n{stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "no ANSI codes off a terminal:\n{stderr}"
    );
}
