//! Conformance suite of the yb_backup.py contract stand-in (support/yb_backup/,
//! `FLOW_TEST_YB_BACKUP`): the argument surface, stdout contract and exit codes of
//! YugabyteDB's `managed/devops/bin/yb_backup.py` (commit 008a3b8, ENGINES-NEXT.md 3),
//! with the logical part done on the stack's PostgreSQL: create on the source cluster,
//! upload to the stack's S3, restore into a renamed database on the target cluster.

mod support;

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Output};

use serde_json::Value;
use support::{env, psql, unique_name, PgDatabase, S3Bucket};

// ------------------------------------------------------------------ helpers

fn target_url() -> String {
    env("FLOW_TEST_PG_TARGET_URL")
}

/// `postgres://…@127.0.0.1:PORT/db` → PORT.
fn port_of(url: &str) -> String {
    let after = url.rsplit_once('@').map_or(url, |(_, a)| a);
    let hostport = after.split('/').next().unwrap_or_default();
    hostport
        .rsplit_once(':')
        .expect("a port in the URL")
        .1
        .to_string()
}

fn url_on(cluster: &str, db: &str) -> String {
    let base = cluster.rsplit_once('/').map_or(cluster, |(b, _)| b);
    format!("{base}/{db}")
}

/// A database on the target cluster, dropped on drop (made by the restore under test).
struct TargetDb(String);

impl Drop for TargetDb {
    fn drop(&mut self) {
        let _ = Command::new(support::pg_bin().join("psql"))
            .args(["-X", "-q", "-d", &target_url(), "-c"])
            .arg(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.0))
            .output();
    }
}

/// Runs the stand-in with the stack's S3 in the environment, as the real script's
/// s3cmd configuration reads it.
fn yb_backup(args: &[&str], extra_env: &[(&str, &str)]) -> Output {
    let endpoint = env("FLOW_TEST_S3_ENDPOINT");
    let mut cmd = Command::new(env("FLOW_TEST_YB_BACKUP"));
    cmd.args(args)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_HOST_BASE", endpoint.trim_start_matches("http://"))
        .env("PATH_STYLE_ACCESS", "true")
        .env("PGUSER", "postgres")
        .env_remove("YB_BACKUP_STANDIN_FAIL");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.output()
        .expect("the yb_backup.py stand-in should run (FLOW_TEST_YB_BACKUP)")
}

/// The one JSON line the command prints on stdout.
fn result_line(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "exactly one JSON line on stdout, got {stdout:?}; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{:?} is not JSON: {e}", lines[0]))
}

fn create_args<'a>(port: &'a str, location: &'a str, keyspace: &'a str) -> Vec<&'a str> {
    vec![
        "create",
        "--masters",
        "yb-master-0.yb-masters.db.svc.cluster.local:7100,127.0.0.1:7100",
        "--ysql_host",
        "127.0.0.1",
        "--ysql_port",
        port,
        "--backup_location",
        location,
        "--storage_type",
        "s3",
        "--keyspace",
        keyspace,
        "--k8s_config",
        r#"{"db": "/nonexistent/kubeconfig"}"#,
        "-j",
        "4",
    ]
}

fn restore_args<'a>(port: &'a str, location: &'a str, keyspace: &'a str) -> Vec<&'a str> {
    vec![
        "restore",
        "--masters",
        "127.0.0.1:7100",
        "--ysql_host",
        "127.0.0.1",
        "--ysql_port",
        port,
        "--backup_location",
        location,
        "--storage_type",
        "s3",
        "--keyspace",
        keyspace,
        "-j",
        "2",
    ]
}

