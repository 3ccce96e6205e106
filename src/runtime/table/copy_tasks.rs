//! The runtime of strategy `copy`: prepare the target, load and verify a partition,
//! swap.

use std::sync::Arc;

use super::{outcome, table_name, wrong_kind, TableRunner};
use crate::engines::clickhouse::copy::CopyJob;
use crate::exec::runner::{TaskContext, TaskFailure, TaskOutcome};
use crate::graph::{Partition, Task, TaskKind};
use crate::plan::TableSpec;

impl TableRunner {
    fn copy_job(&self, task: &Task, table: &TableSpec) -> Result<CopyJob, TaskFailure> {
        let src_table = table_name(table, task)?;
        let target_conn = table.target.clone().unwrap_or_else(|| table.source.clone());
        let source = self.clickhouse_for(&table.source, table, task)?;
        let target = self.clickhouse_for(&target_conn, table, task)?;
        let same_server =
            target_conn == table.source || source.client.host() == target.client.host();
        let dst_db = table
            .target_database
            .clone()
            .unwrap_or_else(|| table.database.clone());
        let dst_table = table
            .target_table
            .clone()
            .unwrap_or_else(|| src_table.clone());
        let swap_with = table
            .options
            .get(crate::strategy::copy::SWAP_WITH)
            .cloned()
            .unwrap_or_else(|| src_table.clone());
        Ok(CopyJob {
            source,
            target,
            same_server,
            src_db: table.database.clone(),
            src_table,
            dst_db,
            dst_table,
            bounds: table.bounds_filter(),
            swap_with,
        })
    }

    pub(super) async fn run_copy(
        &self,
        task: &Task,
        ctx: &TaskContext,
        table: &TableSpec,
        partition: Option<(Arc<Partition>, Option<u32>)>,
    ) -> Result<TaskOutcome, TaskFailure> {
        let job = self.copy_job(task, table)?;
        let r = match task.kind {
            TaskKind::Prepare => job.prepare().await?,
            TaskKind::Load => {
                let (p, _) = self.partition_of(task, &partition)?;
                job.load(p, &ctx.cancel).await?
            }
            TaskKind::Verify => {
                let (p, _) = self.partition_of(task, &partition)?;
                job.verify(p).await?
            }
            TaskKind::Swap => job.swap().await?,
            _ => return Err(wrong_kind(task, table.strategy)),
        };
        Ok(outcome(r.rows, r.checksum, r.note, r.outputs))
    }
}
