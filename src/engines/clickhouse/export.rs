//! Strategy `export`: one partition or chunk → one file or object (of a table, or of
//! the result of a `query`).
//!
//! Two paths, chosen per unit and reported in the outcome's note:
//! - **streamed**: `SELECT … WHERE <unit filter>` with the format as `default_format`
//!   and `compress=1` (LZ4 blocks, see [`super::blocks`]); each decompressed block goes
//!   into the store's writer, while a
//!   [`StreamTracker`] counts rows (CSV-aware), hashes the bytes (blake3) and keeps the
//!   tail, where a server that fails mid-stream writes its exception. Memory is the
//!   store writer's bound plus one HTTP chunk, whatever the partition size. The object
//!   is committed only if the stream ended cleanly.
//! - **server-side** (`server_side = "always"`): on a modern server that can reach the
//!   target bucket, `INSERT INTO FUNCTION s3(…) SELECT …` — the data never passes
//!   through flow. The object is then read back in full through `s3()` with the
//!   source's column types, and its rows and row checksum must equal the source's;
//!   a read-back that differs fails the unit, naming what differed.
//!
//! `server_side = "auto"` streams: the streamed path verifies what it writes while it
//! writes it, where the server-side one reads every object back in full (a second
//! pass over the data, and a GET of every object). The note of every unit says which
//! path it took and why.
//!
//! After writing, the source's `count()` for the same filter must equal the rows
//! written; a difference means rows changed during the export (bound the table with
//! `upper`). The per-partition verify checks that every file is in the store with the
//! size the export wrote (and, with `settings.verify_read_back = true`, reads it back
//! and checks its blake3 and rows again — doubling the I/O, hence opt-in) and that the
//! source still has the partition's total rows. The manifest, written last, lists
//! every file with rows, bytes and hash.

use bytes::Bytes;
use minijinja::context;
use tokio_util::sync::CancellationToken;

use super::blocks::{BlockDecoder, BlockError};
use super::checksum::{checksum_expr, Column};
use super::errors::exception_in_tail;
use super::native::{NativeError, NativeReader};
use super::rows::StreamTracker;
use super::text_out::{TextProfile, TextStyle, TextWriter};
use super::{Ch, Feature};
pub use crate::engines::export::{
    write_manifest, ExportPath, ExportUnit, ExportedFile, Manifest, VerifiedPartition,
    VerifyRequest,
};
use crate::engines::store::{ObjectWriter, ServerSideTarget, Store};
use crate::plan::{ExportFormat, Formatting, ServerSide};
use crate::task::TaskFailure;

fn block_failure(
    action: &str,
    e: BlockError,
    late_exception: &dyn Fn(&str) -> TaskFailure,
) -> TaskFailure {
    match e {
        BlockError::Exception(text) => late_exception(&text),
        // Corruption in transit: a new request gets a new stream.
        BlockError::Corrupt(why) => TaskFailure::transient(format!("{action}: {why}")),
    }
}

