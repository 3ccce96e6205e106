//! MySQL (MariaDB in the test stack) as an `export` source, through the engine registry:
//! awkward values out as CSV and TSV, units by key ranges and by a partition
//! expression, every row back exactly once; verify catches a row changed in place; a
//! plan asking a mysql source for what it cannot do fails at validate, with its line.

mod support;

use std::path::Path;
use std::sync::Arc;

use flow::check::{load, LoadOptions};
use flow::engines::export::{verify_partition, ExportUnit, VerifyRequest};
use flow::engines::registry::{self, Engines};
use flow::engines::source::SourceRef;
use flow::engines::store::fs::FsStore;
use flow::graph::TaskKind;
use flow::plan::schema::ConnectionKind;
use flow::plan::{ExportFormat, Formatting, ServerSide};
use mysql_async::prelude::Queryable;
use tokio_util::sync::CancellationToken;

type Row = Vec<Option<Vec<u8>>>;

const TABLE: &str = "CREATE TABLE orders (
    id BIGINT PRIMARY KEY,
    created DATE NOT NULL,
    name VARCHAR(100) CHARACTER SET utf8mb4,
    latin VARCHAR(50) CHARACTER SET latin1,
    note TEXT CHARACTER SET utf8mb4,
    amount DECIMAL(14, 3),
    ratio DOUBLE,
    raw VARBINARY(20),
    ts DATETIME(3)
) ENGINE = InnoDB";

/// 1200 ordinary rows over 12 months, then rows with every awkward value.
async fn fill(pool: &mysql_async::Pool) -> u64 {
    let mut conn = pool.get_conn().await.unwrap();
    conn.query_drop(TABLE).await.unwrap();
    conn.query_drop("SET SESSION max_recursive_iterations = 100000")
        .await
        .unwrap();
    conn.query_drop(
        "INSERT INTO orders
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1200)
         SELECT i * 7, DATE_ADD('2024-01-01', INTERVAL (i % 12) MONTH), CONCAT('name ', i),
                'plain', REPEAT('x', i % 17), i * 1.125, i / 3, UNHEX(HEX(i)),
                TIMESTAMP('2024-01-01 00:00:00.250') + INTERVAL i SECOND
         FROM n",
    )
    .await
    .unwrap();
    conn.query_drop(
        r#"INSERT INTO orders VALUES
         (-5, '2024-03-04', 'quote " comma , newline
 end', 'café', 'back\\slash \\N tab	cr', -0.001, -1.5e300, X'00220A0D5C', '2024-03-04 05:06:07.008'),
         (9000000000000000000, '2024-03-05', NULL, NULL, NULL, NULL, NULL, NULL, NULL),
         (3, '2024-03-06', '', '', '', 0, 0, X'', '2024-03-06 00:00:00'),
         (4, '2024-03-07', '\\N', 'N', 'ñ 中 🚀', 99999999999.999, 1e-300, X'FF', NULL)"#,
    )
    .await
    .unwrap();
    // A string key with quotes, backslashes, spaces and non-ASCII: its chunk bounds are
    // literals flow writes back into SQL.
    conn.query_drop(
        "CREATE TABLE codes (code VARCHAR(40) CHARACTER SET utf8mb4 PRIMARY KEY, n INT) ENGINE = InnoDB",
    )
    .await
    .unwrap();
    conn.query_drop(
        r#"INSERT INTO codes
         WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500)
         SELECT CONCAT(ELT(1 + i % 5, 'a''b', 'c\d', 'e f', 'ж', 'Z'), LPAD(i, 4, '0')), i FROM n"#,
    )
    .await
    .unwrap();
    let n: u64 = conn
        .query_first("SELECT COUNT(*) FROM orders")
        .await
        .unwrap()
        .unwrap();
    n
}

/// Every row of a query as the text protocol sends it, sorted.
async fn source_rows(pool: &mysql_async::Pool, sql: &str) -> Vec<Row> {
    let mut conn = pool.get_conn().await.unwrap();
    let rows: Vec<mysql_async::Row> = conn.query(sql).await.unwrap();
    let mut out: Vec<Row> = rows
        .into_iter()
        .map(|r| {
            r.unwrap_raw()
                .into_iter()
                .map(|v| match v.unwrap() {
                    mysql_async::Value::NULL => None,
                    mysql_async::Value::Bytes(b) => Some(b),
                    other => panic!("text protocol sent {other:?}"),
                })
                .collect()
        })
        .collect();
    out.sort();
    out
}

