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

pub use crate::task::{Chunk, Partition, Placement, TaskId, TaskKind};

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
    /// A `[[volumes]]` entry.
    Volume { volume: usize },
    /// A user step.
    Step { step: usize },
}

impl WorkUnit {
    pub fn table(&self) -> Option<usize> {
        match self {
            WorkUnit::Table { table } | WorkUnit::Partition { table, .. } => Some(*table),
            WorkUnit::Volume { .. } | WorkUnit::Step { .. } => None,
        }
    }

    pub fn volume(&self) -> Option<usize> {
        match self {
            WorkUnit::Volume { volume } => Some(*volume),
            _ => None,
        }
    }
}

/// A task's named inputs: the table's shared inputs (one allocation per table) plus
/// the task's own. Own inputs win on a name clash. Iteration is in name order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskInputs {
    shared: Arc<BTreeMap<String, String>>,
    own: BTreeMap<String, String>,
}

impl TaskInputs {
    pub fn new(shared: Arc<BTreeMap<String, String>>, own: BTreeMap<String, String>) -> Self {
        TaskInputs { shared, own }
    }

    pub fn get(&self, name: &str) -> Option<&String> {
        self.own.get(name).or_else(|| self.shared.get(name))
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// All inputs in name order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        let mut shared = self
            .shared
            .iter()
            .filter(|(k, _)| !self.own.contains_key(*k))
            .peekable();
        let mut own = self.own.iter().peekable();
        std::iter::from_fn(move || match (shared.peek(), own.peek()) {
            (Some(a), Some(b)) if a.0 < b.0 => shared.next(),
            (Some(_), Some(_)) => own.next(),
            (Some(_), None) => shared.next(),
            (None, _) => own.next(),
        })
    }

    pub fn to_map(&self) -> BTreeMap<String, String> {
        self.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
}

impl From<BTreeMap<String, String>> for TaskInputs {
    fn from(own: BTreeMap<String, String>) -> Self {
        TaskInputs {
            shared: Arc::default(),
            own,
        }
    }
}

impl<'a> IntoIterator for &'a TaskInputs {
    type Item = (&'a String, &'a String);
    type IntoIter = Box<dyn Iterator<Item = (&'a String, &'a String)> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

impl Serialize for TaskInputs {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

/// Hash of a task's named inputs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Fingerprint(pub String);

impl Fingerprint {
    /// Fingerprint of named inputs; the order of insertion does not matter.
    pub fn of(kind: TaskKind, inputs: &TaskInputs) -> Self {
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
    pub inputs: TaskInputs,
    pub fingerprint: Fingerprint,
    /// A user step marked `once = true`: never re-run automatically once done.
    pub once: bool,
    /// Removes or replaces data: may run only after a passed verify.
    pub destructive: bool,
    /// Checks data and fails on a mismatch; destructive tasks may depend on it.
    pub verifies: bool,
    /// Inputs an earlier flow recorded in place of some of `inputs` (not part of the
    /// fingerprint): a done record holding exactly these values is not dirty for it.
    pub superseded: Option<Arc<BTreeMap<String, String>>>,
}

impl Task {
    pub fn new(
        id: impl Into<String>,
        kind: TaskKind,
        unit: WorkUnit,
        mut connections: Vec<String>,
        placement: Placement,
        inputs: impl Into<TaskInputs>,
    ) -> Self {
        let inputs = inputs.into();
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
            superseded: None,
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
        let fp = |kind, m: &BTreeMap<String, String>| Fingerprint::of(kind, &m.clone().into());
        assert_eq!(fp(TaskKind::Export, &a), fp(TaskKind::Export, &b));
        b.insert("upper".to_string(), "x <= 2".to_string());
        assert_ne!(fp(TaskKind::Export, &a), fp(TaskKind::Export, &b));
        assert_ne!(fp(TaskKind::Export, &a), fp(TaskKind::Verify, &a));
        // Shared and own inputs hash like one map; own inputs win on a clash.
        let shared = Arc::new(a.clone());
        let mut own = BTreeMap::new();
        own.insert("path".to_string(), "p".to_string());
        own.insert("zz".to_string(), "last".to_string());
        let split = TaskInputs::new(shared, own.clone());
        let mut whole = a.clone();
        whole.extend(own);
        assert_eq!(split.to_map(), whole);
        assert_eq!(
            Fingerprint::of(TaskKind::Export, &split),
            fp(TaskKind::Export, &whole)
        );
        assert_eq!(
            serde_json::to_string(&split).unwrap(),
            serde_json::to_string(&whole).unwrap()
        );
    }
}
