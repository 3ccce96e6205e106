//! Conformance suite of the StarRocks stand-in (support/starrocks_standin/, built on
//! mysql-mimic, chdb and moto S3), the test double that flow's StarRocks engine is tested
//! against because no StarRocks server can run on the test machines.
//!
//! Why: the stand-in is only useful if it behaves like StarRocks where a migration
//! tool's correctness depends on it. Each test drives it with real clients — mysql_async
//! (what flow uses), the `mariadb` command-line client and `curl` for Stream Load — and
//! asserts one documented behaviour: the catalog and SHOW output, EXPORT's states and
//! its temporary directory, Broker Load's states and its one transaction, labels and
//! their retention, FILES(), Stream Load's redirect and statuses, and every injected
//! fault. Exported and loaded data is checked on S3 (moto) with aws-sdk-s3.
//!
//! Tests that change instance-wide state (FE config, faults) hold [`exclusive`] access
//! to the stand-in; the others hold [`shared`] access and work in their own database.
//! The lock is a file lock, so it also holds across processes (nextest runs each test
//! in its own).
//! "Real StarRocks" stays an open check: these tests pin the stand-in to the docs.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts};

/// A lock on the stand-in clusters, released on drop.
struct StandinLock {
    _file: std::fs::File,
}

fn lock_file() -> std::fs::File {
    let path = std::path::Path::new(&support::env("FLOW_RUN_DIR")).join("starrocks/tests.lock");
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// Shared access: the test changes nothing instance-wide.
fn shared() -> StandinLock {
    let f = lock_file();
    f.lock_shared().expect("shared lock on the stand-in");
    StandinLock { _file: f }
}

/// Exclusive access: the test changes FE config or injects faults.
fn exclusive() -> StandinLock {
    let f = lock_file();
    f.lock().expect("exclusive lock on the stand-in");
    StandinLock { _file: f }
}

type Rows = Vec<Vec<Option<String>>>;

/// One stand-in cluster ("source" or "target").
#[derive(Clone)]
struct Sr {
    url: String,
    http: String,
    port: String,
}

fn source() -> Sr {
    instance("SOURCE")
}

fn target() -> Sr {
    instance("TARGET")
}

fn instance(which: &str) -> Sr {
    let url = support::env(&format!("FLOW_TEST_SR_{which}"));
    let port = url
        .rsplit(':')
        .next()
        .expect("FLOW_TEST_SR_* should be mysql://127.0.0.1:PORT")
        .to_string();
    Sr {
        url: url.replacen("mysql://", "mysql://root@", 1),
        http: support::env(&format!("FLOW_TEST_SR_{which}_HTTP")),
        port,
    }
}

impl Sr {
    async fn conn(&self) -> Conn {
        let opts = Opts::from_url(&self.url).expect("a valid mysql URL");
        Conn::new(opts).await.unwrap_or_else(|e| {
            panic!(
                "mysql_async connect to the StarRocks stand-in {}: {e}",
                self.url
            )
        })
    }

    /// Runs `sql` with the mariadb client; Ok(stdout) or Err(stderr).
    fn mariadb(&self, sql: &str) -> Result<String, String> {
        let out = Command::new("mariadb")
            .args([
                "--no-defaults",
                "--protocol=tcp",
                "-h",
                "127.0.0.1",
                "-P",
                &self.port,
            ])
            .args(["-uroot", "--skip-ssl", "-N", "-B", "-e", sql])
            .output()
            .expect("the mariadb client should run (apt: mariadb-client)");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    /// POST a fault to the FE's admin endpoint ($FLOW_TEST_SR_ADMIN).
    fn fault(&self, name: &str, query: &str) -> String {
        let admin = support::env("FLOW_TEST_SR_ADMIN");
        let url = format!("{}{admin}/{name}{query}", self.http);
        let out = curl(&["-sS", "-f", "-X", "POST", &url]);
        assert!(out.contains("\"status\": \"OK\""), "fault {name}: {out}");
        out
    }
}

fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(args)
        .output()
        .expect("curl should run");
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn exec(conn: &mut Conn, sql: &str) {
    conn.query_drop(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn try_exec(conn: &mut Conn, sql: &str) -> Result<(), String> {
    conn.query_drop(sql).await.map_err(|e| e.to_string())
}

/// Column names and rows (as text, NULL as None) of a statement.
async fn query(conn: &mut Conn, sql: &str) -> (Vec<String>, Rows) {
    let mut result = conn
        .query_iter(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let columns = result
        .columns()
        .map(|c| c.iter().map(|c| c.name_str().into_owned()).collect())
        .unwrap_or_default();
    let rows: Vec<mysql_async::Row> = result.collect().await.expect("rows");
    let rows = rows
        .into_iter()
        .map(|r| {
            (0..r.len())
                .map(|i| r.get::<Option<String>, _>(i).flatten())
                .collect()
        })
        .collect();
    (columns, rows)
}

async fn rows(conn: &mut Conn, sql: &str) -> Rows {
    query(conn, sql).await.1
}

async fn one(conn: &mut Conn, sql: &str) -> Option<String> {
    let r = rows(conn, sql).await;
    assert_eq!(r.len(), 1, "{sql} should give one row: {r:?}");
    r[0][0].clone()
}

/// The value of column `col` in the single row of `sql`.
async fn field(conn: &mut Conn, sql: &str, col: &str) -> Option<String> {
    let (cols, r) = query(conn, sql).await;
    let i = cols
        .iter()
        .position(|c| c == col)
        .unwrap_or_else(|| panic!("{sql}: no column {col} in {cols:?}"));
    assert_eq!(r.len(), 1, "{sql} should give one row: {r:?}");
    r[0][i].clone()
}

/// A database of its own on a stand-in cluster, dropped on drop.
struct SrDb {
    sr: Sr,
    name: String,
}

impl SrDb {
    async fn new(sr: &Sr, prefix: &str) -> Self {
        let name = support::unique_name(prefix);
        let mut c = sr.conn().await;
        exec(&mut c, &format!("CREATE DATABASE {name}")).await;
        SrDb {
            sr: sr.clone(),
            name,
        }
    }

    /// A connection whose current database is this one.
    async fn conn(&self) -> Conn {
        let mut c = self.sr.conn().await;
        exec(&mut c, &format!("USE {}", self.name)).await;
        c
    }
}

impl Drop for SrDb {
    fn drop(&mut self) {
        let _ = self
            .sr
            .mariadb(&format!("DROP DATABASE IF EXISTS {}", self.name));
    }
}

/// Polls `sql` every 10 ms until `col` of its single row satisfies `done`; returns
/// the distinct values seen, in order.
async fn watch(conn: &mut Conn, sql: &str, col: &str, done: impl Fn(&str) -> bool) -> Vec<String> {
    let start = Instant::now();
    let mut seen: Vec<String> = Vec::new();
    loop {
        let v = field(conn, sql, col).await.unwrap_or_default();
        if seen.last() != Some(&v) {
            seen.push(v.clone());
        }
        if done(&v) {
            return seen;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{sql}: {col} never reached the end; seen {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `seen` follows `order` (each state after the previous one, none unknown) and ends
/// with its last state. Held states are checked where a fault or limit holds them.
fn assert_ordered(seen: &[String], order: &[&str]) {
    let pos: Vec<usize> =
        seen.iter()
            .map(|s| {
                order.iter().position(|o| o == s).unwrap_or_else(|| {
                    panic!("state {s:?} is not one of {order:?} (seen {seen:?})")
                })
            })
            .collect();
    assert!(
        pos.windows(2).all(|w| w[0] < w[1]),
        "out of order: {seen:?}"
    );
    assert_eq!(
        seen.last().map(String::as_str),
        order.last().copied(),
        "{seen:?}"
    );
}

fn is_final(s: &str) -> bool {
    s == "FINISHED" || s == "CANCELLED"
}

async fn put_object(bucket: &support::S3Bucket, key: &str, body: &str) {
    bucket
        .client()
        .put_object()
        .bucket(bucket.name())
        .key(key)
        .body(body.as_bytes().to_vec().into())
        .send()
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
}

async fn list(bucket: &support::S3Bucket, prefix: &str) -> Vec<String> {
    let out = bucket
        .client()
        .list_objects_v2()
        .bucket(bucket.name())
        .prefix(prefix)
        .send()
        .await
        .expect("list objects");
    let mut keys: Vec<String> = out
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect();
    keys.sort();
    keys
}

async fn get_object(bucket: &support::S3Bucket, key: &str) -> String {
    let out = bucket
        .client()
        .get_object()
        .bucket(bucket.name())
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("get {key}: {e:?}"));
    let bytes = out.body.collect().await.expect("body").into_bytes();
    String::from_utf8(bytes.to_vec()).expect("utf-8")
}

/// `WITH BROKER (...)` properties for the test stack's S3 (moto).
fn broker() -> String {
    format!(
        "WITH BROKER (\"aws.s3.endpoint\" = \"{}\", \"aws.s3.access_key\" = \"test\", \
         \"aws.s3.secret_key\" = \"test\", \"aws.s3.region\" = \"us-east-1\")",
        support::s3_endpoint()
    )
}

const SALES: &str = "CREATE TABLE sales (id BIGINT NOT NULL, d DATE NOT NULL, city VARCHAR(32) NULL, \
     amt DECIMAL(10, 2) NULL) DUPLICATE KEY(id) \
     PARTITION BY RANGE(d) (PARTITION p202401 VALUES [(\"2024-01-01\"), (\"2024-02-01\")), \
     PARTITION p202402 VALUES LESS THAN (\"2024-03-01\"), PARTITION p202403 VALUES LESS THAN (\"2024-04-01\")) \
     DISTRIBUTED BY HASH(id) BUCKETS 3 PROPERTIES (\"replication_num\" = \"1\")";

const SALES_ROWS: &str = "INSERT INTO sales VALUES (1, '2024-01-05', 'Oslo', 1.50), \
     (2, '2024-01-20', NULL, 2), (3, '2024-02-07', 'Lima', 3.25), (4, '2024-03-09', 'a,b', 4)";

// ------------------------------------------------------------------ clients, catalog

#[tokio::test]
async fn standin_starrocks_answers_mysql_async_and_the_mariadb_client() {
    let _g = shared();
    let sr = source();
    let mut c = sr.conn().await;
    // version(): the MySQL-compatible version (5.1.0 on StarRocks); current_version()
    // the StarRocks version the stand-in is configured as.
    assert_eq!(
        one(&mut c, "SELECT VERSION()").await.as_deref(),
        Some("5.1.0")
    );
    let version = one(&mut c, "SELECT current_version()").await.unwrap();
    assert!(version.starts_with("3.3.2"), "{version}");
    let comment = one(&mut c, "SELECT @@version_comment").await.unwrap();
    assert!(comment.contains("stand-in"), "{comment}");
    let out = sr.mariadb("SELECT current_version()").unwrap();
    assert_eq!(out.trim(), version);
    // prepared statements (binary protocol), as mysql_async's exec sends them
    let db0 = SrDb::new(&sr, "sr_prepared").await;
    let mut p = db0.conn().await;
    exec(&mut p, SALES).await;
    p.exec_drop(
        "INSERT INTO sales WITH LABEL prep1 VALUES (?, ?, ?, ?)",
        (7_i64, "2024-01-02", "Oslo", "1.25"),
    )
    .await
    .expect("exec INSERT with parameters");
    let got: Option<(i64, String, Option<String>, f64, String)> = p
        .exec_first(
            "SELECT id, city, NULL AS n, CAST(amt AS DOUBLE) AS a, CAST(d AS String) FROM sales WHERE id = ?",
            (7_i64,),
        )
        .await
        .expect("exec SELECT with a parameter");
    assert_eq!(
        got,
        Some((7, "Oslo".to_string(), None, 1.25, "2024-01-02".to_string()))
    );
    let state: Option<String> = p
        .exec_first("SHOW LOAD WHERE LABEL = ?", ("prep1",))
        .await
        .map(|r: Option<mysql_async::Row>| r.and_then(|r| r.get::<String, _>(2)))
        .expect("exec SHOW LOAD with a parameter");
    assert_eq!(state.as_deref(), Some("FINISHED"));

    let err = sr.mariadb("SELEC 1").unwrap_err();
    assert!(err.contains("ERROR"), "{err}");
    // a second cluster with its own catalog
    let db = SrDb::new(&source(), "sr_only_src").await;
    let mut t = target().conn().await;
    let e = try_exec(&mut t, &format!("USE {}", db.name)).await;
    let (_, dbs) = query(&mut t, "SHOW DATABASES").await;
    assert!(
        !dbs.iter()
            .any(|r| r[0].as_deref() == Some(db.name.as_str())),
        "target sees the source's database ({e:?})"
    );
}

#[tokio::test]
async fn standin_starrocks_show_partitions_versions_create_table_and_swap() {
    let _g = shared();
    let db = SrDb::new(&source(), "sr_catalog").await;
    let mut c = db.conn().await;
    exec(&mut c, SALES).await;
    let (cols, parts) = query(&mut c, "SHOW PARTITIONS FROM sales").await;
    assert_eq!(
        cols,
        [
            "PartitionId",
            "PartitionName",
            "VisibleVersion",
            "VisibleVersionTime",
            "VisibleVersionHash",
            "State",
            "PartitionKey",
            "Range",
            "DistributionKey",
            "Buckets",
            "ReplicationNum",
            "StorageMedium",
            "CooldownTime",
            "LastConsistencyCheckTime",
            "DataSize",
            "IsInMemory",
            "RowCount"
        ]
    );
    let col = |name: &str| cols.iter().position(|c| c == name).unwrap();
    let names: Vec<_> = parts
        .iter()
        .map(|r| r[col("PartitionName")].clone().unwrap())
        .collect();
    assert_eq!(names, ["p202401", "p202402", "p202403"]);
    assert_eq!(
        parts[0][col("Range")].as_deref(),
        Some("[types: [DATE]; keys: [2024-01-01]; ..types: [DATE]; keys: [2024-02-01]; )")
    );
    // a LESS THAN partition starts where the previous one ends
    assert_eq!(
        parts[1][col("Range")].as_deref(),
        Some("[types: [DATE]; keys: [2024-02-01]; ..types: [DATE]; keys: [2024-03-01]; )")
    );
    assert!(parts
        .iter()
        .all(|r| r[col("VisibleVersion")].as_deref() == Some("1")));

    exec(&mut c, SALES_ROWS).await;
    exec(
        &mut c,
        "INSERT INTO sales VALUES (5, '2024-02-10', 'Rome', 5)",
    )
    .await;
    let (_, parts) = query(&mut c, "SHOW PARTITIONS FROM sales").await;
    let versions: Vec<_> = parts
        .iter()
        .map(|r| r[col("VisibleVersion")].clone().unwrap())
        .collect();
    let counts: Vec<_> = parts
        .iter()
        .map(|r| r[col("RowCount")].clone().unwrap())
        .collect();
    assert_eq!(
        versions,
        ["2", "3", "2"],
        "one version per load that touched the partition"
    );
    assert_eq!(counts, ["2", "2", "1"]);
    let where_ = field(
        &mut c,
        "SHOW PARTITIONS FROM sales WHERE PartitionName = \"p202402\"",
        "RowCount",
    )
    .await;
    assert_eq!(where_.as_deref(), Some("2"));
    assert_eq!(
        one(
            &mut c,
            "SELECT count(*) FROM sales PARTITION (p202401, p202403)"
        )
        .await
        .as_deref(),
        Some("3")
    );
    // DESCRIBE and information_schema come from the catalog
    let desc = rows(&mut c, "DESCRIBE sales").await;
    let fields: Vec<_> = desc.iter().map(|r| r[0].clone().unwrap()).collect();
    assert_eq!(fields, ["id", "d", "city", "amt"]);
    let tables = rows(
        &mut c,
        &format!(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = '{}'",
            db.name
        ),
    )
    .await;
    assert_eq!(tables, vec![vec![Some("sales".to_string())]]);

    // a row outside every partition is refused (INSERT is strict)
    let e = try_exec(&mut c, "INSERT INTO sales VALUES (9, '2025-01-01', 'x', 1)")
        .await
        .unwrap_err();
    assert!(e.contains("out of partition ranges"), "{e}");

    let create = db
        .sr
        .mariadb(&format!("SHOW CREATE TABLE {}.sales", db.name))
        .unwrap();
    for part in [
        "CREATE TABLE `sales`",
        "`id` bigint(20) NOT NULL",
        "`amt` decimal(10, 2) NULL",
        "DUPLICATE KEY(`id`)",
        "PARTITION BY RANGE(`d`)",
        "PARTITION p202402 VALUES [(\"2024-02-01\"), (\"2024-03-01\"))",
        "DISTRIBUTED BY HASH(`id`) BUCKETS 3",
    ] {
        assert!(
            create.contains(part),
            "SHOW CREATE TABLE lacks {part:?}:\n{create}"
        );
    }

    // LIST partitions and a Primary Key table: an upsert replaces the row with its key
    exec(
        &mut c,
        "CREATE TABLE cities (id INT NOT NULL, city VARCHAR(20) NOT NULL, n INT) PRIMARY KEY(id, city) \
         PARTITION BY LIST (city) (PARTITION pe VALUES IN (\"Oslo\", \"Rome\"), PARTITION pa VALUES IN (\"Lima\")) \
         DISTRIBUTED BY HASH(id)",
    )
    .await;
    exec(
        &mut c,
        "INSERT INTO cities VALUES (1, 'Oslo', 1), (2, 'Lima', 1)",
    )
    .await;
    exec(&mut c, "INSERT INTO cities VALUES (1, 'Oslo', 7)").await;
    assert_eq!(
        rows(&mut c, "SELECT id, city, n FROM cities ORDER BY id").await,
        vec![
            vec![Some("1".into()), Some("Oslo".into()), Some("7".into())],
            vec![Some("2".into()), Some("Lima".into()), Some("1".into())]
        ]
    );
    let create = db
        .sr
        .mariadb(&format!("SHOW CREATE TABLE {}.cities", db.name))
        .unwrap();
    assert!(
        create.contains("PRIMARY KEY(`id`, `city`)")
            && create.contains("PARTITION BY LIST(`city`)"),
        "{create}"
    );

    // SWAP WITH exchanges the names of two tables, data and partitions included
    exec(&mut c, SALES.replace("sales", "sales_new").as_str()).await;
    exec(
        &mut c,
        "INSERT INTO sales_new VALUES (100, '2024-01-02', 'New', 1)",
    )
    .await;
    exec(&mut c, "ALTER TABLE sales SWAP WITH sales_new").await;
    assert_eq!(
        one(&mut c, "SELECT count(*) FROM sales").await.as_deref(),
        Some("1")
    );
    assert_eq!(
        one(&mut c, "SELECT count(*) FROM sales_new")
            .await
            .as_deref(),
        Some("5")
    );
    assert_eq!(
        one(&mut c, "SELECT min(id) FROM sales").await.as_deref(),
        Some("100")
    );
    let e = try_exec(&mut c, "ALTER TABLE sales SWAP WITH missing")
        .await
        .unwrap_err();
    assert!(e.contains("Unknown table"), "{e}");
}

// ------------------------------------------------------------------ EXPORT

const EXPORT_COLUMNS: [&str; 11] = [
    "JobId",
    "QueryId",
    "State",
    "Progress",
    "TaskInfo",
    "Path",
    "CreateTime",
    "StartTime",
    "FinishTime",
    "Timeout",
    "ErrorMsg",
];

#[tokio::test]
async fn standin_starrocks_export_files_appear_under_the_path_only_when_finished() {
    let _g = shared();
    let db = SrDb::new(&source(), "sr_export").await;
    let bucket = support::S3Bucket::new("sr-export").await;
    let mut c = db.conn().await;
    exec(&mut c, SALES).await;
    exec(&mut c, SALES_ROWS).await;
    exec(
        &mut c,
        &format!(
            "EXPORT TABLE {}.sales PARTITION (p202401, p202402) (id, city, amt) TO \"s3://{}/out/\" \
             PROPERTIES (\"column_separator\" = \"|\", \"timeout\" = \"600\") {}",
            db.name,
            bucket.name(),
            broker()
        ),
    )
    .await;
    let qid = one(&mut c, "SELECT LAST_QUERY_ID()")
        .await
        .expect("a query id");
    // LAST_QUERY_ID() is per session: another connection does not see it
    let mut other = db.conn().await;
    assert_eq!(one(&mut other, "SELECT LAST_QUERY_ID()").await, None);

    let show = format!("SHOW EXPORT FROM {} WHERE QUERYID = \"{qid}\"", db.name);
    let (cols, _) = query(&mut c, &show).await;
    assert_eq!(cols, EXPORT_COLUMNS);
    let temp = format!("out/__starrocks_export_tmp_{qid}/");
    let mut seen = vec![field(&mut c, &show, "State").await.unwrap()];
    let mut checked_temp = false;
    let start = Instant::now();
    while !is_final(seen.last().unwrap()) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "export never ended: {seen:?}"
        );
        let state = field(&mut c, &show, "State").await.unwrap();
        if state == "EXPORTING" && !checked_temp {
            let keys = list(&bucket, "out/").await;
            if keys.iter().any(|k| k.starts_with(&temp)) {
                // files exist, but only inside the temporary folder
                assert!(keys.iter().all(|k| k.starts_with(&temp)), "{keys:?}");
                let still = field(&mut c, &show, "State").await.unwrap();
                checked_temp = still == "EXPORTING";
            }
        }
        if seen.last() != Some(&state) {
            seen.push(state);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // states are sampled while the job runs (a step is 100 ms), so a busy machine may
    // miss a short one; the order must hold, and EXPORTING (several steps) is seen
    assert_ordered(&seen, &["PENDING", "EXPORTING", "FINISHED"]);
    assert!(seen.iter().any(|s| s == "EXPORTING"), "{seen:?}");
    assert!(
        checked_temp,
        "never saw the files in the temporary folder while EXPORTING"
    );
    assert_eq!(
        field(&mut c, &show, "Progress").await.as_deref(),
        Some("100%")
    );
    assert_eq!(field(&mut c, &show, "ErrorMsg").await, None);
    let task = field(&mut c, &show, "TaskInfo").await.unwrap();
    assert!(
        task.contains("\"partitions\":[\"p202401\",\"p202402\"]"),
        "{task}"
    );

    let keys = list(&bucket, "out/").await;
    assert_eq!(
        keys,
        [
            format!("out/data_{qid}_0_0_0.csv"),
            format!("out/data_{qid}_1_0_0.csv")
        ],
        "renamed into the path, temporary folder gone"
    );
    let jan = get_object(&bucket, &keys[0]).await;
    let mut lines: Vec<_> = jan.lines().collect();
    lines.sort();
    assert_eq!(lines, ["1|Oslo|1.50", "2|\\N|2.00"]);
    assert_eq!(get_object(&bucket, &keys[1]).await, "3|Lima|3.25\n");
}

#[tokio::test]
async fn standin_starrocks_cancel_export_removes_its_files_and_cannot_cancel_twice() {
    let _g = shared();
    let db = SrDb::new(&source(), "sr_cancel_exp").await;
    let bucket = support::S3Bucket::new("sr-cancel").await;
    let mut c = db.conn().await;
    exec(&mut c, SALES).await;
    exec(&mut c, SALES_ROWS).await;
    exec(
        &mut c,
        &format!(
            "EXPORT TABLE sales TO \"s3://{}/x/\" {}",
            bucket.name(),
            broker()
        ),
    )
    .await;
    let qid = one(&mut c, "SELECT LAST_QUERY_ID()").await.unwrap();
    let show = format!("SHOW EXPORT WHERE QUERYID = \"{qid}\"");
    exec(&mut c, &format!("CANCEL EXPORT WHERE QUERYID = \"{qid}\"")).await;
    let seen = watch(&mut c, &show, "State", is_final).await;
    assert_eq!(seen.last().map(String::as_str), Some("CANCELLED"));
    let err = field(&mut c, &show, "ErrorMsg").await.unwrap();
    assert!(err.contains("USER_CANCEL"), "{err}");
    assert_eq!(list(&bucket, "x/").await, Vec::<String>::new());
    let e = try_exec(&mut c, &format!("CANCEL EXPORT WHERE QUERYID = \"{qid}\""))
        .await
        .unwrap_err();
    assert!(e.contains("already cancelled"), "{e}");
    let e = try_exec(&mut c, "CANCEL EXPORT WHERE QUERYID = \"no-such-id\"")
        .await
        .unwrap_err();
    assert!(e.contains("not found"), "{e}");
}

// ------------------------------------------------------------------ Broker Load, labels

const LOAD_CSV_A: &str =
    "id|#d|#city|#amt\n1|#2024-01-05|#\"Oslo|#Ost\"|#1.5\n2|#2024-01-06|#\\N|#2\n";
const LOAD_CSV_B: &str = "id|#d|#city|#amt\n3|#2024-02-07|#Li\\\\ma|#3\n";

fn load_stmt(db: &str, label: &str, bucket: &str, glob: &str, props: &str) -> String {
    format!(
        "LOAD LABEL {db}.{label} (DATA INFILE(\"s3://{bucket}/{glob}\") INTO TABLE sales \
         COLUMNS TERMINATED BY \"|#\" FORMAT AS \"CSV\" (skip_header = 1, enclose = '\"', escape = '\\\\') \
         (id, d, city, amt)) {} PROPERTIES ({props})",
        broker()
    )
}

#[tokio::test]
async fn standin_starrocks_broker_load_states_csv_options_and_finished_label() {
    let _g = shared();
    let db = SrDb::new(&target(), "sr_load").await;
    let bucket = support::S3Bucket::new("sr-load").await;
    put_object(&bucket, "in/a.csv", LOAD_CSV_A).await;
    put_object(&bucket, "in/b.csv", LOAD_CSV_B).await;
    let mut c = db.conn().await;
    exec(&mut c, SALES).await;
    let label = "flow_l1";
    exec(
        &mut c,
        &load_stmt(
            &db.name,
            label,
            bucket.name(),
            "in/*.csv",
            "\"timeout\" = \"600\"",
        ),
    )
    .await;
    let show = format!("SHOW LOAD FROM {} WHERE LABEL = \"{label}\"", db.name);
    let seen = watch(&mut c, &show, "State", is_final).await;
    assert_ordered(
        &seen,
        &["PENDING", "QUEUEING", "LOADING", "PREPARED", "FINISHED"],
    );
    assert_eq!(
        field(&mut c, &show, "Type").await.as_deref(),
        Some("BROKER")
    );
    assert_eq!(field(&mut c, &show, "ErrorMsg").await, None);
    assert_eq!(
        field(&mut c, &show, "Progress").await.as_deref(),
        Some("ETL:100%; LOAD:100%")
    );
    assert_eq!(
        rows(&mut c, "SELECT id, d, city, amt FROM sales ORDER BY id").await,
        vec![
            vec![
                Some("1".into()),
                Some("2024-01-05".into()),
                Some("Oslo|#Ost".into()),
                Some("1.50".into())
            ],
            vec![
                Some("2".into()),
                Some("2024-01-06".into()),
                None,
                Some("2.00".into())
            ],
            vec![
                Some("3".into()),
                Some("2024-02-07".into()),
                Some("Li\\ma".into()),
                Some("3.00".into())
            ],
        ]
    );
    let loads = rows(
        &mut c,
        &format!(
            "SELECT LABEL, STATE, TYPE, SINK_ROWS, ERROR_MSG FROM information_schema.loads \
             WHERE DB_NAME = '{}' AND LABEL = '{label}'",
            db.name
        ),
    )
    .await;
    assert_eq!(
        loads,
        vec![vec![
            Some(label.into()),
            Some("FINISHED".into()),
            Some("BROKER".into()),
            Some("3".into()),
            None
        ]]
    );

    // a FINISHED label is refused, with StarRocks' text, through both clients
    let again = load_stmt(
        &db.name,
        label,
        bucket.name(),
        "in/*.csv",
        "\"timeout\" = \"600\"",
    );
    let e = try_exec(&mut c, &again).await.unwrap_err();
    assert!(e.contains("Label [flow_l1] has already been used."), "{e}");
    let e = db.sr.mariadb(&again).unwrap_err();
    assert!(e.ends_with("Label [flow_l1] has already been used."), "{e}");
    // labels are per database: the same label is free in another one
    let other = SrDb::new(&target(), "sr_load_other").await;
    let mut o = other.conn().await;
    exec(&mut o, SALES).await;
    exec(
        &mut o,
        &load_stmt(
            &other.name,
            label,
            bucket.name(),
            "in/a.csv",
            "\"timeout\" = \"600\"",
        ),
    )
    .await;
}

#[tokio::test]
async fn standin_starrocks_broker_load_is_one_transaction_and_cancelled_labels_are_reusable() {
    let _g = shared();
    let db = SrDb::new(&target(), "sr_txn").await;
    let bucket = support::S3Bucket::new("sr-txn").await;
    put_object(&bucket, "in/a.csv", LOAD_CSV_A).await;
    put_object(
        &bucket,
        "in/c.csv",
        "id|#d|#city|#amt\n4|#not-a-date|#x|#1\n5|#2024-03-01|#y|#1\n",
    )
    .await;
    let mut c = db.conn().await;
    exec(&mut c, SALES).await;
    let label = "flow_txn";
    // two jobs carry the label once it is reused: the newest one is asked for
    let show = format!("SHOW LOAD WHERE LABEL = \"{label}\" ORDER BY JobId DESC LIMIT 1");

    // one bad row of five with max_filter_ratio 0: the whole job fails, no row lands
    exec(
        &mut c,
        &load_stmt(
            &db.name,
            label,
            bucket.name(),
            "in/*.csv",
            "\"max_filter_ratio\" = \"0\"",
        ),
    )
    .await;
    let seen = watch(&mut c, &show, "State", is_final).await;
    assert_eq!(seen.last().map(String::as_str), Some("CANCELLED"));
    let err = field(&mut c, &show, "ErrorMsg").await.unwrap();
    assert!(
        err.starts_with("type:ETL-QUALITY-UNSATISFIED; msg:"),
        "{err}"
    );
    assert_eq!(
        one(&mut c, "SELECT count(*) FROM sales").await.as_deref(),
        Some("0")
    );
    let versions = rows(&mut c, "SHOW PARTITIONS FROM sales").await;
    assert!(
        versions.iter().all(|r| r[2].as_deref() == Some("1")),
        "{versions:?}"
    );

    // a CANCELLED label can be reused; with room for the bad row it loads the rest
    exec(
        &mut c,
        &load_stmt(
            &db.name,
            label,
            bucket.name(),
            "in/*.csv",
            "\"max_filter_ratio\" = \"0.5\"",
        ),
    )
    .await;
    let seen = watch(&mut c, &show, "State", |s| s == "FINISHED" || s.is_empty()).await;
    assert_eq!(
        seen.last().map(String::as_str),
        Some("FINISHED"),
        "{seen:?}"
    );
    assert_eq!(
        one(&mut c, "SELECT count(*) FROM sales").await.as_deref(),
        Some("3")
    );
    let etl = field(&mut c, &show, "EtlInfo").await.unwrap();
    assert_eq!(etl, "unselected.rows=0; dpp.abnorm.ALL=1; dpp.norm.ALL=3");
    let url = field(&mut c, &show, "URL").await;
    assert!(url.is_some(), "filtered rows leave an error log");

    // no file at the path: ETL_RUN_FAIL; CANCEL LOAD while waiting: USER_CANCEL
    exec(
        &mut c,
        &load_stmt(
            &db.name,
            "flow_nofile",
            bucket.name(),
            "none/*.csv",
            "\"timeout\" = \"60\"",
        ),
    )
    .await;
    let show2 = "SHOW LOAD WHERE LABEL = \"flow_nofile\"";
    watch(&mut c, show2, "State", is_final).await;
    let err = field(&mut c, show2, "ErrorMsg").await.unwrap();
    assert!(
        err.starts_with("type:ETL_RUN_FAIL; msg:No source file"),
        "{err}"
    );

    exec(
        &mut c,
        &load_stmt(
            &db.name,
            "flow_cancel",
            bucket.name(),
            "in/a.csv",
            "\"timeout\" = \"60\"",
        ),
    )
    .await;
    exec(&mut c, "CANCEL LOAD WHERE LABEL = \"flow_cancel\"").await;
    let show3 = "SHOW LOAD WHERE LABEL = \"flow_cancel\"";
    watch(&mut c, show3, "State", is_final).await;
    assert_eq!(
        field(&mut c, show3, "ErrorMsg").await.as_deref(),
        Some("type:USER_CANCEL; msg:user cancel")
    );
    let e = try_exec(&mut c, "CANCEL LOAD WHERE LABEL = \"flow_txn\"")
        .await
        .unwrap_err();
    assert!(e.contains("cannot be cancelled"), "{e}");
    assert_eq!(
        one(&mut c, "SELECT count(*) FROM sales").await.as_deref(),
        Some("3")
    );
}

#[tokio::test]
async fn standin_starrocks_insert_into_files_and_insert_from_files_with_a_label() {
    let _g = shared();
    let src = SrDb::new(&source(), "sr_files_src").await;
    let dst = SrDb::new(&target(), "sr_files_dst").await;
    let bucket = support::S3Bucket::new("sr-files").await;
    let mut s = src.conn().await;
    exec(&mut s, SALES).await;
    exec(&mut s, SALES_ROWS).await;
    exec(
        &mut s,
        &format!(
            "INSERT INTO FILES(\"path\" = \"s3://{}/pq/p202401_\", \"format\" = \"parquet\", \
             \"aws.s3.endpoint\" = \"{}\", \"aws.s3.access_key\" = \"test\", \"aws.s3.secret_key\" = \"test\") \
             SELECT * FROM sales PARTITION (p202401)",
            bucket.name(),
            support::s3_endpoint()
        ),
    )
    .await;
    let keys = list(&bucket, "pq/").await;
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(
        keys[0].starts_with("pq/p202401_") && keys[0].ends_with(".parquet"),
        "{keys:?}"
    );

    let mut d = dst.conn().await;
    exec(&mut d, SALES).await;
    let insert = format!(
        "INSERT INTO sales WITH LABEL flow_files SELECT * FROM FILES(\"path\" = \"s3://{}/pq/*\", \
         \"format\" = \"parquet\", \"aws.s3.endpoint\" = \"{}\")",
        bucket.name(),
        support::s3_endpoint()
    );
    exec(&mut d, &insert).await;
    assert_eq!(
        rows(&mut d, "SELECT id, city, amt FROM sales ORDER BY id").await,
        vec![
            vec![Some("1".into()), Some("Oslo".into()), Some("1.50".into())],
            vec![Some("2".into()), None, Some("2.00".into())]
        ]
    );
    let show = "SHOW LOAD WHERE LABEL = \"flow_files\"";
    assert_eq!(field(&mut d, show, "Type").await.as_deref(), Some("INSERT"));
    assert_eq!(
        field(&mut d, show, "State").await.as_deref(),
        Some("FINISHED")
    );
    let e = try_exec(&mut d, &insert).await.unwrap_err();
    assert!(
        e.contains("Label [flow_files] has already been used."),
        "{e}"
    );
    assert_eq!(
        one(&mut d, "SELECT count(*) FROM sales").await.as_deref(),
        Some("2")
    );

    // Broker Load reads the same Parquet file (columns matched by name)
    exec(&mut d, &SALES.replace("sales", "sales_pq")).await;
    exec(
        &mut d,
        &format!(
            "LOAD LABEL {}.flow_pq (DATA INFILE(\"s3://{}/pq/*\") INTO TABLE sales_pq FORMAT AS \"parquet\") {}",
            dst.name,
            bucket.name(),
            broker()
        ),
    )
    .await;
    let seen = watch(
        &mut d,
        "SHOW LOAD WHERE LABEL = \"flow_pq\"",
        "State",
        is_final,
    )
    .await;
    assert_eq!(seen.last().map(String::as_str), Some("FINISHED"));
    assert_eq!(
        rows(&mut d, "SELECT id, city, amt FROM sales_pq ORDER BY id").await,
        rows(&mut d, "SELECT id, city, amt FROM sales ORDER BY id").await
    );
}

// ------------------------------------------------------------------ Stream Load

fn stream_load(
    sr: &Sr,
    db: &str,
    table: &str,
    headers: &[&str],
    body: &str,
    extra: &[&str],
) -> String {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("body.csv");
    std::fs::write(&file, body).unwrap();
    let url = format!("{}/api/{db}/{table}/_stream_load", sr.http);
    let mut args = vec!["-sS", "-u", "root:", "-H", "Expect: 100-continue", "-T"];
    let file = file.to_string_lossy().into_owned();
    args.push(&file);
    for h in headers {
        args.extend(["-H", h]);
    }
    args.extend(extra);
    args.push(&url);
    curl(&args)
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[tokio::test]
async fn standin_starrocks_stream_load_redirects_labels_op_and_failures() {
    let _g = shared();
    let sr = target();
    let db = SrDb::new(&sr, "sr_stream").await;
    let mut c = db.conn().await;
    exec(
        &mut c,
        "CREATE TABLE kv (k INT NOT NULL, v VARCHAR(10)) PRIMARY KEY(k) DISTRIBUTED BY HASH(k)",
    )
    .await;

    // the FE answers 307 to a BE port
    let head = stream_load(
        &sr,
        &db.name,
        "kv",
        &["label: s0"],
        "1,a\n",
        &["-o", "/dev/null", "-w", "%{http_code} %{redirect_url}"],
    );
    let (code, location) = head.split_once(' ').unwrap();
    assert_eq!(code, "307");
    assert!(
        location.contains("/_stream_load") && !location.starts_with(&sr.http),
        "{location}"
    );
    // following without re-sending credentials (plain -L) loses them
    let out = json(&stream_load(
        &sr,
        &db.name,
        "kv",
        &["label: s0"],
        "1,a\n",
        &["-L"],
    ));
    assert_eq!(out["Status"], "Fail");
    assert!(
        out["Message"].as_str().unwrap().contains("authorization"),
        "{out}"
    );

    let ok = ["label: s1", "column_separator: ,", "format: csv"];
    let trusted = ["--location-trusted"];
    let out = json(&stream_load(
        &sr,
        &db.name,
        "kv",
        &ok,
        "1,a\n2,b\n3,c\n",
        &trusted,
    ));
    assert_eq!(out["Status"], "Success", "{out}");
    assert_eq!(out["NumberLoadedRows"], 3);
    assert_eq!(out["Label"], "s1");
    let out = json(&stream_load(&sr, &db.name, "kv", &ok, "1,a\n", &trusted));
    assert_eq!(out["Status"], "Label Already Exists", "{out}");
    assert_eq!(out["ExistingJobStatus"], "FINISHED");

    // a chunked body (curl -T - from a pipe sends one) loads every row
    let chunked = ["--location-trusted", "-H", "Transfer-Encoding: chunked"];
    let out = json(&stream_load(
        &sr,
        &db.name,
        "kv",
        &["label: s1c", "column_separator: ,"],
        "10,a\n11,b\n",
        &chunked,
    ));
    assert_eq!(out["Status"], "Success", "{out}");
    assert_eq!(out["NumberLoadedRows"], 2, "{out}");
    exec(&mut c, "INSERT INTO kv VALUES (10, 'x')").await;
    let e = try_exec(&mut c, "DELETE FROM kv WHERE k >= 10").await;
    assert!(e.is_err(), "DELETE is not modelled and must say so");
    stream_load(
        &sr,
        &db.name,
        "kv",
        &[
            "label: s1d",
            "column_separator: ,",
            "columns: k, v, __op = 'delete'",
        ],
        "10,\n11,\n",
        &["--location-trusted"],
    );

    // __op through `columns`: upsert one key, delete another
    let ops = ["label: s2", "column_separator: ,", "columns: k, v, __op"];
    let out = json(&stream_load(
        &sr,
        &db.name,
        "kv",
        &ops,
        "1,z,0\n2,,1\n",
        &trusted,
    ));
    assert_eq!(out["Status"], "Success", "{out}");
    let del = [
        "label: s3",
        "column_separator: ,",
        "columns: k, v, __op = 'delete'",
    ];
    json(&stream_load(&sr, &db.name, "kv", &del, "3,\n", &trusted));
    assert_eq!(
        rows(&mut c, "SELECT k, v FROM kv ORDER BY k").await,
        vec![vec![Some("1".into()), Some("z".into())]]
    );

    // too many bad rows: Fail with an ErrorURL; the label stays reusable
    let bad = ["label: s4", "column_separator: ,"];
    let out = json(&stream_load(
        &sr,
        &db.name,
        "kv",
        &bad,
        "x,a\n5,b\n",
        &trusted,
    ));
    assert_eq!(out["Status"], "Fail", "{out}");
    assert_eq!(out["NumberFilteredRows"], 1);
    let log = curl(&["-sS", out["ErrorURL"].as_str().unwrap()]);
    assert!(
        log.contains("cannot be converted") || log.contains("NULL value"),
        "{log}"
    );
    let retry = ["label: s4", "column_separator: ,", "max_filter_ratio: 0.5"];
    let out = json(&stream_load(
        &sr,
        &db.name,
        "kv",
        &retry,
        "x,a\n5,b\n",
        &trusted,
    ));
    assert_eq!(out["Status"], "Success", "{out}");
    assert_eq!(
        one(&mut c, "SELECT count(*) FROM kv").await.as_deref(),
        Some("2")
    );
}

// ------------------------------------------------------------------ config and faults

/// Sets FE config on a cluster and restores the previous values on drop.
struct ConfigGuard {
    sr: Sr,
    old: Vec<(String, String)>,
}

impl ConfigGuard {
    async fn set(sr: &Sr, items: &[(&str, &str)]) -> Self {
        let mut c = sr.conn().await;
        let mut old = Vec::new();
        for (k, v) in items {
            let prev = field(
                &mut c,
                &format!("ADMIN SHOW FRONTEND CONFIG LIKE \"{k}\""),
                "Value",
            )
            .await
            .unwrap();
            old.push((k.to_string(), prev));
            exec(
                &mut c,
                &format!("ADMIN SET FRONTEND CONFIG (\"{k}\" = \"{v}\")"),
            )
            .await;
        }
        ConfigGuard {
            sr: sr.clone(),
            old,
        }
    }
}

impl Drop for ConfigGuard {
    fn drop(&mut self) {
        for (k, v) in &self.old {
            let _ = self
                .sr
                .mariadb(&format!("ADMIN SET FRONTEND CONFIG (\"{k}\" = \"{v}\")"));
        }
        let _ = curl(&[
            "-sS",
            "-X",
            "POST",
            &format!(
                "{}{}/clear",
                self.sr.http,
                support::env("FLOW_TEST_SR_ADMIN")
            ),
        ]);
    }
}

#[tokio::test]
async fn standin_starrocks_label_retention_by_age_and_count_and_version_switch() {
    let _g = exclusive();
    let sr = target();
    let db = SrDb::new(&sr, "sr_retention").await;
    let mut c = db.conn().await;
    exec(&mut c, SALES).await;
    let _cfg = ConfigGuard::set(&sr, &[("label_keep_max_second", "1")]).await;
    exec(
        &mut c,
        "INSERT INTO sales WITH LABEL keep1 VALUES (1, '2024-01-01', 'a', 1)",
    )
    .await;
    let e = try_exec(
        &mut c,
        "INSERT INTO sales WITH LABEL keep1 VALUES (1, '2024-01-01', 'a', 1)",
    )
    .await
    .unwrap_err();
    assert!(e.contains("Label [keep1] has already been used."), "{e}");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    // expired: gone from SHOW LOAD, and the label can be used again
    assert_eq!(
        rows(&mut c, "SHOW LOAD WHERE LABEL = \"keep1\"")
            .await
            .len(),
        0
    );
    exec(
        &mut c,
        "INSERT INTO sales WITH LABEL keep1 VALUES (2, '2024-01-02', 'b', 1)",
    )
    .await;

    let _n = ConfigGuard::set(
        &sr,
        &[
            ("label_keep_max_second", "259200"),
            ("label_keep_max_num", "1"),
        ],
    )
    .await;
    exec(
        &mut c,
        "INSERT INTO sales WITH LABEL keep2 VALUES (3, '2024-01-03', 'c', 1)",
    )
    .await;
    // only the newest finished job is kept: keep1 is reusable again, keep2 is not
    exec(
        &mut c,
        "INSERT INTO sales WITH LABEL keep1 VALUES (4, '2024-01-04', 'd', 1)",
    )
    .await;
    assert_eq!(
        one(&mut c, "SELECT count(*) FROM sales").await.as_deref(),
        Some("4")
    );
    drop(_n);

    // INSERT INTO FILES() exists from v3.2 on: a v3.1 stand-in refuses it
    let _v = ConfigGuard::set(&sr, &[("standin_version", "3.1.11")]).await;
    assert!(one(&mut c, "SELECT current_version()")
        .await
        .unwrap()
        .starts_with("3.1.11"));
    let e = try_exec(
        &mut c,
        "INSERT INTO FILES(\"path\" = \"s3://b/x_\", \"format\" = \"parquet\") SELECT * FROM sales",
    )
    .await
    .unwrap_err();
    assert!(e.contains("from v3.2"), "{e}");
    let e = try_exec(
        &mut c,
        "ADMIN SET FRONTEND CONFIG (\"no_such_knob\" = \"1\")",
    )
    .await
    .unwrap_err();
    assert!(e.contains("Config 'no_such_knob' does not exist"), "{e}");
}

#[tokio::test]
async fn standin_starrocks_fault_fe_restart_cancels_running_exports_and_loses_history() {
    let _g = exclusive();
    let sr = source();
    let db = SrDb::new(&sr, "sr_restart").await;
    let bucket = support::S3Bucket::new("sr-restart").await;
    let mut c = db.conn().await;
    exec(&mut c, SALES).await;
    exec(&mut c, SALES_ROWS).await;
    // no aws.s3.endpoint: the stand-in's default is the test stack's S3 server
    let export = |dir: &str| {
        format!(
            "EXPORT TABLE sales TO \"s3://{}/{dir}/\" WITH BROKER (\"aws.s3.access_key\" = \"test\", \"aws.s3.secret_key\" = \"test\")",
            bucket.name(),
        )
    };
    exec(&mut c, &export("done")).await;
    let done = one(&mut c, "SELECT LAST_QUERY_ID()").await.unwrap();
    watch(
        &mut c,
        &format!("SHOW EXPORT WHERE QUERYID = \"{done}\""),
        "State",
        is_final,
    )
    .await;

    exec(&mut c, &export("running")).await;
    let running = one(&mut c, "SELECT LAST_QUERY_ID()").await.unwrap();
    let show = format!("SHOW EXPORT FROM {} WHERE QUERYID = \"{running}\"", db.name);
    watch(&mut c, &show, "State", |s| s == "EXPORTING").await;
    let out = sr.fault("fe_restart", "");
    assert!(out.contains(&running), "{out}");

    // the old connection was dropped by the restart
    assert!(
        try_exec(&mut c, "SELECT 1").await.is_err(),
        "a connection survived the FE restart"
    );
    let mut c = db.conn().await;
    assert_eq!(
        field(&mut c, &show, "State").await.as_deref(),
        Some("CANCELLED")
    );
    let err = field(&mut c, &show, "ErrorMsg").await.unwrap();
    assert!(err.contains("FE restarted"), "{err}");
    // the finished job's history is gone; its files stay
    assert_eq!(
        rows(&mut c, &format!("SHOW EXPORT WHERE QUERYID = \"{done}\""))
            .await
            .len(),
        0
    );
    assert_eq!(list(&bucket, "done/").await.len(), 3);
    // nothing reached the running job's final path, even later
    tokio::time::sleep(Duration::from_millis(500)).await;
    let keys = list(&bucket, "running/").await;
    assert!(
        keys.iter()
            .all(|k| k.starts_with(&format!("running/__starrocks_export_tmp_{running}/"))),
        "{keys:?}"
    );
    assert_eq!(one(&mut c, "SELECT LAST_QUERY_ID()").await, None);
}

#[tokio::test]
async fn standin_starrocks_export_running_job_limit_makes_the_sixth_wait() {
    let _g = exclusive();
    let sr = source();
    let db = SrDb::new(&sr, "sr_limit").await;
    let bucket = support::S3Bucket::new("sr-limit").await;
    let mut c = db.conn().await;
    exec(&mut c, SALES).await;
    exec(&mut c, SALES_ROWS).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        exec(
            &mut c,
            &format!(
                "EXPORT TABLE sales TO \"s3://{}/j{i}/\" {}",
                bucket.name(),
                broker()
            ),
        )
        .await;
        ids.push(one(&mut c, "SELECT LAST_QUERY_ID()").await.unwrap());
    }
    let show = format!("SHOW EXPORT FROM {}", db.name);
    let (cols, _) = query(&mut c, &show).await;
    let state = cols.iter().position(|c| c == "State").unwrap();
    let mut max_running = 0;
    let mut saw_five_and_one_waiting = false;
    let start = Instant::now();
    loop {
        let all = rows(&mut c, &show).await;
        let n = |s: &str| {
            all.iter()
                .filter(|r| r[state].as_deref() == Some(s))
                .count()
        };
        max_running = max_running.max(n("EXPORTING"));
        saw_five_and_one_waiting |= n("EXPORTING") == 5 && n("PENDING") == 1;
        if n("FINISHED") == 6 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "exports did not finish: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        max_running, 5,
        "export_running_job_num_limit is 5 by default"
    );
    assert!(
        saw_five_and_one_waiting,
        "the sixth job never waited in PENDING"
    );

    // the limit is configurable
    let _cfg = ConfigGuard::set(&sr, &[("export_running_job_num_limit", "2")]).await;
    for i in 0..3 {
        exec(
            &mut c,
            &format!(
                "EXPORT TABLE sales TO \"s3://{}/k{i}/\" {}",
                bucket.name(),
                broker()
            ),
        )
        .await;
    }
    let mut max_running = 0;
    loop {
        let all = rows(&mut c, &show).await;
        let n = |s: &str| {
            all.iter()
                .filter(|r| r[state].as_deref() == Some(s))
                .count()
        };
        max_running = max_running.max(n("EXPORTING"));
        if n("FINISHED") == 9 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(max_running, 2);
}

#[tokio::test]
async fn standin_starrocks_faults_publish_timeout_and_slow_queue() {
    let _g = exclusive();
    let sr = target();
    let db = SrDb::new(&sr, "sr_faults").await;
    let bucket = support::S3Bucket::new("sr-faults").await;
    put_object(&bucket, "in/a.csv", LOAD_CSV_A).await;
    let mut c = db.conn().await;
    exec(&mut c, SALES).await;
    let _clear = ConfigGuard::set(&sr, &[]).await;

    // Stream Load: committed but not yet visible, "You do not need to retry"
    sr.fault("publish_timeout", "?count=1");
    let out = json(&stream_load(
        &sr,
        &db.name,
        "sales",
        &["label: pt1", "column_separator: ,"],
        "7,2024-01-09,x,1\n",
        &["--location-trusted"],
    ));
    assert_eq!(out["Status"], "Publish Timeout", "{out}");
    let start = Instant::now();
    while one(&mut c, "SELECT count(*) FROM sales").await.as_deref() != Some("1") {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "published rows never became visible"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = json(&stream_load(
        &sr,
        &db.name,
        "sales",
        &["label: pt1", "column_separator: ,"],
        "7,2024-01-09,x,1\n",
        &["--location-trusted"],
    ));
    assert_eq!(out["Status"], "Label Already Exists");
    assert_eq!(out["ExistingJobStatus"], "FINISHED");

    // Broker Load: the job stays PREPARED (committed, 99%) until the late publish
    sr.fault("publish_timeout", "?count=1");
    exec(
        &mut c,
        &load_stmt(
            &db.name,
            "pt2",
            bucket.name(),
            "in/a.csv",
            "\"timeout\" = \"60\"",
        ),
    )
    .await;
    let show = "SHOW LOAD WHERE LABEL = \"pt2\"";
    watch(&mut c, show, "State", |s| s == "PREPARED").await;
    let prepared = Instant::now();
    assert_eq!(
        field(&mut c, show, "Progress").await.as_deref(),
        Some("ETL:100%; LOAD:99%")
    );
    let e = try_exec(&mut c, "CANCEL LOAD WHERE LABEL = \"pt2\"")
        .await
        .unwrap_err();
    assert!(e.contains("PREPARED"), "{e}");
    watch(&mut c, show, "State", is_final).await;
    assert!(
        prepared.elapsed() >= Duration::from_millis(300),
        "PREPARED for only {:?}",
        prepared.elapsed()
    );
    assert_eq!(
        field(&mut c, show, "State").await.as_deref(),
        Some("FINISHED")
    );

    // max_broker_load_job_concurrency: a job beyond it waits in QUEUEING
    let zero = ConfigGuard::set(&sr, &[("max_broker_load_job_concurrency", "0")]).await;
    exec(
        &mut c,
        &load_stmt(
            &db.name,
            "q1",
            bucket.name(),
            "in/a.csv",
            "\"timeout\" = \"60\"",
        ),
    )
    .await;
    let show_q = "SHOW LOAD WHERE LABEL = \"q1\"";
    watch(&mut c, show_q, "State", |s| s == "QUEUEING").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        field(&mut c, show_q, "State").await.as_deref(),
        Some("QUEUEING")
    );
    drop(zero);
    let seen = watch(&mut c, show_q, "State", is_final).await;
    assert_eq!(
        seen.last().map(String::as_str),
        Some("FINISHED"),
        "{seen:?}"
    );

    // slow queue: a new job waits in PENDING until the fault is cleared
    sr.fault("slow_queue", "?seconds=30");
    exec(
        &mut c,
        &load_stmt(
            &db.name,
            "slow1",
            bucket.name(),
            "in/a.csv",
            "\"timeout\" = \"60\"",
        ),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        field(&mut c, "SHOW LOAD WHERE LABEL = \"slow1\"", "State")
            .await
            .as_deref(),
        Some("PENDING")
    );
    // the label of a job still running: Stream Load says so (ExistingJobStatus RUNNING)
    let out = json(&stream_load(
        &sr,
        &db.name,
        "sales",
        &["label: slow1", "column_separator: ,"],
        "8,2024-01-09,x,1\n",
        &["--location-trusted"],
    ));
    assert_eq!(out["Status"], "Label Already Exists", "{out}");
    assert_eq!(out["ExistingJobStatus"], "RUNNING");
    exec(&mut c, "CANCEL LOAD WHERE LABEL = \"slow1\"").await;
    // a job that cannot finish within its timeout ends CANCELLED with type TIMEOUT
    exec(
        &mut c,
        &load_stmt(
            &db.name,
            "slow2",
            bucket.name(),
            "in/a.csv",
            "\"timeout\" = \"1\"",
        ),
    )
    .await;
    watch(
        &mut c,
        "SHOW LOAD WHERE LABEL = \"slow2\"",
        "State",
        is_final,
    )
    .await;
    let err = field(&mut c, "SHOW LOAD WHERE LABEL = \"slow2\"", "ErrorMsg")
        .await
        .unwrap();
    assert!(err.starts_with("type:TIMEOUT; msg:"), "{err}");
    watch(
        &mut c,
        "SHOW LOAD WHERE LABEL = \"slow1\"",
        "State",
        is_final,
    )
    .await;
    sr.fault("clear", "");
}

// ------------------------------------------------------------------ bad input

#[tokio::test]
async fn standin_starrocks_rejects_bad_input_with_clear_errors() {
    let _g = shared();
    let sr = target();
    let db = SrDb::new(&sr, "sr_bad").await;
    let mut c = db.conn().await;
    exec(&mut c, SALES).await;
    let b = broker();
    let cases: Vec<(String, &str)> = vec![
        ("LOAD LABEL x".into(), "syntax error"),
        ("LOAD LABEL l1 (DATA INFILE(\"s3://b/x\") INTO TABLE nosuch) WITH BROKER".into(), "Unknown table"),
        (format!("EXPORT TABLE nosuch TO \"s3://b/x/\" {b}"), "Unknown table"),
        (format!("EXPORT TABLE sales TO \"/tmp/x/\" {b}"), "s3://"),
        (format!("EXPORT TABLE sales PARTITION (p9) TO \"s3://b/x/\" {b}"), "Unknown partition 'p9'"),
        (format!("EXPORT TABLE sales (nope) TO \"s3://b/x/\" {b}"), "Unknown column 'nope'"),
        ("CREATE TABLE t1 (a FOO) DUPLICATE KEY(a)".into(), "Unsupported column type 'foo'"),
        ("CREATE TABLE t2 (a INT) DUPLICATE KEY(b)".into(), "Key column 'b'"),
        (
            "CREATE TABLE t3 (a INT, d DATE) PARTITION BY RANGE(d) (PARTITION p VALUES [(\"2024-02-01\"), (\"2024-01-01\")))".into(),
            "lower bound must be below",
        ),
        ("CREATE TABLE `t``x` (a INT)".into(), "Incorrect table name"),
        ("CREATE DATABASE `d'x`".into(), "Incorrect database name"),
        ("SHOW PARTITIONS FROM nosuch".into(), "Unknown table"),
        ("SHOW LOAD WHERE JobId = 1".into(), "filter by 'jobid'"),
        // StarRocks labels match ^[-_A-Za-z0-9:]{1,128}$
        ("INSERT INTO sales WITH LABEL `a'b` VALUES (1, '2024-01-01', 'x', 1)".into(), "Label format error"),
        (
            format!("LOAD LABEL `{}` (DATA INFILE(\"s3://b/x\") INTO TABLE sales) WITH BROKER", "l".repeat(129)),
            "Label format error",
        ),
        // statements the stand-in does not model fail instead of answering OK
        ("DELETE FROM sales WHERE id = 1".into(), "not modelled"),
        ("UPDATE sales SET city = 'x'".into(), "not modelled"),
        ("TRUNCATE TABLE sales".into(), "not modelled"),
        ("ADMIN SET FRONTEND CONFIG (\"label_keep_max_num\" = \"many\")".into(), "is not an integer"),
    ];
    let mut wrong = Vec::new();
    for (sql, want) in &cases {
        match try_exec(&mut c, sql).await {
            Err(e) if e.contains(want) => {}
            other => wrong.push(format!("{sql}\n  gave: {other:?}\n  want: {want}")),
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // the connection is still usable after every error
    assert_eq!(
        one(&mut c, "SELECT count(*) FROM sales").await.as_deref(),
        Some("0")
    );

    // quotes and backslashes in values are data, not SQL
    let nasty = "x'); DROP DATABASE d; -- \\\\ \"q\"";
    exec(
        &mut c,
        &format!(
            "INSERT INTO sales VALUES (1, '2024-01-01', '{}', 1)",
            nasty.replace('\'', "\\'")
        ),
    )
    .await;
    assert_eq!(
        one(&mut c, "SELECT city FROM sales").await.as_deref(),
        Some("x'); DROP DATABASE d; -- \\ \"q\"")
    );

    // Stream Load: unknown table, bad label, unsupported format
    let t = ["--location-trusted"];
    let out = json(&stream_load(
        &sr,
        &db.name,
        "nosuch",
        &["label: ok1"],
        "1\n",
        &t,
    ));
    assert_eq!(out["Status"], "Fail");
    assert!(
        out["Message"].as_str().unwrap().contains("Unknown table"),
        "{out}"
    );
    let out = json(&stream_load(
        &sr,
        &db.name,
        "sales",
        &["label: a b"],
        "1\n",
        &t,
    ));
    assert!(
        out["Message"]
            .as_str()
            .unwrap()
            .contains("Label format error"),
        "{out}"
    );
    let out = json(&stream_load(
        &sr,
        &db.name,
        "sales",
        &["label: ok2", "format: orc"],
        "1\n",
        &t,
    ));
    assert!(
        out["Message"].as_str().unwrap().contains("format 'orc'"),
        "{out}"
    );
    // an empty separator is refused, not looped on
    let bucket = support::S3Bucket::new("sr-bad").await;
    put_object(&bucket, "in/a.csv", "1,2024-01-01,x,1\n").await;
    for (label, clause) in [
        ("sep0", "COLUMNS TERMINATED BY \"\""),
        ("row0", "ROWS TERMINATED BY \"\""),
    ] {
        exec(
            &mut c,
            &format!(
                "LOAD LABEL {}.{label} (DATA INFILE(\"s3://{}/in/a.csv\") INTO TABLE sales {clause}) {}",
                db.name,
                bucket.name(),
                broker()
            ),
        )
        .await;
        let show = format!("SHOW LOAD WHERE LABEL = \"{label}\"");
        watch(&mut c, &show, "State", is_final).await;
        let err = field(&mut c, &show, "ErrorMsg").await.unwrap_or_default();
        assert!(err.contains("must not be empty"), "{label}: {err}");
    }

    // a secret key never reaches the log, SHOW LOAD or an error text
    let secret = support::unique_name("SrSecret");
    let load = format!(
        "LOAD LABEL {}.sec (DATA INFILE(\"s3://no-such-bucket-sr/x/*\") INTO TABLE sales) WITH BROKER \
         (\"aws.s3.endpoint\" = \"{}\", \"aws.s3.access_key\" = \"{secret}\", \"aws.s3.secret_key\" = \"{secret}\")",
        db.name,
        support::s3_endpoint()
    );
    exec(&mut c, &load).await;
    watch(&mut c, "SHOW LOAD WHERE LABEL = \"sec\"", "State", is_final).await;
    let show = rows(&mut c, "SHOW LOAD WHERE LABEL = \"sec\"").await;
    assert!(!format!("{show:?}").contains(&secret), "{show:?}");
    let e = try_exec(&mut c, &format!("INSERT INTO sales SELECT * FROM FILES(\"path\" = \"s3://no-such-bucket-sr/q/*\", \"format\" = \"parquet\", \"aws.s3.secret_key\" = \"{secret}\")")).await.unwrap_err();
    assert!(!e.contains(&secret), "{e}");
    let log = std::fs::read_to_string(
        std::path::Path::new(&support::env("FLOW_RUN_DIR")).join("starrocks/starrocks.log"),
    )
    .unwrap();
    assert!(
        log.contains("broker_load: LOAD LABEL") && !log.contains(&secret),
        "the secret is in the log"
    );

    // a fault name that does not exist
    let admin = support::env("FLOW_TEST_SR_ADMIN");
    let code = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "POST",
        &format!("{}{admin}/melt", sr.http),
    ]);
    assert_eq!(code, "400");
}

#[tokio::test]
async fn standin_starrocks_unqualified_names_resolve_in_each_sessions_database() {
    let _g = shared();
    let sr = source();
    let a = SrDb::new(&sr, "sr_use_a").await;
    let b = SrDb::new(&sr, "sr_use_b").await;
    let mut ca = a.conn().await;
    let mut cb = b.conn().await;
    for (c, n) in [(&mut ca, 1), (&mut cb, 2)] {
        exec(c, "CREATE TABLE t (k INT NOT NULL) DUPLICATE KEY(k)").await;
        let values: Vec<String> = (0..n).map(|i| format!("({i})")).collect();
        exec(c, &format!("INSERT INTO t VALUES {}", values.join(", "))).await;
    }
    // both sessions query `t` at the same time; each must see its own database's table
    let run = |mut c: Conn, want: &'static str| async move {
        for _ in 0..40 {
            assert_eq!(
                one(&mut c, "SELECT count(*) FROM t").await.as_deref(),
                Some(want)
            );
        }
    };
    let (ra, rb) = tokio::join!(tokio::spawn(run(ca, "1")), tokio::spawn(run(cb, "2")));
    ra.expect("session a");
    rb.expect("session b");
}
