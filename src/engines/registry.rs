//! The registry of data engines: which connection kinds each strategy can work on, and
//! the engines of one run's connections, built once per run.
//!
//! Adding an engine is its folder under `engines/` with an [`ExportSourceEntry`] (to be
//! the source of an `export`) or a [`MigrationEntry`] (to do a `copy` or `s3-policy`)
//! constant, and its line here; plan checks (allowed source and target kinds, formats,
//! keys it cannot honour), fingerprints (the templates its tasks render) and the runner
//! all read it from here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::engines::clients::Clients;
use crate::engines::migration::TableMigration;
use crate::engines::migration::{MigrationEntry, MigrationRequest, MigrationSettings};
use crate::engines::source::{ExportSource, ExportSourceEntry, OpenSource};
use crate::plan::schema::ConnectionKind;
use crate::plan::{Plan, StrategyKind, TableSpec};
use crate::task::TaskFailure;
use crate::templates::Templates;

/// Every engine an `export` can read from.
pub const EXPORT_SOURCES: &[ExportSourceEntry] = &[
    crate::engines::clickhouse::source::EXPORT_SOURCE,
    crate::engines::mysql::export::EXPORT_SOURCE,
];

/// Every engine that migrates tables for `copy` or `s3-policy`.
pub const MIGRATIONS: &[MigrationEntry] = &[
    crate::engines::clickhouse::migration::COPY,
    crate::engines::clickhouse::migration::S3_POLICY,
];

/// The block store (snapshots, volumes) of a connection of kind `ec2`.
pub async fn block_store(
    connection: &crate::plan::Connection,
) -> Result<Arc<dyn crate::engines::volume::BlockStore>, TaskFailure> {
    match connection.kind {
        ConnectionKind::Ec2 => Ok(Arc::new(
            crate::engines::ec2::Ebs::connect(connection).await?,
        )),
        other => Err(TaskFailure::permanent(format!(
            "connection `{}` is {}, not a block store (ec2)",
            connection.name,
            other.as_str()
        ))),
    }
}

/// The claim host (claims, PVs, StatefulSets) of a connection of kind `kubernetes`.
pub async fn claim_host(
    connection: &crate::plan::Connection,
) -> Result<Arc<dyn crate::engines::volume::ClaimHost>, TaskFailure> {
    match connection.kind {
        ConnectionKind::Kubernetes => Ok(Arc::new(
            crate::engines::kubernetes::Cluster::connect(connection).await?,
        )),
        other => Err(TaskFailure::permanent(format!(
            "connection `{}` is {}, not a claim host (kubernetes)",
            connection.name,
            other.as_str()
        ))),
    }
}

/// The entry of an export source kind.
pub fn export_source(kind: ConnectionKind) -> Option<&'static ExportSourceEntry> {
    EXPORT_SOURCES.iter().find(|e| e.kind == kind)
}

/// The connection kinds an `export` can read from.
pub fn export_source_kinds() -> Vec<ConnectionKind> {
    EXPORT_SOURCES.iter().map(|e| e.kind).collect()
}

/// The engine that migrates for `strategy` from a `source` connection.
pub fn migration(
    strategy: StrategyKind,
    source: ConnectionKind,
) -> Option<&'static MigrationEntry> {
    MIGRATIONS
        .iter()
        .find(|e| e.strategy == strategy && e.source == source)
}

/// The source connection kinds `strategy` can migrate from.
pub fn migration_source_kinds(strategy: StrategyKind) -> Vec<ConnectionKind> {
    MIGRATIONS
        .iter()
        .filter(|e| e.strategy == strategy)
        .map(|e| e.source)
        .collect()
}

/// The target connection kinds `strategy` can migrate to, from any source.
pub fn migration_target_kinds(strategy: StrategyKind) -> Vec<ConnectionKind> {
    let mut kinds: Vec<ConnectionKind> = Vec::new();
    for kind in MIGRATIONS
        .iter()
        .filter(|e| e.strategy == strategy)
        .flat_map(|e| e.targets.iter().copied())
    {
        if !kinds.contains(&kind) {
            kinds.push(kind);
        }
    }
    kinds
}

/// The engines of one run's connections, each opened once, sharing one client per
/// connection.
pub struct Engines {
    plan: Arc<Plan>,
    templates: Templates,
    clients: Clients,
    export_sources: Mutex<HashMap<String, Arc<dyn ExportSource>>>,
}

impl Engines {
    pub fn new(plan: Arc<Plan>, templates: Templates) -> Self {
        Engines {
            plan,
            templates,
            clients: Clients::default(),
            export_sources: Mutex::new(HashMap::new()),
        }
    }

    fn connection(&self, name: &str) -> Result<&crate::plan::Connection, TaskFailure> {
        self.plan
            .connections
            .get(name)
            .ok_or_else(|| TaskFailure::permanent(format!("connection `{name}` is not defined")))
    }

    /// The export source of `connection`, for a task rendering only `templates`.
    pub fn export_source(
        &self,
        connection: &str,
        templates: Vec<&'static str>,
    ) -> Result<Arc<dyn ExportSource>, TaskFailure> {
        let mut sources = self.export_sources.lock().expect("engine cache lock");
        if let Some(s) = sources.get(connection) {
            return Ok(s.for_task(templates));
        }
        let conn = self.connection(connection)?;
        let entry = export_source(conn.kind).ok_or_else(|| {
            TaskFailure::permanent(format!(
                "connection `{connection}` is {}, which `export` cannot read from",
                conn.kind.as_str()
            ))
        })?;
        let source = (entry.open)(&OpenSource {
            name: connection,
            connection: conn,
            templates: &self.templates,
            clients: &self.clients,
        })?;
        sources.insert(connection.to_string(), source.clone());
        Ok(source.for_task(templates))
    }

    /// The migration of `table` (of strategy copy or s3-policy), for a task rendering
    /// only `templates` (None: not for a task).
    pub fn migration(
        &self,
        table: &TableSpec,
        settings: MigrationSettings,
        templates: Option<Vec<&'static str>>,
    ) -> Result<Box<dyn TableMigration>, TaskFailure> {
        let source = self.connection(&table.source)?;
        let entry = migration(table.strategy, source.kind).ok_or_else(|| {
            TaskFailure::permanent(format!(
                "table `{}`: connection `{}` is {}, which strategy {} cannot work on",
                table.name,
                table.source,
                source.kind.as_str(),
                table.strategy.name()
            ))
        })?;
        if let Some(target) = &table.target {
            let kind = self.connection(target)?.kind;
            if !entry.targets.contains(&kind) {
                return Err(TaskFailure::permanent(format!(
                    "table `{}`: strategy {} cannot go from {} to {} (connection `{target}`)",
                    table.name,
                    table.strategy.name(),
                    source.kind.as_str(),
                    kind.as_str()
                )));
            }
        }
        (entry.open)(&MigrationRequest {
            plan: &self.plan,
            table,
            settings,
            templates: &self.templates,
            task_templates: templates,
            clients: &self.clients,
        })
    }
}