/// Exports one unit; returns the file written and a note on the path taken.
pub async fn export_unit(
    ch: &Ch,
    store: &dyn Store,
    unit: &ExportUnit,
    cancel: &CancellationToken,
) -> Result<(ExportedFile, String), TaskFailure> {
    let caps = ch.caps().await?;
    let target = store.server_side_target(&unit.key);
    let server_side = match (unit.server_side, &target) {
        (ServerSide::Never, _) => Err("server_side = \"never\"".to_string()),
        (ServerSide::Auto, _) => Err(
            "server_side = \"auto\" streams: the server-side path would read every object back \
             in full to verify it"
                .to_string(),
        ),
        (_, None) => Err(format!("{} is not an S3 store", store.describe())),
        (_, Some(_)) => caps
            .require(Feature::InsertIntoS3, "a server-side export")
            .and_then(|_| {
                if unit.format == ExportFormat::Parquet {
                    caps.require(Feature::Parquet, "a Parquet export")
                } else {
                    Ok(())
                }
            }),
    };
    let why_not = match (server_side, unit.server_side) {
        (Ok(()), _) => {
            let target = target.as_ref().expect("checked above");
            match export_server_side(ch, store, unit, target, cancel).await {
                Ok(file) => {
                    let note = format!(
                        "server-side INSERT INTO FUNCTION s3 → {} ({} rows)",
                        file.location, file.rows
                    );
                    return Ok((file, note));
                }
                Err(ServerSideError::Failed(e)) => return Err(e),
                Err(ServerSideError::ReadBackDiffers(what)) => {
                    return Err(TaskFailure::permanent(format!(
                        "{what}; server_side = \"always\" allows no other path: use \
                         server_side = \"auto\" (streams through flow, which verifies the bytes \
                         it writes) or \"never\""
                    )))
                }
            }
        }
        (Err(why), ServerSide::Always) => {
            return Err(TaskFailure::permanent(format!(
                "export to {}: server_side = \"always\" but the server cannot write there: {why}; \
                 use server_side = \"auto\" to stream through flow instead",
                store.location(&unit.key)
            )))
        }
        (Err(why), _) => why,
    };
    if unit.format == ExportFormat::Parquet {
        caps.require(Feature::Parquet, "a Parquet export")
            .map_err(TaskFailure::permanent)?;
    }
    let (file, how) = export_streamed(ch, store, unit, cancel).await?;
    let mut note = format!(
        "streamed through flow → {} ({} rows, {} bytes, {how})",
        file.location, file.rows, file.bytes
    );
    if target.is_some() && unit.server_side != ServerSide::Never {
        note.push_str(&format!("; not server-side: {why_not}"));
    }
    Ok((file, note))
}

/// Why a server-side export did not produce a verified object.
enum ServerSideError {
    /// The statement or the store failed: the task fails as usual.
    Failed(TaskFailure),
    /// The object holds the source's rows, but reading it back through the server gives
    /// another row checksum: a difference in how the server reads the format, not in
    /// the data flow can check on its own path.
    ReadBackDiffers(String),
}

impl From<TaskFailure> for ServerSideError {
    fn from(e: TaskFailure) -> Self {
        ServerSideError::Failed(e)
    }
}

impl From<super::ChError> for ServerSideError {
    fn from(e: super::ChError) -> Self {
        ServerSideError::Failed(e.into())
    }
}

/// Who turns rows into the file's bytes.
enum Transcode {
    /// The server wrote the format; bytes pass through.
    Pass,
    /// The server sent Native; flow writes the text (see [`super::text_out`]).
    Format {
        reader: NativeReader,
        text: Box<TextWriter>,
    },
}

impl Transcode {
    fn push(&mut self, data: Bytes) -> Result<Vec<Bytes>, NativeError> {
        match self {
            Transcode::Pass => Ok(vec![data]),
            Transcode::Format { reader, text } => {
                let mut out = Vec::new();
                for block in reader.push(&data)? {
                    text.write_block(&block)?;
                    out.extend(text.take_chunk());
                }
                Ok(out)
            }
        }
    }

    /// What is left at the end of the stream; the rows flow formatted.
    fn finish(&mut self) -> Result<(Option<Bytes>, Option<u64>), NativeError> {
        match self {
            Transcode::Pass => Ok((None, None)),
            Transcode::Format { reader, text } => {
                reader.finish()?;
                if !text.started() {
                    return Err(NativeError::NoBlocks);
                }
                Ok((Some(text.take()), Some(text.rows())))
            }
        }
    }
}

/// Why a stream was not received.
enum ReceiveError {
    Failed(TaskFailure),
    /// Flow cannot format this stream itself; the server should.
    NotFormattable(NativeError),
}

impl From<TaskFailure> for ReceiveError {
    fn from(e: TaskFailure) -> Self {
        ReceiveError::Failed(e)
    }
}

impl From<super::ChError> for ReceiveError {
    fn from(e: super::ChError) -> Self {
        ReceiveError::Failed(e.into())
    }
}

/// A received, not yet committed object.
struct Received {
    writer: Box<dyn ObjectWriter>,
    tracker: StreamTracker,
    /// Rows in the blocks flow formatted (None when the server formatted).
    formatted_rows: Option<u64>,
}

