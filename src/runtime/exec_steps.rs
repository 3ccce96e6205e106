//! `exec` steps: a rendered command line run with `sh -c`.
//!
//! The runner gets the command already rendered (templates are someone else's job),
//! plus extra environment, working directory and timeout ([`ExecCommand`]). Output is
//! captured to `<log_dir>/<task id>.out` and `.err` — the first attempt truncates,
//! retries append — through the run's redactor (a secret the command prints is
//! masked, as CI systems mask job logs), and the exit code is recorded in the
//! outcome's detail.
//!
//! Classification: exit 0 is success; the exit codes in `transient_exit_codes`
//! (default: 75, `EX_TEMPFAIL` from sysexits.h, "try again later") and a timeout are
//! transient and retried; any other non-zero exit or a death by signal is permanent.
//!
//! Process hygiene: the command runs in its own process group, so a Ctrl-C on the
//! terminal reaches flow (which lets running steps finish) but not the step. However
//! the attempt ends — the command exits, a cancel (second Ctrl-C), a timeout — nothing
//! of its group outlives it: SIGTERM to the whole group, then SIGKILL after
//! [`KILL_GRACE`], until no member is left; processes a finished command left behind
//! are named in the task's note. The group is on record in the state before the
//! command runs (the shell waits on its stdin for flow's go, [`GATE`]), and the record
//! goes when the group is gone; so when flow itself is killed — the shell gets SIGKILL
//! with it (Linux parent-death signal), its children do not — the next `flow apply`
//! finds the survivors and stops them before the step runs again
//! ([`process_group`](crate::exec::process_group)).
//!
//! Environment seen by the command: flow's own, plus `FLOW_TASK_ID`, `FLOW_ATTEMPT`
//! and `FLOW_LOG_DIR`, plus the step's `env` (resolved secrets, never logged).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use crate::exec::process_group::{self, GroupId, KillOnDrop};
use crate::exec::runner::{TaskContext, TaskFailure, TaskOutcome, TaskRunner};
use crate::graph::{Task, TaskId};
use crate::plan::Secret;
use crate::state::ProcessRecord;

/// Exit code treated as transient by default (`EX_TEMPFAIL`).
pub const EX_TEMPFAIL: i32 = 75;
/// How long the output of a finished command may take to reach its logs.
pub const CAPTURE_GRACE: Duration = Duration::from_secs(5);
/// Time between SIGTERM and SIGKILL when a step is stopped.
pub const KILL_GRACE: Duration = Duration::from_secs(5);
/// The shell's first script, run as `sh -c GATE sh COMMAND`: wait for flow's go on
/// stdin (sent once the group is on record), then become `sh -c COMMAND` — same pid,
/// same group — with stdin from /dev/null. If flow dies first, the read meets the end
/// of the pipe and nothing runs.
pub const GATE: &str = "read -r _ || exit 1; exec sh -c \"$1\" </dev/null";

/// A command ready to run.
#[derive(Clone, Debug)]
pub struct ExecCommand {
    /// The rendered command line, run with `sh -c`.
    pub command: String,
    /// Extra environment; values may be secrets.
    pub env: BTreeMap<String, Secret>,
    /// Working directory; None = flow's.
    pub cwd: Option<PathBuf>,
    pub timeout: Option<Duration>,
    /// Exit codes that mean "try again later".
    pub transient_exit_codes: Vec<i32>,
}

impl ExecCommand {
    pub fn new(command: impl Into<String>) -> Self {
        ExecCommand {
            command: command.into(),
            env: BTreeMap::new(),
            cwd: None,
            timeout: None,
            transient_exit_codes: vec![EX_TEMPFAIL],
        }
    }
}

/// File name stem for a task's logs: the id with each `/`-separated part made safe.
pub fn log_stem(id: &TaskId) -> PathBuf {
    let mut path = PathBuf::new();
    for part in id.as_str().split('/') {
        let clean: String = part
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '=') {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let clean = match clean.as_str() {
            "" | "." | ".." => "_".to_string(),
            _ => clean,
        };
        path.push(clean);
    }
    path
}

