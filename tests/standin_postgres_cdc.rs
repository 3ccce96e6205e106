//! Conformance suite of the stack's PostgreSQL for CDC (`scripts/services up pg
//! pgtarget`): logical decoding with wal2json through a replication slot, read by the
//! real `pg_recvlogical`, and a slot whose exported snapshot meets it exactly, with the
//! real `psql` on a `replication=database` connection (PostgreSQL 15 docs:
//! "Logical Decoding" 49.1 examples, protocol-replication CREATE_REPLICATION_SLOT …
//! (SNAPSHOT 'export'), SET TRANSACTION SNAPSHOT; ENGINES-NEXT.md 4.3).
//!
//! Each test works in its own database; its slots are dropped before the database.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

use serde_json::Value;
use support::{pg_bin, pg_url, psql, unique_name, PgDatabase};

// ------------------------------------------------------------------ helpers

/// A logical replication slot on `url`'s database, dropped on drop.
struct Slot {
    url: String,
    name: String,
}

impl Slot {
    /// `pg_recvlogical --create-slot` with wal2json.
    fn create(url: &str, prefix: &str) -> Slot {
        let name = unique_name(prefix);
        recvlogical(
            url,
            &["--create-slot", "--slot", &name, "--plugin", "wal2json"],
        );
        Slot {
            url: url.to_string(),
            name,
        }
    }

    /// The slot's changes up to `endpos`, as wal2json format-version 2 JSON lines.
    fn changes_until(&self, endpos: &str) -> Vec<Value> {
        let out = recvlogical(
            &self.url,
            &[
                "--start",
                "--slot",
                &self.name,
                "--endpos",
                endpos,
                "--no-loop",
                "--file",
                "-",
                "--option",
                "format-version=2",
                "--option",
                "include-lsn=1",
            ],
        );
        out.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("wal2json line {l:?}: {e}")))
            .collect()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let _ = Command::new(pg_bin().join("pg_recvlogical"))
            .args(["--drop-slot", "--slot", &self.name, "-d", &self.url])
            .output();
    }
}

fn recvlogical(url: &str, args: &[&str]) -> String {
    let out = Command::new(pg_bin().join("pg_recvlogical"))
        .args(args)
        .args(["-d", url])
        .output()
        .expect("pg_recvlogical should run (FLOW_TEST_PG_BIN)");
    assert!(
        out.status.success(),
        "pg_recvlogical {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The row changes (I/U/D) of `table` among wal2json v2 messages, without B/C markers.
fn row_changes<'a>(changes: &'a [Value], table: &str) -> Vec<&'a Value> {
    changes
        .iter()
        .filter(|c| matches!(c["action"].as_str(), Some("I" | "U" | "D")) && c["table"] == table)
        .collect()
}

/// Column `name` of a wal2json v2 `columns` or `identity` array.
fn column<'a>(cols: &'a Value, name: &str) -> &'a Value {
    cols.as_array()
        .and_then(|cols| cols.iter().find(|c| c["name"] == name))
        .map_or(&Value::Null, |c| &c["value"])
}

