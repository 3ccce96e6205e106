//! The runner of table tasks: reads which table, partition and kind a task is about and
//! calls the strategy's runtime: [`export_tasks`] for `export` (through the engine's
//! `ExportSource`), [`migration_tasks`] for `copy` and `s3-policy` (through the
//! engine's `TableMigration`).
//!
//! It owns what tasks of one run share: the engines of the registry (one client per
//! connection, with the server's capabilities learned once) and one opened store per
//! connection. It knows no SQL and no engine itself.

mod export_tasks;
mod migration_tasks;

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::Mutex as AsyncMutex;

use crate::engines::and_all;
use crate::engines::registry::Engines;
use crate::engines::source::{ExportSource, SourceRef, UnitsRequest};
use crate::engines::store::{self, Store};
use crate::exec::runner::{TaskContext, TaskFailure, TaskOutcome, TaskRunner};
use crate::graph::{Partition, Task, TaskKind, WorkUnit};
use crate::plan::{PartitionSource, Plan, StrategyKind, TableSpec};
use crate::strategy::Runtime;
use crate::templates::Templates;

/// Runs split, prepare, export, load, verify, drop, catch-up, swap, cleanup and
/// manifest tasks of `[[tables]]`.
pub struct TableRunner {
    plan: Arc<Plan>,
    templates: Templates,
    stores: AsyncMutex<HashMap<String, Arc<dyn Store>>>,
    engines: Engines,
}

impl std::fmt::Debug for TableRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableRunner")
            .field("plan", &self.plan.name)
            .finish_non_exhaustive()
    }
}

impl TableRunner {
    /// `templates` must be the plan's (built-in plus its `templates_dir`).
    pub fn new(plan: Arc<Plan>, templates: Templates) -> Self {
        TableRunner {
            stores: AsyncMutex::new(HashMap::new()),
            engines: Engines::new(plan.clone(), templates.clone()),
            plan,
            templates,
        }
    }

    /// The templates `task` of `table` may render.
    fn templates_of(&self, table: &TableSpec, task: &Task) -> Vec<&'static str> {
        let source = self.plan.connection(&table.source).kind;
        table.strategy.strategy().templates(source, task.kind)
    }

    /// The tables a whole-database entry (`table = "*"`) covers now, listed on its
    /// server (read-only).
    pub async fn tables_of_database(&self, table: &TableSpec) -> Result<Vec<String>, TaskFailure> {
        match table.strategy.strategy().runtime(table) {
            Runtime::Migration(settings) => {
                self.migration_of(table, settings, None)?
                    .tables_to_migrate()
                    .await
            }
            Runtime::Export => Err(TaskFailure::permanent(format!(
                "table `{}`: strategy {} cannot take a whole database",
                table.name,
                table.strategy.name()
            ))),
        }
    }

    /// Whether the target of `table` fits its migration, in one line, read-only (None
    /// when its strategy checks nothing before the prepare: export).
    pub async fn preflight(&self, table: &TableSpec) -> Result<Option<String>, TaskFailure> {
        match table.strategy.strategy().runtime(table) {
            Runtime::Migration(settings) => {
                self.migration_of(table, settings, None)?.preflight().await
            }
            Runtime::Export => Ok(None),
        }
    }

    /// The export source of `table`, for `task`.
    fn export_source(
        &self,
        table: &TableSpec,
        task: &Task,
    ) -> Result<Arc<dyn ExportSource>, TaskFailure> {
        self.engines
            .export_source(&table.source, self.templates_of(table, task))
    }

    /// The store for a connection.
    pub async fn store(&self, connection: &str) -> Result<Arc<dyn Store>, TaskFailure> {
        let mut stores = self.stores.lock().await;
        if let Some(s) = stores.get(connection) {
            return Ok(s.clone());
        }
        let conn = self.plan.connections.get(connection).ok_or_else(|| {
            TaskFailure::permanent(format!("connection `{connection}` is not defined"))
        })?;
        let s = store::open(conn, self.plan.base_dir())
            .await
            .map_err(|e| TaskFailure {
                retryable: e.is_retryable(),
                message: e.to_string(),
            })?;
        stores.insert(connection.to_string(), s.clone());
        Ok(s)
    }
}