/// Records of a CSVWithNames file: quoted fields with doubled quotes, bare fields, bare
/// `\N` = NULL. The header is returned apart.
fn parse_csv(bytes: &[u8]) -> (Vec<String>, Vec<Row>) {
    let mut records: Vec<Row> = Vec::new();
    let (mut record, mut field): (Row, Vec<u8>) = (Vec::new(), Vec::new());
    let (mut quoted, mut in_quotes, mut i) = (false, false, 0);
    let end_field = |record: &mut Row, field: &mut Vec<u8>, quoted: &mut bool| {
        let value = std::mem::take(field);
        record.push(if !*quoted && value == b"\\N" {
            None
        } else {
            Some(value)
        });
        *quoted = false;
    };
    while i < bytes.len() {
        let b = bytes[i];
        if in_quotes {
            if b == b'"' && bytes.get(i + 1) == Some(&b'"') {
                field.push(b'"');
                i += 1;
            } else if b == b'"' {
                in_quotes = false;
            } else {
                field.push(b);
            }
        } else {
            match b {
                b'"' => {
                    in_quotes = true;
                    quoted = true;
                }
                b',' => end_field(&mut record, &mut field, &mut quoted),
                b'\n' => {
                    end_field(&mut record, &mut field, &mut quoted);
                    records.push(std::mem::take(&mut record));
                }
                _ => field.push(b),
            }
        }
        i += 1;
    }
    assert!(
        field.is_empty() && record.is_empty(),
        "the file ends mid-record"
    );
    let header = records.remove(0);
    let names = header
        .into_iter()
        .map(|h| String::from_utf8(h.unwrap()).unwrap())
        .collect();
    (names, records)
}

/// Records of a TabSeparatedWithNames file (escapes undone, `\N` = NULL).
fn parse_tsv(bytes: &[u8]) -> (Vec<String>, Vec<Row>) {
    let mut lines: Vec<Row> = bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|line| {
            line.split(|b| *b == b'\t')
                .map(|f| {
                    if f == b"\\N" {
                        return None;
                    }
                    let mut out = Vec::new();
                    let mut it = f.iter();
                    while let Some(&b) = it.next() {
                        if b == b'\\' {
                            out.push(match it.next() {
                                Some(b't') => b'\t',
                                Some(b'n') => b'\n',
                                Some(b'r') => b'\r',
                                Some(b'0') => 0,
                                Some(&c) => c,
                                None => panic!("dangling backslash"),
                            });
                        } else {
                            out.push(b);
                        }
                    }
                    Some(out)
                })
                .collect()
        })
        .collect();
    let header = lines.remove(0);
    let names = header
        .into_iter()
        .map(|h| String::from_utf8(h.unwrap()).unwrap())
        .collect();
    (names, lines)
}

