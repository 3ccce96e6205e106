//! `s3-policy`: move a ClickHouse table from a local storage policy to an S3 one
//! partition by partition, inside the server.
//!
//! prepare (policy exists; new table with the same structure and the new policy) →
//! per partition load (INSERT … SELECT) → verify → drop the source partition → after
//! every drop a catch-up pass moves rows that arrived meanwhile → full verify → swap →
//! optional cleanup of the old table. Every drop has its partition's verify before it,
//! and the swap and cleanup have the full verify before them.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Requirements, Setting, SettingKind, Strategy};
use crate::graph::expand::TableBuilder;
use crate::graph::{GraphError, Partition, Placement, TaskKind};
use crate::plan::schema::ConnectionKind;
use crate::plan::{Plan, TableSpec};

/// `options.new_table`.
pub const NEW_TABLE: &str = "new_table";

pub struct S3Policy;

impl Strategy for S3Policy {
    fn summary(&self) -> &'static str {
        "move a ClickHouse table onto an S3 storage policy in place: copy, verify, drop per partition, then swap"
    }

    fn templates(&self, _source: ConnectionKind, kind: TaskKind) -> Vec<&'static str> {
        super::templates::used_by(super::StrategyKind::S3Policy, kind)
    }

    fn own_keys(&self) -> &'static [&'static str] {
        &["storage_policy"]
    }

    fn settings(&self) -> &'static [Setting] {
        &[Setting {
            key: NEW_TABLE,
            kind: SettingKind::TableName,
            help: "the name of the table created on the new policy (default `<table>__flow_new`)",
        }]
    }

    fn requirements(&self) -> Requirements {
        Requirements {
            source_kinds: vec![ConnectionKind::Clickhouse],
            target_kinds: &[],
            target_required: false,
            allows_query: false,
            allows_whole_database: true,
        }
    }

    fn expand(
        &self,
        _plan: &Plan,
        table: &TableSpec,
        partitions: Option<&[Arc<Partition>]>,
        b: &mut TableBuilder<'_>,
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
        if table.swap {
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
