//! What every `export` shares, whatever its source engine: the unit to write, the file
//! written, the per-partition verify against the store and the source, and the manifest.
//!
//! The verify checks that every file is in the store with the size (and the store's
//! version) the export wrote — with `settings.verify_read_back = true` it also reads
//! each streamed file back and checks its blake3 and rows — and that the source still
//! has the partition's rows: their count, and where the source engine recorded a row
//! checksum at export time ([`ExportedFile::source_checksum`]), that checksum too. The
//! source is asked through [`ExportSource::signature`], so this module sends no SQL.

use std::collections::BTreeMap;

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::engines::rows::StreamTracker;
use crate::engines::source::ExportSource;
use crate::engines::store::{PutMode, Store};
use crate::plan::{ExportFormat, Formatting, ServerSide};
use crate::task::{Artifact, TaskFailure};

/// How a unit was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExportPath {
    Streamed,
    ServerSide,
}

/// One written file or object; stored as an export task's `detail`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportedFile {
    pub key: String,
    pub location: String,
    pub rows: u64,
    pub bytes: u64,
    /// blake3 of the bytes (streamed exports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// Row checksum of the object read back through the server (server-side exports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row_checksum: Option<String>,
    pub path: ExportPath,
    /// Chunk index when the unit is a chunk of a partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk: Option<u32>,
    /// The store's identity of the object as committed ([`crate::engines::store::ObjectMeta::version`]):
    /// verify finds a file that was replaced after the export wrote it, whatever its size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The source's row checksum of the unit's rows as they were exported, where the
    /// source engine computes one in the same snapshot as the rows it sent (hex, additive:
    /// a partition's is the sum of its chunks'). Verify compares it with the source now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_checksum: Option<String>,
}

impl Artifact for ExportedFile {
    const NAME: &'static str = "exported file";
}

impl Artifact for VerifiedPartition {
    const NAME: &'static str = "verified partition";
}

/// What one export unit needs.
#[derive(Clone, Debug)]
pub struct ExportUnit {
    /// The source's `FROM` text: a quoted table or a parenthesised query
    /// ([`ExportSource::sql_from`]).
    pub from: String,
    /// The unit's whole row filter (partition AND bounds AND chunk); None = all rows.
    pub filter: Option<String>,
    pub key: String,
    pub format: ExportFormat,
    pub server_side: ServerSide,
    pub formatting: Formatting,
    pub chunk: Option<u32>,
}

/// The outcome of a partition's verify; its `detail`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct VerifiedPartition {
    pub partition: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub rows: u64,
    pub bytes: u64,
    pub source_rows: u64,
    pub files: Vec<ExportedFile>,
}

/// What a partition's verify checks.
#[derive(Debug)]
pub struct VerifyRequest<'a> {
    pub partition: &'a crate::task::Partition,
    /// `db`.`table` or `(<query>)`.
    pub from: &'a str,
    /// The partition's row filter (partition AND bounds).
    pub filter: Option<&'a str>,
    pub format: ExportFormat,
    pub files: Vec<ExportedFile>,
    /// Re-read and re-hash every streamed file.
    pub read_back: bool,
}

