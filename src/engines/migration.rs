//! What an engine does to migrate a table partition by partition on its own servers:
//! the work of strategies `copy` and `s3-policy`.
//!
//! The strategy decides which tasks there are and their order (load before verify,
//! verify before drop); the engine runs each step through [`TableMigration`]. A step
//! gets what its dependencies recorded as typed artifacts ([`Step::dependencies`],
//! decoded with [`crate::task::artifacts`]) and decides from what the servers hold,
//! so a step run again after a crash finds the earlier attempt.
//!
//! Adding an engine for one of these strategies is its folder under `engines/` with a
//! [`MigrationEntry`] constant, and its line in [`crate::engines::registry`]; plan
//! checks (which source and target kinds a strategy takes), fingerprints (the templates
//! its steps render) and the runner read it from there.

use tokio_util::sync::CancellationToken;

use crate::engines::clients::Clients;
use crate::engines::source::{Units, UnitsRequest};
use crate::plan::schema::ConnectionKind;
use crate::plan::{Plan, StrategyKind, TableSpec};
use crate::task::{Dependency, Partition, TaskFailure, TaskId, TaskKind, TaskOutcome};
use crate::templates::Templates;

/// The settings of the strategies an engine migrates for, as the strategy decoded them
/// from the table entry (checked at validate).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MigrationSettings {
    /// `copy`.
    Copy {
        /// The table the copy is exchanged with at the swap (default: the source's
        /// name, in the target database).
        swap_with: Option<String>,
    },
    /// `s3-policy`.
    StoragePolicy {
        /// Copy mode: the table created on the new policy (default: the engine's).
        new_table: Option<String>,
        /// In place: the volume of the policy the parts are moved to.
        to_volume: Option<String>,
    },
}

/// Everything an engine needs to open the migration of one table, for one task.
pub struct MigrationRequest<'a> {
    pub plan: &'a Plan,
    pub table: &'a TableSpec,
    pub settings: MigrationSettings,
    pub templates: &'a Templates,
    /// The templates the task may render (its fingerprint covers them); None outside a
    /// task (`flow plan`'s checks, listing a whole database).
    pub task_templates: Option<Vec<&'static str>>,
    /// The run's clients, one per connection.
    pub clients: &'a Clients,
}

/// What a step gets besides its unit.
pub struct Step<'a> {
    pub task: &'a TaskId,
    /// Its done dependencies, with their kinds and artifacts.
    pub dependencies: &'a [Dependency],
    pub cancel: &'a CancellationToken,
}

impl Step<'_> {
    /// What the one dependency of `kind` recorded, if anything (a state written before
    /// that artifact existed has none: the step then reads every figure itself).
    pub fn recorded<T: crate::task::Artifact>(
        &self,
        kind: TaskKind,
    ) -> Result<Option<T>, TaskFailure> {
        Ok(crate::task::artifacts::<T>(self.dependencies, kind)?
            .into_iter()
            .next())
    }
}

