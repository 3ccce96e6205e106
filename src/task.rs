//! What a task is and ends with: its id and kind, the unit it works on (a partition,
//! a chunk) and where the work happens, its outcome (with the typed artifact it hands
//! to its dependents), or why it failed and whether trying again may help; and why a
//! graph of tasks could not be built. A leaf: strategies and the graph builder make
//! tasks of these, the scheduler (`exec`) produces outcomes, `state` stores them,
//! engines return them, and it depends on none of them.

use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Stable, readable task id. Ordering is lexicographic so listings are predictable.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TaskId(pub String);

impl TaskId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a task does. The kind decides the idempotency rule (ARCHITECTURE.md) and whether
/// the task is destructive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "kebab-case")]
pub enum TaskKind {
    /// List partitions within bounds and sub-split big ones; read-only.
    Split,
    /// Prepare a target: create a table / backup table / check a policy; idempotent.
    Prepare,
    /// Write one partition or chunk to files or objects.
    Export,
    /// Copy one partition into a target table (staging + replace, or insert-select).
    Load,
    /// Compare source and target; read-only.
    Verify,
    /// Write the export manifest, last.
    Manifest,
    /// Move rows that arrived in the source after their partition was copied.
    CatchUp,
    /// Drop a source partition; destructive.
    Drop,
    /// Cut over (EXCHANGE / RENAME); destructive.
    Swap,
    /// Drop a table left over after a swap; destructive.
    Cleanup,
    /// Scale a workload down so its volume stops changing (a StatefulSet to 0).
    Quiesce,
    /// Snapshot a volume (found again by tag on a retry).
    Snapshot,
    /// Make a new volume from a snapshot and wait until it is available.
    Restore,
    /// Bind a new volume to a new claim; replaces nothing.
    Bind,
    /// Scale a quiesced workload back to what it had.
    Unquiesce,
    /// User SQL step.
    Sql,
    /// User command step.
    Exec,
}

impl TaskKind {
    /// Kinds that list what a plan covers; their outcomes re-expand the graph.
    pub fn is_discovery(self) -> bool {
        matches!(self, TaskKind::Split)
    }

    /// Kinds that remove or replace data and so must run only after a passed verify.
    pub fn is_destructive(self) -> bool {
        matches!(self, TaskKind::Drop | TaskKind::Swap | TaskKind::Cleanup)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Split => "split",
            TaskKind::Prepare => "prepare",
            TaskKind::Export => "export",
            TaskKind::Load => "load",
            TaskKind::Verify => "verify",
            TaskKind::Manifest => "manifest",
            TaskKind::CatchUp => "catch-up",
            TaskKind::Drop => "drop",
            TaskKind::Swap => "swap",
            TaskKind::Cleanup => "cleanup",
            TaskKind::Quiesce => "quiesce",
            TaskKind::Snapshot => "snapshot",
            TaskKind::Restore => "restore",
            TaskKind::Bind => "bind",
            TaskKind::Unquiesce => "unquiesce",
            TaskKind::Sql => "sql",
            TaskKind::Exec => "exec",
        }
    }
}

impl fmt::Display for TaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

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

/// What a task hands to the tasks that depend on it (the files an export wrote, a
/// verified partition, a split's units), stored as its outcome's `detail`.
pub trait Artifact: Serialize + DeserializeOwned {
    /// What it is, for messages ("exported file").
    const NAME: &'static str;
}

impl TaskOutcome {
    /// This outcome carrying `artifact` as its detail.
    pub fn with_artifact<A: Artifact>(mut self, artifact: &A) -> Self {
        self.detail = serde_json::to_value(artifact).expect("an artifact serializes to JSON");
        self
    }
}

/// A done dependency of a running task: its id, its kind and its outcome.
#[derive(Clone, Debug)]
pub struct Dependency {
    pub id: TaskId,
    pub kind: TaskKind,
    pub outcome: TaskOutcome,
}

