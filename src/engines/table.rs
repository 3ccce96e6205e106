//! The runner of table tasks: reads which table, partition and kind a task is about and
//! calls the strategy's engine code.
//!
//! It owns what tasks of one run share: one ClickHouse client per connection (with
//! the server's capabilities learned once), one opened store per connection, and the
//! cache of server-side export probes. It knows no SQL itself.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::Mutex as AsyncMutex;

use crate::engines::clickhouse::copy::CopyJob;
use crate::engines::clickhouse::s3_policy::{PartitionSignatures, PolicyMove};
use crate::engines::clickhouse::split::{self, Grouping, SplitRequest};
use crate::engines::clickhouse::tier_move::{MovedParts, TierMove};
use crate::engines::clickhouse::{and_all, qualified, Ch, ChClient};
use crate::engines::export::{self, ExportUnit, ExportedFile, Manifest, VerifiedPartition};
use crate::engines::registry::Engines;
use crate::engines::source::{ExportSource, SourceRef, UnitsRequest};
use crate::engines::store::{self, Store};
use crate::exec::runner::{TaskContext, TaskFailure, TaskOutcome, TaskRunner};
use crate::graph::{Partition, Task, TaskKind, WorkUnit};
use crate::plan::{PartitionSource, Plan, StrategyKind, TableSpec};
use crate::templates::Templates;