/// Streams the query's result into a new object (not yet committed). With
/// `compressed`, the body is in ClickHouse's block framing (fewer, larger chunks);
/// with `formatting`, the server sends Native and flow writes the text.
#[allow(clippy::too_many_arguments)]
async fn receive(
    ch: &Ch,
    store: &dyn Store,
    unit: &ExportUnit,
    sql: &str,
    action: &str,
    compressed: bool,
    formatting: Option<(TextStyle, TextProfile)>,
    cancel: &CancellationToken,
) -> Result<Received, ReceiveError> {
    let (format, mut transcode) = match formatting {
        Some((style, profile)) => (
            "Native",
            Transcode::Format {
                reader: NativeReader::new(),
                text: Box::new(TextWriter::new(
                    style,
                    profile,
                    ch.columns(&unit.from).await?,
                )),
            },
        ),
        None => (unit.format.clickhouse_name(), Transcode::Pass),
    };
    let mut cursor = if compressed {
        ch.client.stream_framed(action, sql, format)?
    } else {
        ch.client.stream(action, sql, format)?
    };
    let mut writer = store.create(&unit.key).await.map_err(TaskFailure::from)?;
    let mut decoder = compressed.then(BlockDecoder::new);
    let mut tracker = StreamTracker::new(unit.format);
    let late_exception = |text: &str| -> TaskFailure {
        super::client::server_error(ch.name(), action, text, ch.client.redactor()).into()
    };
    // Everything after the writer exists goes through here so a failure aborts it.
    let result: Result<Option<u64>, ReceiveError> = async {
        loop {
            let next = tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    return Err(TaskFailure::transient(format!("{action}: cancelled")).into());
                }
                next = cursor.next() => next,
            };
            let raw = match next {
                Ok(Some(raw)) => raw,
                Ok(None) => break,
                Err(e) => return Err(TaskFailure::from(ch.client.map_err(action, &e)).into()),
            };
            let blocks = match decoder.as_mut().map(|d| d.push(&raw)) {
                None => vec![raw],
                Some(Ok(blocks)) => blocks,
                Some(Err(e)) => return Err(block_failure(action, e, &late_exception).into()),
            };
            for block in blocks {
                for data in transcode
                    .push(block)
                    .map_err(ReceiveError::NotFormattable)?
                {
                    tracker.feed(&data);
                    writer.write(data).await.map_err(TaskFailure::from)?;
                }
            }
        }
        if let Some(Err(e)) = decoder.take().map(BlockDecoder::finish) {
            return Err(block_failure(action, e, &late_exception).into());
        }
        let (rest, formatted_rows) = transcode.finish().map_err(ReceiveError::NotFormattable)?;
        if let Some(data) = rest.filter(|d| !d.is_empty()) {
            tracker.feed(&data);
            writer.write(data).await.map_err(TaskFailure::from)?;
        }
        if formatted_rows.is_none() {
            if let Some(exception) = exception_in_tail(&tracker.tail()) {
                return Err(late_exception(&exception).into());
            }
        }
        Ok(formatted_rows)
    }
    .await;
    match result {
        Ok(formatted_rows) => Ok(Received {
            writer,
            tracker,
            formatted_rows,
        }),
        Err(e) => {
            writer.abort().await;
            Err(e)
        }
    }
}

/// Whether flow formats this unit's text itself: CSV or TSV, not turned off with
/// `formatting = "server"`, and a server whose text flow can reproduce.
async fn flow_formatting(
    ch: &Ch,
    unit: &ExportUnit,
) -> Result<Option<(TextStyle, TextProfile)>, TaskFailure> {
    let style = match unit.format {
        ExportFormat::Csv => TextStyle::Csv,
        ExportFormat::Tsv => TextStyle::Tsv,
        _ => return Ok(None),
    };
    if unit.formatting == Formatting::Server {
        return Ok(None);
    }
    Ok(ch.client.text_profile().await?.map(|p| (style, p)))
}

