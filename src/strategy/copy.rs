//! `copy`: ClickHouse → ClickHouse (same or another server), partition by partition.
//!
//! prepare (create the target from the source DDL if absent) → per partition load
//! (staging table + REPLACE PARTITION, so a re-run replaces instead of duplicating) →
//! verify (count + order-independent checksum) → optional swap after every verify.

use std::collections::BTreeMap;
use std::sync::Arc;

use toml::Spanned;

use super::{EntryContext, EntryProblem, Requirements, Setting, SettingKind, Strategy, TaskSink};
use crate::engines::migration::MigrationSettings;
use crate::engines::registry;
use crate::plan::schema::{ConnectionKind, TableDef};
use crate::plan::{Plan, TableSpec};
use crate::task::{GraphError, Partition, Placement, TaskKind};

/// `settings.swap_with`.
pub const SWAP_WITH: &str = "swap_with";

pub struct Copy;

impl Strategy for Copy {
    fn summary(&self) -> &'static str {
        "ClickHouse → ClickHouse per partition via staging + REPLACE PARTITION, verified by checksum"
    }

    fn templates(&self, source: ConnectionKind, kind: TaskKind) -> Vec<&'static str> {
        registry::migration(super::StrategyKind::Copy, source)
            .map(|engine| (engine.templates)(kind))
            .unwrap_or_default()
    }

    fn own_keys(&self) -> &'static [&'static str] {
        &["target_database", "target_table"]
    }

    fn settings(&self) -> &'static [Setting] {
        &[Setting {
            key: SWAP_WITH,
            kind: SettingKind::TableName,
            help: "the name of the table the copy is exchanged with, in the target database",
        }]
    }

    fn runtime(&self, table: &TableSpec) -> super::Runtime {
        super::Runtime::Migration(MigrationSettings::Copy {
            swap_with: table.text_setting(SWAP_WITH).map(str::to_string),
        })
    }

    fn requirements(&self) -> Requirements {
        Requirements {
            source_kinds: registry::migration_source_kinds(super::StrategyKind::Copy),
            target_kinds: registry::migration_target_kinds(super::StrategyKind::Copy),
            target_required: false,
            allows_query: false,
            allows_whole_database: false,
            partitioned: true,
            swap_by_default: false,
        }
    }

    fn check_entry(&self, def: &TableDef, entry: &EntryContext<'_>) -> Vec<EntryProblem> {
        let label = entry.label;
        let text = |s: &Option<Spanned<String>>| s.as_ref().map(|v| v.get_ref().trim().to_string());
        if def.target.is_none() && def.target_database.is_none() && def.target_table.is_none() {
            return vec![EntryProblem {
                at: None,
                message: format!("table {label}: copy needs somewhere to copy to"),
                label: "no target",
                help: "add `target` (another server), `target_database` or `target_table`".into(),
            }];
        }
        let Some(table_name) = entry.table.map(str::to_string) else {
            return Vec::new();
        };
        let database = entry.database;
        let target_db = text(&def.target_database).unwrap_or_else(|| database.to_string());
        let target_table = text(&def.target_table).unwrap_or_else(|| table_name.clone());
        let same_server = match &def.target {
            None => true,
            Some(t) => (entry.same_server)(def.source.get_ref(), t.get_ref()),
        };
        if same_server && target_db == database && target_table == table_name {
            let at = def
                .target_table
                .as_ref()
                .or(def.target_database.as_ref())
                .or(def.target.as_ref())
                .map(|s| s.span());
            return vec![EntryProblem {
                at,
                message: format!(
                    "table {label}: copy onto itself (the target is {database}.{table_name} on the same server)"
                ),
                label: "same table",
                help: "set a different target server, target_database or target_table".into(),
            }];
        }
        Vec::new()
    }

    fn expand(
        &self,
        _plan: &Plan,
        table: &TableSpec,
        partitions: Option<&[Arc<Partition>]>,
        b: &mut dyn TaskSink,
    ) -> Result<(), GraphError> {
        let source = table.source.clone();
        let target = table.target.clone().unwrap_or_else(|| source.clone());
        let same_server = source == target;
        let both = vec![source.clone(), target.clone()];
        let split = b.split_task()?;
        let prepare = b.table_task(
            "prepare",
            TaskKind::Prepare,
            Placement::Metadata,
            both.clone(),
            BTreeMap::new(),
        )?;
        let Some(partitions) = partitions else {
            return Ok(());
        };
        let mut verifies = Vec::new();
        for partition in partitions {
            let load = b.partition_task(
                (partition, None),
                "load",
                TaskKind::Load,
                if same_server {
                    Placement::InServer
                } else {
                    Placement::Streamed
                },
                both.clone(),
                BTreeMap::new(),
            )?;
            b.depend(load, prepare);
            if let Some(split) = split {
                b.depend(load, split);
            }
            let verify = b.partition_task(
                (partition, None),
                "verify",
                TaskKind::Verify,
                Placement::InServer,
                both.clone(),
                BTreeMap::new(),
            )?;
            b.depend(verify, load);
            verifies.push(verify);
        }
        if table.swap {
            let swap = b.table_task(
                "swap",
                TaskKind::Swap,
                Placement::Metadata,
                vec![target.clone()],
                BTreeMap::new(),
            )?;
            for v in verifies {
                b.depend(swap, v);
            }
        }
        Ok(())
    }
}
