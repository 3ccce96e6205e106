//! Tasks: the unit of scheduling, durable state and resume.
//!
//! A task has a stable, human-readable id (`default.trips/201506/export`) and a
//! fingerprint: a hash of its named inputs (rendered SQL filter, target path, options,
//! template sources). The inputs are kept by name so that a resumed run can say *which*
//! input changed ("upper changed") instead of only "fingerprint differs". Inputs never
//! hold secrets: templates see `${env:NAME}` placeholders, not values, when rendering
//! for display and fingerprints.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

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

/// What a task does. The kind decides the idempotency rule (see DESIGN §4) and whether
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
    /// User SQL step.
    Sql,
    /// User command step.
    Exec,
}

impl TaskKind {
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

/// A row-bounded piece of an oversized partition, selected by a range of `split_by`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    pub index: u32,
    /// SQL condition on the split column, e.g. `pickup_date >= '2015-06-11' AND pickup_date < '2015-06-21'`.
    pub filter: String,
    pub rows: Option<u64>,
}

/// What a task works on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkUnit {
    /// A whole table (split, prepare, swap, manifest…).
    Table { table: usize },
    /// One partition (and optionally one chunk of it) of a table.
    Partition {
        table: usize,
        partition: Arc<Partition>,
        chunk: Option<u32>,
    },
    /// A user step.
    Step { step: usize },
}

impl WorkUnit {
    pub fn table(&self) -> Option<usize> {
        match self {
            WorkUnit::Table { table } | WorkUnit::Partition { table, .. } => Some(*table),
            WorkUnit::Step { .. } => None,
        }
    }
}

/// Hash of a task's named inputs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Fingerprint(pub String);

impl Fingerprint {
    /// Fingerprint of named inputs; the order of insertion does not matter.
    pub fn of(kind: TaskKind, inputs: &BTreeMap<String, String>) -> Self {
        let mut hasher = blake3::Hasher::new();
        hasher.update(kind.as_str().as_bytes());
        for (name, value) in inputs {
            hasher.update(&(name.len() as u64).to_le_bytes());
            hasher.update(name.as_bytes());
            hasher.update(&(value.len() as u64).to_le_bytes());
            hasher.update(value.as_bytes());
        }
        Fingerprint(hasher.finalize().to_hex()[..16].to_string())
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A node of the task graph. Frozen once the graph is built.
#[derive(Clone, Debug)]
pub struct Task {
    pub id: TaskId,
    pub kind: TaskKind,
    pub unit: WorkUnit,
    /// Connections whose permits the task takes, sorted, so permits are always taken
    /// in the same order (no deadlock between two tasks needing the same pair).
    pub connections: Vec<String>,
    pub placement: Placement,
    /// Named inputs; the fingerprint is their hash. Never secrets.
    pub inputs: BTreeMap<String, String>,
    pub fingerprint: Fingerprint,
    /// A user step marked `once = true`: never re-run automatically once done.
    pub once: bool,
    /// Removes or replaces data: may run only after a passed verify.
    pub destructive: bool,
    /// Checks data and fails on a mismatch; destructive tasks may depend on it.
    pub verifies: bool,
}

impl Task {
    pub fn new(
        id: impl Into<String>,
        kind: TaskKind,
        unit: WorkUnit,
        mut connections: Vec<String>,
        placement: Placement,
        inputs: BTreeMap<String, String>,
    ) -> Self {
        connections.sort();
        connections.dedup();
        let fingerprint = Fingerprint::of(kind, &inputs);
        Task {
            id: TaskId(id.into()),
            kind,
            unit,
            connections,
            placement,
            inputs,
            fingerprint,
            once: false,
            destructive: kind.is_destructive(),
            verifies: kind == TaskKind::Verify,
        }
    }

    pub fn is_destructive(&self) -> bool {
        self.destructive
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_depends_on_every_input_and_not_on_order() {
        let mut a = BTreeMap::new();
        a.insert("upper".to_string(), "x <= 1".to_string());
        a.insert("path".to_string(), "p".to_string());
        let mut b = BTreeMap::new();
        b.insert("path".to_string(), "p".to_string());
        b.insert("upper".to_string(), "x <= 1".to_string());
        assert_eq!(
            Fingerprint::of(TaskKind::Export, &a),
            Fingerprint::of(TaskKind::Export, &b)
        );
        b.insert("upper".to_string(), "x <= 2".to_string());
        assert_ne!(
            Fingerprint::of(TaskKind::Export, &a),
            Fingerprint::of(TaskKind::Export, &b)
        );
        assert_ne!(
            Fingerprint::of(TaskKind::Export, &a),
            Fingerprint::of(TaskKind::Verify, &a)
        );
    }
}
