//! The contract between the scheduler and whatever does a task's work.
//!
//! Engines implement [`TaskRunner`]; the scheduler owns ordering, permits, retries,
//! state and cancellation. A runner classifies its own errors: `retryable` is true only
//! for transient conditions (connection reset, timeouts, server overload codes), never
//! for syntax or permission errors.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::graph::{Task, TaskId};
use crate::state::ProcessLog;

/// What a finished task reports; stored in state and in the final report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskOutcome {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Order-independent checksum of the rows, when the task computed one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// Output locations (file paths, object keys, table names).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<String>,
    /// Free-form structured detail (e.g. a split's partition list).
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub detail: serde_json::Value,
    /// One line for humans ("already swapped", "server-side INSERT INTO FUNCTION s3").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Why a task failed, and whether trying again may help.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TaskFailure {
    pub message: String,
    pub retryable: bool,
}

impl TaskFailure {
    pub fn permanent(message: impl Into<String>) -> Self {
        TaskFailure {
            message: message.into(),
            retryable: false,
        }
    }

    pub fn transient(message: impl Into<String>) -> Self {
        TaskFailure {
            message: message.into(),
            retryable: true,
        }
    }
}

/// What the scheduler hands a runner for one attempt.
#[derive(Clone, Debug)]
pub struct TaskContext {
    /// Fires on Ctrl-C (second press) or when the run is aborted; long tasks check it.
    pub cancel: CancellationToken,
    /// 1 for the first attempt.
    pub attempt: u32,
    /// A directory the task may write logs into (exec stdout/stderr), under the state folder.
    pub log_dir: PathBuf,
    /// Outcomes of the task's direct dependencies, all done.
    pub dependencies: Vec<(TaskId, TaskOutcome)>,
    /// Where a runner that starts OS processes records their group (exec steps).
    pub processes: ProcessLog,
}

/// Does the work of tasks. One runner serves a whole run; it dispatches on the task kind
/// and the connection kind.
#[async_trait::async_trait]
pub trait TaskRunner: Send + Sync + 'static {
    async fn run(&self, task: &Task, ctx: TaskContext) -> Result<TaskOutcome, TaskFailure>;
}
