//! What a task ends with: its outcome, or why it failed and whether trying again may
//! help. A leaf: the scheduler (`exec`) produces these, `state` stores them, engines
//! return them, and it depends on none of them.

use serde::{Deserialize, Serialize};

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