/// The stdout and stderr log paths of a task.
pub fn log_paths(log_dir: &Path, id: &TaskId) -> (PathBuf, PathBuf) {
    let stem = log_dir.join(log_stem(id));
    let name = stem
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    (
        stem.with_file_name(format!("{name}.out")),
        stem.with_file_name(format!("{name}.err")),
    )
}

fn open_log(path: &Path, append: bool) -> std::io::Result<std::fs::File> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(path)
}

/// The last lines of a log, for error messages.
fn tail(path: &Path, max_lines: usize) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return String::new();
    };
    let start = bytes.len().saturating_sub(4096);
    let text = String::from_utf8_lossy(&bytes[start..]);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(max_lines)..].join(" | ")
}

/// How an attempt ended, before its group is stopped.
enum Ended {
    Exited(ExitStatus),
    Cancelled,
    TimedOut(Duration),
}

/// Waits for the output of a finished command to reach its logs. A process the
/// command left behind may hold the pipes open: after [`CAPTURE_GRACE`] the rest of
/// its output is not kept.
async fn finish_captures(captures: [Option<tokio::task::JoinHandle<std::io::Result<()>>>; 2]) {
    for handle in captures.into_iter().flatten() {
        let abort = handle.abort_handle();
        if tokio::time::timeout(CAPTURE_GRACE, handle).await.is_err() {
            abort.abort();
        }
    }
}

