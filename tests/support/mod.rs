//! Support for integration tests that run against the real-server test stack.
//!
//! `scripts/services up` starts the servers and `scripts/services env` prints the
//! `FLOW_TEST_*` variables read here; `scripts/test` does both. A helper whose server
//! is missing panics with the variable's name and how to start the stack: a test must
//! never pass silently because its server is not there.
//!
//! Tests run in parallel against shared servers, so each test works in its own
//! database / bucket named by [`unique_name`], created and dropped by a guard.
//!
//! Use from a test file with `mod support;`.

#![allow(dead_code)]

use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The value of a variable set by `scripts/services env`; panics if it is missing.
/// A finished command's exit code, stdout and stderr, for assertions and messages.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn env(name: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!(
            "{name} is not set: this test needs the real-server test stack. \
             Run `scripts/test`, or `scripts/services up && eval \"$(scripts/services env)\"` \
             before `cargo test` (scripts/services status shows what runs)."
        ),
    }
}

/// A name unique to this test run and call: `{prefix}_{pid}_{n}_{random}`, lowercase
/// letters, digits and `_` (valid for ClickHouse, MySQL and PostgreSQL; for S3 buckets
/// [`S3Bucket`] turns `_` into `-`).
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!(
        "{}_{}_{n}_{:06x}",
        prefix.to_lowercase(),
        std::process::id(),
        fastrand::u32(..0x100_0000)
    )
}

/// Runs a future to completion on a fresh runtime in its own thread; for guards whose
/// `Drop` must do async work while a test's runtime may be running on this thread.
pub fn block_on_thread<F>(fut: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime should build")
            .block_on(fut)
    })
    .join()
    .expect("the cleanup thread should not panic")
}

// ------------------------------------------------------------------ ClickHouse

/// HTTP URL of the ClickHouse 18.16 server.
pub fn ch_url() -> String {
    env("FLOW_TEST_CH_URL")
}

/// Native TCP port of the ClickHouse 18.16 server (for clickhouse-client).
pub fn ch_tcp_port() -> u16 {
    env("FLOW_TEST_CH_TCP_PORT")
        .parse()
        .expect("FLOW_TEST_CH_TCP_PORT should be a port number")
}

/// HTTP URL of the modern ClickHouse engine (chdb behind support/chdb_front.py).
pub fn chdb_url() -> String {
    env("FLOW_TEST_CHDB_URL")
}

/// Client for ClickHouse 18.16: typed validation must be off (the server has no
/// RowBinaryWithNamesAndTypes), and server-side `param()` does not exist there.
pub fn ch_client() -> clickhouse::Client {
    clickhouse::Client::default()
        .with_url(ch_url())
        .with_validation(false)
}

/// Client for the modern engine, with the crate's default typed validation on.
pub fn chdb_client() -> clickhouse::Client {
    clickhouse::Client::default().with_url(chdb_url())
}

/// Runs `sql` through the ClickHouse HTTP interface at `url` and returns the body
/// (TabSeparated unless the SQL says FORMAT). Raw: no `?` binding. Blocking, so it
/// also works in `Drop`.
pub fn ch_try_exec(url: &str, sql: &str) -> Result<String, String> {
    let authority = url
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let mut stream =
        TcpStream::connect(&authority).map_err(|e| format!("connect to {authority}: {e}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(300))).ok();
    let head = format!(
        "POST / HTTP/1.1\r\nHost: {authority}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        sql.len()
    );
    stream
        .write_all(head.as_bytes())
        .and_then(|()| stream.write_all(sql.as_bytes()))
        .map_err(|e| format!("send to {authority}: {e}"))?;

    let mut reader = BufReader::new(stream);
    let mut status = String::new();
    reader.read_line(&mut status).map_err(|e| e.to_string())?;
    let code: u16 = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line from {authority}: {status:?}"))?;
    let mut chunked = false;
    let mut length = None;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).map_err(|e| e.to_string())?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        match name.to_ascii_lowercase().as_str() {
            "transfer-encoding" => chunked = value.to_ascii_lowercase().contains("chunked"),
            "content-length" => length = value.trim().parse::<usize>().ok(),
            _ => {}
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).map_err(|e| e.to_string())?;
            let size = usize::from_str_radix(size.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| format!("bad chunk size from {authority}: {size:?}"))?;
            if size == 0 {
                break;
            }
            let start = body.len();
            body.resize(start + size + 2, 0);
            reader
                .read_exact(&mut body[start..])
                .map_err(|e| e.to_string())?;
            body.truncate(start + size);
        }
    } else if let Some(n) = length {
        body.resize(n, 0);
        reader.read_exact(&mut body).map_err(|e| e.to_string())?;
    } else {
        reader.read_to_end(&mut body).map_err(|e| e.to_string())?;
    }
    let body = String::from_utf8_lossy(&body).into_owned();
    if code == 200 {
        Ok(body)
    } else {
        Err(format!("HTTP {code}: {}", body.trim()))
    }
}

