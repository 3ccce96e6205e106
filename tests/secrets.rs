//! Secrets never leave the environment: a password given as `${env:…}` appears in no
//! output, log, state database, report or error of a real run — one that fails against
//! ClickHouse 18.16 on the password and one whose exec step receives it.

mod support;

use std::path::Path;
use std::process::Command;

const SECRET: &str = "s3cr3t-pw-7c1d";

fn contains_secret(path: &Path) -> Vec<String> {
    let mut hits = Vec::new();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            hits.extend(contains_secret(&entry.unwrap().path()));
        }
    } else if let Ok(bytes) = std::fs::read(path) {
        if bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()) {
            hits.push(path.display().to_string());
        }
    }
    hits
}

#[test]
fn a_password_from_the_environment_is_never_written_anywhere() {
    let ch_url = support::env("FLOW_TEST_CH_URL");
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("secret.toml");
    std::fs::write(
        &plan,
        r#"
[plan]
name = "secret"

[connections.ch]
kind = "clickhouse"
url = "${env:FLOW_SECRET_TEST_URL}"
user = "default"
password = "${env:FLOW_SECRET_TEST_PW}"

[connections.out]
kind = "fs"
path = "out"

[[tables]]
source = "ch"
database = "system"
table = "one"
mode = "all"
strategy = "export"
target = "out"

[[steps]]
id = "uses-secret"
kind = "exec"
run = "test \"$PW\" = \"{{ env.FLOW_SECRET_TEST_PW }}\" && echo got it"
env = { PW = "${env:FLOW_SECRET_TEST_PW}" }
"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_flow"))
        .args(["apply", plan.to_str().unwrap(), "--keep-going", "-vv"])
        .env("FLOW_SECRET_TEST_URL", &ch_url)
        .env("FLOW_SECRET_TEST_PW", SECRET)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The export fails: 18.16's default user has no password, so the server refuses it.
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("default.one") || stderr.contains("system.one"),
        "{stderr}"
    );
    // The exec step got the real value (it compared it) and succeeded.
    let plain = Command::new(env!("CARGO_BIN_EXE_flow"))
        .args(["status", plan.to_str().unwrap(), "--format", "json"])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&plain.stdout);
    assert!(status.contains("uses-secret"), "{status}");
    // The exec step compared the value it was given with the real one and said so.
    let log = std::fs::read_to_string(dir.path().join(".flow/logs/secret/uses-secret.out"))
        .expect("the exec step's stdout is kept under the state folder");
    assert_eq!(log.trim(), "got it");
    assert!(stderr.contains("Wrong password"), "{stderr}");
    assert!(!stdout.contains(SECRET), "secret on stdout:\n{stdout}");
    assert!(!stderr.contains(SECRET), "secret on stderr:\n{stderr}");
    assert!(!status.contains(SECRET), "secret in status");
    let leaks = contains_secret(dir.path());
    assert!(leaks.is_empty(), "secret written to {leaks:?}");
}

/// The stem every canary value shares: a leak of any of them, whole or in part, shows it.
const CANARY: &str = "Zq7canary";

fn canary_hits(path: &Path) -> Vec<String> {
    let mut hits = Vec::new();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            hits.extend(canary_hits(&entry.unwrap().path()));
        }
    } else if let Ok(bytes) = std::fs::read(path) {
        if bytes.windows(CANARY.len()).any(|w| w == CANARY.as_bytes()) {
            hits.push(path.display().to_string());
        }
    }
    hits
}

/// Every table of the state database, every row and column, as text.
fn state_dump(db: &Path) -> String {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    tables.sort();
    let mut dump = String::new();
    for table in tables {
        let mut stmt = conn.prepare(&format!("SELECT * FROM \"{table}\"")).unwrap();
        let columns = stmt.column_count();
        let mut rows = stmt.query([]).unwrap();
        while let Some(row) = rows.next().unwrap() {
            dump.push_str(&table);
            for i in 0..columns {
                let value: rusqlite::types::Value = row.get(i).unwrap();
                dump.push_str(&format!(" | {value:?}"));
            }
            dump.push('\n');
        }
    }
    dump
}

