//! The runtime of strategy `s3-policy`, in both modes: a copy into a new table
//! ([`PolicyMove`]) or the server's own move in place ([`TierMove`], `options.to_volume`).

use std::sync::Arc;

use super::{outcome, table_name, wrong_kind, TableRunner};
use crate::engines::clickhouse::qualified;
use crate::engines::clickhouse::s3_policy::{PartitionSignatures, PolicyMove};
use crate::engines::clickhouse::tier_move::{MovedParts, TierMove};
use crate::exec::runner::{TaskContext, TaskFailure, TaskOutcome};
use crate::graph::{Partition, Task, TaskKind};
use crate::plan::TableSpec;

impl TableRunner {
    pub(super) async fn run_s3_policy(
        &self,
        task: &Task,
        ctx: &TaskContext,
        table: &TableSpec,
        partition: Option<(Arc<Partition>, Option<u32>)>,
    ) -> Result<TaskOutcome, TaskFailure> {
        let name = table_name(table, task)?;
        if let Some(volume) = crate::strategy::s3_policy::in_place_volume(table) {
            let mv = TierMove {
                ch: self.clickhouse_for(&table.source, table, task)?,
                database: table.database.clone(),
                table: name,
                policy: table.storage_policy.clone(),
                volume: volume.to_string(),
                holder: self.plan.name.clone(),
            };
            return run_in_place(&mv, task, ctx, table, partition).await;
        }
        let new_table = table
            .options
            .get(crate::strategy::s3_policy::NEW_TABLE)
            .cloned()
            .unwrap_or_else(|| PolicyMove::default_new_table(&name));
        let mv = PolicyMove::new(
            self.clickhouse_for(&table.source, table, task)?,
            &table.database,
            name,
            new_table,
            &table.storage_policy,
            &self.plan.name,
        );
        let pid = partition.as_ref().map(|(p, _)| p.id.clone());
        let need_pid = || {
            pid.clone().ok_or_else(|| {
                TaskFailure::permanent(format!("task `{}` needs a partition", task.id))
            })
        };
        let r = match task.kind {
            TaskKind::Prepare => mv.prepare().await?,
            TaskKind::Load => mv.load(&need_pid()?, &ctx.cancel).await?,
            TaskKind::Verify if pid.is_some() => {
                let loaded = recorded::<PartitionSignatures>(ctx, TaskKind::Load)?;
                mv.verify(&need_pid()?, loaded.as_ref(), &ctx.cancel)
                    .await?
            }
            TaskKind::Verify => {
                let r = mv.full_verify().await?;
                if !table.swap {
                    mv.unlock().await?;
                }
                r
            }
            TaskKind::Drop => {
                let verified = recorded::<PartitionSignatures>(ctx, TaskKind::Verify)?;
                mv.drop_partition(&need_pid()?, verified.as_ref(), &ctx.cancel)
                    .await?
            }
            TaskKind::CatchUp => mv.catch_up(&ctx.cancel).await?,
            TaskKind::Swap => mv.swap(table.keep_old, &ctx.cancel).await?,
            TaskKind::Cleanup => mv.cleanup(&ctx.cancel).await?,
            _ => return Err(wrong_kind(task, table.strategy)),
        };
        let done = outcome(
            r.rows,
            r.checksum,
            r.note,
            vec![qualified(
                &table.database,
                table.table.as_deref().unwrap_or_default(),
            )],
        );
        Ok(match &r.signatures {
            Some(signatures) => done.with_artifact(signatures),
            None => done,
        })
    }
}

/// The s3-policy steps of a table moved in place.
async fn run_in_place(
    mv: &TierMove,
    task: &Task,
    ctx: &TaskContext,
    table: &TableSpec,
    partition: Option<(Arc<Partition>, Option<u32>)>,
) -> Result<TaskOutcome, TaskFailure> {
    let pid = partition.as_ref().map(|(p, _)| p.id.clone());
    let need_pid = || {
        pid.clone()
            .ok_or_else(|| TaskFailure::permanent(format!("task `{}` needs a partition", task.id)))
    };
    let r = match task.kind {
        TaskKind::Prepare => mv.prepare().await?,
        TaskKind::Load => mv.load(&need_pid()?, &ctx.cancel).await?,
        TaskKind::Verify if pid.is_some() => {
            let loaded = recorded::<MovedParts>(ctx, TaskKind::Load)?;
            mv.verify(&need_pid()?, loaded.as_ref()).await?
        }
        TaskKind::Verify => mv.full_verify().await?,
        TaskKind::Drop => {
            let verified = recorded::<MovedParts>(ctx, TaskKind::Verify)?;
            mv.drop_partition(&need_pid()?, verified.as_ref()).await?
        }
        TaskKind::CatchUp => mv.catch_up(&ctx.cancel).await?,
        _ => return Err(wrong_kind(task, table.strategy)),
    };
    let done = outcome(
        r.rows,
        None,
        r.note,
        vec![qualified(&mv.database, &mv.table)],
    );
    Ok(match &r.moved {
        Some(moved) => done.with_artifact(moved),
        None => done,
    })
}

/// What the partition's `kind` dependency (load or verify) recorded of it, if anything
/// (a state written before signatures were recorded has none: then every figure is read).
fn recorded<T: crate::task::Artifact>(
    ctx: &TaskContext,
    kind: TaskKind,
) -> Result<Option<T>, TaskFailure> {
    Ok(ctx.artifacts::<T>(kind)?.into_iter().next())
}