/// The steps of one table's migration. A step the engine's migration has no use for
/// keeps its default: a permanent failure that names it (the strategy's expansion does
/// not make such a task, so reaching one means a plan and an engine out of step).
#[async_trait::async_trait]
pub trait TableMigration: Send + Sync {
    /// The partitions of the source table within the entry's bounds, each moved whole.
    async fn split(&self, request: &UnitsRequest) -> Result<Units, TaskFailure>;
    /// Checks, and sets up what the loads need (the target table, a lock).
    async fn prepare(&self, step: &Step<'_>) -> Result<TaskOutcome, TaskFailure>;
    /// Moves one partition's rows; a repeated load replaces, never adds.
    async fn load(
        &self,
        partition: &Partition,
        step: &Step<'_>,
    ) -> Result<TaskOutcome, TaskFailure>;
    /// Checks one partition where it was loaded against its source.
    async fn verify(
        &self,
        partition: &Partition,
        step: &Step<'_>,
    ) -> Result<TaskOutcome, TaskFailure>;
    /// Checks the whole table once every partition is done.
    async fn full_verify(&self, step: &Step<'_>) -> Result<TaskOutcome, TaskFailure> {
        Err(unsupported(step, TaskKind::Verify))
    }
    /// Removes what a verified partition left behind at its source.
    async fn drop_partition(
        &self,
        _partition: &Partition,
        step: &Step<'_>,
    ) -> Result<TaskOutcome, TaskFailure> {
        Err(unsupported(step, TaskKind::Drop))
    }
    /// Moves what arrived at the source while the partitions were moved.
    async fn catch_up(&self, step: &Step<'_>) -> Result<TaskOutcome, TaskFailure> {
        Err(unsupported(step, TaskKind::CatchUp))
    }
    /// Puts the migrated table in the source's place.
    async fn swap(&self, step: &Step<'_>) -> Result<TaskOutcome, TaskFailure> {
        Err(unsupported(step, TaskKind::Swap))
    }
    /// Removes what the swap left (the old table).
    async fn cleanup(&self, step: &Step<'_>) -> Result<TaskOutcome, TaskFailure> {
        Err(unsupported(step, TaskKind::Cleanup))
    }
    /// For a whole-database entry (`table = "*"`): the tables of its database still to
    /// migrate now (read-only).
    async fn tables_to_migrate(&self) -> Result<Vec<String>, TaskFailure> {
        Err(TaskFailure::permanent(
            "this engine cannot migrate a whole database: list its tables in the plan",
        ))
    }
    /// For `flow plan`: whether the target fits the migration, read-only, in one line
    /// (None when there is nothing to check before the prepare).
    async fn preflight(&self) -> Result<Option<String>, TaskFailure> {
        Ok(None)
    }
}

fn unsupported(step: &Step<'_>, kind: TaskKind) -> TaskFailure {
    TaskFailure::permanent(format!(
        "task `{}`: this engine's migration has no `{kind}` step",
        step.task
    ))
}

/// One engine's line in [`crate::engines::registry`] for one strategy.
pub struct MigrationEntry {
    pub strategy: StrategyKind,
    /// The source connection kind.
    pub source: ConnectionKind,
    /// The target connection kinds (empty: the migration stays on the source).
    pub targets: &'static [ConnectionKind],
    /// The templates a task of a kind renders (its fingerprint covers them).
    pub templates: fn(TaskKind) -> Vec<&'static str>,
    /// Opens the migration of a table for one task (no network: the steps connect).
    pub open: OpenMigration,
}

/// An engine's constructor of a table's migration.
pub type OpenMigration = fn(&MigrationRequest<'_>) -> Result<Box<dyn TableMigration>, TaskFailure>;

#[cfg(test)]
mod tests {
    use super::*;

    /// A migration with only the steps every migration has.
    struct LoadOnly;

    #[async_trait::async_trait]
    impl TableMigration for LoadOnly {
        async fn split(&self, _request: &UnitsRequest) -> Result<Units, TaskFailure> {
            Ok(Units::default())
        }
        async fn prepare(&self, _step: &Step<'_>) -> Result<TaskOutcome, TaskFailure> {
            Ok(TaskOutcome::default())
        }
        async fn load(&self, _p: &Partition, _step: &Step<'_>) -> Result<TaskOutcome, TaskFailure> {
            Ok(TaskOutcome::default())
        }
        async fn verify(&self, _p: &Partition, _s: &Step<'_>) -> Result<TaskOutcome, TaskFailure> {
            Ok(TaskOutcome::default())
        }
    }

    #[tokio::test]
    async fn a_step_an_engine_lacks_fails_permanently_naming_the_task_and_the_step() {
        let id = TaskId("db.t/swap".into());
        let cancel = CancellationToken::new();
        let step = Step {
            task: &id,
            dependencies: &[],
            cancel: &cancel,
        };
        let m = LoadOnly;
        let p = Partition {
            id: "202401".into(),
            value: None,
            filter: None,
            rows: None,
            bytes: None,
            chunks: Vec::new(),
        };
        let failures = [
            m.full_verify(&step).await.unwrap_err(),
            m.drop_partition(&p, &step).await.unwrap_err(),
            m.catch_up(&step).await.unwrap_err(),
            m.swap(&step).await.unwrap_err(),
            m.cleanup(&step).await.unwrap_err(),
        ];
        for (failure, kind) in failures
            .iter()
            .zip(["verify", "drop", "catch-up", "swap", "cleanup"])
        {
            assert!(!failure.retryable, "{}", failure.message);
            assert!(
                failure.message.contains("`db.t/swap`")
                    && failure.message.contains(&format!("`{kind}`")),
                "{}",
                failure.message
            );
        }
        assert!(m.tables_to_migrate().await.is_err());
        assert_eq!(m.preflight().await.unwrap(), None);
    }

    #[test]
    fn the_registry_says_which_kinds_each_strategy_migrates() {
        use crate::engines::registry;
        assert_eq!(
            registry::migration_source_kinds(StrategyKind::Copy),
            [ConnectionKind::Clickhouse]
        );
        assert_eq!(
            registry::migration_target_kinds(StrategyKind::Copy),
            [ConnectionKind::Clickhouse]
        );
        assert!(registry::migration_target_kinds(StrategyKind::S3Policy).is_empty());
        assert!(registry::migration(StrategyKind::Export, ConnectionKind::Clickhouse).is_none());
        assert!(registry::migration(StrategyKind::Copy, ConnectionKind::Mysql).is_none());
        for entry in registry::MIGRATIONS {
            assert!(
                !(entry.templates)(TaskKind::Load).is_empty(),
                "{} from {} lists no template for its loads",
                entry.strategy.name(),
                entry.source.as_str()
            );
        }
    }
}
