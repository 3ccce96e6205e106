//! The runtime of the strategies that migrate a table on its servers (`copy`,
//! `s3-policy`): the engine the registry has for the strategy and the source gets the
//! strategy's settings, and each task kind calls its step of the engine's
//! [`TableMigration`].

use std::sync::Arc;

use super::{wrong_kind, TableRunner};
use crate::engines::migration::{MigrationSettings, Step, TableMigration};
use crate::exec::runner::{TaskContext, TaskFailure, TaskOutcome};
use crate::graph::{Partition, Task, TaskKind};
use crate::plan::TableSpec;

impl TableRunner {
    /// The migration of `table` for `task` (None: for no task, so not held to a
    /// task's templates).
    pub(super) fn migration_of(
        &self,
        table: &TableSpec,
        settings: MigrationSettings,
        task: Option<&Task>,
    ) -> Result<Box<dyn TableMigration>, TaskFailure> {
        let templates = task.map(|task| self.templates_of(table, task));
        self.engines.migration(table, settings, templates)
    }

    pub(super) async fn run_migration(
        &self,
        task: &Task,
        ctx: &TaskContext,
        table: &TableSpec,
        settings: MigrationSettings,
        partition: Option<(Arc<Partition>, Option<u32>)>,
    ) -> Result<TaskOutcome, TaskFailure> {
        let migration = self.migration_of(table, settings, Some(task))?;
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
                | TaskKind::Exec
                | TaskKind::Quiesce
                | TaskKind::Snapshot
                | TaskKind::Restore
                | TaskKind::Bind
                | TaskKind::Unquiesce,
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