/// Streams the unit from the server into the store.
pub async fn export_streamed(
    ch: &Ch,
    store: &dyn Store,
    unit: &ExportUnit,
    cancel: &CancellationToken,
) -> Result<(ExportedFile, String), TaskFailure> {
    let action = format!("export {} to {}", unit.from, store.location(&unit.key));
    let sql = ch.sql(
        "select",
        context! { columns => "*", from => &unit.from, filter => &unit.filter },
    )?;
    let mut how = "formatted by the server".to_string();
    let mut received = None;
    if let Some(formatting) = flow_formatting(ch, unit).await? {
        match receive(
            ch,
            store,
            unit,
            &sql,
            &action,
            true,
            Some(formatting),
            cancel,
        )
        .await
        {
            Ok(r) => {
                how = "formatted by flow".into();
                received = Some(r);
            }
            Err(ReceiveError::Failed(e)) => return Err(e),
            Err(ReceiveError::NotFormattable(why)) => {
                tracing::debug!(unit = %unit.key, %why, "the server formats this unit");
                how = format!("formatted by the server: {why}");
            }
        }
    }
    let plain = |compressed| receive(ch, store, unit, &sql, &action, compressed, None, cancel);
    let received = match received {
        Some(r) => r,
        None => {
            let mut r = plain(true).await.map_err(failure_of)?;
            if r.tracker.bytes() == 0 {
                // ClickHouse 18.x sends nothing at all for a compressed result smaller
                // than one block; an empty compressed answer is asked again uncompressed
                // (cheap: it is small or truly empty).
                r.writer.abort().await;
                r = plain(false).await.map_err(failure_of)?;
            }
            r
        }
    };
    let Received {
        writer,
        tracker,
        formatted_rows,
    } = received;
    let summary = tracker.finish();
    if let (Some(formatted), Some(counted)) = (formatted_rows, summary.rows) {
        if formatted != counted {
            writer.abort().await;
            return Err(TaskFailure::permanent(format!(
                "{action}: flow formatted {formatted} rows but the text holds {counted} \
                 records; set formatting = \"server\" for this table and report \
                 the column types"
            )));
        }
    }
    let meta = writer.commit().await?;
    let source = ch
        .stats(
            &format!("count source rows for {}", unit.key),
            &unit.from,
            unit.filter.as_deref(),
            None,
        )
        .await?;
    let rows = match summary.rows {
        Some(written) if written != source.rows => {
            return Err(TaskFailure::permanent(format!(
                "{action}: wrote {written} rows but the source now has {} rows for the same \
                 filter: rows changed during the export (still arriving? bound the table with \
                 `upper`); the object was written and will be replaced by the next attempt",
                source.rows
            )))
        }
        Some(written) => written,
        // Native: the completed stream and the server's count.
        None => source.rows,
    };
    let file = ExportedFile {
        key: unit.key.clone(),
        location: store.location(&unit.key),
        rows,
        bytes: meta.size,
        blake3: Some(summary.blake3),
        row_checksum: None,
        path: ExportPath::Streamed,
        chunk: unit.chunk,
        version: meta.version,
        source_checksum: None,
    };
    Ok((file, how))
}

fn failure_of(e: ReceiveError) -> TaskFailure {
    match e {
        ReceiveError::Failed(e) => e,
        ReceiveError::NotFormattable(e) => TaskFailure::permanent(e.to_string()),
    }
}

/// A client that hides the target's secret in its messages.
fn redacting_client(ch: &Ch, target: &ServerSideTarget) -> Ch {
    let mut ch = ch.clone();
    if let Some(s) = &target.secret_access_key {
        ch.client.add_secret(s.expose());
    }
    if let Some(s) = &target.access_key_id {
        ch.client.add_secret(s.expose());
    }
    ch
}

fn s3_context(target: &ServerSideTarget) -> (String, Option<String>, Option<String>) {
    (
        target.url.clone(),
        target
            .access_key_id
            .as_ref()
            .map(|s| s.expose().to_string()),
        target
            .secret_access_key
            .as_ref()
            .map(|s| s.expose().to_string()),
    )
}