/// A source database with rows worth comparing: NULLs, quotes, unicode, text that looks
/// like the dump's own `DATABASE <name>` lines, a sequence and a foreign key.
fn source_db() -> PgDatabase {
    let db = PgDatabase::new("yb_src");
    let name = db.name().to_string();
    psql(
        &db.url(),
        &format!(
            "CREATE TABLE owners (id serial PRIMARY KEY, name text NOT NULL); \
             CREATE TABLE items (id bigint PRIMARY KEY, owner int REFERENCES owners, \
                                 note text, price numeric(12,2), seen timestamptz); \
             INSERT INTO owners (name) SELECT 'owner ' || g FROM generate_series(1, 50) g; \
             INSERT INTO items SELECT g, 1 + g % 50, \
                    CASE WHEN g % 7 = 0 THEN NULL ELSE 'it''s ünïcode ' || g END, \
                    g * 1.25, '2024-01-01 00:00:00+00'::timestamptz + g * interval '1 minute' \
               FROM generate_series(1, 2000) g; \
             INSERT INTO items VALUES (5000, 1, 'ALTER DATABASE {name} \\connect {name}', 0, NULL)"
        ),
    );
    db
}

/// count and an order-independent digest of every row of the two tables.
fn digest(url: &str) -> String {
    psql(
        url,
        "SELECT (SELECT count(*) FROM items) || ' ' || \
                (SELECT md5(string_agg(i::text, ',' ORDER BY id)) FROM items i) || ' ' || \
                (SELECT md5(string_agg(o::text, ',' ORDER BY id)) FROM owners o) || ' ' || \
                (SELECT last_value FROM owners_id_seq)",
    )
}

// ------------------------------------------------------------------ create → restore