/// Runs one command for task `id`.
pub async fn run_command(
    id: &TaskId,
    cmd: &ExecCommand,
    ctx: &TaskContext,
) -> Result<TaskOutcome, TaskFailure> {
    let (out_path, err_path) = log_paths(&ctx.log_dir, id);
    let append = ctx.attempt > 1;
    let open = |p: &Path| {
        open_log(p, append).map_err(|e| {
            TaskFailure::permanent(format!(
                "cannot open the log file {}: {e}; check that the state folder is writable",
                p.display()
            ))
        })
    };
    let stdout = open(&out_path)?;
    let stderr = open(&err_path)?;

    let mut command = tokio::process::Command::new("sh");
    command
        .arg("-c")
        .arg(GATE)
        .arg("sh")
        .arg(&cmd.command)
        .env("FLOW_TASK_ID", id.as_str())
        .env("FLOW_ATTEMPT", ctx.attempt.to_string())
        .env("FLOW_LOG_DIR", &ctx.log_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    for (name, value) in &cmd.env {
        command.env(name, value.expose());
    }
    if let Some(cwd) = &cmd.cwd {
        command.current_dir(cwd);
    }
    #[cfg(target_os = "linux")]
    {
        let parent = std::process::id();
        // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)?;
                if nix::unistd::getppid().as_raw() as u32 != parent {
                    // flow died before the death signal was armed.
                    nix::libc::_exit(1);
                }
                Ok(())
            });
        }
    }
    let mut child = command.spawn().map_err(|e| {
        let hint = match &cmd.cwd {
            Some(cwd) if !cwd.is_dir() => {
                format!("; the working directory {} does not exist", cwd.display())
            }
            _ => String::new(),
        };
        TaskFailure::permanent(format!("cannot start `sh -c`: {e}{hint}"))
    })?;

    // Output reaches its log through the run's redactor, as CI masks job logs.
    let captures = [
        child
            .stdout
            .take()
            .map(|o| tokio::spawn(crate::redact::capture(o, stdout))),
        child
            .stderr
            .take()
            .map(|e| tokio::spawn(crate::redact::capture(e, stderr))),
    ];

    // The shell waits at the gate: put its group on record, then let it go.
    let group = child
        .id()
        .ok_or_else(|| std::io::Error::other("the shell exited at once"))
        .and_then(GroupId::of_leader)
        .map_err(|e| {
            TaskFailure::permanent(format!("cannot identify the step's process group: {e}"))
        })?;
    let mut guard = KillOnDrop::new(group.clone());
    let record = ProcessRecord {
        task: id.clone(),
        attempt: ctx.attempt,
        started_at: chrono::Utc::now(),
        group: group.clone(),
    };
    if let Err(e) = ctx.processes.started(record).await {
        return Err(TaskFailure::permanent(format!(
            "the command was not run: its process group could not be recorded in the state: {e}"
        )));
    }
    let mut stdin = child.stdin.take().expect("stdin is piped");
    if let Err(e) = stdin.write_all(b"\n").await {
        return Err(TaskFailure::permanent(format!(
            "the command was not run: the shell did not take flow's go ({e})"
        )));
    }
    drop(stdin);

    let timeout = async {
        match cmd.timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let ended = tokio::select! {
        status = child.wait() => Ended::Exited(status.map_err(|e| TaskFailure::permanent(format!("waiting for the command failed: {e}")))?),
        _ = ctx.cancel.cancelled() => Ended::Cancelled,
        _ = timeout => Ended::TimedOut(cmd.timeout.unwrap_or_default()),
    };
    // However it ended, nothing of the attempt outlives it.
    let stopped = process_group::stop(&group, KILL_GRACE).await.map_err(|e| {
        TaskFailure::permanent(format!(
            "{e}; stop them by hand (`kill -KILL -- -{}`) before running the step again",
            group.pgid
        ))
    })?;
    let _ = child.wait().await;
    finish_captures(captures).await;
    guard.disarm();
    ctx.processes.ended(id);
    let stopped_text = stopped.as_ref().map(|s| s.describe());
    let status = match ended {
        Ended::Exited(status) => status,
        Ended::Cancelled => {
            return Err(TaskFailure::permanent(format!(
                "cancelled (the run was interrupted twice or lost its lock); the command was stopped{}",
                stopped_text.map(|s| format!(": {s}")).unwrap_or_default()
            )));
        }
        Ended::TimedOut(t) => {
            return Err(TaskFailure::transient(format!(
                "timed out after {}; the command was stopped{} (raise the step's `timeout` if it needs longer)",
                humantime::format_duration(t),
                stopped_text.map(|s| format!(": {s}")).unwrap_or_default()
            )));
        }
    };
    let left_behind = stopped_text.map(|s| {
        tracing::warn!(task = %id, processes = %s, "the command exited leaving processes running; stopped them");
        format!("the command left processes running; stopped them: {s}")
    });

    let outputs = vec![
        out_path.display().to_string(),
        err_path.display().to_string(),
    ];
    match status.code() {
        Some(0) => Ok(TaskOutcome {
            outputs,
            detail: serde_json::json!({ "exit_code": 0 }),
            note: left_behind,
            ..TaskOutcome::default()
        }),
        Some(code) => {
            let transient = cmd.transient_exit_codes.contains(&code);
            let stderr_tail = tail(&err_path, 3);
            let mut message = format!("command exited with code {code}");
            if transient {
                message.push_str(" (transient)");
            }
            if !stderr_tail.is_empty() {
                message.push_str(&format!("; stderr: {stderr_tail}"));
            }
            message.push_str(&format!(" (full output: {})", err_path.display()));
            if let Some(left) = &left_behind {
                message.push_str(&format!("; {left}"));
            }
            Err(TaskFailure {
                message,
                retryable: transient,
            })
        }
        None => {
            use std::os::unix::process::ExitStatusExt;
            let signal = status.signal().unwrap_or_default();
            Err(TaskFailure::permanent(format!(
                "command was killed by signal {signal} (full output: {})",
                err_path.display()
            )))
        }
    }
}

/// A runner for exec tasks; `resolve` turns a task into its command (rendering the
/// step's template, resolving its environment).
pub struct ExecRunner<F> {
    resolve: F,
}

impl<F> ExecRunner<F>
where
    F: Fn(&Task) -> Result<ExecCommand, TaskFailure> + Send + Sync + 'static,
{
    pub fn new(resolve: F) -> Self {
        ExecRunner { resolve }
    }
}

