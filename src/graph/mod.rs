//! The task graph: a frozen petgraph DAG of [`Task`]s.
//!
//! Built by [`expand`] from a checked plan; checked for cycles and for the one rule
//! that protects data (nothing destructive without a passed verify before it) before
//! anything runs, then never changed.

pub mod expand;
pub mod render;
pub mod task;

use std::collections::{HashMap, HashSet};

use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use petgraph::Direction;

pub use crate::task::GraphError;
pub use task::{
    Chunk, Fingerprint, Partition, Placement, Task, TaskId, TaskInputs, TaskKind, WorkUnit,
};

/// A DAG of tasks; an edge `a → b` means `b` runs after `a` is done.
#[derive(Debug, Default)]
pub struct TaskGraph {
    graph: DiGraph<Task, ()>,
    by_id: HashMap<TaskId, NodeIndex>,
    /// Every edge, so adding one is O(1) whatever the fan-out: petgraph's
    /// `find_edge` walks a node's edges, which made a split with 100k dependents
    /// quadratic to build.
    edges: HashSet<(NodeIndex, NodeIndex)>,
}

impl GraphError {
    /// How to fix the plan, for messages.
    pub fn help(&self) -> &'static str {
        match self {
            GraphError::KeyCollision { .. } | GraphError::PathNotUnique { .. } => {
                "make `path` unique per unit: include {{ partition_id }} in partition mode and \
                 {{ chunk }} when max_rows/max_bytes cut partitions, and give each table its \
                 own path (e.g. start it with {{ table.name }})"
            }
            GraphError::Cycle(_) => {
                "remove one of the `after` entries that close the cycle: a step or volume \
                 waits for every task of what its `after` names"
            }
            _ => "rename the table or step so task ids are unique, and make destructive work depend on a verify",
        }
    }
}

impl TaskGraph {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a task; ids must be unique.
    pub fn add(&mut self, task: Task) -> Result<NodeIndex, GraphError> {
        if self.by_id.contains_key(&task.id) {
            return Err(GraphError::DuplicateId(task.id));
        }
        let id = task.id.clone();
        let index = self.graph.add_node(task);
        self.by_id.insert(id, index);
        Ok(index)
    }

    /// `after` must be done before `task` starts.
    pub fn depend(&mut self, task: NodeIndex, after: NodeIndex) {
        if task != after && self.edges.insert((after, task)) {
            self.graph.add_edge(after, task, ());
        }
    }

    pub fn depend_on_id(&mut self, task: NodeIndex, after: &TaskId) -> Result<(), GraphError> {
        let after_index = self
            .index_of(after)
            .ok_or_else(|| GraphError::MissingDependency {
                from: self.graph[task].id.clone(),
                to: after.clone(),
            })?;
        self.depend(task, after_index);
        Ok(())
    }

    pub fn index_of(&self, id: &TaskId) -> Option<NodeIndex> {
        self.by_id.get(id).copied()
    }

    pub fn task(&self, index: NodeIndex) -> &Task {
        &self.graph[index]
    }

    pub fn get(&self, id: &TaskId) -> Option<&Task> {
        self.index_of(id).map(|i| &self.graph[i])
    }

    pub fn len(&self) -> usize {
        self.graph.node_count()
    }

    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0
    }

    pub fn edge_count(&self) -> usize {
        self.graph.edge_count()
    }

    /// All node indices in insertion order.
    pub fn indices(&self) -> impl Iterator<Item = NodeIndex> + '_ {
        self.graph.node_indices()
    }

    pub fn tasks(&self) -> impl Iterator<Item = &Task> + '_ {
        self.graph.node_weights()
    }

    /// Tasks that must be done before `index` (direct dependencies).
    pub fn dependencies(&self, index: NodeIndex) -> impl Iterator<Item = NodeIndex> + '_ {
        self.graph
            .edges_directed(index, Direction::Incoming)
            .map(|e| e.source())
    }

    /// Tasks that wait for `index` (direct dependents).
    pub fn dependents(&self, index: NodeIndex) -> impl Iterator<Item = NodeIndex> + '_ {
        self.graph
            .edges_directed(index, Direction::Outgoing)
            .map(|e| e.target())
    }

    /// Checks the invariants every runnable graph holds: acyclic, and every destructive
    /// task has a verify task among its transitive dependencies.
    pub fn check(&self) -> Result<(), GraphError> {
        let order = petgraph::algo::toposort(&self.graph, None)
            .map_err(|cycle| GraphError::Cycle(self.graph[cycle.node_id()].id.clone()))?;
        // has_verify_ancestor[i]: some task among i's transitive dependencies verifies.
        let mut has_verify_ancestor = vec![false; self.graph.node_count()];
        for index in order {
            let inherited = self
                .dependencies(index)
                .any(|d| has_verify_ancestor[d.index()] || self.graph[d].verifies);
            has_verify_ancestor[index.index()] = inherited;
            let task = &self.graph[index];
            if task.is_destructive() && !inherited {
                return Err(GraphError::UnverifiedDestructive(task.id.clone()));
            }
        }
        Ok(())
    }

    /// Topological order (dependencies first); panics only if `check` was skipped.
    pub fn topological(&self) -> Vec<NodeIndex> {
        petgraph::algo::toposort(&self.graph, None)
            .expect("graph was checked to be acyclic when it was built")
    }

    pub fn inner(&self) -> &DiGraph<Task, ()> {
        &self.graph
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn task(id: &str, kind: TaskKind) -> Task {
        Task::new(
            id,
            kind,
            WorkUnit::Table { table: 0 },
            vec![],
            Placement::Metadata,
            BTreeMap::new(),
        )
    }

    #[test]
    fn destructive_needs_a_verify_ancestor() {
        let mut g = TaskGraph::new();
        let load = g.add(task("t/load", TaskKind::Load)).unwrap();
        let drop = g.add(task("t/drop", TaskKind::Drop)).unwrap();
        g.depend(drop, load);
        assert_eq!(
            g.check(),
            Err(GraphError::UnverifiedDestructive(TaskId("t/drop".into())))
        );
        let verify = g.add(task("t/verify", TaskKind::Verify)).unwrap();
        g.depend(verify, load);
        g.depend(drop, verify);
        assert_eq!(g.check(), Ok(()));
    }

    #[test]
    fn duplicate_ids_are_rejected() {
        let mut g = TaskGraph::new();
        g.add(task("a", TaskKind::Sql)).unwrap();
        assert!(matches!(
            g.add(task("a", TaskKind::Sql)),
            Err(GraphError::DuplicateId(_))
        ));
    }
}
