//! Which ClickHouse templates each kind of task of each strategy renders.
//!
//! A task's fingerprint covers the templates it uses (their text as in effect: built-in
//! or the plan's `templates_dir`), not every template flow ships: adding a template for
//! another engine, or a flow release that changes a template a task does not use,
//! dirties nothing. The sets are per strategy and task kind, supersets of what the
//! runtime renders; in debug builds [`crate::engines::clickhouse::Ch::sql`] refuses a
//! template outside the set of the task it runs for, so a test that runs the task finds
//! a missing entry.

use crate::plan::StrategyKind;
use crate::task::TaskKind;

/// Rendered by the helpers every ClickHouse task goes through (capabilities, columns,
/// table info, counts).
const COMMON: &[&str] = &[
    "clickhouse/columns.sql.j2",
    "clickhouse/count.sql.j2",
    "clickhouse/count_by_partition.sql.j2",
    "clickhouse/storage_policy.sql.j2",
    "clickhouse/table_info.sql.j2",
    "clickhouse/version.sql.j2",
];

/// Listing partitions, chunks and the tables of a whole database.
const SPLIT: &[&str] = &[
    "clickhouse/chunk_rows.sql.j2",
    "clickhouse/list_tables.sql.j2",
    "clickhouse/partition_id_rows.sql.j2",
    "clickhouse/partition_values.sql.j2",
    "clickhouse/parts.sql.j2",
    "clickhouse/policy_candidates.sql.j2",
    "clickhouse/quantiles.sql.j2",
];

const EXPORT: &[&str] = &[
    "clickhouse/count_s3.sql.j2",
    "clickhouse/export_s3.sql.j2",
    "clickhouse/select.sql.j2",
];

const COPY: &[&str] = &[
    "clickhouse/create_database.sql.j2",
    "clickhouse/create_like.sql.j2",
    "clickhouse/create_marker.sql.j2",
    "clickhouse/create_table.sql.j2",
    "clickhouse/database_engine.sql.j2",
    "clickhouse/drop_table.sql.j2",
    "clickhouse/exchange_tables.sql.j2",
    "clickhouse/insert_select.sql.j2",
    "clickhouse/insert_stream.sql.j2",
    "clickhouse/marker_info.sql.j2",
    "clickhouse/partition_parts.sql.j2",
    "clickhouse/rename_swap.sql.j2",
    "clickhouse/replace_partition.sql.j2",
    "clickhouse/select.sql.j2",
];

const S3_POLICY: &[&str] = &[
    "clickhouse/check_partition.sql.j2",
    "clickhouse/create_like.sql.j2",
    "clickhouse/create_marker.sql.j2",
    "clickhouse/database_engine.sql.j2",
    "clickhouse/disk_types.sql.j2",
    "clickhouse/drop_partition.sql.j2",
    "clickhouse/drop_table.sql.j2",
    "clickhouse/exchange_tables.sql.j2",
    "clickhouse/freeze_partition.sql.j2",
    "clickhouse/insert_select.sql.j2",
    "clickhouse/list_tables.sql.j2",
    "clickhouse/marker_info.sql.j2",
    "clickhouse/modify_storage_policy.sql.j2",
    "clickhouse/move_part_to_volume.sql.j2",
    "clickhouse/move_partition.sql.j2",
    "clickhouse/part_disks.sql.j2",
    "clickhouse/part_locations.sql.j2",
    "clickhouse/partition_parts.sql.j2",
    "clickhouse/parts.sql.j2",
    "clickhouse/policy_candidates.sql.j2",
    "clickhouse/policy_tables.sql.j2",
    "clickhouse/rename_swap.sql.j2",
    "clickhouse/replace_partition.sql.j2",
    "clickhouse/unfreeze_partition.sql.j2",
];

/// The templates a task of `kind` in a table of `strategy` renders, sorted, no repeats.
pub fn used_by(strategy: StrategyKind, kind: TaskKind) -> Vec<&'static str> {
    let own: &[&str] = match (strategy, kind) {
        (_, TaskKind::Split) => SPLIT,
        // The manifest is written to the store; it sends no statement.
        (StrategyKind::Export, TaskKind::Manifest) => return Vec::new(),
        (StrategyKind::Export, _) => EXPORT,
        (StrategyKind::Copy, _) => COPY,
        (StrategyKind::S3Policy, _) => S3_POLICY,
    };
    let mut names: Vec<&'static str> = COMMON.iter().chain(own).copied().collect();
    names.sort_unstable();
    names.dedup();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_named_template_is_shipped() {
        let shipped = crate::templates::builtin_template_names();
        for list in [COMMON, SPLIT, EXPORT, COPY, S3_POLICY] {
            for name in list {
                assert!(
                    shipped.iter().any(|s| s == name),
                    "{name} is not a built-in template"
                );
            }
        }
    }
}
