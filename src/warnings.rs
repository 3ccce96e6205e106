//! Warnings: a run that checked nothing where the plan expected something.
//!
//! An export whose source has no rows is fine. But a declared partition the source does
//! not have, or `lower`/`upper` bounds that match no row at all, is usually a slip in
//! the plan (a wrong month, a wrong column): the run succeeds — its verifies compare
//! empty with empty — and says so, in its output and in the report, instead of looking
//! like a migration of data. Derived from what the state recorded, so the report of a
//! resumed run still carries the warnings of earlier runs.

use std::collections::HashMap;

use crate::graph::{Partition, TaskId};
use crate::plan::{Mode, PartitionSource, Plan};
use crate::state::{TaskRecord, TaskStatus};

/// The warnings of `plan` from its tasks' records, one sentence each.
pub fn empty_selections(plan: &Plan, records: &HashMap<TaskId, TaskRecord>) -> Vec<String> {
    let done = |id: String| {
        records
            .get(&TaskId(id))
            .filter(|r| r.status == TaskStatus::Done)
    };
    let mut out = Vec::new();
    for table in &plan.tables {
        let bounds = table.bounds_filter();
        let rows_found = if table.mode == Mode::Partition {
            let Some(split) = done(format!("{}/split", table.name)) else {
                continue;
            };
            let Ok(partitions) = serde_json::from_value::<Vec<Partition>>(split.detail.clone())
            else {
                continue;
            };
            if let PartitionSource::Declared(_) = &table.partitions {
                let absent: Vec<&str> = partitions
                    .iter()
                    .filter(|p| p.rows == Some(0))
                    .map(|p| p.id.as_str())
                    .collect();
                if !absent.is_empty() {
                    out.push(format!(
                        "table {}: declared partition(s) {} have no rows in the source{}; their exports are empty (is the partition list right?)",
                        table.name,
                        absent.join(", "),
                        if bounds.is_some() { " within lower/upper" } else { "" }
                    ));
                }
            }
            partitions.iter().filter_map(|p| p.rows).sum::<u64>()
        } else {
            let Some(export) = done(format!("{}/all/export", table.name)) else {
                continue;
            };
            export.rows.unwrap_or(0)
        };
        if let (Some(bounds), 0) = (&bounds, rows_found) {
            out.push(format!(
                "table {}: no row of the source matches the bounds {bounds}; nothing was exported (are lower/upper right?)",
                table.name
            ));
        }
    }
    out
}