/// The `structure` argument for reading an exported object back with the source's
/// column names and types, so the server can checksum what it reads like the source.
fn structure(columns: &[Column]) -> String {
    columns
        .iter()
        .map(|c| {
            format!(
                "{} {}",
                crate::templates::quote_identifier(&c.name),
                c.data_type
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Has the server write the unit to S3 itself, then reads it back. A cancelled task
/// kills the server's INSERT (nothing is committed: the object appears only when its
/// upload completes, and the next attempt writes it again).
async fn export_server_side(
    ch: &Ch,
    store: &dyn Store,
    unit: &ExportUnit,
    target: &ServerSideTarget,
    cancel: &CancellationToken,
) -> Result<ExportedFile, ServerSideError> {
    let ch = redacting_client(ch, target);
    let action = format!("server-side export to {}", store.location(&unit.key));
    let select = ch.sql(
        "select",
        context! { columns => "*", from => &unit.from, filter => &unit.filter },
    )?;
    let (url, key_id, secret) = s3_context(target);
    let sql = ch.sql(
        "export_s3",
        context! {
            url => &url, access_key_id => &key_id, secret_access_key => &secret,
            format => unit.format.clickhouse_name(), select => select,
        },
    )?;
    ch.client.execute_cancellable(&action, &sql, cancel).await?;
    // Read back with the source's types: every format ClickHouse writes reads back to
    // the same values, so rows and checksum must equal the source's.
    let columns = ch.columns(&unit.from).await?;
    let structure = Some(structure(&columns));
    let checksum = Some(checksum_expr(&columns));
    let read_back = ch.sql(
        "count_s3",
        context! {
            url => &url, access_key_id => &key_id, secret_access_key => &secret,
            format => unit.format.clickhouse_name(), structure => structure, checksum => &checksum,
        },
    )?;
    let rows = ch
        .client
        .json_rows(
            &format!("read back {}", store.location(&unit.key)),
            &read_back,
        )
        .await?;
    let row = rows.first().ok_or_else(|| {
        ServerSideError::Failed(TaskFailure::transient(format!(
            "{action}: reading the object back returned nothing"
        )))
    })?;
    let written = super::json_u64(row, "rows").unwrap_or(0);
    let source = ch
        .stats(
            &format!("count source rows for {}", unit.key),
            &unit.from,
            unit.filter.as_deref(),
            checksum.as_deref(),
        )
        .await?;
    if written != source.rows {
        return Err(ServerSideError::Failed(TaskFailure::permanent(format!(
            "{action}: the object holds {written} rows but the source has {} for the same filter \
             (rows still arriving? bound the table with `upper`)",
            source.rows
        ))));
    }
    let row_checksum = match checksum {
        Some(_) => {
            let got = super::json_u64(row, "checksum").unwrap_or(0);
            if got != source.checksum {
                return Err(ServerSideError::ReadBackDiffers(format!(
                    "{action}: read back through the server, the object's row checksum \
                     {got:016x} differs from the source's {:016x} over the same {written} rows",
                    source.checksum
                )));
            }
            Some(format!("{got:016x}"))
        }
        None => None,
    };
    let meta = store
        .head(&unit.key)
        .await
        .map_err(TaskFailure::from)?
        .ok_or_else(|| {
            ServerSideError::Failed(TaskFailure::transient(format!(
                "{action}: the server reported success but {} is not in the bucket",
                store.location(&unit.key)
            )))
        })?;
    Ok(ExportedFile {
        key: unit.key.clone(),
        location: store.location(&unit.key),
        rows: written,
        bytes: meta.size,
        blake3: None,
        row_checksum,
        path: ExportPath::ServerSide,
        chunk: unit.chunk,
        version: meta.version,
        source_checksum: None,
    })
}

/// [`crate::engines::export::verify_partition`] of a partition exported from `ch`.
pub async fn verify_partition(
    ch: &Ch,
    store: &dyn Store,
    req: VerifyRequest<'_>,
    cancel: &CancellationToken,
) -> Result<(VerifiedPartition, String), TaskFailure> {
    let source = super::source::ClickhouseSource::new(ch.clone());
    crate::engines::export::verify_partition(&source, store, req, cancel).await
}
