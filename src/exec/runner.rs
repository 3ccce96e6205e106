//! The contract between the scheduler and whatever does a task's work.
//!
//! Engines implement [`TaskRunner`]; the scheduler owns ordering, permits, retries,
//! state and cancellation. A runner classifies its own errors: `retryable` is true only
//! for transient conditions (connection reset, timeouts, server overload codes), never
//! for syntax or permission errors.

use std::path::PathBuf;

use tokio_util::sync::CancellationToken;

use crate::graph::{Task, TaskKind};
use crate::state::ProcessLog;
use crate::task::Artifact;
pub use crate::task::{Dependency, TaskFailure, TaskOutcome};

/// What the scheduler hands a runner for one attempt.
#[derive(Clone, Debug)]
pub struct TaskContext {
    /// Fires on Ctrl-C (second press) or when the run is aborted; long tasks check it.
    pub cancel: CancellationToken,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// A directory the task may write logs into (exec stdout/stderr), under the state folder.
    pub log_dir: PathBuf,
    /// The task's direct dependencies that are done, with their outcomes.
    pub dependencies: Vec<Dependency>,
    /// Where a runner that starts OS processes records their group (exec steps).
    pub processes: ProcessLog,
}

impl TaskContext {
    /// The artifacts of the dependencies of `kind`, decoded ([`crate::task::artifacts`]).
    pub fn artifacts<A: Artifact>(&self, kind: TaskKind) -> Result<Vec<A>, TaskFailure> {
        crate::task::artifacts(&self.dependencies, kind)
    }
}

/// Does the work of tasks. One runner serves a whole run; it dispatches on the task kind
/// and the connection kind.
#[async_trait::async_trait]
pub trait TaskRunner: Send + Sync + 'static {
    async fn run(&self, task: &Task, ctx: TaskContext) -> Result<TaskOutcome, TaskFailure>;
}
