//! The shape of each strategy's task graph, through `flow plan --offline --format json`:
//! every task of a small plan and the tasks it waits for. These pin what each strategy
//! expands to (and so where verify stands before destroy), whatever module the
//! expansion lives in.

use std::process::Command;

/// `deps! { "task" <- ["dep", …]; … }`: the expected graph, tasks and dependencies sorted.
macro_rules! deps {
    ($($task:literal <- [$($dep:literal),* $(,)?]);* $(;)?) => {{
        let mut graph: Vec<(String, Vec<String>)> = vec![$(
            ($task.to_string(), {
                let mut d: Vec<String> = vec![$($dep.to_string()),*];
                d.sort();
                d
            })
        ),*];
        graph.sort();
        graph
    }};
}

/// Every task of the plan `text` and its dependencies, as `flow plan` shows them.
fn shape(text: &str) -> Vec<(String, Vec<String>)> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plan.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_flow"))
        .args(["plan", "--offline", "--format", "json"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "flow plan: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut graph: Vec<(String, Vec<String>)> = plan["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let mut deps: Vec<String> = t["depends_on"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_str().unwrap().to_string())
                .collect();
            deps.sort();
            (t["id"].as_str().unwrap().to_string(), deps)
        })
        .collect();
    graph.sort();
    graph
}

/// Export: split, per partition export → verify, the manifest after every verify; a step
/// `after` the table waits for all of the table's tasks.
#[test]
fn export_per_partition_then_a_manifest_then_an_exec_step() {
    let plan = r#"
[plan]
name = "shape-export"
[connections.ch]
kind = "clickhouse"
url = "http://127.0.0.1:8123"
[connections.out]
kind = "fs"
path = "out"
[[tables]]
source = "ch"
database = "db"
table = "t"
strategy = "export"
target = "out"
mode = "partition"
partition_expr = "toYYYYMM(d)"
partitions = ["201501", "201502"]
path = "t/{{ partition_id }}.csv"
[[steps]]
id = "notify"
kind = "exec"
run = "true"
after = ["db.t"]
"#;
    assert_eq!(
        shape(plan),
        deps! {
        "db.t/201501/export" <- ["db.t/split"];
        "db.t/201501/verify" <- ["db.t/201501/export"];
        "db.t/201502/export" <- ["db.t/split"];
        "db.t/201502/verify" <- ["db.t/201502/export"];
        "db.t/manifest" <- ["db.t/201501/verify", "db.t/201502/verify"];
        "db.t/split" <- [];
        "notify" <- ["db.t/201501/export", "db.t/201501/verify", "db.t/201502/export", "db.t/201502/verify", "db.t/manifest", "db.t/split"];
        }
    );
}

/// Export cut by `max_rows`: offline each partition is one export (its chunks are known
/// after the split); a `verifies` step after the table.
#[test]
fn export_with_chunks_and_a_verifying_sql_step() {
    let plan = r#"
[plan]
name = "shape-chunks"
[connections.ch]
kind = "clickhouse"
url = "http://127.0.0.1:8123"
[connections.out]
kind = "fs"
path = "out"
[[tables]]
source = "ch"
database = "db"
table = "t"
strategy = "export"
target = "out"
mode = "partition"
partition_expr = "toYYYYMM(d)"
partitions = ["201501"]
split_by = "id"
max_rows = 1000
path = "t/{{ partition_id }}/{{ chunk }}.csv"
[[steps]]
id = "check"
kind = "sql"
connection = "ch"
sql = "SELECT 1"
verifies = true
after = ["db.t"]
"#;
    assert_eq!(
        shape(plan),
        deps! {
        "check" <- ["db.t/201501/export", "db.t/201501/verify", "db.t/manifest", "db.t/split"];
        "db.t/201501/export" <- ["db.t/split"];
        "db.t/201501/verify" <- ["db.t/201501/export"];
        "db.t/manifest" <- ["db.t/201501/verify"];
        "db.t/split" <- [];
        }
    );
}

/// Copy with a swap: per partition load → verify; the swap waits for every verify.
#[test]
fn copy_loads_and_verifies_each_partition_before_the_swap() {
    let plan = r#"
[plan]
name = "shape-copy"
[connections.ch]
kind = "clickhouse"
url = "http://127.0.0.1:8123"
[[tables]]
source = "ch"
database = "db"
table = "t"
strategy = "copy"
target_database = "db2"
partitions = ["201501", "201502"]
swap = true
"#;
    assert_eq!(
        shape(plan),
        deps! {
        "db.t/201501/load" <- ["db.t/prepare", "db.t/split"];
        "db.t/201501/verify" <- ["db.t/201501/load"];
        "db.t/201502/load" <- ["db.t/prepare", "db.t/split"];
        "db.t/201502/verify" <- ["db.t/201502/load"];
        "db.t/prepare" <- [];
        "db.t/split" <- [];
        "db.t/swap" <- ["db.t/201501/verify", "db.t/201502/verify"];
        }
    );
}