fn files_under(dir: &Path, ext: &str) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path, ext));
        } else if path.extension().is_some_and(|e| e == ext) {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn write_plan(dir: &Path, db: &support::MysqlDatabase, tables: &str) -> std::path::PathBuf {
    let url = support::mysql_url();
    let host = url.rsplit_once('@').unwrap().1;
    let plan = dir.join("mysql.toml");
    std::fs::write(
        &plan,
        format!(
            r#"[plan]
name = "mysql-export"
concurrency = 3
retries = 0

[connections.shop]
kind = "mysql"
url = "mysql://{host}/{db}"
user = "flow"
password = "${{env:FLOW_TEST_SHOP_PASSWORD}}"

[connections.out]
kind = "fs"
path = "out"
{tables}"#,
            db = db.name()
        ),
    )
    .unwrap();
    plan
}

fn flow(plan: &Path, args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flow"))
        .args(args)
        .arg(plan)
        .env("FLOW_TEST_SHOP_PASSWORD", "flow")
        .output()
        .unwrap();
    (out.status.success(), support::output_text(&out))
}

#[test]
fn a_mysql_table_exports_by_key_ranges_and_by_month_with_every_value_back_exactly_once() {
    support::block_on_thread(async {
        let db = support::MysqlDatabase::new("flow_my_export").await;
        let total = fill(db.pool()).await;
        let dir = tempfile::tempdir().unwrap();
        let plan = write_plan(
            dir.path(),
            &db,
            r#"
[[tables]]
name = "by-key"
source = "shop"
database = "DB"
table = "orders"
mode = "partition"
split_by = "id"
max_rows = 300
strategy = "export"
target = "out"
format = "csv"
settings = { verify_read_back = true }

[[tables]]
name = "by-month"
source = "shop"
database = "DB"
table = "orders"
partition_expr = "DATE_FORMAT(created, '%Y%m')"
lower = "created >= '2024-03-01'"
strategy = "export"
target = "out"
format = "tsv"

[[tables]]
name = "codes"
source = "shop"
database = "DB"
table = "codes"
mode = "partition"
split_by = "code"
max_rows = 60
strategy = "export"
target = "out"

[[tables]]
name = "query"
source = "shop"
database = "DB"
query = "SELECT id, name, `note` FROM orders WHERE amount > 1000 OR amount IS NULL;"
strategy = "export"
target = "out"
"#
            .replace("DB", db.name())
            .as_str(),
        );
        let (ok, out) = flow(&plan, &["apply", "--progress", "plain"]);
        assert!(ok, "{out}");

        // Key ranges: at least 5 chunks (1204 rows, 300 a chunk), every row once.
        let csv = files_under(&dir.path().join("out/by-key"), "csv");
        assert!(csv.len() >= 5, "{} chunk files: {csv:?}", csv.len());
        let mut exported = Vec::new();
        for f in &csv {
            let (names, rows) = parse_csv(&std::fs::read(f).unwrap());
            assert_eq!(names[0], "id");
            assert_eq!(names.len(), 9);
            exported.extend(rows);
        }
        exported.sort();
        let expected = source_rows(db.pool(), "SELECT * FROM orders").await;
        assert_eq!(expected.len() as u64, total);
        assert_eq!(exported.len(), expected.len(), "rows lost or duplicated");
        assert!(
            exported == expected,
            "a value differs between the source and the files"
        );

        // By month, within the bounds: one file a month, every row once.
        let tsv = files_under(&dir.path().join("out/by-month"), "tsv");
        assert_eq!(tsv.len(), 10, "{tsv:?}");
        assert!(
            tsv.iter().any(|p| p.to_string_lossy().contains("/202403/")),
            "{tsv:?}"
        );
        let mut months = Vec::new();
        for f in &tsv {
            months.extend(parse_tsv(&std::fs::read(f).unwrap()).1);
        }
        months.sort();
        let expected = source_rows(
            db.pool(),
            "SELECT * FROM orders WHERE created >= '2024-03-01'",
        )
        .await;
        assert!(
            months == expected,
            "{} rows exported, {} expected",
            months.len(),
            expected.len()
        );

        // String key ranges: every row once, however the bounds had to be quoted.
        let codes = files_under(&dir.path().join("out/codes"), "csv");
        assert!(codes.len() >= 8, "{codes:?}");
        let mut rows = Vec::new();
        for f in &codes {
            rows.extend(parse_csv(&std::fs::read(f).unwrap()).1);
        }
        rows.sort();
        let expected_codes = source_rows(db.pool(), "SELECT * FROM codes").await;
        assert_eq!(expected_codes.len(), 500);
        assert!(
            rows == expected_codes,
            "{} rows exported, 500 expected",
            rows.len()
        );

        // A query is one unit: a derived table, verified by its own checksum.
        let q = files_under(&dir.path().join("out/query"), "csv");
        assert_eq!(q.len(), 1, "{q:?}");
        let (names, mut rows) = parse_csv(&std::fs::read(&q[0]).unwrap());
        assert_eq!(names, ["id", "name", "note"]);
        rows.sort();
        let expected_q = source_rows(
            db.pool(),
            "SELECT id, name, note FROM orders WHERE amount > 1000 OR amount IS NULL",
        )
        .await;
        assert!(
            rows == expected_q,
            "{} rows, {} expected",
            rows.len(),
            expected_q.len()
        );

        // The manifests count what the source holds, and verify compared checksums.
        for (table, rows) in [("by-key", total), ("by-month", expected.len() as u64)] {
            let found = files_under(&dir.path().join("out").join(table), "json");
            assert_eq!(found.len(), 1, "one manifest: {found:?}");
            let manifest: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&found[0]).unwrap()).unwrap();
            assert_eq!(manifest["rows"], rows, "{table}");
            for p in manifest["partitions"].as_array().unwrap() {
                for f in p["files"].as_array().unwrap() {
                    assert!(f["source_checksum"].is_string(), "{f}");
                }
            }
        }
        assert!(out.contains("row checksum = source"), "{out}");

        // A resume with nothing changed runs nothing again.
        let (ok, again) = flow(&plan, &["apply", "--resume", "--progress", "plain"]);
        assert!(ok, "{again}");
        assert!(
            !again.contains("/export"),
            "a done export ran again: {again}"
        );
    });
}