/// Re-checks a partition's files against the store and the source.
pub async fn verify_partition(
    source: &dyn ExportSource,
    store: &dyn Store,
    req: VerifyRequest<'_>,
    cancel: &CancellationToken,
) -> Result<(VerifiedPartition, String), TaskFailure> {
    let VerifyRequest {
        partition,
        from,
        filter,
        format,
        files,
        read_back,
    } = req;
    let mut problems = Vec::new();
    let mut reread = 0;
    for f in &files {
        match store.head(&f.key).await? {
            None => problems.push(format!("{} is missing", f.location)),
            Some(meta) if meta.size != f.bytes => problems.push(format!(
                "{} has {} bytes, the export wrote {}",
                f.location, meta.size, f.bytes
            )),
            Some(meta) if f.version.is_some() && meta.version != f.version => {
                problems.push(format!(
                    "{} is not the object the export wrote (it was replaced since: by another \
                     writer of the same key, or by hand)",
                    f.location
                ))
            }
            Some(_) => {}
        }
        if read_back && problems.is_empty() {
            if let Some(expected) = &f.blake3 {
                let mut stream = store.open(&f.key).await?;
                let mut tracker = StreamTracker::new(format);
                while let Some(chunk) = stream.next().await {
                    if cancel.is_cancelled() {
                        return Err(TaskFailure::transient("verify cancelled"));
                    }
                    let chunk: Bytes = chunk?;
                    tracker.feed(&chunk);
                }
                let summary = tracker.finish();
                if &summary.blake3 != expected {
                    problems.push(format!(
                        "{} does not hash to what the export wrote (blake3 {} ≠ {})",
                        f.location,
                        &summary.blake3[..16],
                        &expected[..16.min(expected.len())]
                    ));
                } else if summary.rows.is_some_and(|r| r != f.rows) {
                    problems.push(format!(
                        "{} holds {} rows, the export recorded {}",
                        f.location,
                        summary.rows.unwrap_or(0),
                        f.rows
                    ));
                }
                reread += 1;
            }
        }
    }
    let rows: u64 = files.iter().map(|f| f.rows).sum();
    let bytes: u64 = files.iter().map(|f| f.bytes).sum();
    let expected_checksum = exported_checksum(&files);
    let source = source
        .signature(
            &format!("count source rows of partition {}", partition.id),
            from,
            filter,
            expected_checksum.is_some(),
        )
        .await?;
    if source.rows != rows {
        problems.push(format!(
            "the source has {} rows for partition {} but its files hold {rows} (rows changed \
             since the export? bound the table with `upper`)",
            source.rows, partition.id
        ));
    } else if let (Some(expected), Some(now)) = (expected_checksum, source.checksum) {
        if expected != now {
            problems.push(format!(
                "the source's row checksum of partition {} is {now:016x}, the exported rows' \
                 was {expected:016x}: rows were changed in place since the export (bound the \
                 table with `upper`, or stop the writers)",
                partition.id
            ));
        }
    }
    if !problems.is_empty() {
        return Err(TaskFailure::permanent(format!(
            "verify partition {}: {}; re-run the partition's export tasks (flow apply --resume \
             after fixing the cause)",
            partition.id,
            problems.join("; ")
        )));
    }
    let note = format!(
        "{} file(s), {rows} rows = source{}; {}",
        files.len(),
        if expected_checksum.is_some() {
            ", row checksum = source"
        } else {
            ""
        },
        if reread > 0 {
            format!("{reread} re-read and re-hashed")
        } else {
            "sizes checked".into()
        }
    );
    Ok((
        VerifiedPartition {
            partition: partition.id.clone(),
            value: partition.value.clone(),
            rows,
            bytes,
            source_rows: source.rows,
            files,
        },
        note,
    ))
}

/// The manifest written after every partition is verified.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub plan: String,
    pub table: String,
    pub source: BTreeMap<String, String>,
    pub format: String,
    pub created_at: String,
    pub rows: u64,
    pub bytes: u64,
    pub files: usize,
    pub partitions: Vec<VerifiedPartition>,
}

/// Writes the manifest (replacing one from an earlier run).
pub async fn write_manifest(
    store: &dyn Store,
    key: &str,
    manifest: &Manifest,
) -> Result<String, TaskFailure> {
    let json = serde_json::to_vec_pretty(manifest)
        .map_err(|e| TaskFailure::permanent(format!("manifest: {e}")))?;
    store
        .put(key, Bytes::from(json), PutMode::Overwrite)
        .await?;
    Ok(store.location(key))
}

/// The source checksum of a partition's exported rows: the sum of its files' when
/// every file has one.
fn exported_checksum(files: &[ExportedFile]) -> Option<u64> {
    if files.is_empty() {
        return None;
    }
    files.iter().try_fold(0u64, |sum, f| {
        let c = u64::from_str_radix(f.source_checksum.as_deref()?, 16).ok()?;
        Some(sum.wrapping_add(c))
    })
}
