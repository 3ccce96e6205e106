//! The runtime of strategies `copy` and `s3-policy`: the strategy's settings of the
//! table become the engine's [`MigrationSettings`], and each task kind calls its step
//! of the engine's [`TableMigration`].

use std::sync::Arc;

use super::{wrong_kind, TableRunner};
use crate::engines::migration::{MigrationSettings, Step, TableMigration};
use crate::exec::runner::{TaskContext, TaskFailure, TaskOutcome};
use crate::graph::{Partition, Task, TaskKind};
use crate::plan::{StrategyKind, TableSpec};

/// The engine's settings of a table of strategy copy or s3-policy, from what the
/// strategy decoded of the entry.
fn settings(table: &TableSpec) -> Result<MigrationSettings, TaskFailure> {
    match table.strategy {
        StrategyKind::Copy => Ok(MigrationSettings::Copy {
            swap_with: crate::strategy::copy::Settings::of(table).swap_with,
        }),
        StrategyKind::S3Policy => {
            let s = crate::strategy::s3_policy::Settings::of(table);
            Ok(MigrationSettings::StoragePolicy {
                new_table: s.new_table,
                to_volume: s.to_volume,
            })
        }
        StrategyKind::Export => Err(TaskFailure::permanent(format!(
            "table `{}`: strategy export is not a migration",
            table.name
        ))),
    }
}

impl TableRunner {
    /// The migration of `table` for `task` (None: for no task, so not held to a
    /// task's templates).
    pub(super) fn migration_of(
        &self,
        table: &TableSpec,
        task: Option<&Task>,
    ) -> Result<Box<dyn TableMigration>, TaskFailure> {
        let templates = task.map(|task| self.templates_of(table, task));
        self.engines.migration(table, settings(table)?, templates)
    }

    pub(super) async fn run_migration(
        &self,
        task: &Task,
        ctx: &TaskContext,
        table: &TableSpec,
        partition: Option<(Arc<Partition>, Option<u32>)>,
    ) -> Result<TaskOutcome, TaskFailure> {
        let migration = self.migration_of(table, Some(task))?;
        let step = Step {
            task: &task.id,
            dependencies: &ctx.dependencies,
            cancel: &ctx.cancel,
        };
        let partition = partition.as_ref().map(|(p, _)| p.as_ref());
        match (task.kind, partition) {
            (TaskKind::Prepare, None) => migration.prepare(&step).await,
            (TaskKind::Load, Some(p)) => migration.load(p, &step).await,
            (TaskKind::Verify, Some(p)) => migration.verify(p, &step).await,
            (TaskKind::Verify, None) => migration.full_verify(&step).await,
            (TaskKind::Drop, Some(p)) => migration.drop_partition(p, &step).await,
            (TaskKind::CatchUp, None) => migration.catch_up(&step).await,
            (TaskKind::Swap, None) => migration.swap(&step).await,
            (TaskKind::Cleanup, None) => migration.cleanup(&step).await,
            // Every other pair is named, so a new kind is a compile error here, not a
            // task sent to the wrong step.
            (
                TaskKind::Split
                | TaskKind::Export
                | TaskKind::Manifest
                | TaskKind::Sql
                | TaskKind::Exec,
                _,
            )
            | (TaskKind::Load | TaskKind::Drop, None)
            | (
                TaskKind::Prepare | TaskKind::CatchUp | TaskKind::Swap | TaskKind::Cleanup,
                Some(_),
            ) => Err(wrong_kind(task, table.strategy)),
        }
    }
}
