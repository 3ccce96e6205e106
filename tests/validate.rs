//! `flow validate`, `flow plan --offline`, `flow graph` and `flow schema` through the
//! real binary: golden error messages for every class of broken plan, and the
//! example plans all valid.

use std::path::{Path, PathBuf};
use std::process::Command;

fn flow() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flow"));
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    cmd.env_remove("RUST_LOG");
    cmd
}

fn fixtures() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/invalid");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("fixtures directory exists")
        .map(|e| e.expect("readable entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

#[test]
fn every_broken_fixture_fails_with_its_golden_message() {
    let files = fixtures();
    assert!(files.len() >= 10, "expected one fixture per error class");
    for path in files {
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let relative = format!("tests/fixtures/invalid/{name}.toml");
        let out = flow().args(["validate", &relative]).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{name}: exit code");
        let stderr = String::from_utf8(out.stderr).unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(
            stderr.contains(&format!("{relative}:")),
            "{name}: errors name file:line:col\n{stderr}"
        );
        assert!(
            stderr.contains("help:"),
            "{name}: errors say how to fix\n{stderr}"
        );
        insta::assert_snapshot!(name, format!("{stderr}---\n{stdout}"));
    }
}

#[test]
fn secrets_in_plans_are_never_echoed() {
    let out = flow()
        .args(["validate", "tests/fixtures/invalid/secret_in_plan.toml"])
        .output()
        .unwrap();
    let all =
        String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
    // The message points at the value by position; the excerpt is the only place the
    // file's own text appears, and the help never repeats the value.
    for line in all
        .lines()
        .filter(|l| l.contains("help:") || l.starts_with("error:"))
    {
        assert!(!line.contains("hunter2"), "secret echoed in: {line}");
    }
}

#[test]
fn all_example_plans_are_valid() {
    let mut plans: Vec<String> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("plans"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .map(|p| format!("plans/{}", p.file_name().unwrap().to_string_lossy()))
            .collect();
    plans.sort();
    assert!(plans.len() >= 6, "one example plan per scenario");
    let out = flow().arg("validate").args(&plans).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("ok: ")).count(),
        plans.len()
    );
}

#[test]
fn validate_json_gives_line_and_column_for_ci_annotations() {
    let out = flow()
        .args([
            "validate",
            "--format",
            "json",
            "tests/fixtures/invalid/cycle.toml",
            "plans/trips.toml",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["valid"], false);
    assert_eq!(v[0]["diagnostics"][0]["line"], 8);
    assert_eq!(v[0]["diagnostics"][0]["column"], 10);
    assert!(v[0]["diagnostics"][0]["help"]
        .as_str()
        .unwrap()
        .contains("remove one of"));
    assert_eq!(v[1]["valid"], true);
}

#[test]
fn usage_errors_exit_2() {
    let out = flow().args(["validate"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = flow()
        .args(["plan", "plans/trips.toml", "--format", "yaml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn offline_plan_json_lists_tasks_with_ids_kinds_and_dependencies() {
    let out = flow()
        .args(["plan", "plans/trips.toml", "--offline", "--format", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tasks = v["tasks"].as_array().unwrap();
    let find = |id: &str| {
        tasks
            .iter()
            .find(|t| t["id"] == id)
            .unwrap_or_else(|| panic!("task {id} in {tasks:#?}"))
    };
    assert_eq!(find("default.trips/split")["kind"], "split");
    let export = find("default.trips/201507/export");
    assert_eq!(export["kind"], "export");
    assert_eq!(
        export["depends_on"],
        serde_json::json!(["default.trips/split"])
    );
    assert_eq!(export["placement"], "streamed");
    let verify = find("default.trips/201507/verify");
    assert_eq!(
        verify["depends_on"],
        serde_json::json!(["default.trips/201507/export"])
    );
    let manifest = find("default.trips/manifest");
    assert_eq!(manifest["depends_on"].as_array().unwrap().len(), 3);
    assert_eq!(find("default.trips_np/all/export")["kind"], "export");
    // Three months, each export + verify, a split and a manifest; trips_np: 3 tasks.
    assert_eq!(tasks.len(), 3 * 2 + 2 + 3);
    assert_eq!(
        v["tables"][0]["partitions"],
        serde_json::json!(["201506", "201507", "201508"])
    );
    // Topological order: every dependency is listed before its dependent.
    let position = |id: &str| tasks.iter().position(|t| t["id"] == id).unwrap();
    for t in tasks {
        for d in t["depends_on"].as_array().unwrap() {
            assert!(position(d.as_str().unwrap()) < position(t["id"].as_str().unwrap()));
        }
    }
}

#[test]
fn offline_plan_text_marks_destructive_steps_and_server_side_work() {
    let out = flow()
        .args(["plan", "plans/s3-policy-table.toml", "--offline"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    insta::assert_snapshot!("plan_s3_policy_offline", text);
    assert!(text.contains("drop       metadata  DESTRUCTIVE"));
    assert!(text.contains("load       in server"));
}

#[test]
fn graph_dot_is_accepted_by_graphviz() {
    let out = flow()
        .args(["graph", "plans/trips.toml", "--format", "dot"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let dot_path = std::env::temp_dir().join(format!("flow-graph-{}.dot", std::process::id()));
    std::fs::write(&dot_path, &out.stdout).unwrap();
    let rendered = Command::new("dot")
        .arg("-Tsvg")
        .arg(&dot_path)
        .output()
        .expect("graphviz `dot` must be installed (scripts/services up installs it)");
    let _ = std::fs::remove_file(&dot_path);
    assert!(
        rendered.status.success(),
        "dot rejected the graph: {}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let svg = String::from_utf8(rendered.stdout).unwrap();
    assert!(svg.contains("default.trips/201506/"));
    let mermaid = flow()
        .args(["graph", "plans/pg-pipeline.toml", "--format", "mermaid"])
        .output()
        .unwrap();
    let text = String::from_utf8(mermaid.stdout).unwrap();
    assert!(text.starts_with("flowchart LR"));
    assert!(text.contains("class n3 destructive"), "{text}");
}

#[test]
fn schema_is_json_schema_of_the_plan_format() {
    let out = flow().arg("schema").output().unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["title"], "PlanFile");
    assert!(v["properties"]["tables"].is_object());
    let defs = v["$defs"].as_object().unwrap();
    assert!(defs["TableDef"]["properties"]["partition_expr"].is_object());
    assert_eq!(defs["ConnectionDef"]["additionalProperties"], false);
}

#[test]
fn completions_are_generated() {
    let out = flow().args(["completions", "bash"]).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("flow"));
}
