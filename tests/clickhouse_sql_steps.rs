//! `sql` steps through `flow apply`: several statements on ClickHouse (18.16 and the
//! modern engine) and on MySQL (MariaDB), rendered from templates with variables and
//! environment values; a failing statement fails the step with the server's message
//! and never shows the password; a second Ctrl-C kills a running statement on the
//! server.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn apply(dir: &std::path::Path, plan: &str, env: &[(&str, &str)]) -> std::process::Output {
    let path = dir.join("plan.toml");
    std::fs::write(&path, plan).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flow"));
    cmd.arg("apply").arg(&path).arg("--progress").arg("plain");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// `mysql://user:pass@host:port` → (`mysql://host:port`, user, pass).
fn split_mysql_url(url: &str) -> (String, String, String) {
    let rest = url.strip_prefix("mysql://").unwrap();
    let (creds, host) = rest.split_once('@').unwrap();
    let (user, pass) = creds.split_once(':').unwrap();
    (format!("mysql://{host}"), user.into(), pass.into())
}

#[test]
fn sql_steps_run_on_clickhouse_and_mysql() {
    let old = support::ChDatabase::new(&support::ch_url(), "steps");
    let new = support::ChDatabase::new(&support::chdb_url(), "steps");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let my = rt.block_on(support::MysqlDatabase::new("steps"));
    let (my_url, my_user, my_pass) = split_mysql_url(&support::mysql_url());
    let dir = tempfile::tempdir().unwrap();
    let plan = format!(
        r#"
[plan]
name = "steps"
[plan.vars]
n = "3"

[connections.old]
kind = "clickhouse"
url = "{ch_url}"
[connections.new]
kind = "clickhouse"
url = "{chdb_url}"
[connections.my]
kind = "mysql"
url = "{my_url}"
user = "{my_user}"
password = "${{env:FLOW_TEST_MY_PASSWORD}}"
database = "{my_db}"

[[steps]]
id = "old-table"
kind = "sql"
connection = "old"
sql = """
CREATE TABLE {old_db}.t (x UInt32, s String) ENGINE = MergeTree ORDER BY x;
-- a comment; with a semicolon
INSERT INTO {old_db}.t SELECT number, 'a;b' FROM system.numbers LIMIT {{{{ vars.n }}}};
"""

[[steps]]
id = "new-table"
kind = "sql"
connection = "new"
after = ["old-table"]
sql = "CREATE TABLE {new_db}.t (x UInt32) ENGINE = MergeTree ORDER BY x; INSERT INTO {new_db}.t SELECT number FROM numbers({{{{ vars.n }}}} * 2)"

[[steps]]
id = "mysql"
kind = "sql"
connection = "my"
sql = "CREATE TABLE t (x INT, s VARCHAR(20)); INSERT INTO t VALUES (1, '{{{{ env.FLOW_TEST_STEP_VALUE }}}}'), (2, 'x;y')"
"#,
        ch_url = support::ch_url(),
        chdb_url = support::chdb_url(),
        my_db = my.name(),
        old_db = old.name(),
        new_db = new.name(),
    );
    let out = apply(
        dir.path(),
        &plan,
        &[
            ("FLOW_TEST_MY_PASSWORD", my_pass.as_str()),
            ("FLOW_TEST_STEP_VALUE", "from-env"),
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        old.exec(&format!("SELECT count(), any(s) FROM {}.t", old.name()))
            .trim(),
        "3\ta;b"
    );
    assert_eq!(
        new.exec(&format!("SELECT count() FROM {}.t", new.name()))
            .trim(),
        "6"
    );
    let rows: Vec<(i32, String)> = rt.block_on(async {
        use mysql_async::prelude::Queryable;
        let mut conn = my.pool().get_conn().await.unwrap();
        conn.query("SELECT x, s FROM t ORDER BY x").await.unwrap()
    });
    assert_eq!(rows, vec![(1, "from-env".into()), (2, "x;y".into())]);

    // A failing statement: the step fails with the server's message, not the password.
    let dir = tempfile::tempdir().unwrap();
    let plan = format!(
        r#"
[plan]
name = "steps-fail"
retries = 1

[connections.my]
kind = "mysql"
url = "{my_url}"
user = "{my_user}"
password = "${{env:FLOW_TEST_MY_PASSWORD}}"
database = "{}"

[[steps]]
id = "bad"
kind = "sql"
connection = "my"
# A typo flow cannot classify: the step says it removes nothing.
destructive = false
sql = "SELEC 1"
"#,
        my.name()
    );
    let out = apply(
        dir.path(),
        &plan,
        &[("FLOW_TEST_MY_PASSWORD", my_pass.as_str())],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("1064") || stderr.contains("syntax"),
        "{stderr}"
    );
    // (The test server's password is too short and common to search for; redaction
    // is unit-tested in the engine.)
    if my_pass.len() >= 8 {
        assert!(!stderr.contains(&my_pass), "the password leaked: {stderr}");
    }
}

/// Starts `flow apply` on `plan`, waits until `running` sees the step's statement on
/// the server, then presses Ctrl-C twice. Returns the exit code, the time from the
/// second Ctrl-C to the exit, and stderr.
fn interrupt_twice_during(
    dir: &std::path::Path,
    plan: &str,
    env: &[(&str, &str)],
    running: impl Fn() -> bool,
) -> (Option<i32>, Duration, String) {
    let path = dir.join("plan.toml");
    std::fs::write(&path, plan).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flow"));
    cmd.arg("apply")
        .arg(&path)
        .arg("--progress")
        .arg("plain")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let started = Instant::now();
    while !running() {
        if started.elapsed() > Duration::from_secs(30) || child.try_wait().unwrap().is_some() {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the statement never showed up on the server: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let interrupted = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if interrupted.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = interrupted.elapsed();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        took,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A database on 18.16 with a `sink` table, and a plan (no retries) whose one `sql`
/// step (with `step_keys`) inserts into it for two minutes, a row a second.
fn slow_insert_plan(prefix: &str, step_keys: &str) -> (support::ChDatabase, String) {
    let url = support::ch_url();
    let db = support::ChDatabase::new(&url, prefix);
    db.exec(&format!(
        "CREATE TABLE {}.sink (x UInt8) ENGINE = Memory",
        db.name()
    ));
    let plan = format!(
        r#"
[plan]
name = "{prefix}"
retries = 0

[connections.old]
kind = "clickhouse"
url = "{url}"

[[steps]]
id = "long"
kind = "sql"
connection = "old"
{step_keys}
sql = "INSERT INTO {db}.sink SELECT sleepEachRow(1) FROM numbers(120) SETTINGS max_block_size = 1"
"#,
        db = db.name(),
    );
    (db, plan)
}

/// Whether the slow INSERT into `<db>.sink` (two minutes, a row a second) runs on the
/// server. The statement is known by its text (flow's query_id is its own); the probe
/// itself names the table too, so it leaves itself out.
fn sink_insert_running(db: &support::ChDatabase) -> bool {
    db.exec(&format!(
        "SELECT count() FROM system.processes WHERE query LIKE '%{}.sink SELECT%' \
         AND query NOT LIKE '%system.processes%'",
        db.name()
    ))
    .trim()
        != "0"
}

/// After two Ctrl-C: flow exited 130 within 5 s saying `killed`, and the statement is
/// gone from the server within 5 s.
fn assert_killed_at_once(
    (code, took, stderr): (Option<i32>, Duration, String),
    killed: &str,
    running: impl Fn() -> bool,
) {
    eprintln!("flow exited {took:?} after the second Ctrl-C");
    assert_eq!(code, Some(130), "{stderr}");
    assert!(
        took < Duration::from_secs(5),
        "flow waited {took:?}: {stderr}"
    );
    assert!(stderr.contains(killed), "{stderr}");
    let gone = gone_within(Duration::from_secs(5), running);
    eprintln!("statement gone from the server after {gone:?}");
    assert!(gone.is_some(), "the statement still runs on the server");
}

/// Polls `running` until it is false; how long that took, or None after `limit`.
fn gone_within(limit: Duration, running: impl Fn() -> bool) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if !running() {
            return Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// A second Ctrl-C while a ClickHouse `sql` step runs a 2-minute INSERT … SELECT:
/// flow kills the statement on the server (by its query_id) and exits 130 at once,
/// and the statement is gone from `system.processes`. On ClickHouse 18.16 only: the
/// chdb front behind FLOW_TEST_CHDB_URL ignores `query_id` (chdb assigns its own), so
/// a kill by query_id cannot find the statement there.
#[test]
fn a_second_ctrl_c_kills_a_running_clickhouse_statement() {
    let (db, plan) = slow_insert_plan("steps_kill", "");
    let dir = tempfile::tempdir().unwrap();
    let running = || sink_insert_running(&db);
    let outcome = interrupt_twice_during(dir.path(), &plan, &[], running);
    assert_killed_at_once(outcome, "the statement was killed on the server", running);
}

/// The same on MySQL (MariaDB): flow kills the step's connection from another one,
/// exits 130 at once, and the statement is gone from the process list.
#[test]
fn a_second_ctrl_c_kills_a_running_mysql_statement() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let my = rt.block_on(support::MysqlDatabase::new("steps_kill"));
    let (my_url, my_user, my_pass) = split_mysql_url(&support::mysql_url());
    let dir = tempfile::tempdir().unwrap();
    let marker = my.name();
    let plan = format!(
        r#"
[plan]
name = "steps-kill-mysql"

[connections.my]
kind = "mysql"
url = "{my_url}"
user = "{my_user}"
password = "${{env:FLOW_TEST_MY_PASSWORD}}"
database = "{marker}"

[[steps]]
id = "long"
kind = "sql"
connection = "my"
sql = "SELECT SLEEP(120) AS {marker}"
"#,
    );
    let running = || {
        let n: Option<u64> = rt.block_on(async {
            use mysql_async::prelude::Queryable;
            let mut conn = my.pool().get_conn().await.unwrap();
            conn.query_first(format!(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST \
                 WHERE INFO LIKE '%SLEEP(120) AS {marker}%' AND ID <> CONNECTION_ID()"
            ))
            .await
            .unwrap()
        });
        n != Some(0)
    };
    let outcome = interrupt_twice_during(
        dir.path(),
        &plan,
        &[("FLOW_TEST_MY_PASSWORD", my_pass.as_str())],
        running,
    );
    assert_killed_at_once(outcome, "its connection was killed on the server", running);
}

/// A step past its `timeout` fails (no retries here) and its statement is killed on
/// the server, not left running while a retry would start it again.
#[test]
fn a_timed_out_clickhouse_step_kills_its_statement() {
    let (db, plan) = slow_insert_plan("steps_timeout", "timeout = \"2s\"");
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let out = apply(dir.path(), &plan, &[]);
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        took < Duration::from_secs(15),
        "flow took {took:?}: {stderr}"
    );
    assert!(stderr.contains("timed out after 2s"), "{stderr}");
    assert!(
        stderr.contains("the statement was killed on the server"),
        "{stderr}"
    );
    let running = || sink_insert_running(&db);
    assert!(
        gone_within(Duration::from_secs(5), running).is_some(),
        "the INSERT still runs on the server"
    );
}

/// A statement made destructive by `--var` (known when the plan is loaded) or by an
/// environment value (known only when the step runs) in a step not marked destructive
/// is refused, and nothing of the step is sent: the rows and the table are still there.
#[test]
fn a_destructive_statement_made_by_var_or_env_is_never_sent() {
    let db = support::ChDatabase::new(&support::ch_url(), "refuse");
    db.exec(&format!(
        "CREATE TABLE {}.t (x UInt32) ENGINE = MergeTree ORDER BY x",
        db.name()
    ));
    db.exec(&format!("INSERT INTO {}.t VALUES (1), (2)", db.name()));
    let count = || db.exec(&format!("SELECT count() FROM {}.t", db.name()));
    let plan = |name: &str, step: &str| {
        format!(
            r#"
[plan]
name = "{name}"
retries = 0
[plan.vars]
stmt = "SELECT 1"

[connections.ch]
kind = "clickhouse"
url = "{url}"

[[steps]]
id = "maybe"
kind = "sql"
connection = "ch"
{step}
"#,
            url = support::ch_url()
        )
    };
    // --var: refused when the plan is loaded, before any task runs.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plan.toml");
    std::fs::write(&path, plan("by-var", r#"sql = "{{ vars.stmt }}""#)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_flow"))
        .arg("apply")
        .arg(&path)
        .args([
            "--var",
            &format!(
                "stmt=INSERT INTO {0}.t VALUES (3); DROP TABLE {0}.t",
                db.name()
            ),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("plan.toml:16:"), "{stderr}");
    assert!(stderr.contains("DROP TABLE"), "{stderr}");
    assert_eq!(count().trim(), "2", "nothing of the step ran");

    // An environment value: the step says destructive = false, which validate takes
    // for text it cannot know; at run time the rendered text is a DROP and is refused.
    let dir = tempfile::tempdir().unwrap();
    let out = apply(
        dir.path(),
        &plan(
            "by-env",
            "destructive = false\nsql = \"{{ env.FLOW_TEST_STMT }}\"",
        ),
        &[(
            "FLOW_TEST_STMT",
            &format!(
                "INSERT INTO {0}.t VALUES (4);\n-- cleanup\ndrop /* x */ table {0}.t",
                db.name()
            ),
        )],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("maybe"), "{stderr}");
    assert!(stderr.contains("DROP TABLE"), "{stderr}");
    assert_eq!(count().trim(), "2", "nothing of the step ran");
    let status = Command::new(env!("CARGO_BIN_EXE_flow"))
        .args(["status", dir.path().join("plan.toml").to_str().unwrap()])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("failed"), "{status}");
}
