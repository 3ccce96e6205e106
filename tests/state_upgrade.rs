//! A state database written by an earlier flow (v0: before connection identities, manifest
//! keys and declared partitions became inputs of fingerprints; v1: when one hash of every
//! built-in template was an input of every table task; v2: when strategy settings
//! were written among the template variables, `options`) resumes on this flow
//! without running any task again: the tasks' recorded inputs are unchanged, so they
//! stay done, flow says once that it records the new inputs, and from then on those
//! inputs are compared like any other. The fixture's plan points at a server that does
//! not exist: a task that ran would fail the test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/state-v0");
    std::fs::create_dir_all(dir.path().join(".flow")).unwrap();
    std::fs::copy(src.join("plan.toml"), dir.path().join("plan.toml")).unwrap();
    std::fs::copy(
        src.join("fixture-v0.db"),
        dir.path().join(".flow/fixture-v0.db"),
    )
    .unwrap();
    let plan = dir.path().join("plan.toml");
    (dir, plan)
}

fn flow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flow"))
        .args(args)
        .env_remove("FLOW_FIXTURE_CH_URL")
        .output()
        .unwrap()
}

/// The first resume of a fixture's state: it succeeds, runs none of the 7 done tasks
/// and says the upgrade once; its output.
fn first_resume_runs_nothing(resume: &dyn Fn() -> Output) -> String {
    let first = resume();
    let all = text(&first);
    assert!(first.status.success(), "{all}");
    assert!(all.contains("0 done in this run, 7 done before"), "{all}");
    assert_eq!(all.matches("upgrade:").count(), 1, "said once: {all}");
    all
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn an_earlier_flows_state_resumes_without_rerunning_and_then_tracks_the_new_inputs() {
    let (_dir, plan) = fixture();
    let plan_arg = plan.to_str().unwrap();
    let resume = || flow(&["apply", plan_arg, "--resume", "--progress", "plain"]);

    let all = first_resume_runs_nothing(&resume);
    assert!(
        all.contains("`connection.ch`") && all.contains("`connection.out`"),
        "{all}"
    );

    let second = resume();
    let all = text(&second);
    assert!(second.status.success(), "{all}");
    assert!(!all.contains("upgrade:"), "recorded the first time: {all}");
    assert!(all.contains("0 done in this run, 7 done before"), "{all}");

    // The new inputs are compared now: a moved target makes the exports dirty.
    let moved = std::fs::read_to_string(&plan)
        .unwrap()
        .replace("path = \"out\"", "path = \"elsewhere\"");
    std::fs::write(&plan, moved).unwrap();
    let out = flow(&["plan", plan_arg, "--format", "json"]);
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tasks = json["tasks"].as_array().expect("tasks in the plan JSON");
    let export = tasks
        .iter()
        .find(|t| t["id"] == "flow_fixture.trips/201506/export")
        .unwrap_or_else(|| panic!("{all}"));
    assert_eq!(export["status"], "dirty", "{export}");
    assert!(
        export["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("connection.out"),
        "{export}"
    );
}

/// Fixture `version` (`state-<version>/plan.toml` and `fixture-<version>.db`) where it
/// was written, `/tmp/flow-fixture-<version>` (an fs target's identity is its absolute
/// path); returns its plan.
fn fixture_where_written(version: &str) -> PathBuf {
    let dir = PathBuf::from(format!("/tmp/flow-fixture-{version}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join(".flow")).unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/state-{version}"));
    let db = format!("fixture-{version}.db");
    std::fs::copy(src.join("plan.toml"), dir.join("plan.toml")).unwrap();
    std::fs::copy(src.join(&db), dir.join(".flow").join(&db)).unwrap();
    dir.join("plan.toml")
}

/// `flow plan --format json` of `plan`: (task id, status, reason) of every task.
fn statuses(plan: &str) -> Vec<(String, String, String)> {
    let out = flow(&["plan", plan, "--format", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut tasks: Vec<(String, String, String)> = json["tasks"]
        .as_array()
        .expect("tasks in the plan JSON")
        .iter()
        .map(|t| {
            (
                t["id"].as_str().unwrap_or_default().to_string(),
                t["status"].as_str().unwrap_or_default().to_string(),
                t["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    tasks.sort();
    tasks
}

#[test]
fn a_state_from_before_per_template_fingerprints_resumes_and_then_follows_each_template() {
    let plan = fixture_where_written("v1");
    let plan_arg = plan.to_str().unwrap();
    let resume = || flow(&["apply", plan_arg, "--resume", "--progress", "plain"]);

    let all = first_resume_runs_nothing(&resume);
    assert!(all.contains("`template.*`"), "{all}");
    let second = resume();
    let all = text(&second);
    assert!(
        second.status.success() && !all.contains("upgrade:"),
        "{all}"
    );
    assert!(all.contains("0 done in this run, 7 done before"), "{all}");

    // A template no task of the plan renders (here one for copies) changes: nothing is
    // dirty. Before, one hash over every template made all table tasks dirty.
    let dir = plan.parent().unwrap();
    std::fs::create_dir_all(dir.join("tpl/clickhouse")).unwrap();
    std::fs::write(
        dir.join("tpl/clickhouse/exchange_tables.sql.j2"),
        "EXCHANGE TABLES {{ a }} AND {{ b }} -- changed\n",
    )
    .unwrap();
    let with_templates = std::fs::read_to_string(&plan).unwrap().replace(
        "name = \"fixture-v1\"",
        "name = \"fixture-v1\"\ntemplates_dir = \"tpl\"",
    );
    std::fs::write(&plan, with_templates).unwrap();
    let tasks = statuses(plan_arg);
    assert_eq!(tasks.len(), 7, "{tasks:?}");
    assert!(
        tasks.iter().all(|(_, status, _)| status == "done"),
        "an unused template dirties nothing: {tasks:?}"
    );

    // The export's own SELECT changes: the exports are dirty and say which template;
    // the split, which does not render it, stays done.
    std::fs::write(
        dir.join("tpl/clickhouse/select.sql.j2"),
        flow::templates::Templates::new(None)
            .unwrap()
            .source("clickhouse/select.sql.j2")
            .unwrap()
            + "\n",
    )
    .unwrap();
    let tasks = statuses(plan_arg);
    let export = tasks
        .iter()
        .find(|(id, _, _)| id == "flow_fixture.trips/201506/export")
        .unwrap();
    assert_eq!(export.1, "dirty", "{tasks:?}");
    assert!(
        export.2.contains("template.clickhouse/select.sql.j2"),
        "{export:?}"
    );
    let split = tasks
        .iter()
        .find(|(id, _, _)| id == "flow_fixture.trips/split")
        .unwrap();
    assert_eq!(split.1, "done", "{tasks:?}");
}

#[test]
fn settings_once_written_in_options_are_refused_with_the_fix_and_resume_once_moved() {
    let plan = fixture_where_written("v2");
    let plan_arg = plan.to_str().unwrap();
    let resume = || flow(&["apply", plan_arg, "--resume", "--progress", "plain"]);

    // As written then: refused at each setting's line, with the line to write, and
    // nothing runs.
    let out = resume();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    for (key, fix) in [
        ("verify_read_back", "`settings.verify_read_back = true`"),
        ("manifest", "`settings.manifest = \"trips/_manifest.json\"`"),
        ("swap_with", "`settings.swap_with = \"trips_live\"`"),
        ("to_volume", "`settings.to_volume = \"cold\"`"),
    ] {
        assert!(
            all.contains(&format!("`options.{key}` is a setting of strategy")) && all.contains(fix),
            "{key}: {all}"
        );
    }

    // Rewritten the way the errors say: every task recorded then is still done, by the
    // same inputs (no upgrade to say), and none runs — the servers do not exist.
    let moved = std::fs::read_to_string(&plan)
        .unwrap()
        .replace(
            "options = { verify_read_back = \"true\", manifest = \"trips/_manifest.json\" }",
            "settings = { verify_read_back = true, manifest = \"trips/_manifest.json\" }",
        )
        .replace("options = { swap_with", "settings = { swap_with")
        .replace("options = { to_volume", "settings = { to_volume");
    assert!(!moved.contains("options ="), "{moved}");
    std::fs::write(&plan, &moved).unwrap();
    let tasks = statuses(plan_arg);
    assert!(tasks.len() > 20, "{tasks:?}");
    assert!(
        tasks.iter().all(|(_, status, _)| status == "done"),
        "{tasks:?}"
    );
    let out = resume();
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains(&format!("0 done in this run, {} done before", tasks.len())),
        "{all}"
    );
    assert!(!all.contains("upgrade:"), "{all}");

    // The settings are inputs as before: another volume dirties the move, and says so.
    std::fs::write(
        &plan,
        moved.replace("to_volume = \"cold\"", "to_volume = \"colder\""),
    )
    .unwrap();
    let tasks = statuses(plan_arg);
    let load = tasks
        .iter()
        .find(|(id, _, _)| id.starts_with("flow_fixture_v2.events/") && id.ends_with("/load"))
        .unwrap_or_else(|| panic!("{tasks:?}"));
    assert_eq!(load.1, "dirty", "{tasks:?}");
    assert!(load.2.contains("options.to_volume"), "{load:?}");
    let export = tasks
        .iter()
        .find(|(id, _, _)| id == "flow_fixture_v2.trips/201506/export")
        .unwrap_or_else(|| panic!("{tasks:?}"));
    assert_eq!(export.1, "done", "another table's setting: {tasks:?}");
}
