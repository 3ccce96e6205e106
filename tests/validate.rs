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
fn offline_plan_of_an_in_place_move_shows_its_mode_and_no_swap() {
    let out = flow()
        .args(["plan", "plans/s3-policy-in-place.toml", "--offline"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains(
            "mode: in place: the server moves the parts to volume `cold` of policy `tiered`"
        ),
        "{text}"
    );
    assert!(text.contains("drop       metadata  DESTRUCTIVE"), "{text}");
    assert!(text.contains("catch-up"), "{text}");
    assert!(
        !text.contains("swap") && !text.contains("cleanup"),
        "{text}"
    );
    let out = flow()
        .args([
            "plan",
            "plans/s3-policy-in-place.toml",
            "--offline",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json["tables"][0]["mode"]
        .as_str()
        .unwrap()
        .starts_with("in place"));
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

/// Writes `plan` into a temporary folder and runs `flow validate` on it with `args`.
fn validate_text(plan: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plan.toml");
    std::fs::write(&path, plan).unwrap();
    let out = flow()
        .arg("validate")
        .arg(&path)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const RENDERED_DROP: &str = r#"[plan]
name = "rendered"
[plan.vars]
stmt = "SELECT 1"
what = "t"

[connections.ch]
kind = "clickhouse"
url = "http://127.0.0.1:8123"

[[steps]]
id = "harmless-looking"
kind = "sql"
connection = "ch"
sql = "{{ vars.stmt }}"

[[steps]]
id = "drop-by-var"
kind = "sql"
connection = "ch"
sql = "DR{{ 'OP' }} TABLE {{ vars.what }}"
"#;

#[test]
fn a_template_that_renders_destructive_sql_in_an_unmarked_step_is_refused() {
    // The text as written holds no DROP; the rendered statement does.
    let (code, _, stderr) = validate_text(RENDERED_DROP, &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("plan.toml:21:"),
        "file:line of the step\n{stderr}"
    );
    assert!(stderr.contains("drop-by-var"), "{stderr}");
    assert!(stderr.contains("DROP TABLE"), "{stderr}");
    assert!(!stderr.contains("harmless-looking"), "{stderr}");
    // `--var` makes the other step destructive: validate sees the rendered text.
    let (code, _, stderr) = validate_text(RENDERED_DROP, &["--var", "stmt=drop table t"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("plan.toml:15:"), "{stderr}");
    assert!(stderr.contains("harmless-looking"), "{stderr}");
    assert!(
        stderr.contains("destructive = true"),
        "the fix is named\n{stderr}"
    );
}

#[test]
fn sql_that_cannot_be_classified_is_destructive_unless_the_step_says_otherwise() {
    let plan = |mark: &str| {
        format!(
            r#"[plan]
name = "unclassified"

[connections.ch]
kind = "clickhouse"
url = "http://127.0.0.1:8123"

[[steps]]
id = "odd"
kind = "sql"
connection = "ch"
sql = "FROBNICATE TABLE t 'unterminated"
{mark}
"#
        )
    };
    let (code, _, stderr) = validate_text(&plan(""), &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("odd"), "{stderr}");
    let flat = stderr.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(flat.contains("`destructive = false`"), "{stderr}");
    let (code, _, stderr) = validate_text(&plan("destructive = false"), &[]);
    assert_eq!(code, Some(0), "{stderr}");
    // A statement that is destructive stays refused even when the step says it is not.
    let lying = plan("destructive = false").replace(
        "FROBNICATE TABLE t 'unterminated",
        "SELECT 1; /* */ ALTER TABLE t DELETE WHERE 1",
    );
    let (code, _, stderr) = validate_text(&lying, &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("ALTER"), "{stderr}");
}

#[test]
fn secrets_written_in_clear_are_refused_and_never_printed() {
    const CANARY: &str = "Kx9clearcanary";
    let plan = format!(
        r#"[plan]
name = "clear"

[connections.ch]
kind = "clickhouse"
url = "http://default:{CANARY}1@127.0.0.1:8123"
password = "${{env:CH_PW:-{CANARY}2}}"
settings = {{ s3_secret_password = "{CANARY}3" }}

[connections.my]
kind = "mysql"
url = "mysql://127.0.0.1:3306"
password = "{CANARY}4${{env:MY_PW}}"

[connections.lake]
kind = "s3"
bucket = "exports"
secret_access_key = "${{env:LAKE_KEY:-{CANARY}5}}"

[[steps]]
id = "dump"
kind = "exec"
run = "true"
env = {{ PGPASSWORD = "{CANARY}6", MODE = "fast", TOKEN_FROM_ENV = "${{env:T}}" }}
"#
    );
    for format in ["text", "json"] {
        let (code, stdout, stderr) = validate_text(&plan, &["--format", format]);
        assert_eq!(code, Some(1), "{stderr}{stdout}");
        let all = format!("{stdout}{stderr}");
        assert!(!all.contains(CANARY), "a clear secret was printed:\n{all}");
        for key in [
            "url",
            "password",
            "s3_secret_password",
            "secret_access_key",
            "PGPASSWORD",
        ] {
            assert!(all.contains(key), "no error names `{key}`:\n{all}");
        }
        let messages: Vec<&str> = all
            .lines()
            .filter(|l| l.starts_with("error:") || l.contains("\"message\""))
            .collect();
        assert_eq!(messages.len(), 6, "one error per clear secret:\n{all}");
        for m in &messages {
            assert!(!m.contains("MODE"), "a plain env value is no secret: {m}");
            assert!(
                !m.contains("TOKEN_FROM_ENV"),
                "a value from the environment is fine: {m}"
            );
        }
        if format == "text" {
            for line in [6, 7, 8, 13, 18, 24] {
                assert!(
                    all.contains(&format!("plan.toml:{line}:")),
                    "line {line}:\n{all}"
                );
            }
        }
    }
}

#[test]
fn a_syntax_error_beside_a_clear_secret_does_not_show_it() {
    const CANARY: &str = "Kx9syntaxcanary";
    let plan = format!(
        "[plan]\nname = \"syntax\"\n\n[connections.ch]\nkind = \"clickhouse\"\nurl = \"http://u:{CANARY}1@127.0.0.1:8123\"\npassword = \"{CANARY}2\nuser = \"default\"\n"
    );
    let (code, stdout, stderr) = validate_text(&plan, &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("plan.toml:7:"),
        "the syntax error is shown\n{stderr}"
    );
    assert!(!format!("{stdout}{stderr}").contains(CANARY), "{stderr}");
}
