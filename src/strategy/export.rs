//! `export`: a ClickHouse table, partition or query → files or objects in a store.
//!
//! Per unit (partition or chunk): export → verify (per partition, after all its
//! chunks); a manifest is written last, after every verify, so a manifest's presence
//! means the whole export is complete and checked.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{Requirements, Strategy};
use crate::graph::expand::TableBuilder;
use crate::graph::{GraphError, Partition, Placement, TaskKind};
use crate::plan::schema::ConnectionKind;
use crate::plan::{Plan, ServerSide, TableSpec};

pub struct Export;

/// Object key used when a table has no `path`.
pub const DEFAULT_PATH: &str = "{{ table.name }}/{{ partition_id }}/part-{{ chunk }}.{{ ext }}";

impl Strategy for Export {
    fn summary(&self) -> &'static str {
        "ClickHouse partitions or a query → CSV/TSV/Native/Parquet files or objects, verified"
    }

    fn requirements(&self) -> Requirements {
        Requirements {
            source_kinds: &[ConnectionKind::Clickhouse],
            target_kinds: &[ConnectionKind::Fs, ConnectionKind::S3],
            target_required: true,
            allows_query: true,
            allows_whole_database: false,
        }
    }

    fn expand(
        &self,
        plan: &Plan,
        table: &TableSpec,
        partitions: Option<&[Arc<Partition>]>,
        b: &mut TableBuilder<'_>,
    ) -> Result<(), GraphError> {
        let source = table.source.clone();
        let target = table.target.clone().expect("export targets are checked");
        let split = b.split_task()?;
        let Some(partitions) = partitions else {
            return Ok(());
        };
        let placement = match (table.server_side, plan.connection(&target).kind) {
            (ServerSide::Never, _) | (_, ConnectionKind::Fs) => Placement::Streamed,
            _ => Placement::InServer,
        };
        let mut verifies = Vec::new();
        for partition in partitions {
            let chunks: Vec<Option<u32>> = if partition.chunks.is_empty() {
                vec![None]
            } else {
                partition.chunks.iter().map(|c| Some(c.index)).collect()
            };
            let mut exports = Vec::new();
            for chunk in chunks {
                let mut inputs = BTreeMap::new();
                inputs.insert(
                    "path".into(),
                    b.render_path(DEFAULT_PATH, partition, chunk)?,
                );
                inputs.insert("format".into(), table.format.clickhouse_name().into());
                inputs.insert(
                    "server_side".into(),
                    format!("{:?}", table.server_side).to_lowercase(),
                );
                let export = b.partition_task(
                    (partition, chunk),
                    "export",
                    TaskKind::Export,
                    placement,
                    vec![source.clone(), target.clone()],
                    inputs,
                )?;
                if let Some(split) = split {
                    b.depend(export, split);
                }
                exports.push(export);
            }
            let verify = b.partition_task(
                (partition, None),
                "verify",
                TaskKind::Verify,
                Placement::Metadata,
                vec![source.clone(), target.clone()],
                BTreeMap::new(),
            )?;
            for e in exports {
                b.depend(verify, e);
            }
            verifies.push(verify);
        }
        let manifest = b.table_task(
            "manifest",
            TaskKind::Manifest,
            Placement::Metadata,
            vec![target.clone()],
            BTreeMap::new(),
        )?;
        for v in verifies {
            b.depend(manifest, v);
        }
        Ok(())
    }
}