/// The artifacts of the dependencies of `kind`, decoded. A dependency whose outcome is
/// not such an artifact fails the task: its state comes from another flow or was
/// changed by hand, and going on without it would verify or list less than was written.
pub fn artifacts<A: Artifact>(
    dependencies: &[Dependency],
    kind: TaskKind,
) -> Result<Vec<A>, TaskFailure> {
    dependencies
        .iter()
        .filter(|d| d.kind == kind && !d.outcome.detail.is_null())
        .map(|d| {
            serde_json::from_value(d.outcome.detail.clone()).map_err(|e| {
                TaskFailure::permanent(format!(
                    "the outcome of `{}` is not a {}: {e}; run it again: `flow state reset <plan> \
                     '{}'`, then `flow apply --resume`",
                    d.id,
                    A::NAME,
                    d.id
                ))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    struct File {
        key: String,
    }
    impl Artifact for File {
        const NAME: &'static str = "file";
    }

    fn dep(id: &str, kind: TaskKind, detail: serde_json::Value) -> Dependency {
        Dependency {
            id: TaskId(id.into()),
            kind,
            outcome: TaskOutcome {
                detail,
                ..Default::default()
            },
        }
    }

    #[test]
    fn artifacts_are_chosen_by_kind_and_a_bad_one_fails_loudly() {
        let deps = vec![
            dep(
                "t/1/export",
                TaskKind::Export,
                serde_json::json!({"key": "a"}),
            ),
            // Named like an export, but a step: not chosen.
            dep(
                "x/export",
                TaskKind::Exec,
                serde_json::json!({"exit_code": 0}),
            ),
            dep("t/2/export", TaskKind::Export, serde_json::Value::Null),
        ];
        let files: Vec<File> = artifacts(&deps, TaskKind::Export).unwrap();
        assert_eq!(files, vec![File { key: "a".into() }]);
        let bad = vec![dep(
            "t/3/export",
            TaskKind::Export,
            serde_json::json!({"rows": 1}),
        )];
        let err = artifacts::<File>(&bad, TaskKind::Export).unwrap_err();
        assert!(
            err.message.contains("`t/3/export` is not a file"),
            "{}",
            err.message
        );
        assert!(!err.retryable);
    }
}

/// Where the work of a task happens; `flow plan` shows it so users know what path
/// the data takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// The database server does the work itself (INSERT … SELECT, INSERT INTO FUNCTION s3).
    InServer,
    /// Data streams through flow in bounded buffers.
    Streamed,
    /// Metadata only (queries of system tables, DDL, manifests).
    Metadata,
    /// An external command.
    External,
}

/// One partition of a source table, as listed by a split (online) or declared in the
/// plan (offline). `filter` is the SQL condition that selects exactly its rows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// The partition id as the server names it (`201506`), or `all` for mode = "all".
    pub id: String,
    /// SQL literal of the partition value, when known (`201506`, `('eu', 3)`).
    pub value: Option<String>,
    /// SQL condition selecting exactly this partition's rows (`toYYYYMM(pickup_date) = 201506`),
    /// set by the split; None for mode = "all" or an offline partition of unknown expression.
    #[serde(default)]
    pub filter: Option<String>,
    /// Rows and bytes as reported by the source at split time (None offline).
    pub rows: Option<u64>,
    pub bytes: Option<u64>,
    /// Sub-split chunks of an oversized partition; empty means one piece.
    pub chunks: Vec<Chunk>,
}

/// A split's outcome: the units it listed.
impl Artifact for Vec<Partition> {
    const NAME: &'static str = "list of partitions";
}

/// A row-bounded piece of an oversized partition, selected by a range of `split_by`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    pub index: u32,
    /// SQL condition on the split column, e.g. `pickup_date >= '2015-06-11' AND pickup_date < '2015-06-21'`.
    pub filter: String,
    pub rows: Option<u64>,
}

/// A problem found while building a graph. Plans are checked before expansion, so
/// these indicate a strategy bug or a plan the checker let through.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GraphError {
    #[error("task id `{0}` is used twice")]
    DuplicateId(TaskId),
    #[error("task `{from}` depends on `{to}`, which does not exist")]
    MissingDependency { from: TaskId, to: TaskId },
    #[error("tasks form a cycle through `{0}`")]
    Cycle(TaskId),
    #[error("destructive task `{0}` has no verify task before it")]
    UnverifiedDestructive(TaskId),
    #[error("{0}")]
    Template(String),
    #[error("tasks `{first}` and `{second}` would both write `{key}` on connection `{target}`: the second would overwrite the first")]
    KeyCollision {
        key: String,
        target: String,
        first: TaskId,
        second: TaskId,
    },
    #[error("table {table}: `path` renders the same key `{key}` for every {unit}: all of them would write one object")]
    PathNotUnique {
        table: String,
        key: String,
        unit: &'static str,
    },
}