/// A distinctive value in every secret position, every command, output format and log
/// level, a failing sql step whose server error echoes a secret back and a failing exec
/// step that prints secrets to stdout and stderr: the canary appears nowhere.
#[test]
fn canaries_in_every_secret_position_appear_in_no_output_of_any_command() {
    let ch_url = support::env("FLOW_TEST_CH_URL");
    let my_url = support::env("FLOW_TEST_MYSQL_URL");
    let my_host = my_url.rsplit_once('@').unwrap().1;
    let ch_host = ch_url.strip_prefix("http://").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("canary.toml");
    std::fs::write(
        &plan,
        r#"
[plan]
name = "canary"
retries = 0
# A secret-named variable whose name is computed when the template renders.
vars = { which = "FLOW_CANARY_COMPUTED_TOKEN" }

[connections.ch]
kind = "clickhouse"
url = "${env:FLOW_CANARY_CH_URL}"

[connections.locked]
kind = "clickhouse"
url = "${env:FLOW_CANARY_CH_URL}"
user = "default"
password = "${env:FLOW_CANARY_CH_PW}"
settings = { custom_password = "${env:FLOW_CANARY_SETTING}" }

[connections.userinfo]
kind = "clickhouse"
url = "${env:FLOW_CANARY_USERINFO_URL}"

[connections.my]
kind = "mysql"
url = "${env:FLOW_CANARY_MY_URL}"
user = "root"
password = "${env:FLOW_CANARY_MY_PW}"

[connections.lake]
kind = "s3"
bucket = "canary"
endpoint = "http://127.0.0.1:9"
region = "us-east-1"
access_key_id = "${env:FLOW_CANARY_S3_ID}"
secret_access_key = "${env:FLOW_CANARY_S3_KEY}"

[connections.out]
kind = "fs"
path = "out"

[[tables]]
name = "locked-one"
source = "locked"
database = "system"
table = "one"
mode = "all"
strategy = "export"
target = "out"

[[tables]]
name = "lake-one"
source = "ch"
database = "system"
table = "one"
mode = "all"
strategy = "export"
target = "lake"

[[tables]]
name = "userinfo-one"
source = "userinfo"
query = "SELECT 1"
strategy = "export"
target = "out"

[[steps]]
id = "echo-back"
kind = "sql"
connection = "ch"
sql = "SELECT {{ env.FLOW_CANARY_TOKEN }} FROM system.one"

[[steps]]
id = "mysql-step"
kind = "sql"
connection = "my"
sql = "SELECT 1"

[[steps]]
id = "leaky"
kind = "exec"
run = "echo \"out $PW {{ env.FLOW_CANARY_TOKEN }}\"; echo \"err $PW {{ env.FLOW_CANARY_TOKEN }}\" >&2; exit 3"
env = { PW = "${env:FLOW_CANARY_EXEC}" }

[[steps]]
id = "computed-name"
kind = "exec"
run = "echo \"computed {{ env[vars.which] }}\"; exit 4"
"#,
    )
    .unwrap();
    let envs = [
        ("FLOW_CANARY_CH_URL", ch_url.clone()),
        ("FLOW_CANARY_CH_PW", format!("{CANARY}ChPw")),
        ("FLOW_CANARY_SETTING", format!("{CANARY}Setting")),
        (
            "FLOW_CANARY_USERINFO_URL",
            format!("http://default:{CANARY}Userinfo@{ch_host}"),
        ),
        ("FLOW_CANARY_MY_URL", format!("mysql://{my_host}")),
        ("FLOW_CANARY_MY_PW", format!("{CANARY}MyPw")),
        ("FLOW_CANARY_S3_ID", format!("AKIA{CANARY}Id")),
        ("FLOW_CANARY_S3_KEY", format!("{CANARY}S3Key/+x")),
        ("FLOW_CANARY_TOKEN", format!("{CANARY}Token")),
        ("FLOW_CANARY_EXEC", format!("{CANARY}Exec")),
        ("FLOW_CANARY_COMPUTED_TOKEN", format!("{CANARY}Computed")),
    ];
    let plan_arg = plan.to_str().unwrap();
    let metrics = dir.path().join("metrics.prom");
    let metrics_arg = metrics.to_str().unwrap();
    let run = |args: &[&str], extra: &[(&str, &str)]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flow"));
        cmd.args(args).env_remove("RUST_LOG");
        for (k, v) in &envs {
            cmd.env(k, v);
        }
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let text = format!(
            "$ flow {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let mut outputs = Vec::new();
    for format in ["text", "json"] {
        let (code, text) = run(&["validate", plan_arg, "--format", format], &[]);
        assert_eq!(code, Some(0), "{text}");
        outputs.push(text);
        outputs.push(run(&["plan", plan_arg, "--offline", "--format", format], &[]).1);
    }
    for format in ["dot", "mermaid"] {
        outputs.push(run(&["graph", plan_arg, "--format", format], &[]).1);
    }
    /// Flags of one `flow apply` and the environment it adds.
    type Apply<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);
    let applies: [Apply; 4] = [
        (&["-v"], &[]),
        (&["-vv", "--log-format", "json"], &[]),
        (&[], &[("RUST_LOG", "trace")]),
        (&["--log-format", "json"], &[("RUST_LOG", "trace")]),
    ];
    for (i, (flags, extra)) in applies.iter().enumerate() {
        let mut args = vec![
            "apply",
            plan_arg,
            "--keep-going",
            "--metrics-file",
            metrics_arg,
        ];
        if i > 0 {
            args.push("--restart");
        }
        args.extend_from_slice(flags);
        let (code, text) = run(&args, extra);
        assert_eq!(code, Some(1), "{text}");
        outputs.push(text);
    }
    let last = outputs.last().unwrap().clone();
    // Each failure happened, for the reason the test set up.
    assert!(last.contains("Wrong password"), "{last}");
    assert!(last.contains("echo-back"), "{last}");
    assert!(last.contains("Access denied"), "{last}");
    assert!(last.contains("exited with code 3"), "{last}");
    assert!(
        last.contains("***"),
        "the masks show where secrets were\n{last}"
    );
    for format in ["text", "json"] {
        outputs.push(run(&["status", plan_arg, "--format", format], &[]).1);
        outputs.push(run(&["plan", plan_arg, "--format", format], &[]).1);
    }
    // The exec step did print the secrets: its kept output shows the masks.
    let logs = dir.path().join(".flow/logs/canary");
    let out_log = std::fs::read_to_string(logs.join("leaky.out")).unwrap();
    let err_log = std::fs::read_to_string(logs.join("leaky.err")).unwrap();
    assert_eq!(out_log.trim(), "out *** ***", "{out_log}");
    assert_eq!(err_log.trim(), "err *** ***", "{err_log}");
    assert!(std::fs::read_to_string(&metrics)
        .unwrap()
        .contains("migration_errors_total"));
    let dump = state_dump(&dir.path().join(".flow/canary.db"));
    assert!(dump.contains("echo-back"), "{dump}");
    for text in outputs.iter().chain([&dump]) {
        assert!(!text.contains(CANARY), "a canary leaked:\n{text}");
    }
    let leaks = canary_hits(dir.path());
    assert!(leaks.is_empty(), "a canary was written to {leaks:?}");
}

/// A panic's report goes through the redactor: the hook flow installs masks the
/// secrets a panic message may quote (the default hook would print them as they are).
/// The test runs itself as a child that panics, and reads the child's stderr.
#[test]
fn a_panic_message_is_masked_on_stderr() {
    const SECRET: &str = "panic-canary-7f3a91";
    if std::env::var_os("FLOW_TEST_PANIC_CHILD").is_some() {
        flow::redact::install([SECRET]);
        flow::redact::install_panic_hook();
        panic!("cannot reach http://u:{SECRET}@db:8123");
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_panic_message_is_masked_on_stderr",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("FLOW_TEST_PANIC_CHILD", "1")
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the child panicked: {stderr}");
    assert!(stderr.contains("panicked at"), "{stderr}");
    assert!(stderr.contains("http://u:***@db:8123"), "{stderr}");
    assert!(!stderr.contains(SECRET), "{stderr}");
}