#[test]
fn verify_finds_a_mysql_row_changed_in_place_after_its_export() {
    support::block_on_thread(async {
        let db = support::MysqlDatabase::new("flow_my_verify").await;
        fill(db.pool()).await;
        let dir = tempfile::tempdir().unwrap();
        let plan_path = write_plan(
            dir.path(),
            &db,
            &r#"
[[tables]]
name = "t"
source = "shop"
database = "DB"
table = "orders"
mode = "all"
strategy = "export"
target = "out"
"#
            .replace("DB", db.name()),
        );
        std::env::set_var("FLOW_TEST_SHOP_PASSWORD", "flow");
        let loaded = load(&plan_path, &LoadOptions::default()).unwrap();
        let plan = Arc::new(loaded.plan.expect("the plan is valid"));
        let templates = flow::templates::Templates::new(None).unwrap();
        let engines = Engines::new(plan.clone(), templates);
        // An export task's templates: the debug guard holds the test to them.
        let entry = registry::export_source(ConnectionKind::Mysql).unwrap();
        let source = engines
            .export_source("shop", (entry.templates)(TaskKind::Export))
            .unwrap();
        let store = FsStore::new(dir.path().join("out"));
        let from = source.sql_from(SourceRef::Table {
            database: db.name(),
            table: "orders",
        });
        let unit = ExportUnit {
            from: from.clone(),
            filter: None,
            key: "t/all/part.csv".into(),
            format: ExportFormat::Csv,
            server_side: ServerSide::Never,
            formatting: Formatting::default(),
            chunk: None,
        };
        let cancel = CancellationToken::new();
        let (file, _) = source.export_unit(&unit, &store, &cancel).await.unwrap();
        assert!(file.source_checksum.is_some());
        let partition = flow::graph::Partition {
            id: "all".into(),
            value: None,
            filter: None,
            rows: None,
            bytes: None,
            chunks: vec![],
        };
        let verify = |files| VerifyRequest {
            partition: &partition,
            from: &from,
            filter: None,
            format: ExportFormat::Csv,
            files,
            read_back: false,
        };
        verify_partition(source.as_ref(), &store, verify(vec![file.clone()]), &cancel)
            .await
            .expect("an unchanged source verifies");

        // Same count, one value changed: only the checksum can tell.
        let mut conn = db.pool().get_conn().await.unwrap();
        conn.query_drop("UPDATE orders SET note = 'changed' WHERE id = 7")
            .await
            .unwrap();
        let err = verify_partition(source.as_ref(), &store, verify(vec![file]), &cancel)
            .await
            .expect_err("a row changed in place must fail the verify");
        assert!(err.message.contains("row checksum"), "{}", err.message);
        assert!(!err.retryable);
    });
}

#[test]
fn a_plan_asking_a_mysql_source_for_what_it_cannot_do_fails_at_validate_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("bad.toml");
    std::fs::write(
        &plan,
        r#"[plan]
name = "bad"

[connections.shop]
kind = "mysql"
url = "mysql://127.0.0.1:3306/shop"

[connections.out]
kind = "fs"
path = "out"

[[tables]]
source = "shop"
database = "shop"
table = "orders"
partitions = ["202401"]
strategy = "export"
target = "out"
format = "parquet"
server_side = "always"
"#,
    )
    .unwrap();
    let (ok, out) = flow(&plan, &["validate"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("a mysql source cannot write format \"parquet\""),
        "{out}"
    );
    assert!(out.contains("format = \"csv\" or \"tsv\""), "{out}");
    assert!(
        out.contains("`partitions` is not available from a mysql source"),
        "{out}"
    );
    assert!(
        out.contains("`server_side` is not available from a mysql source"),
        "{out}"
    );
    assert!(
        out.contains("bad.toml:19"),
        "the format's line is named: {out}"
    );
}