/// The `FROM` of a table entry in the source's SQL: its table, or its query rendered as
/// a template (`{{ vars.X }}`, `{{ env.X }}` with real values: execution only).
fn source_from(
    plan: &Plan,
    templates: &Templates,
    table: &TableSpec,
    source: &dyn ExportSource,
) -> Result<String, TaskFailure> {
    match (&table.query, &table.table) {
        (Some(q), _) => {
            let ctx = minijinja::context! {
                plan => minijinja::context! { name => plan.name.clone() },
                vars => plan.vars.clone(),
                options => table.options.clone(),
                env => crate::templates::env_value(true),
            };
            let q = templates
                .render_str(&format!("query of table `{}`", table.name), q, &ctx)
                .map_err(|e| TaskFailure::permanent(e.to_string()))?;
            let q = q.trim().trim_end_matches(';').trim();
            Ok(source.sql_from(SourceRef::Query(q)))
        }
        (None, Some(t)) => Ok(source.sql_from(SourceRef::Table {
            database: &table.database,
            table: t,
        })),
        (None, None) => Err(TaskFailure::permanent(format!(
            "table `{}` has neither `table` nor `query`",
            table.name
        ))),
    }
}

/// The row filter of a unit: partition AND bounds AND chunk.
fn unit_filter(table: &TableSpec, partition: &Partition, chunk: Option<u32>) -> Option<String> {
    let bounds = table.bounds_filter();
    let chunk_filter = chunk
        .and_then(|c| partition.chunks.iter().find(|k| k.index == c))
        .map(|c| c.filter.as_str());
    and_all([partition.filter.as_deref(), bounds.as_deref(), chunk_filter])
}

fn wrong_kind(task: &Task, strategy: StrategyKind) -> TaskFailure {
    TaskFailure::permanent(format!(
        "task `{}`: strategy {} has no `{}` task",
        task.id,
        strategy.name(),
        task.kind
    ))
}

fn table_name(table: &TableSpec, task: &Task) -> Result<String, TaskFailure> {
    match table.table.as_deref() {
        Some("*") => Err(TaskFailure::permanent(format!(
            "task `{}`: `table = \"*\"` must be expanded into one entry per table before it runs",
            task.id
        ))),
        Some(t) => Ok(t.to_string()),
        None => Err(TaskFailure::permanent(format!(
            "task `{}`: this strategy needs `table`, not `query`",
            task.id
        ))),
    }
}

#[async_trait::async_trait]
impl TaskRunner for TableRunner {
    async fn run(&self, task: &Task, ctx: TaskContext) -> Result<TaskOutcome, TaskFailure> {
        let index = task.unit.table().ok_or_else(|| {
            TaskFailure::permanent(format!("task `{}` is not a table task", task.id))
        })?;
        let table = self.plan.tables.get(index).ok_or_else(|| {
            TaskFailure::permanent(format!("task `{}`: table index out of range", task.id))
        })?;
        let partition = match &task.unit {
            WorkUnit::Partition {
                partition, chunk, ..
            } => Some((partition.clone(), *chunk)),
            _ => None,
        };
        if task.kind == TaskKind::Split {
            return self.split(task, table).await;
        }
        match table.strategy.strategy().runtime(table) {
            Runtime::Export => self.run_export(task, &ctx, table, partition).await,
            Runtime::Migration(settings) => {
                self.run_migration(task, &ctx, table, settings, partition)
                    .await
            }
        }
    }
}

impl TableRunner {
    async fn split(&self, task: &Task, table: &TableSpec) -> Result<TaskOutcome, TaskFailure> {
        let name = table_name(table, task)?;
        let declared = match &table.partitions {
            PartitionSource::Declared(ids) => Some(ids.clone()),
            _ => None,
        };
        let bounds = table.bounds_filter();
        let request = UnitsRequest {
            database: table.database.clone(),
            table: name,
            partition_expr: table.partition_expr.clone(),
            bounds,
            split_by: table.split_by.clone(),
            max_rows: table.max_rows,
            max_bytes: table.max_bytes,
            declared,
        };
        let (partitions, rows, bytes, note) = match table.strategy.strategy().runtime(table) {
            Runtime::Export => {
                let units = self.export_source(table, task)?.split(&request).await?;
                (units.partitions, units.rows, units.bytes, units.note)
            }
            Runtime::Migration(settings) => {
                let units = self
                    .migration_of(table, settings, Some(task))?
                    .split(&request)
                    .await?;
                (units.partitions, units.rows, units.bytes, units.note)
            }
        };
        Ok(TaskOutcome {
            rows: Some(rows),
            bytes: Some(bytes),
            note: Some(note),
            ..Default::default()
        }
        .with_artifact(&partitions))
    }

    fn partition_of<'a>(
        &self,
        task: &Task,
        partition: &'a Option<(Arc<Partition>, Option<u32>)>,
    ) -> Result<&'a (Arc<Partition>, Option<u32>), TaskFailure> {
        partition
            .as_ref()
            .ok_or_else(|| TaskFailure::permanent(format!("task `{}` needs a partition", task.id)))
    }
}
