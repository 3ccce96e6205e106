//! ClickHouse behind [`TableMigration`]: `copy` ([`CopyJob`]) and `s3-policy`, in its
//! two modes ([`PolicyMove`]: a copy into a new table; [`TierMove`]: the server's own
//! move in place). This module only maps the generic steps onto those task bodies and
//! builds them from a table entry; it sends no statement itself.

use super::copy::CopyJob;
use super::s3_policy::{PartitionSignatures, PolicyMove};
use super::split::{self, Grouping, SplitRequest};
use super::target_policy::TargetPolicy;
use super::tier_move::{MovedParts, TierMove};
use super::{qualified, Ch, ChClient};
use crate::engines::migration::{
    MigrationEntry, MigrationRequest, MigrationSettings, Step, TableMigration,
};
use crate::engines::source::{Units, UnitsRequest};
use crate::plan::schema::ConnectionKind;
use crate::plan::{StrategyKind, TableSpec};
use crate::task::{Partition, TaskFailure, TaskKind, TaskOutcome};

/// `copy` from ClickHouse to ClickHouse.
pub const COPY: MigrationEntry = MigrationEntry {
    strategy: StrategyKind::Copy,
    source: ConnectionKind::Clickhouse,
    targets: &[ConnectionKind::Clickhouse],
    templates: copy_templates,
    open: open_copy,
};

/// `s3-policy` inside one ClickHouse server.
pub const S3_POLICY: MigrationEntry = MigrationEntry {
    strategy: StrategyKind::S3Policy,
    source: ConnectionKind::Clickhouse,
    targets: &[],
    templates: s3_policy_templates,
    open: open_s3_policy,
};

fn copy_templates(kind: TaskKind) -> Vec<&'static str> {
    super::task_templates::used_by(StrategyKind::Copy, kind)
}

fn s3_policy_templates(kind: TaskKind) -> Vec<&'static str> {
    super::task_templates::used_by(StrategyKind::S3Policy, kind)
}

/// The engine of `connection` for one task: its client shared by the run.
fn clickhouse(request: &MigrationRequest<'_>, connection: &str) -> Result<Ch, TaskFailure> {
    let client = request.clients.get_or_open(connection, || {
        let conn = request.plan.connections.get(connection).ok_or_else(|| {
            TaskFailure::permanent(format!("connection `{connection}` is not defined"))
        })?;
        Ok(ChClient::from_connection(conn)?)
    })?;
    let ch = Ch::new(client, request.templates.clone());
    Ok(match &request.task_templates {
        Some(templates) => ch.for_task(templates.clone()),
        None => ch,
    })
}

fn source_of(request: &MigrationRequest<'_>) -> Result<Ch, TaskFailure> {
    clickhouse(request, &request.table.source)
}

/// The table of an entry that names one (`*` is listed into tables before any step).
fn table_name(table: &TableSpec) -> Result<&str, TaskFailure> {
    match table.table.as_deref() {
        Some("*") => Err(TaskFailure::permanent(format!(
            "table `{}`: `table = \"*\"` must be expanded into one entry per table before it runs",
            table.name
        ))),
        Some(t) => Ok(t),
        None => Err(TaskFailure::permanent(format!(
            "table `{}`: this strategy needs `table`, not `query`",
            table.name
        ))),
    }
}

/// A partition split of the source: whole partitions, as the server keeps them.
async fn split_physical(ch: &Ch, request: &UnitsRequest) -> Result<Units, TaskFailure> {
    let r = split::split(ch, &SplitRequest::of_units(request, Grouping::Physical)).await?;
    Ok(Units {
        partitions: r.partitions,
        rows: r.rows,
        bytes: r.bytes,
        note: r.note,
    })
}

fn done(rows: u64, checksum: Option<String>, note: String, outputs: Vec<String>) -> TaskOutcome {
    TaskOutcome {
        rows: Some(rows),
        checksum,
        note: Some(note),
        outputs,
        ..Default::default()
    }
}

fn open_copy(request: &MigrationRequest<'_>) -> Result<Box<dyn TableMigration>, TaskFailure> {
    let MigrationSettings::Copy { swap_with } = &request.settings else {
        return Err(wrong_settings(request));
    };
    let table = request.table;
    let src_table = table_name(table)?.to_string();
    let target_conn = table.target.clone().unwrap_or_else(|| table.source.clone());
    let source = source_of(request)?;
    let target = clickhouse(request, &target_conn)?;
    let same_server = target_conn == table.source || source.client.host() == target.client.host();
    Ok(Box::new(Copy(CopyJob {
        source,
        target,
        same_server,
        src_db: table.database.clone(),
        dst_db: table
            .target_database
            .clone()
            .unwrap_or_else(|| table.database.clone()),
        dst_table: table
            .target_table
            .clone()
            .unwrap_or_else(|| src_table.clone()),
        swap_with: swap_with.clone().unwrap_or_else(|| src_table.clone()),
        src_table,
        bounds: table.bounds_filter(),
    })))
}