/// Like [`ch_try_exec`], panicking with the server's error text on failure.
pub fn ch_exec(url: &str, sql: &str) -> String {
    ch_try_exec(url, sql).unwrap_or_else(|e| panic!("ClickHouse at {url} failed on {sql:?}: {e}"))
}

/// A database of its own on a ClickHouse server, dropped (best effort) on drop.
pub struct ChDatabase {
    url: String,
    name: String,
}

impl ChDatabase {
    pub fn new(url: &str, prefix: &str) -> Self {
        let name = unique_name(prefix);
        ch_exec(url, &format!("CREATE DATABASE {name}"));
        ChDatabase {
            url: url.to_string(),
            name,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Raw SQL on this database's server (name tables as `{db}.t`).
    pub fn exec(&self, sql: &str) -> String {
        ch_exec(&self.url, sql)
    }
}

impl Drop for ChDatabase {
    fn drop(&mut self) {
        let _ = ch_try_exec(&self.url, &format!("DROP DATABASE IF EXISTS {}", self.name));
    }
}

// ------------------------------------------------------------------ S3 and EC2 (moto)

pub fn s3_endpoint() -> String {
    env("FLOW_TEST_S3_ENDPOINT")
}

pub fn aws_region() -> String {
    env("FLOW_TEST_AWS_REGION")
}

/// The bucket behind the modern engine's `s3` disk (storage policy `s3`).
pub fn chdb_disk_bucket() -> String {
    env("FLOW_TEST_CHDB_DISK_BUCKET")
}

fn aws_credentials() -> aws_credential_types::Credentials {
    aws_credential_types::Credentials::new("test", "test", None, None, "flow-tests")
}

/// S3 client for the local S3 server: endpoint, path-style addressing, static keys.
pub fn s3_client() -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new(aws_region()))
        .endpoint_url(s3_endpoint())
        .force_path_style(true)
        .credentials_provider(aws_credentials())
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// EC2 client for the local EC2 API (moto).
pub fn ec2_client() -> aws_sdk_ec2::Client {
    let config = aws_sdk_ec2::config::Builder::new()
        .behavior_version(aws_sdk_ec2::config::BehaviorVersion::latest())
        .region(aws_sdk_ec2::config::Region::new(aws_region()))
        .endpoint_url(s3_endpoint())
        .credentials_provider(aws_credentials())
        .build();
    aws_sdk_ec2::Client::from_conf(config)
}

/// A bucket of its own on the local S3 server, emptied and deleted (best effort) on drop.
pub struct S3Bucket {
    client: aws_sdk_s3::Client,
    name: String,
}

impl S3Bucket {
    pub async fn new(prefix: &str) -> Self {
        let client = s3_client();
        let name = unique_name(prefix).replace('_', "-");
        client
            .create_bucket()
            .bucket(&name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("create bucket {name}: {e:?}"));
        S3Bucket { client, name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    /// Every key in the bucket (the first 1000), sorted.
    pub async fn keys(&self) -> Vec<String> {
        let listed = self
            .client
            .list_objects_v2()
            .bucket(&self.name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("list bucket {}: {e:?}", self.name));
        let mut keys: Vec<String> = listed
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_string))
            .collect();
        keys.sort();
        keys
    }
}

impl Drop for S3Bucket {
    fn drop(&mut self) {
        // A new client on the cleanup thread: pooled connections of the test's client
        // belong to the test's runtime, which is blocked here until the cleanup ends.
        let bucket = self.name.clone();
        block_on_thread(async move {
            let client = s3_client();
            let mut token = None;
            loop {
                let Ok(page) = client
                    .list_objects_v2()
                    .bucket(&bucket)
                    .set_continuation_token(token)
                    .send()
                    .await
                else {
                    break;
                };
                for object in page.contents() {
                    if let Some(key) = object.key() {
                        let _ = client.delete_object().bucket(&bucket).key(key).send().await;
                    }
                }
                token = page.next_continuation_token().map(str::to_string);
                if token.is_none() {
                    break;
                }
            }
            let _ = client.delete_bucket().bucket(&bucket).send().await;
        });
    }
}

// ------------------------------------------------------------------ MySQL (MariaDB)

/// `mysql://flow:flow@127.0.0.1:PORT` (no database).
pub fn mysql_url() -> String {
    env("FLOW_TEST_MYSQL_URL")
}

pub fn mysql_pool() -> mysql_async::Pool {
    mysql_async::Pool::new(mysql_url().as_str())
}

/// A database of its own on the MySQL server, dropped (best effort) on drop.
pub struct MysqlDatabase {
    name: String,
    pool: mysql_async::Pool,
}

impl MysqlDatabase {
    pub async fn new(prefix: &str) -> Self {
        use mysql_async::prelude::Queryable;
        let name = unique_name(prefix);
        let mut conn = mysql_pool()
            .get_conn()
            .await
            .unwrap_or_else(|e| panic!("connect to {}: {e}", mysql_url()));
        conn.query_drop(format!("CREATE DATABASE `{name}`"))
            .await
            .unwrap_or_else(|e| panic!("create database {name}: {e}"));
        drop(conn);
        let pool = mysql_async::Pool::new(format!("{}/{name}", mysql_url()).as_str());
        MysqlDatabase { name, pool }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// URL with this database: `mysql://flow:flow@127.0.0.1:PORT/NAME`.
    pub fn url(&self) -> String {
        format!("{}/{}", mysql_url(), self.name)
    }

    /// A pool whose connections use this database.
    pub fn pool(&self) -> &mysql_async::Pool {
        &self.pool
    }
}

impl Drop for MysqlDatabase {
    fn drop(&mut self) {
        use mysql_async::prelude::Queryable;
        // A new connection on the cleanup thread: the test's pool lives on the test's
        // runtime, which is blocked here until the cleanup ends.
        let (url, name) = (mysql_url(), self.name.clone());
        block_on_thread(async move {
            if let Ok(mut conn) = mysql_async::Conn::from_url(url.as_str()).await {
                let _ = conn
                    .query_drop(format!("DROP DATABASE IF EXISTS `{name}`"))
                    .await;
                let _ = conn.disconnect().await;
            }
        });
    }
}

// ------------------------------------------------------------------ PostgreSQL

/// `postgres://postgres@127.0.0.1:PORT/postgres` (trust authentication).
pub fn pg_url() -> String {
    env("FLOW_TEST_PG_URL")
}

/// The URL of another database on the same PostgreSQL server.
pub fn pg_url_for(database: &str) -> String {
    let url = pg_url();
    let base = url.rsplit_once('/').map_or(url.as_str(), |(b, _)| b);
    format!("{base}/{database}")
}

/// Directory with psql, pg_dump, pg_restore … of PostgreSQL 15.
pub fn pg_bin() -> PathBuf {
    PathBuf::from(env("FLOW_TEST_PG_BIN"))
}

/// Runs SQL with psql (unaligned, tuples only) on `url`; panics with psql's stderr.
pub fn psql(url: &str, sql: &str) -> String {
    let out = std::process::Command::new(pg_bin().join("psql"))
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-tA",
            "-d",
            url,
            "-c",
            sql,
        ])
        .output()
        .expect("psql should run (FLOW_TEST_PG_BIN)");
    assert!(
        out.status.success(),
        "psql on {url} failed on {sql:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A database of its own on the PostgreSQL server, dropped (best effort) on drop.
pub struct PgDatabase {
    name: String,
}

impl PgDatabase {
    pub fn new(prefix: &str) -> Self {
        let name = unique_name(prefix);
        psql(&pg_url(), &format!("CREATE DATABASE {name}"));
        PgDatabase { name }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn url(&self) -> String {
        pg_url_for(&self.name)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = std::process::Command::new(pg_bin().join("psql"))
            .args(["-X", "-q", "-d", &pg_url(), "-c"])
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .output();
    }
}

/// A request to a stand-in's control API (`/_standin/…`, with curl): the HTTP status
/// and the JSON body (Null when there is none).
pub fn standin_control(
    url: &str,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> (u16, serde_json::Value) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args([
        "-sS",
        "--max-time",
        "10",
        "-X",
        method,
        "-w",
        "\n%{http_code}",
    ]);
    if let Some(body) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary"])
            .arg(body.to_string());
    }
    let out = cmd
        .arg(format!("{url}{path}"))
        .output()
        .expect("curl should run (scripts/services installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let (json_text, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    let code = code.trim().parse().unwrap_or_else(|_| {
        panic!(
            "no HTTP status from the stand-in at {url}{path}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (
        code,
        serde_json::from_str(json_text).unwrap_or(serde_json::Value::Null),
    )
}
