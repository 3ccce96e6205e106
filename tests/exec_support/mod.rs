//! Plans made of `exec` steps, run through the real `flow` binary, for the scheduler
//! and crash tests. No servers needed: every step is a shell command in a temp dir.
//!
//! Steps record what they do by appending lines to files in the plan's folder
//! (`O_APPEND` writes of one short line are atomic), so a test can check overlap,
//! order and how often each step ran.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

/// A step of a test plan.
#[derive(Clone, Debug, Default)]
pub struct Step {
    pub id: String,
    pub run: String,
    pub after: Vec<String>,
    pub uses: Option<String>,
    pub once: bool,
}

impl Step {
    pub fn new(id: &str, run: &str) -> Self {
        Step {
            id: id.to_string(),
            run: run.to_string(),
            ..Step::default()
        }
    }

    pub fn after(mut self, ids: &[&str]) -> Self {
        self.after = ids.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn uses(mut self, connection: &str) -> Self {
        self.uses = Some(connection.to_string());
        self
    }

    pub fn once(mut self) -> Self {
        self.once = true;
        self
    }
}

/// A plan in its own temp dir.
pub struct TestPlan {
    pub dir: tempfile::TempDir,
    pub name: String,
    pub concurrency: usize,
    pub retries: u32,
    /// Connection name → (max_concurrency, pause_between).
    pub connections: BTreeMap<String, (Option<usize>, Option<String>)>,
    pub steps: Vec<Step>,
}

fn toml_str(s: &str) -> String {
    format!("{:?}", s)
}

impl TestPlan {
    pub fn new(name: &str) -> Self {
        TestPlan {
            dir: tempfile::tempdir().expect("temp dir"),
            name: name.to_string(),
            concurrency: 4,
            retries: 0,
            connections: BTreeMap::new(),
            steps: Vec::new(),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("plan.toml")
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes (or rewrites) plan.toml.
    pub fn write(&self) -> PathBuf {
        let mut t = format!(
            "[plan]\nname = {}\nconcurrency = {}\nretries = {}\nretry_backoff = \"20ms\"\n\n",
            toml_str(&self.name),
            self.concurrency,
            self.retries
        );
        for (name, (max, pause)) in &self.connections {
            t.push_str(&format!(
                "[connections.{name}]\nkind = \"fs\"\npath = {}\n",
                toml_str(&self.dir.path().join("data").display().to_string())
            ));
            if let Some(m) = max {
                t.push_str(&format!("max_concurrency = {m}\n"));
            }
            if let Some(p) = pause {
                t.push_str(&format!("pause_between = {}\n", toml_str(p)));
            }
            t.push('\n');
        }
        for s in &self.steps {
            t.push_str(&format!(
                "[[steps]]\nid = {}\nkind = \"exec\"\nrun = {}\n",
                toml_str(&s.id),
                toml_str(&s.run)
            ));
            if !s.after.is_empty() {
                let after: Vec<String> = s.after.iter().map(|a| toml_str(a)).collect();
                t.push_str(&format!("after = [{}]\n", after.join(", ")));
            }
            if let Some(u) = &s.uses {
                t.push_str(&format!("uses = {}\n", toml_str(u)));
            }
            if s.once {
                t.push_str("once = true\n");
            }
            t.push('\n');
        }
        std::fs::write(self.path(), t).expect("write plan");
        self.path()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flow"));
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("RUST_LOG", "warn")
            .env_remove("RUST_BACKTRACE");
        cmd
    }

    /// Runs `flow apply plan.toml ARGS --progress plain` to the end.
    pub fn apply(&self, args: &[&str]) -> Run {
        let mut all = vec!["apply", "plan.toml", "--progress", "plain"];
        all.extend_from_slice(args);
        Run::from(self.command(&all).output().expect("flow runs"))
    }

    /// Starts `flow apply` without waiting; stdout and stderr go to files.
    pub fn spawn_apply(&self, args: &[&str], tag: &str) -> (Child, PathBuf) {
        let mut all = vec!["apply", "plan.toml", "--progress", "plain"];
        all.extend_from_slice(args);
        let err = self.file(&format!("{tag}.stderr"));
        let child = self
            .command(&all)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err).expect("stderr file"))
            .spawn()
            .expect("flow starts");
        (child, err)
    }

    /// `flow status plan.toml --format json`.
    pub fn status(&self) -> serde_json::Value {
        let out = self
            .command(&["status", "plan.toml", "--format", "json"])
            .output()
            .expect("flow status runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    /// Status of each task by id.
    pub fn task_status(&self) -> BTreeMap<String, (String, u64)> {
        self.status()["tasks"]
            .as_array()
            .expect("tasks")
            .iter()
            .map(|t| {
                (
                    t["id"].as_str().unwrap().to_string(),
                    (
                        t["status"].as_str().unwrap().to_string(),
                        t["attempts"].as_u64().unwrap_or(0),
                    ),
                )
            })
            .collect()
    }

    /// Lines of a file in the plan's folder (empty when missing).
    pub fn lines(&self, name: &str) -> Vec<String> {
        std::fs::read_to_string(self.file(name))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// The result of a finished `flow` command.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Ids on lines starting with `word ` (the fixed status words of plain progress).
    pub fn ids(&self, word: &str) -> Vec<String> {
        self.stderr
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("{word} ")))
            .map(|rest| {
                rest.split([' ', ':'])
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect()
    }

    pub fn show(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// A shell snippet that records `start`/`end` with nanosecond times around `body`.
pub fn timed(file: &str, body: &str) -> String {
    format!(
        "echo \"start $FLOW_TASK_ID $(date +%s%N)\" >> {file}; {body}; echo \"end $FLOW_TASK_ID $(date +%s%N)\" >> {file}"
    )
}

/// The largest number of intervals open at once among the tasks in `ids` (all when
/// None), from `start`/`end` lines.
pub fn max_overlap(lines: &[String], ids: Option<&[String]>) -> usize {
    let mut events: Vec<(u128, i32)> = Vec::new();
    for line in lines {
        let parts: Vec<&str> = line.split(' ').collect();
        if parts.len() != 3 {
            continue;
        }
        if ids.is_some_and(|ids| !ids.iter().any(|i| i == parts[1])) {
            continue;
        }
        let t: u128 = parts[2].parse().expect("nanoseconds");
        // Ends sort before starts at the same instant: touching is not overlapping.
        events.push((t, if parts[0] == "start" { 1 } else { -1 }));
    }
    events.sort();
    let (mut open, mut max) = (0i32, 0i32);
    for (_, d) in events {
        open += d;
        max = max.max(open);
    }
    max as usize
}

/// Waits until `path` exists (or panics after `secs`).
pub fn wait_for_file(path: &Path, secs: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !path.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "{} did not appear",
            path.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