#[async_trait::async_trait]
impl<F> TaskRunner for ExecRunner<F>
where
    F: Fn(&Task) -> Result<ExecCommand, TaskFailure> + Send + Sync + 'static,
{
    async fn run(&self, task: &Task, ctx: TaskContext) -> Result<TaskOutcome, TaskFailure> {
        let cmd = (self.resolve)(task)?;
        run_command(&task.id, &cmd, &ctx).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{shared, MemoryStore, StateWriter};
    use tokio_util::sync::CancellationToken;

    /// The writer behind every test context: process groups are recorded in memory.
    fn writer() -> &'static StateWriter {
        static WRITER: std::sync::OnceLock<StateWriter> = std::sync::OnceLock::new();
        WRITER.get_or_init(|| StateWriter::spawn(shared(MemoryStore::new())))
    }

    fn ctx(dir: &Path, attempt: u32) -> TaskContext {
        TaskContext {
            cancel: CancellationToken::new(),
            attempt,
            log_dir: dir.to_path_buf(),
            dependencies: vec![],
            processes: writer().process_log(),
        }
    }

    fn id(s: &str) -> TaskId {
        TaskId(s.to_string())
    }

    #[tokio::test]
    async fn captures_output_env_and_exit_code() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = ExecCommand::new("echo \"$GREETING $FLOW_TASK_ID\"; echo oops >&2");
        cmd.env.insert("GREETING".into(), Secret::new("hello"));
        let out = run_command(&id("t/a"), &cmd, &ctx(dir.path(), 1))
            .await
            .unwrap();
        assert_eq!(out.detail["exit_code"], 0);
        let text = std::fs::read_to_string(dir.path().join("t/a.out")).unwrap();
        assert_eq!(text, "hello t/a\n");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("t/a.err")).unwrap(),
            "oops\n"
        );
    }

    #[tokio::test]
    async fn exit_75_is_transient_other_codes_are_permanent() {
        let dir = tempfile::tempdir().unwrap();
        let err = run_command(&id("a"), &ExecCommand::new("exit 75"), &ctx(dir.path(), 1))
            .await
            .unwrap_err();
        assert!(err.retryable, "{err}");
        let err = run_command(
            &id("b"),
            &ExecCommand::new("echo bad thing >&2; exit 3"),
            &ctx(dir.path(), 1),
        )
        .await
        .unwrap_err();
        assert!(!err.retryable);
        assert!(err.message.contains("code 3"), "{err}");
        assert!(err.message.contains("bad thing"), "{err}");
    }

    #[tokio::test]
    async fn timeout_stops_the_command_and_is_transient() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = ExecCommand::new("sleep 30");
        cmd.timeout = Some(Duration::from_millis(100));
        let started = std::time::Instant::now();
        let err = run_command(&id("a"), &cmd, &ctx(dir.path(), 1))
            .await
            .unwrap_err();
        assert!(err.retryable);
        assert!(err.message.contains("timed out"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn cancel_stops_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let c = ctx(dir.path(), 1);
        let cancel = c.cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            cancel.cancel();
        });
        let err = run_command(&id("a"), &ExecCommand::new("sleep 30"), &c)
            .await
            .unwrap_err();
        assert!(err.message.contains("cancelled"), "{err}");
    }

    #[tokio::test]
    async fn retries_append_to_the_logs() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = ExecCommand::new("echo run $FLOW_ATTEMPT");
        run_command(&id("a"), &cmd, &ctx(dir.path(), 1))
            .await
            .unwrap();
        run_command(&id("a"), &cmd, &ctx(dir.path(), 2))
            .await
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a.out")).unwrap(),
            "run 1\nrun 2\n"
        );
    }

    /// Whether `pid` runs (a zombie does not: it runs nothing).
    fn running(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
            !stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
    }

    fn pid_in(path: &Path) -> u32 {
        std::fs::read_to_string(path)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// A grandchild that ignores SIGTERM outlives its shell unless the whole group is
    /// killed: a timeout and a cancel must not leave it behind.
    const STUBBORN: &str = "(trap '' TERM; exec sleep 30) & echo $! > pid; wait";

    #[tokio::test]
    async fn a_timeout_stops_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = ExecCommand::new(STUBBORN);
        cmd.cwd = Some(dir.path().to_path_buf());
        cmd.timeout = Some(Duration::from_millis(300));
        let err = run_command(&id("a"), &cmd, &ctx(dir.path(), 1))
            .await
            .unwrap_err();
        assert!(err.message.contains("timed out"), "{err}");
        let pid = pid_in(&dir.path().join("pid"));
        assert!(!running(pid), "the grandchild {pid} is still running");
    }

    #[tokio::test]
    async fn a_cancel_stops_the_whole_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = ExecCommand::new(STUBBORN);
        cmd.cwd = Some(dir.path().to_path_buf());
        let c = ctx(dir.path(), 1);
        let cancel = c.cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            cancel.cancel();
        });
        let err = run_command(&id("a"), &cmd, &c).await.unwrap_err();
        assert!(err.message.contains("cancelled"), "{err}");
        let pid = pid_in(&dir.path().join("pid"));
        assert!(!running(pid), "the grandchild {pid} is still running");
    }

    #[tokio::test]
    async fn processes_left_behind_by_a_finished_step_are_stopped_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = ExecCommand::new("sleep 30 & echo $! > pid");
        cmd.cwd = Some(dir.path().to_path_buf());
        let out = run_command(&id("a"), &cmd, &ctx(dir.path(), 1))
            .await
            .unwrap();
        let pid = pid_in(&dir.path().join("pid"));
        assert!(!running(pid), "the background sleep {pid} is still running");
        let note = out.note.unwrap_or_default();
        assert!(note.contains(&format!("{pid} (sleep)")), "{note}");
    }

    #[tokio::test]
    async fn the_group_is_on_record_before_the_command_runs_and_until_it_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let writer = StateWriter::spawn(shared(MemoryStore::new()));
        let mut c = ctx(dir.path(), 3);
        c.processes = writer.process_log();
        let groups = || writer.with_store(|s| s.process_groups().unwrap());
        // The command reports what the state said when it began.
        let mut cmd = ExecCommand::new("echo $$ > pid; sleep 0.3");
        cmd.cwd = Some(dir.path().to_path_buf());
        let run = tokio::spawn(async move { run_command(&id("t/x"), &cmd, &c).await });
        let pid_file = dir.path().join("pid");
        wait_until(|| std::fs::read_to_string(&pid_file).is_ok_and(|s| s.ends_with('\n'))).await;
        let pid = pid_in(&dir.path().join("pid"));
        let recorded = groups();
        assert_eq!(recorded.len(), 1, "{recorded:?}");
        assert_eq!(recorded[0].task, id("t/x"));
        assert_eq!(recorded[0].attempt, 3);
        assert_eq!(recorded[0].group.pgid, pid, "the shell leads the group");
        run.await.unwrap().unwrap();
        writer.flush().await.unwrap();
        assert!(groups().is_empty(), "the record goes with the group");
    }

    #[tokio::test]
    async fn a_command_does_not_run_when_its_group_cannot_be_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let writer = StateWriter::spawn(shared(MemoryStore::new()));
        let mut c = ctx(dir.path(), 1);
        c.processes = writer.process_log();
        writer.close();
        let mut cmd = ExecCommand::new("touch ran");
        cmd.cwd = Some(dir.path().to_path_buf());
        let err = run_command(&id("a"), &cmd, &c).await.unwrap_err();
        assert!(err.message.contains("not run"), "{err}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!dir.path().join("ran").exists());
    }

    async fn wait_until(mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < deadline, "timed out waiting");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[test]
    fn log_names_are_safe() {
        assert_eq!(
            log_stem(&id("db.t/2015 06/../x")),
            PathBuf::from("db.t/2015_06/_/x")
        );
    }
}
