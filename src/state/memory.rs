//! State kept in memory: for tests and the benchmark baseline (the same scheduler and
//! writer, without SQLite), never for real runs — it does not survive the process.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

use super::{
    fold, GroupChange, ProcessRecord, RunRecord, StateError, StateStore, TaskRecord, Transition,
};
use crate::graph::TaskId;

#[derive(Debug, Default)]
pub struct MemoryStore {
    tasks: BTreeMap<TaskId, TaskRecord>,
    runs: Vec<RunRecord>,
    groups: BTreeMap<TaskId, ProcessRecord>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }
}

impl StateStore for MemoryStore {
    fn describe(&self) -> String {
        "in-memory state".to_string()
    }

    fn records(&mut self) -> Result<Vec<TaskRecord>, StateError> {
        Ok(self.tasks.values().cloned().collect())
    }

    fn apply(&mut self, batch: &[Transition]) -> Result<(), StateError> {
        for transition in batch {
            let entry = transition.entry();
            let current = self.tasks.remove(&entry.id);
            if let Some(record) = fold(current, &entry) {
                self.tasks.insert(entry.id, record);
            }
        }
        Ok(())
    }

    fn clear(&mut self) -> Result<(), StateError> {
        self.tasks.clear();
        self.runs.clear();
        self.groups.clear();
        Ok(())
    }

    fn begin_run(&mut self, pid: u32, host: &str, at: DateTime<Utc>) -> Result<i64, StateError> {
        let id = self.runs.len() as i64 + 1;
        self.runs.push(RunRecord {
            id,
            started_at: at,
            ended_at: None,
            pid,
            host: host.to_string(),
            outcome: None,
        });
        Ok(id)
    }

    fn end_run(&mut self, id: i64, outcome: &str, at: DateTime<Utc>) -> Result<(), StateError> {
        if let Some(run) = self.runs.iter_mut().find(|r| r.id == id) {
            run.ended_at = Some(at);
            run.outcome = Some(outcome.to_string());
        }
        Ok(())
    }

    fn runs(&mut self, limit: usize) -> Result<Vec<RunRecord>, StateError> {
        Ok(self.runs.iter().rev().take(limit).cloned().collect())
    }

    fn set_process_groups(&mut self, changes: &[GroupChange]) -> Result<(), StateError> {
        for (task, record) in changes {
            match record {
                Some(r) => self.groups.insert(task.clone(), r.clone()),
                None => self.groups.remove(task),
            };
        }
        Ok(())
    }

    fn process_groups(&mut self) -> Result<Vec<ProcessRecord>, StateError> {
        Ok(self.groups.values().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_store_follows_the_contract() {
        super::super::tests::exercise(&mut MemoryStore::new());
    }
}