/// Runs split, prepare, export, load, verify, drop, catch-up, swap, cleanup and
/// manifest tasks of `[[tables]]`.
pub struct TableRunner {
    plan: Arc<Plan>,
    templates: Templates,
    clients: Mutex<HashMap<String, ChClient>>,
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
            clients: Mutex::new(HashMap::new()),
            stores: AsyncMutex::new(HashMap::new()),
            engines: Engines::new(plan.clone(), templates.clone()),
            plan,
            templates,
        }
    }

    /// The ClickHouse engine for a connection (one client per connection per run).
    pub fn clickhouse(&self, connection: &str) -> Result<Ch, TaskFailure> {
        let mut clients = self.clients.lock().expect("client cache lock");
        if let Some(c) = clients.get(connection) {
            return Ok(Ch::new(c.clone(), self.templates.clone()));
        }
        let conn = self.plan.connections.get(connection).ok_or_else(|| {
            TaskFailure::permanent(format!("connection `{connection}` is not defined"))
        })?;
        let client = ChClient::from_connection(conn)?;
        clients.insert(connection.to_string(), client.clone());
        Ok(Ch::new(client, self.templates.clone()))
    }

    /// [`Self::clickhouse`] for `task` of `table`: its statements come only from the
    /// templates its fingerprint covers.
    fn clickhouse_for(
        &self,
        connection: &str,
        table: &TableSpec,
        task: &Task,
    ) -> Result<Ch, TaskFailure> {
        Ok(self
            .clickhouse(connection)?
            .for_task(self.templates_of(table, task)))
    }

    /// The templates `task` of `table` may render.
    fn templates_of(&self, table: &TableSpec, task: &Task) -> Vec<&'static str> {
        let source = self.plan.connection(&table.source).kind;
        table.strategy.strategy().templates(source, task.kind)
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
pub fn source_from(
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
pub fn unit_filter(table: &TableSpec, partition: &Partition, chunk: Option<u32>) -> Option<String> {
    let bounds = table.bounds_filter();
    let chunk_filter = chunk
        .and_then(|c| partition.chunks.iter().find(|k| k.index == c))
        .map(|c| c.filter.as_str());
    and_all([partition.filter.as_deref(), bounds.as_deref(), chunk_filter])
}

fn outcome(rows: u64, checksum: Option<String>, note: String, outputs: Vec<String>) -> TaskOutcome {
    TaskOutcome {
        rows: Some(rows),
        checksum,
        note: Some(note),
        outputs,
        ..Default::default()
    }
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
        match table.strategy {
            StrategyKind::Export => self.run_export(task, &ctx, table, partition).await,
            StrategyKind::Copy => self.run_copy(task, &ctx, table, partition).await,
            StrategyKind::S3Policy => self.run_s3_policy(task, &ctx, table, partition).await,
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
        // Copy loads the rows within bounds; a storage-policy move takes whole
        // partitions, the bounds only select which.
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
        let (partitions, rows, bytes, note) = match table.strategy {
            StrategyKind::Export => {
                let units = self.export_source(table, task)?.split(&request).await?;
                (units.partitions, units.rows, units.bytes, units.note)
            }
            StrategyKind::Copy | StrategyKind::S3Policy => {
                let ch = self.clickhouse_for(&table.source, table, task)?;
                let req = SplitRequest::of_units(&request, Grouping::Physical);
                let r = split::split(&ch, &req).await?;
                (r.partitions, r.rows, r.bytes, r.note)
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

    fn export_key(
        &self,
        task: &Task,
        table: &TableSpec,
        partition: &Partition,
        chunk: Option<u32>,
    ) -> Result<String, TaskFailure> {
        if let Some(path) = task.inputs.get("path") {
            return Ok(path.clone());
        }
        let template = table
            .path
            .as_deref()
            .unwrap_or(crate::strategy::export::DEFAULT_PATH);
        let ctx = crate::graph::expand::path_context(&self.plan, table, &partition.id, chunk);
        self.templates
            .render_str("path", template, &ctx)
            .map_err(|e| TaskFailure::permanent(e.to_string()))
    }

    async fn run_export(
        &self,
        task: &Task,
        ctx: &TaskContext,
        table: &TableSpec,
        partition: Option<(Arc<Partition>, Option<u32>)>,
    ) -> Result<TaskOutcome, TaskFailure> {
        let source = self.export_source(table, task)?;
        let target = table.target.as_deref().ok_or_else(|| {
            TaskFailure::permanent(format!("task `{}`: export needs `target`", task.id))
        })?;
        let store = self.store(target).await?;
        let from = source_from(&self.plan, &self.templates, table, source.as_ref())?;
        match task.kind {
            TaskKind::Export => {
                let (p, chunk) = self.partition_of(task, &partition)?;
                let unit = ExportUnit {
                    from,
                    filter: unit_filter(table, p, *chunk),
                    key: self.export_key(task, table, p, *chunk)?,
                    format: table.format,
                    server_side: table.server_side,
                    formatting: table.formatting,
                    chunk: *chunk,
                };
                let (file, note) = source
                    .export_unit(&unit, store.as_ref(), &ctx.cancel)
                    .await?;
                Ok(TaskOutcome {
                    rows: Some(file.rows),
                    bytes: Some(file.bytes),
                    checksum: file.blake3.clone().or(file.row_checksum.clone()),
                    outputs: vec![file.location.clone()],
                    note: Some(note),
                    ..Default::default()
                }
                .with_artifact(&file))
            }
            TaskKind::Verify => {
                let (p, _) = self.partition_of(task, &partition)?;
                let mut files: Vec<ExportedFile> = ctx.artifacts(TaskKind::Export)?;
                if files.is_empty() {
                    files = self
                        .files_from_store(task, table, p, store.as_ref())
                        .await?;
                }
                files.sort_by_key(|f| f.chunk);
                // Re-reading every file doubles the I/O of an export; it is asked for
                // with options.verify_read_back = "true". By default verify checks that
                // every file is there with the size the export wrote and that the
                // source still has the rows the export counted.
                let read_back =
                    crate::strategy::bool_setting(table, crate::strategy::export::VERIFY_READ_BACK);
                let filter = unit_filter(table, p, None);
                let req = export::VerifyRequest {
                    partition: p,
                    from: &from,
                    filter: filter.as_deref(),
                    format: table.format,
                    files,
                    read_back,
                };
                let (verified, note) =
                    export::verify_partition(source.as_ref(), store.as_ref(), req, &ctx.cancel)
                        .await?;
                let mut hasher = blake3::Hasher::new();
                for f in &verified.files {
                    hasher.update(
                        f.blake3
                            .as_deref()
                            .or(f.row_checksum.as_deref())
                            .unwrap_or("")
                            .as_bytes(),
                    );
                }
                Ok(TaskOutcome {
                    rows: Some(verified.rows),
                    bytes: Some(verified.bytes),
                    checksum: Some(hasher.finalize().to_hex()[..32].to_string()),
                    outputs: verified.files.iter().map(|f| f.location.clone()).collect(),
                    note: Some(note),
                    ..Default::default()
                }
                .with_artifact(&verified))
            }
            TaskKind::Manifest => {
                let mut partitions: Vec<VerifiedPartition> = ctx.artifacts(TaskKind::Verify)?;
                partitions.sort_by(|a, b| a.partition.cmp(&b.partition));
                let keys: Vec<&str> = partitions
                    .iter()
                    .flat_map(|p| p.files.iter().map(|f| f.key.as_str()))
                    .collect();
                let key = task.inputs.get("path").cloned().ok_or_else(|| {
                    TaskFailure::permanent(format!("task `{}` has no manifest path", task.id))
                })?;
                let mut source = std::collections::BTreeMap::new();
                source.insert("connection".to_string(), table.source.clone());
                source.insert("database".to_string(), table.database.clone());
                if let Some(t) = &table.table {
                    source.insert("table".to_string(), t.clone());
                }
                if let Some(q) = &table.query {
                    source.insert("query".to_string(), q.clone());
                }
                for (k, v) in [("lower", &table.lower), ("upper", &table.upper)] {
                    if let Some(v) = v {
                        source.insert(k.to_string(), v.clone());
                    }
                }
                let manifest = Manifest {
                    plan: self.plan.name.clone(),
                    table: table.name.clone(),
                    source,
                    format: table.format.clickhouse_name().to_string(),
                    created_at: chrono::Utc::now().to_rfc3339(),
                    rows: partitions.iter().map(|p| p.rows).sum(),
                    bytes: partitions.iter().map(|p| p.bytes).sum(),
                    files: keys.len(),
                    partitions,
                };
                let location = export::write_manifest(store.as_ref(), &key, &manifest).await?;
                Ok(TaskOutcome {
                    rows: Some(manifest.rows),
                    bytes: Some(manifest.bytes),
                    outputs: vec![location.clone()],
                    note: Some(format!(
                        "manifest {location}: {} partition(s), {} file(s), {} rows",
                        manifest.partitions.len(),
                        manifest.files,
                        manifest.rows
                    )),
                    ..Default::default()
                })
            }
            _ => Err(wrong_kind(task, table.strategy)),
        }
    }

    /// Rebuilds a partition's file list from the store when no export outcome is at
    /// hand (state from an older run): every expected key must exist.
    async fn files_from_store(
        &self,
        task: &Task,
        table: &TableSpec,
        partition: &Partition,
        store: &dyn Store,
    ) -> Result<Vec<ExportedFile>, TaskFailure> {
        let chunks: Vec<Option<u32>> = if partition.chunks.is_empty() {
            vec![None]
        } else {
            partition.chunks.iter().map(|c| Some(c.index)).collect()
        };
        let mut files = Vec::new();
        for chunk in chunks {
            let key = {
                let template = table
                    .path
                    .as_deref()
                    .unwrap_or(crate::strategy::export::DEFAULT_PATH);
                let ctx =
                    crate::graph::expand::path_context(&self.plan, table, &partition.id, chunk);
                self.templates
                    .render_str("path", template, &ctx)
                    .map_err(|e| TaskFailure::permanent(e.to_string()))?
            };
            let meta = store
                .head(&key)
                .await
                .map_err(|e| TaskFailure {
                    retryable: e.is_retryable(),
                    message: e.to_string(),
                })?
                .ok_or_else(|| {
                    TaskFailure::permanent(format!(
                        "task `{}`: {} is missing; run the partition's export again",
                        task.id,
                        store.location(&key)
                    ))
                })?;
            // Rows are re-counted by reading the file back.
            let mut stream = store.open(&key).await.map_err(|e| TaskFailure {
                retryable: e.is_retryable(),
                message: e.to_string(),
            })?;
            let mut tracker = crate::engines::rows::StreamTracker::new(table.format);
            use futures::StreamExt;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| TaskFailure {
                    retryable: e.is_retryable(),
                    message: e.to_string(),
                })?;
                tracker.feed(&chunk);
            }
            let summary = tracker.finish();
            files.push(ExportedFile {
                location: store.location(&key),
                key,
                rows: summary.rows.unwrap_or(0),
                bytes: meta.size,
                blake3: Some(summary.blake3),
                row_checksum: None,
                path: export::ExportPath::Streamed,
                chunk,
                version: meta.version,
                source_checksum: None,
            });
        }
        Ok(files)
    }

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

    async fn run_copy(
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

    async fn run_s3_policy(
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