#[tokio::test]
async fn create_then_restore_into_a_renamed_database_gives_the_same_rows() {
    let source = source_db();
    let bucket = S3Bucket::new("yb-backup").await;
    let location = format!("s3://{}/backups/run1", bucket.name());
    let keyspace = format!("ysql.{}", source.name());
    let src_port = port_of(&support::pg_url());

    let out = yb_backup(&create_args(&src_port, &location, &keyspace), &[]);
    assert_eq!(out.status.code(), Some(0));
    let created = result_line(&out);
    let snapshot_url = format!("{location}/keyspace-{keyspace}");
    assert_eq!(created, serde_json::json!({ "snapshot_url": snapshot_url }));

    // What the real script uploads: the metadata file and YSQLDump, each with a sidecar.
    let listed = bucket
        .client()
        .list_objects_v2()
        .bucket(bucket.name())
        .prefix(format!("backups/run1/keyspace-{keyspace}/"))
        .send()
        .await
        .unwrap();
    let keys: Vec<String> = listed
        .contents()
        .iter()
        .filter_map(|o| o.key())
        .map(|k| k.rsplit('/').next().unwrap().to_string())
        .collect();
    for name in [
        "SnapshotInfoPB",
        "SnapshotInfoPB.sha256",
        "YSQLDump",
        "YSQLDump.sha256",
    ] {
        assert!(keys.iter().any(|k| k == name), "{name} uploaded: {keys:?}");
    }

    let copy = TargetDb(unique_name("yb_copy"));
    let out = yb_backup(
        &restore_args(
            &port_of(&target_url()),
            &snapshot_url,
            &format!("ysql.{}", copy.0),
        ),
        &[],
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(result_line(&out), serde_json::json!({ "success": true }));

    let copy_url = url_on(&target_url(), &copy.0);
    assert_eq!(
        digest(&copy_url),
        digest(&source.url()),
        "same rows, same sequence"
    );
    assert_eq!(
        psql(
            &copy_url,
            "SELECT count(*) FROM pg_constraint WHERE contype = 'f'"
        ),
        "1",
        "the foreign key came with the schema"
    );

    // Restoring again into the now existing database fails, reported the script's way.
    let out = yb_backup(
        &restore_args(
            &port_of(&target_url()),
            &snapshot_url,
            &format!("ysql.{}", copy.0),
        ),
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "the real script exits 0 on failure too"
    );
    let error = result_line(&out)["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.starts_with("Backup exception: ") && error.contains("already exists"),
        "{error}"
    );
}

// ------------------------------------------------------------------ failures

#[tokio::test]
async fn injected_failures_give_the_error_line_exit_zero_or_a_kill() {
    let source = source_db();
    let bucket = S3Bucket::new("yb-fail").await;
    let location = format!("s3://{}/b", bucket.name());
    let keyspace = format!("ysql.{}", source.name());
    let src_port = port_of(&support::pg_url());
    let tgt_port = port_of(&target_url());

    // create fails at its snapshot: the error line, exit code 0, nothing uploaded
    let out = yb_backup(
        &create_args(&src_port, &location, &keyspace),
        &[("YB_BACKUP_STANDIN_FAIL", "create_snapshot")],
    );
    assert_eq!(out.status.code(), Some(0));
    let line = result_line(&out);
    assert!(
        line.get("snapshot_url").is_none() && line.get("success").is_none(),
        "{line}"
    );
    assert_eq!(
        line["error"],
        "Backup exception: injected failure at phase create_snapshot (YB_BACKUP_STANDIN_FAIL)"
    );
    let listed = bucket
        .client()
        .list_objects_v2()
        .bucket(bucket.name())
        .send()
        .await
        .unwrap();
    assert!(
        listed.contents().is_empty(),
        "a failed create uploads nothing"
    );

    let out = yb_backup(&create_args(&src_port, &location, &keyspace), &[]);
    let snapshot_url = result_line(&out)["snapshot_url"]
        .as_str()
        .unwrap()
        .to_string();

    // restore fails after the schema, before the data: the database is left behind
    // empty, as the real script leaves it when restore_snapshot fails
    let partial = TargetDb(unique_name("yb_partial"));
    let out = yb_backup(
        &restore_args(&tgt_port, &snapshot_url, &format!("ysql.{}", partial.0)),
        &[("YB_BACKUP_STANDIN_FAIL", "restore_snapshot")],
    );
    assert_eq!(out.status.code(), Some(0));
    assert!(result_line(&out)["error"]
        .as_str()
        .is_some_and(|e| e.contains("restore_snapshot")));
    assert_eq!(
        psql(
            &url_on(&target_url(), &partial.0),
            "SELECT count(*) FROM items"
        ),
        "0"
    );

    // killed mid-restore: no result line at all, SIGKILL as the exit status
    let killed = TargetDb(unique_name("yb_killed"));
    let out = yb_backup(
        &restore_args(&tgt_port, &snapshot_url, &format!("ysql.{}", killed.0)),
        &[("YB_BACKUP_STANDIN_FAIL", "download:kill")],
    );
    assert_eq!(out.status.code(), None);
    assert_eq!(out.status.signal(), Some(9));
    assert!(out.stdout.is_empty(), "no JSON line from a killed run");

    // a bad injection spec is named, not ignored
    let out = yb_backup(
        &restore_args(&tgt_port, &snapshot_url, "ysql.never_made"),
        &[("YB_BACKUP_STANDIN_FAIL", "restore:later")],
    );
    let error = result_line(&out)["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        error.contains("YB_BACKUP_STANDIN_FAIL") && error.contains("restore_snapshot"),
        "{error}"
    );
}

#[tokio::test]
async fn a_changed_dump_fails_its_checksum() {
    let source = source_db();
    let bucket = S3Bucket::new("yb-sum").await;
    let location = format!("s3://{}/b", bucket.name());
    let keyspace = format!("ysql.{}", source.name());
    let out = yb_backup(
        &create_args(&port_of(&support::pg_url()), &location, &keyspace),
        &[],
    );
    let snapshot_url = result_line(&out)["snapshot_url"]
        .as_str()
        .unwrap()
        .to_string();

    let key = format!("b/keyspace-{keyspace}/YSQLDump");
    bucket
        .client()
        .put_object()
        .bucket(bucket.name())
        .key(&key)
        .body(aws_sdk_s3::primitives::ByteStream::from_static(
            b"DROP TABLE items;\n",
        ))
        .send()
        .await
        .unwrap();

    let copy = TargetDb(unique_name("yb_sum"));
    let out = yb_backup(
        &restore_args(
            &port_of(&target_url()),
            &snapshot_url,
            &format!("ysql.{}", copy.0),
        ),
        &[],
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        result_line(&out)["error"],
        format!("Backup exception: Check-sum for {snapshot_url}/YSQLDump is invalid")
    );
    assert_eq!(
        psql(
            &target_url(),
            &format!(
                "SELECT count(*) FROM pg_database WHERE datname = '{}'",
                copy.0
            )
        ),
        "0",
        "nothing restored from a corrupt backup"
    );
}

#[test]
fn usage_errors_exit_2_and_what_cannot_be_emulated_is_an_error() {
    // argparse: missing --masters, a -j out of 1..100, an unknown command
    for (args, says) in [
        (vec!["create", "--backup_location", "s3://b/x"], "--masters"),
        (
            vec![
                "create",
                "--masters",
                "m:7100",
                "--backup_location",
                "s3://b/x",
                "-j",
                "0",
            ],
            "between 1 and 100",
        ),
        (
            vec![
                "copy",
                "--masters",
                "m:7100",
                "--backup_location",
                "s3://b/x",
            ],
            "invalid choice",
        ),
        (vec!["create", "--masters", "m:7100"], "--backup_location"),
    ] {
        let out = yb_backup(&args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?}: no JSON on a usage error");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }

    // What the stand-in cannot do is refused with the reason, in the script's error form.
    let base = [
        "restore",
        "--masters",
        "127.0.0.1:7100",
        "--backup_location",
        "s3://b/x",
    ];
    for (extra, says) in [
        (vec!["--restore_time", "1700000000000000"], "point-in-time"),
        (vec!["--keyspace", "ycql_ks"], "YCQL"),
        (vec!["--storage_type", "nfs"], "nfs"),
        (vec!["--k8s_config", "[1]"], "k8s"),
    ] {
        let args: Vec<&str> = base.iter().copied().chain(extra.iter().copied()).collect();
        let out = yb_backup(&args, &[]);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let error = result_line(&out)["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            error.starts_with("Backup exception: ") && error.contains(says),
            "{args:?}: {error}"
        );
    }
}

#[tokio::test]
async fn a_keyspace_that_is_not_a_plain_database_name_is_refused() {
    // `--dbname` of pg_dump / pg_restore takes a connection string when the value has
    // `=` or a URI prefix: a keyspace must never redirect the dump to another server or
    // database, and an empty name must not fall back to the user's default database.
    let bucket = S3Bucket::new("yb-name").await;
    let location = format!("s3://{}/b", bucket.name());
    let port = port_of(&support::pg_url());
    for keyspace in [
        "ysql.",
        "ysql.host=127.0.0.1 port=1 dbname=postgres",
        "ysql.postgresql://127.0.0.1:1/postgres",
        "ysql.Mixed",
        "ysql.a b",
    ] {
        for args in [
            create_args(&port, &location, keyspace),
            restore_args(&port, &location, keyspace),
        ] {
            let out = yb_backup(&args, &[]);
            assert_eq!(out.status.code(), Some(0), "{args:?}");
            let line = result_line(&out);
            let error = line["error"].as_str().unwrap_or_default();
            assert!(
                error.starts_with("Backup exception: ")
                    && error.contains("not a plain database name"),
                "{} {keyspace:?}: {line}",
                args[0]
            );
        }
    }
    let listed = bucket
        .client()
        .list_objects_v2()
        .bucket(bucket.name())
        .send()
        .await
        .unwrap();
    assert!(listed.contents().is_empty(), "nothing was backed up");
}
