//! `sql` steps through `flow apply`: several statements on ClickHouse (18.16 and the
//! modern engine) and on MySQL (MariaDB), rendered from templates with variables and
//! environment values; a failing statement fails the step with the server's message
//! and never shows the password.

mod support;

use std::process::Command;

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