/// `copy`.
struct Copy(CopyJob);

fn wrong_settings(request: &MigrationRequest<'_>) -> TaskFailure {
    TaskFailure::permanent(format!(
        "table `{}`: the ClickHouse {} migration got the settings of another strategy",
        request.table.name,
        request.table.strategy.name()
    ))
}

#[async_trait::async_trait]
impl TableMigration for Copy {
    async fn split(&self, request: &UnitsRequest) -> Result<Units, TaskFailure> {
        split_physical(&self.0.source, request).await
    }

    async fn prepare(&self, _step: &Step<'_>) -> Result<TaskOutcome, TaskFailure> {
        let r = self.0.prepare().await?;
        Ok(done(r.rows, r.checksum, r.note, r.outputs))
    }

    async fn load(
        &self,
        partition: &Partition,
        step: &Step<'_>,
    ) -> Result<TaskOutcome, TaskFailure> {
        let r = self.0.load(partition, step.cancel).await?;
        Ok(done(r.rows, r.checksum, r.note, r.outputs))
    }

    async fn verify(
        &self,
        partition: &Partition,
        _step: &Step<'_>,
    ) -> Result<TaskOutcome, TaskFailure> {
        let r = self.0.verify(partition).await?;
        Ok(done(r.rows, r.checksum, r.note, r.outputs))
    }

    async fn swap(&self, _step: &Step<'_>) -> Result<TaskOutcome, TaskFailure> {
        let r = self.0.swap().await?;
        Ok(done(r.rows, r.checksum, r.note, r.outputs))
    }
}

fn open_s3_policy(request: &MigrationRequest<'_>) -> Result<Box<dyn TableMigration>, TaskFailure> {
    let MigrationSettings::StoragePolicy {
        new_table,
        to_volume,
    } = &request.settings
    else {
        return Err(wrong_settings(request));
    };
    let table = request.table;
    let ch = source_of(request)?;
    if table.table.as_deref() == Some("*") {
        return Ok(Box::new(WholeDatabase {
            ch,
            database: table.database.clone(),
            policy: table.storage_policy.clone(),
        }));
    }
    let name = table_name(table)?.to_string();
    let output = qualified(&table.database, &name);
    if let Some(volume) = to_volume {
        return Ok(Box::new(InPlace {
            mv: TierMove {
                ch,
                database: table.database.clone(),
                table: name,
                policy: table.storage_policy.clone(),
                volume: volume.clone(),
                holder: request.plan.name.clone(),
            },
            output,
        }));
    }
    let new_table = new_table
        .clone()
        .unwrap_or_else(|| PolicyMove::default_new_table(&name));
    Ok(Box::new(IntoNewTable {
        mv: PolicyMove::new(
            ch,
            &table.database,
            name,
            new_table,
            &table.storage_policy,
            &request.plan.name,
        ),
        swap: table.swap,
        keep_old: table.keep_old,
        output,
    }))
}

/// A whole-database entry before its tables are listed: it only lists them.
struct WholeDatabase {
    ch: Ch,
    database: String,
    policy: String,
}

#[async_trait::async_trait]
impl TableMigration for WholeDatabase {
    async fn split(&self, _request: &UnitsRequest) -> Result<Units, TaskFailure> {
        Err(self.not_listed())
    }

    async fn prepare(&self, _step: &Step<'_>) -> Result<TaskOutcome, TaskFailure> {
        Err(self.not_listed())
    }

    async fn load(&self, _p: &Partition, _step: &Step<'_>) -> Result<TaskOutcome, TaskFailure> {
        Err(self.not_listed())
    }

    async fn verify(&self, _p: &Partition, _step: &Step<'_>) -> Result<TaskOutcome, TaskFailure> {
        Err(self.not_listed())
    }

    async fn tables_to_migrate(&self) -> Result<Vec<String>, TaskFailure> {
        super::s3_policy::tables_to_move(&self.ch, &self.database, &self.policy)
            .await
            .map_err(|e| {
                let mut failure = TaskFailure::from(e);
                failure.message = format!(
                    "listing the tables of {}: {}",
                    self.database, failure.message
                );
                failure
            })
    }

    async fn preflight(&self) -> Result<Option<String>, TaskFailure> {
        let (_, fit) = TargetPolicy::check(&self.ch, &self.policy, None).await?;
        Ok(Some(fit))
    }
}

impl WholeDatabase {
    fn not_listed(&self) -> TaskFailure {
        TaskFailure::permanent(format!(
            "`table = \"*\"` of database `{}` must be expanded into one entry per table before it runs",
            self.database
        ))
    }
}

/// s3-policy's copy mode.
struct IntoNewTable {
    mv: PolicyMove,
    swap: bool,
    keep_old: bool,
    /// The table the outcome names.
    output: String,
}

