//! `s3-policy`: move a ClickHouse table from a local storage policy to an S3 one
//! partition by partition, inside the server. Two modes:
//!
//! - copy (the default): prepare (policy exists; new table with the same structure
//!   and the new policy) → per partition load (INSERT … SELECT) → verify → drop the
//!   source partition → after every drop a catch-up pass moves rows that arrived
//!   meanwhile → full verify → swap → optional cleanup of the old table. Every drop has
//!   its partition's verify before it, and the swap and cleanup have the full verify
//!   before them. For a policy of S3 disks only.
//! - in place (`settings.to_volume`): prepare (the table is put on the policy, which
//!   holds its current disks and the volume) → per partition load (the server moves
//!   the parts, flow keeps their local bytes) → verify (part hashes and the server's
//!   own check) → drop (the kept local bytes) → catch-up → full verify. No new table,
//!   no swap: the chain ends at the full verify.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{EntryContext, EntryProblem, Requirements, Setting, SettingKind, Strategy, TaskSink};
use crate::engines::migration::MigrationSettings;
use crate::engines::registry;
use crate::plan::schema::{ConnectionKind, TableDef};
use crate::plan::{Plan, TableSpec};
use crate::task::{GraphError, Partition, Placement, TaskKind};

/// `settings.new_table`.
pub const NEW_TABLE: &str = "new_table";

/// `settings.to_volume`: the volume of `storage_policy` the parts are moved to, in place.
pub const TO_VOLUME: &str = "to_volume";

/// The volume a table's parts are moved to in place, when the table is in that mode.
pub fn in_place_volume(table: &TableSpec) -> Option<&str> {
    table.text_setting(TO_VOLUME)
}

/// How the table is moved, one line (`flow plan`).
fn mode_line(table: &TableSpec) -> String {
    match in_place_volume(table) {
        Some(volume) => format!(
            "in place: the server moves the parts to volume `{volume}` of policy `{}`",
            table.storage_policy
        ),
        None => format!(
            "copy into a new table on policy `{}`, then swap",
            table.storage_policy
        ),
    }
}

pub struct S3Policy;

