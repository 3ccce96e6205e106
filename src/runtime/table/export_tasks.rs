//! The runtime of strategy `export`: export a unit into the store, verify a partition
//! against the store and the source, write the manifest.

use std::sync::Arc;

use super::{source_from, unit_filter, wrong_kind, TableRunner};
use crate::engines::export::{self, ExportUnit, ExportedFile, Manifest, VerifiedPartition};
use crate::engines::store::Store;
use crate::exec::runner::{TaskContext, TaskFailure, TaskOutcome};
use crate::graph::{Partition, Task, TaskKind};
use crate::plan::TableSpec;

impl TableRunner {
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

    pub(super) async fn run_export(
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
                // with settings.verify_read_back = true. By default verify checks that
                // every file is there with the size the export wrote and that the
                // source still has the rows the export counted.
                let read_back = table.bool_setting(crate::strategy::export::VERIFY_READ_BACK);
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
}