/// s3-policy: per partition load → verify → drop; the catch-up after every drop, the
/// full verify after the catch-up, the swap after it, cleanup last.
#[test]
fn s3_policy_verifies_before_each_drop_and_the_full_verify_before_the_swap() {
    let plan = r#"
[plan]
name = "shape-policy"
[connections.ch]
kind = "clickhouse"
url = "http://127.0.0.1:8123"
[[tables]]
source = "ch"
database = "db"
table = "t"
strategy = "s3-policy"
storage_policy = "s3"
partitions = ["201501", "201502"]
keep_old = false
"#;
    assert_eq!(
        shape(plan),
        deps! {
        "db.t/201501/drop" <- ["db.t/201501/verify"];
        "db.t/201501/load" <- ["db.t/prepare", "db.t/split"];
        "db.t/201501/verify" <- ["db.t/201501/load"];
        "db.t/201502/drop" <- ["db.t/201502/verify"];
        "db.t/201502/load" <- ["db.t/prepare", "db.t/split"];
        "db.t/201502/verify" <- ["db.t/201502/load"];
        "db.t/catch-up" <- ["db.t/201501/drop", "db.t/201502/drop", "db.t/prepare"];
        "db.t/cleanup" <- ["db.t/swap"];
        "db.t/prepare" <- [];
        "db.t/split" <- [];
        "db.t/swap" <- ["db.t/verify"];
        "db.t/verify" <- ["db.t/catch-up"];
        }
    );
}

const VOLUME_CONNECTIONS: &str = r#"
[connections.aws]
kind = "ec2"
region = "us-east-1"
[connections.k8s]
kind = "kubernetes"
kubeconfig = "kubeconfig"
"#;

/// ebs-copy: the source runs again as soon as the snapshot is taken; the new claim is
/// bound after the verify of the new volume; a step before the volume (quiesce waits
/// for it) and one after it (waits for all its tasks).
#[test]
fn ebs_copy_snapshots_restores_and_verifies_before_the_bind() {
    let plan = format!(
        r#"
[plan]
name = "shape-ebs-copy"
{VOLUME_CONNECTIONS}
[[volumes]]
name = "ch-0"
strategy = "ebs-copy"
ec2 = "aws"
source = "k8s"
namespace = "db"
claim = "data-ch-0"
statefulset = "ch"
target_namespace = "db-copy"
after = ["freeze"]
[[steps]]
id = "freeze"
kind = "exec"
run = "true"
[[steps]]
id = "check"
kind = "exec"
run = "true"
after = ["ch-0"]
"#
    );
    assert_eq!(
        shape(&plan),
        deps! {
            "freeze" <- [];
            "ch-0/quiesce" <- ["freeze"];
            "ch-0/snapshot" <- ["ch-0/quiesce"];
            "ch-0/unquiesce" <- ["ch-0/snapshot"];
            "ch-0/restore" <- ["ch-0/snapshot"];
            "ch-0/verify" <- ["ch-0/restore"];
            "ch-0/bind" <- ["ch-0/verify"];
            "check" <- ["ch-0/quiesce", "ch-0/snapshot", "ch-0/unquiesce", "ch-0/restore",
                        "ch-0/verify", "ch-0/bind"];
        }
    );
}

/// ebs-swap: the destructive swap after the verify, and the StatefulSet scaled back
/// only after the swap (its claim must exist again first).
#[test]
fn ebs_swap_verifies_before_the_swap_and_scales_back_after_it() {
    let plan = format!(
        r#"
[plan]
name = "shape-ebs-swap"
{VOLUME_CONNECTIONS}
[[volumes]]
name = "ch-0"
strategy = "ebs-swap"
ec2 = "aws"
source = "k8s"
namespace = "db"
claim = "data-ch-0"
statefulset = "ch"
"#
    );
    assert_eq!(
        shape(&plan),
        deps! {
            "ch-0/quiesce" <- [];
            "ch-0/snapshot" <- ["ch-0/quiesce"];
            "ch-0/restore" <- ["ch-0/snapshot"];
            "ch-0/verify" <- ["ch-0/restore"];
            "ch-0/swap" <- ["ch-0/verify"];
            "ch-0/unquiesce" <- ["ch-0/swap"];
        }
    );
}