impl Strategy for S3Policy {
    fn summary(&self) -> &'static str {
        "move a ClickHouse table onto an S3 storage policy in place: copy, verify, drop per partition, then swap"
    }

    fn templates(&self, source: ConnectionKind, kind: TaskKind) -> Vec<&'static str> {
        registry::migration(super::StrategyKind::S3Policy, source)
            .map(|engine| (engine.templates)(kind))
            .unwrap_or_default()
    }

    fn own_keys(&self) -> &'static [&'static str] {
        &["storage_policy"]
    }

    fn settings(&self) -> &'static [Setting] {
        &[
            Setting {
                key: NEW_TABLE,
                kind: SettingKind::TableName,
                help: "the name of the table created on the new policy (default `<table>__flow_new`)",
            },
            Setting {
                key: TO_VOLUME,
                kind: SettingKind::TableName,
                help: "the volume of `storage_policy` (of S3 disks) the server moves the parts to, in place",
            },
        ]
    }

    fn check_entry(&self, def: &TableDef, entry: &EntryContext<'_>) -> Vec<EntryProblem> {
        let label = entry.label;
        let Some(volume) = def.settings.get(TO_VOLUME) else {
            return Vec::new();
        };
        let in_place = |what: &str| {
            format!(
                "table {label}: {what} means nothing when the table is moved in place \
                 (`settings.to_volume` = {})",
                volume.get_ref()
            )
        };
        let mut problems = Vec::new();
        if let Some(new_table) = def.settings.get(NEW_TABLE) {
            problems.push(EntryProblem {
                at: Some(new_table.span()),
                message: in_place("`settings.new_table`"),
                label: "no new table in place",
                help:
                    "remove `settings.new_table`, or `settings.to_volume` to copy into a new table"
                        .into(),
            });
        }
        for (key, set) in [
            ("swap", def.swap.is_some()),
            ("keep_old", def.keep_old.is_some()),
        ] {
            if set {
                problems.push(EntryProblem {
                    at: None,
                    message: in_place(&format!("`{key}`")),
                    label: "nothing to swap in place",
                    help: format!(
                        "remove `{key}`: the table keeps its name and its data all along"
                    ),
                });
            }
        }
        if def.table.as_ref().is_some_and(|t| t.get_ref() == "*") {
            problems.push(EntryProblem {
                at: def.table.as_ref().map(|t| t.span()),
                message: format!(
                    "table {label}: a whole database (`table = \"*\"`) cannot be moved in place yet"
                ),
                label: "whole database in place",
                help: "name each table in its own entry with `settings.to_volume`".into(),
            });
        }
        problems
    }

    fn runtime(&self, table: &TableSpec) -> super::Runtime {
        super::Runtime::Migration(MigrationSettings::StoragePolicy {
            new_table: table.text_setting(NEW_TABLE).map(str::to_string),
            to_volume: in_place_volume(table).map(str::to_string),
        })
    }

    fn mode_line(&self, table: &TableSpec) -> Option<String> {
        Some(mode_line(table))
    }

    fn requirements(&self) -> Requirements {
        Requirements {
            source_kinds: registry::migration_source_kinds(super::StrategyKind::S3Policy),
            target_kinds: Vec::new(),
            target_required: false,
            allows_query: false,
            allows_whole_database: true,
            partitioned: true,
            swap_by_default: true,
        }
    }

    fn expand(
        &self,
        _plan: &Plan,
        table: &TableSpec,
        partitions: Option<&[Arc<Partition>]>,
        b: &mut dyn TaskSink,
    ) -> Result<(), GraphError> {
        let conn = vec![table.source.clone()];
        let mut policy = BTreeMap::new();
        policy.insert("storage_policy".to_string(), table.storage_policy.clone());
        let split = b
            .split_task()?
            .expect("s3-policy tables are checked to be in partition mode");
        if table.table.as_deref() == Some("*") {
            // Tables of the database are listed at apply time; each becomes its own entry.
            return Ok(());
        }
        let prepare = b.table_task(
            "prepare",
            TaskKind::Prepare,
            Placement::Metadata,
            conn.clone(),
            policy.clone(),
        )?;
        let Some(partitions) = partitions else {
            return Ok(());
        };
        let mut drops = Vec::new();
        for partition in partitions {
            let load = b.partition_task(
                (partition, None),
                "load",
                TaskKind::Load,
                Placement::InServer,
                conn.clone(),
                policy.clone(),
            )?;
            b.depend(load, prepare);
            b.depend(load, split);
            let verify = b.partition_task(
                (partition, None),
                "verify",
                TaskKind::Verify,
                Placement::InServer,
                conn.clone(),
                policy.clone(),
            )?;
            b.depend(verify, load);
            let drop = b.partition_task(
                (partition, None),
                "drop",
                TaskKind::Drop,
                Placement::Metadata,
                conn.clone(),
                policy.clone(),
            )?;
            b.depend(drop, verify);
            drops.push(drop);
        }
        let catch_up = b.table_task(
            "catch-up",
            TaskKind::CatchUp,
            Placement::InServer,
            conn.clone(),
            policy.clone(),
        )?;
        b.depend(catch_up, prepare);
        for d in drops {
            b.depend(catch_up, d);
        }
        let full_verify = b.table_task(
            "verify",
            TaskKind::Verify,
            Placement::InServer,
            conn.clone(),
            policy.clone(),
        )?;
        b.depend(full_verify, catch_up);
        if table.swap && in_place_volume(table).is_none() {
            let swap = b.table_task(
                "swap",
                TaskKind::Swap,
                Placement::Metadata,
                conn.clone(),
                policy.clone(),
            )?;
            b.depend(swap, full_verify);
            if !table.keep_old {
                let cleanup = b.table_task(
                    "cleanup",
                    TaskKind::Cleanup,
                    Placement::Metadata,
                    conn.clone(),
                    policy,
                )?;
                b.depend(cleanup, swap);
            }
        }
        Ok(())
    }
}