/// The end of the WAL inserted so far, once it is flushed. The stack runs with
/// `synchronous_commit=off`: a commit returns before its WAL is written, so
/// `pg_current_wal_lsn()` (the write position) can lie before the last commits, and a
/// walsender decodes only flushed WAL; a reader stopping at such an `--endpos` would
/// miss them.
fn current_lsn(url: &str) -> String {
    let lsn = psql(url, "SELECT pg_current_wal_insert_lsn()");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while psql(
        url,
        &format!("SELECT pg_current_wal_flush_lsn() >= '{lsn}'"),
    ) != "t"
    {
        assert!(
            std::time::Instant::now() < deadline,
            "WAL not flushed up to {lsn} after 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    lsn
}

// ------------------------------------------------------------------ the stack

#[test]
fn source_decodes_logically_and_the_target_is_another_cluster() {
    let source = pg_url();
    let target = support::env("FLOW_TEST_PG_TARGET_URL");
    assert_eq!(psql(&source, "SHOW wal_level"), "logical");
    assert_eq!(
        psql(&source, "SHOW server_version_num").get(..2),
        Some("15")
    );
    assert_eq!(
        psql(&target, "SHOW server_version_num").get(..2),
        Some("15")
    );
    let id = "SELECT system_identifier FROM pg_control_system()";
    assert_ne!(
        psql(&source, id),
        psql(&target, id),
        "FLOW_TEST_PG_TARGET_URL must be a second cluster, not the source"
    );
    let db = PgDatabase::new("cdc_probe");
    let slot = Slot::create(&db.url(), "probe");
    assert_eq!(
        psql(
            &db.url(),
            &format!(
                "SELECT plugin || ' ' || slot_type FROM pg_replication_slots WHERE slot_name = '{}'",
                slot.name
            )
        ),
        "wal2json logical"
    );
}

// ------------------------------------------------------------------ wal2json through a slot

#[test]
fn wal2json_insert_update_delete_arrive_through_a_slot() {
    let db = PgDatabase::new("cdc_w2j");
    let url = db.url();
    psql(
        &url,
        "CREATE TABLE users (id int PRIMARY KEY, name text, score numeric)",
    );
    let slot = Slot::create(&url, "w2j");

    psql(
        &url,
        "INSERT INTO users VALUES (1, 'ann', 1.5), (2, 'bob''s', NULL)",
    );
    psql(
        &url,
        "UPDATE users SET name = 'änn', score = 2 WHERE id = 1",
    );
    psql(&url, "DELETE FROM users WHERE id = 2");
    let end = current_lsn(&url);

    let changes = slot.changes_until(&end);
    let rows = row_changes(&changes, "users");
    let summary: Vec<(&str, i64)> = rows
        .iter()
        .map(|c| {
            let cols = if c["action"] == "D" {
                &c["identity"]
            } else {
                &c["columns"]
            };
            (
                c["action"].as_str().unwrap(),
                column(cols, "id").as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![("I", 1), ("I", 2), ("U", 1), ("D", 2)],
        "{changes:#?}"
    );

    assert_eq!(rows[0]["schema"], "public");
    assert_eq!(column(&rows[0]["columns"], "name"), "ann");
    assert_eq!(column(&rows[0]["columns"], "score"), 1.5);
    assert_eq!(column(&rows[1]["columns"], "name"), "bob's");
    assert_eq!(column(&rows[1]["columns"], "score"), &Value::Null);
    assert_eq!(column(&rows[2]["columns"], "name"), "änn");
    assert_eq!(
        column(&rows[2]["identity"], "id"),
        1,
        "an update names the key it changed"
    );
    assert!(
        rows.iter()
            .all(|c| c["lsn"].as_str().is_some_and(|l| l.contains('/'))),
        "include-lsn"
    );
    // one transaction per statement: B … C around each
    assert_eq!(changes.iter().filter(|c| c["action"] == "B").count(), 3);
    assert_eq!(changes.iter().filter(|c| c["action"] == "C").count(), 3);

    // The slot advanced: reading again to the same point returns nothing new.
    assert!(row_changes(&slot.changes_until(&end), "users").is_empty());
}

// ------------------------------------------------------------------ exported snapshot

/// `CREATE_REPLICATION_SLOT … (SNAPSHOT 'export')` on a replication connection held
/// open (the snapshot lives as long as that connection runs no other command).
struct ExportingSlot {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
}

impl ExportingSlot {
    /// (the connection, slot name, consistent point, snapshot name)
    fn create(url: &str, name: &str) -> (ExportingSlot, String, String) {
        let mut child = Command::new(pg_bin().join("psql"))
            .args(["-X", "-q", "-tA", "-v", "ON_ERROR_STOP=1", "-d"])
            .arg(format!("{url}?replication=database"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("psql should run");
        let mut stdin = child.stdin.take().unwrap();
        writeln!(
            stdin,
            "CREATE_REPLICATION_SLOT {name} LOGICAL wal2json (SNAPSHOT 'export');"
        )
        .unwrap();
        // stdin stays open: psql waits for the next command and the snapshot lives
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .expect("psql answers CREATE_REPLICATION_SLOT");
        let fields: Vec<&str> = line.trim().split('|').collect();
        assert_eq!(
            fields.len(),
            4,
            "slot_name|consistent_point|snapshot_name|output_plugin: {line:?}"
        );
        assert_eq!(fields[0], name);
        assert_eq!(fields[3], "wal2json");
        let (lsn, snapshot) = (fields[1].to_string(), fields[2].to_string());
        let conn = ExportingSlot {
            child,
            stdin: Some(stdin),
        };
        (conn, lsn, snapshot)
    }
}

impl Drop for ExportingSlot {
    fn drop(&mut self) {
        drop(self.stdin.take()); // end of input: psql disconnects
        let _ = self.child.wait();
    }
}

#[test]
fn slot_with_exported_snapshot_meets_the_snapshot_exactly() {
    let db = PgDatabase::new("cdc_snap");
    let url = db.url();
    psql(
        &url,
        "CREATE TABLE t (id int PRIMARY KEY, v text); \
         INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 1000) g",
    );
    let name = unique_name("snap");
    // declared first, dropped after the connection: the slot outlives it
    let slot = Slot {
        url: url.clone(),
        name: name.clone(),
    };
    let (conn, consistent_point, snapshot) = ExportingSlot::create(&url, &name);
    assert!(consistent_point.contains('/'), "{consistent_point}");

    // Changes after the slot's consistent point.
    psql(&url, "INSERT INTO t VALUES (1001, 'new')");
    psql(&url, "UPDATE t SET v = 'changed' WHERE id = 5");
    psql(&url, "DELETE FROM t WHERE id = 7");

    // The snapshot sees the table as it was at the consistent point …
    let seen = psql(
        &url,
        &format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '{snapshot}'; \
             SELECT count(*) || '|' || max(id) || '|' || (SELECT v FROM t WHERE id = 5) \
             || '|' || (SELECT count(*) FROM t WHERE id = 7) FROM t; COMMIT"
        ),
    );
    assert_eq!(
        seen, "1000|1000|v5|1",
        "the exported snapshot excludes every later change"
    );
    drop(conn); // the snapshot ends with its connection; the slot stays

    // … and the slot holds exactly the changes after it: no gap, no overlap.
    let changes = slot.changes_until(&current_lsn(&url));
    let rows = row_changes(&changes, "t");
    let summary: Vec<(&str, i64, Value)> = rows
        .iter()
        .map(|c| {
            let cols = if c["action"] == "D" {
                &c["identity"]
            } else {
                &c["columns"]
            };
            (
                c["action"].as_str().unwrap(),
                column(cols, "id").as_i64().unwrap(),
                column(cols, "v").clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("I", 1001, Value::from("new")),
            ("U", 5, Value::from("changed")),
            ("D", 7, Value::Null)
        ],
        "{changes:#?}"
    );
    let first = rows[0]["lsn"].as_str().unwrap();
    assert!(
        lsn_value(first) >= lsn_value(&consistent_point),
        "changes start at or after the consistent point {consistent_point}: {first}"
    );
}

/// An LSN `X/Y` as a number, to compare.
fn lsn_value(lsn: &str) -> u64 {
    let (hi, lo) = lsn.split_once('/').unwrap_or_else(|| panic!("LSN {lsn:?}"));
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}