impl IntoNewTable {
    fn done(&self, r: super::s3_policy::StepResult) -> TaskOutcome {
        let outcome = done(r.rows, r.checksum, r.note, vec![self.output.clone()]);
        match &r.signatures {
            Some(signatures) => outcome.with_artifact(signatures),
            None => outcome,
        }
    }
}

#[async_trait::async_trait]
impl TableMigration for IntoNewTable {
    async fn split(&self, request: &UnitsRequest) -> Result<Units, TaskFailure> {
        split_physical(&self.mv.ch, request).await
    }

    async fn prepare(&self, _step: &Step<'_>) -> Result<TaskOutcome, TaskFailure> {
        Ok(self.done(self.mv.prepare().await?))
    }

    async fn load(&self, p: &Partition, step: &Step<'_>) -> Result<TaskOutcome, TaskFailure> {
        Ok(self.done(self.mv.load(&p.id, step.cancel).await?))
    }

    async fn verify(&self, p: &Partition, step: &Step<'_>) -> Result<TaskOutcome, TaskFailure> {
        let loaded = step.recorded::<PartitionSignatures>(TaskKind::Load)?;
        Ok(self.done(self.mv.verify(&p.id, loaded.as_ref(), step.cancel).await?))
    }

    async fn full_verify(&self, _step: &Step<'_>) -> Result<TaskOutcome, TaskFailure> {
        let r = self.mv.full_verify().await?;
        // Without a swap the chain ends here: nothing later releases the table.
        if !self.swap {
            self.mv.unlock().await?;
        }
        Ok(self.done(r))
    }

    async fn drop_partition(
        &self,
        p: &Partition,
        step: &Step<'_>,
    ) -> Result<TaskOutcome, TaskFailure> {
        let verified = step.recorded::<PartitionSignatures>(TaskKind::Verify)?;
        Ok(self.done(
            self.mv
                .drop_partition(&p.id, verified.as_ref(), step.cancel)
                .await?,
        ))
    }

    async fn catch_up(&self, step: &Step<'_>) -> Result<TaskOutcome, TaskFailure> {
        Ok(self.done(self.mv.catch_up(step.cancel).await?))
    }

    async fn swap(&self, step: &Step<'_>) -> Result<TaskOutcome, TaskFailure> {
        Ok(self.done(self.mv.swap(self.keep_old, step.cancel).await?))
    }

    async fn cleanup(&self, step: &Step<'_>) -> Result<TaskOutcome, TaskFailure> {
        Ok(self.done(self.mv.cleanup(step.cancel).await?))
    }

    async fn preflight(&self) -> Result<Option<String>, TaskFailure> {
        let (_, fit) = TargetPolicy::check(&self.mv.ch, &self.mv.policy, None).await?;
        Ok(Some(fit))
    }
}

/// s3-policy in place.
struct InPlace {
    mv: TierMove,
    output: String,
}

impl InPlace {
    fn done(&self, r: super::tier_move::TierResult) -> TaskOutcome {
        let outcome = done(r.rows, None, r.note, vec![self.output.clone()]);
        match &r.moved {
            Some(moved) => outcome.with_artifact(moved),
            None => outcome,
        }
    }
}

#[async_trait::async_trait]
impl TableMigration for InPlace {
    async fn split(&self, request: &UnitsRequest) -> Result<Units, TaskFailure> {
        split_physical(&self.mv.ch, request).await
    }

    async fn prepare(&self, _step: &Step<'_>) -> Result<TaskOutcome, TaskFailure> {
        Ok(self.done(self.mv.prepare().await?))
    }

    async fn load(&self, p: &Partition, step: &Step<'_>) -> Result<TaskOutcome, TaskFailure> {
        Ok(self.done(self.mv.load(&p.id, step.cancel).await?))
    }

    async fn verify(&self, p: &Partition, step: &Step<'_>) -> Result<TaskOutcome, TaskFailure> {
        let loaded = step.recorded::<MovedParts>(TaskKind::Load)?;
        Ok(self.done(self.mv.verify(&p.id, loaded.as_ref()).await?))
    }

    async fn full_verify(&self, _step: &Step<'_>) -> Result<TaskOutcome, TaskFailure> {
        Ok(self.done(self.mv.full_verify().await?))
    }

    async fn drop_partition(
        &self,
        p: &Partition,
        step: &Step<'_>,
    ) -> Result<TaskOutcome, TaskFailure> {
        let verified = step.recorded::<MovedParts>(TaskKind::Verify)?;
        Ok(self.done(self.mv.drop_partition(&p.id, verified.as_ref()).await?))
    }

    async fn catch_up(&self, step: &Step<'_>) -> Result<TaskOutcome, TaskFailure> {
        Ok(self.done(self.mv.catch_up(step.cancel).await?))
    }

    async fn preflight(&self) -> Result<Option<String>, TaskFailure> {
        let (_, fit) =
            TargetPolicy::check(&self.mv.ch, &self.mv.policy, Some(&self.mv.volume)).await?;
        Ok(Some(fit))
    }
}
