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
