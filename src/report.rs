//! The final JSON report: what happened to every table, partition and task.
//!
//! Built after a run from the graph (what the plan asked for) and the state (what
//! happened, including earlier runs of a resumed plan), so the report of a resumed run
//! covers the whole migration, not only its last piece. Grouping follows the work
//! units: tables hold their table-level tasks and their partitions; a partition holds
//! its tasks (chunks included, each task says its chunk); user steps are listed apart.
//! A partition's rows and bytes are the largest its tasks reported (export and verify
//! count the same rows; adding them would double them).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::graph::{Placement, Task, TaskGraph, TaskId, WorkUnit};
use crate::state::{TaskRecord, TaskStatus};

/// What a report needs besides the graph and the records.
#[derive(Clone, Debug)]
pub struct ReportContext {
    pub plan: String,
    /// Table display names by table index (`TableSpec::name`).
    pub table_names: Vec<String>,
    /// Volume entry names by index (`VolumeSpec::name`).
    pub volume_names: Vec<String>,
    pub state_path: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    /// `success`, `failed`, `interrupted`, `aborted`.
    pub outcome: String,
    /// What the run checked nothing of ([`crate::warnings`]).
    pub warnings: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Totals {
    pub tasks: usize,
    pub done: usize,
    pub failed: usize,
    pub skipped: usize,
    pub running: usize,
    pub pending: usize,
    pub rows: u64,
    pub bytes: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TaskReport {
    pub id: TaskId,
    pub kind: String,
    pub status: TaskStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chunk: Option<u32>,
    /// Where the work happens (in-server, streamed, metadata, external).
    pub placement: Placement,
    pub attempts: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub outputs: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PartitionReport {
    pub id: String,
    pub status: TaskStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    pub tasks: Vec<TaskReport>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct TableReport {
    pub name: String,
    pub status: TaskStatus,
    pub rows: u64,
    pub bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// Table-level tasks (split, prepare, swap, manifest…).
    pub tasks: Vec<TaskReport>,
    pub partitions: Vec<PartitionReport>,
}

/// A `[[volumes]]` entry: its tasks (snapshot, restore, verify, bind or swap…), whose
/// notes and outputs name the snapshot, the new volume and the PVs.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct VolumeReport {
    pub name: String,
    pub status: TaskStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    pub tasks: Vec<TaskReport>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ErrorReport {
    pub task: TaskId,
    pub error: String,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Report {
    pub plan: String,
    pub outcome: String,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    pub duration_seconds: f64,
    pub state: String,
    pub totals: Totals,
    pub tables: Vec<TableReport>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeReport>,
    pub steps: Vec<TaskReport>,
    pub errors: Vec<ErrorReport>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

fn secs(d: std::time::Duration) -> f64 {
    (d.as_millis() as f64) / 1000.0
}

fn task_report(task: &Task, record: Option<&TaskRecord>) -> TaskReport {
    let chunk = match &task.unit {
        WorkUnit::Partition { chunk, .. } => *chunk,
        _ => None,
    };
    match record {
        Some(r) => TaskReport {
            id: task.id.clone(),
            kind: task.kind.as_str().to_string(),
            status: r.status,
            chunk,
            placement: task.placement,
            attempts: r.attempts,
            rows: r.rows,
            bytes: r.bytes,
            checksum: r.checksum.clone(),
            started_at: r.started_at,
            ended_at: r.ended_at,
            duration_seconds: r.duration().map(secs),
            outputs: r.outputs.clone(),
            note: r.note.clone(),
            error: r.error.clone(),
        },
        None => TaskReport {
            id: task.id.clone(),
            kind: task.kind.as_str().to_string(),
            status: TaskStatus::Pending,
            chunk,
            placement: task.placement,
            attempts: 0,
            rows: None,
            bytes: None,
            checksum: None,
            started_at: None,
            ended_at: None,
            duration_seconds: None,
            outputs: Vec::new(),
            note: None,
            error: None,
        },
    }
}

/// The status of a group of tasks: failed beats running beats skipped beats pending;
/// done only when all are done.
fn group_status(tasks: &[TaskReport]) -> TaskStatus {
    let has = |s: TaskStatus| tasks.iter().any(|t| t.status == s);
    if has(TaskStatus::Failed) {
        TaskStatus::Failed
    } else if !tasks.is_empty() && tasks.iter().all(|t| t.status == TaskStatus::Done) {
        TaskStatus::Done
    } else if has(TaskStatus::Running) {
        TaskStatus::Running
    } else if has(TaskStatus::Skipped) {
        TaskStatus::Skipped
    } else {
        TaskStatus::Pending
    }
}

fn span(tasks: &[TaskReport]) -> Option<f64> {
    let start = tasks.iter().filter_map(|t| t.started_at).min()?;
    let end = tasks.iter().filter_map(|t| t.ended_at).max()?;
    (end - start).to_std().ok().map(secs)
}

fn errors(tasks: &[TaskReport]) -> Vec<String> {
    tasks
        .iter()
        .filter(|t| t.status == TaskStatus::Failed)
        .filter_map(|t| t.error.as_ref().map(|e| format!("{}: {e}", t.id)))
        .collect()
}

/// A table's own tasks, and its partitions' tasks by partition id.
type TableTasks = (Vec<TaskReport>, BTreeMap<String, Vec<TaskReport>>);

/// Builds the report of `graph` from `records`.
pub fn build(
    ctx: &ReportContext,
    graph: &TaskGraph,
    records: &HashMap<TaskId, TaskRecord>,
) -> Report {
    let mut tables: BTreeMap<usize, TableTasks> = BTreeMap::new();
    let mut volumes: BTreeMap<usize, Vec<TaskReport>> = BTreeMap::new();
    let mut steps = Vec::new();
    let mut totals = Totals::default();
    let mut all_errors = Vec::new();
    for index in graph.topological() {
        let task = graph.task(index);
        let report = task_report(task, records.get(&task.id));
        totals.tasks += 1;
        match report.status {
            TaskStatus::Done => totals.done += 1,
            TaskStatus::Failed => totals.failed += 1,
            TaskStatus::Skipped => totals.skipped += 1,
            TaskStatus::Running => totals.running += 1,
            TaskStatus::Pending => totals.pending += 1,
        }
        if report.status == TaskStatus::Failed {
            all_errors.push(ErrorReport {
                task: task.id.clone(),
                error: report.error.clone().unwrap_or_default(),
            });
        }
        match &task.unit {
            WorkUnit::Table { table } => tables.entry(*table).or_default().0.push(report),
            WorkUnit::Partition {
                table, partition, ..
            } => tables
                .entry(*table)
                .or_default()
                .1
                .entry(partition.id.clone())
                .or_default()
                .push(report),
            WorkUnit::Volume { volume } => volumes.entry(*volume).or_default().push(report),
            WorkUnit::Step { .. } => steps.push(report),
        }
    }
    let volumes = volumes
        .into_iter()
        .map(|(index, tasks)| VolumeReport {
            name: ctx
                .volume_names
                .get(index)
                .cloned()
                .unwrap_or_else(|| format!("volume #{index}")),
            status: group_status(&tasks),
            duration_seconds: span(&tasks),
            errors: errors(&tasks),
            tasks,
        })
        .collect();
    let mut table_reports = Vec::new();
    for (index, (table_tasks, partitions)) in tables {
        let partitions: Vec<PartitionReport> = partitions
            .into_iter()
            .map(|(id, tasks)| PartitionReport {
                status: group_status(&tasks),
                rows: tasks.iter().filter_map(|t| t.rows).max(),
                bytes: tasks.iter().filter_map(|t| t.bytes).max(),
                duration_seconds: span(&tasks),
                errors: errors(&tasks),
                id,
                tasks,
            })
            .collect();
        let mut all: Vec<TaskReport> = table_tasks.clone();
        for p in &partitions {
            all.extend(p.tasks.iter().cloned());
        }
        let (rows, bytes) = if partitions.is_empty() {
            (
                table_tasks.iter().filter_map(|t| t.rows).max().unwrap_or(0),
                table_tasks
                    .iter()
                    .filter_map(|t| t.bytes)
                    .max()
                    .unwrap_or(0),
            )
        } else {
            (
                partitions.iter().filter_map(|p| p.rows).sum(),
                partitions.iter().filter_map(|p| p.bytes).sum(),
            )
        };
        totals.rows += rows;
        totals.bytes += bytes;
        table_reports.push(TableReport {
            name: ctx
                .table_names
                .get(index)
                .cloned()
                .unwrap_or_else(|| format!("table #{index}")),
            status: group_status(&all),
            rows,
            bytes,
            duration_seconds: span(&all),
            errors: errors(&all),
            tasks: table_tasks,
            partitions,
        });
    }
    Report {
        plan: ctx.plan.clone(),
        outcome: ctx.outcome.clone(),
        started_at: ctx.started_at,
        ended_at: ctx.ended_at,
        duration_seconds: (ctx.ended_at - ctx.started_at)
            .to_std()
            .map(secs)
            .unwrap_or(0.0),
        state: ctx.state_path.clone(),
        totals,
        tables: table_reports,
        volumes,
        steps,
        errors: all_errors,
        warnings: ctx.warnings.clone(),
    }
}

impl Report {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report always serializes")
    }

    /// Writes the report atomically (temporary file, then rename).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, crate::redact::text(&self.to_json()) + "\n")?;
        std::fs::rename(&tmp, path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Partition, TaskKind};
    use std::sync::Arc;

    #[test]
    fn groups_by_table_and_partition_and_sums_rows_once() {
        let mut g = TaskGraph::new();
        let p = Arc::new(Partition {
            id: "201506".into(),
            value: None,
            filter: None,
            rows: None,
            bytes: None,
            chunks: vec![],
        });
        let unit = WorkUnit::Partition {
            table: 0,
            partition: p,
            chunk: None,
        };
        let mk = |id: &str, kind, unit: WorkUnit| {
            Task::new(
                id,
                kind,
                unit,
                vec![],
                Placement::InServer,
                crate::graph::TaskInputs::default(),
            )
        };
        let e = g
            .add(mk("t/201506/export", TaskKind::Export, unit.clone()))
            .unwrap();
        let v = g
            .add(mk("t/201506/verify", TaskKind::Verify, unit.clone()))
            .unwrap();
        g.depend(v, e);
        g.add(mk("t/split", TaskKind::Split, WorkUnit::Table { table: 0 }))
            .unwrap();
        g.add(mk("step", TaskKind::Exec, WorkUnit::Step { step: 0 }))
            .unwrap();
        let mut records = HashMap::new();
        for id in ["t/201506/export", "t/201506/verify"] {
            let task = g.get(&TaskId(id.into())).unwrap();
            let mut r = TaskRecord::for_task(task);
            r.status = TaskStatus::Done;
            r.rows = Some(100);
            r.bytes = Some(1000);
            records.insert(r.id.clone(), r);
        }
        let now = Utc::now();
        let ctx = ReportContext {
            plan: "p".into(),
            table_names: vec!["default.trips".into()],
            volume_names: vec![],
            state_path: ".flow/p.db".into(),
            started_at: now,
            ended_at: now,
            outcome: "success".into(),
            warnings: vec![],
        };
        let report = build(&ctx, &g, &records);
        assert_eq!(report.tables.len(), 1);
        let t = &report.tables[0];
        assert_eq!(t.name, "default.trips");
        assert_eq!(t.rows, 100);
        assert_eq!(t.status, TaskStatus::Pending, "the split is still pending");
        assert_eq!(t.partitions[0].status, TaskStatus::Done);
        assert_eq!(t.partitions[0].tasks.len(), 2);
        assert_eq!(report.steps.len(), 1);
        assert_eq!(report.totals.done, 2);
        assert_eq!(report.totals.pending, 2);
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["tables"][0]["partitions"][0]["id"], "201506");
    }
}
