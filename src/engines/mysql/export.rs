//! MySQL and MariaDB as an export source: units by partition expression and key
//! ranges, rows streamed out as CSV or TSV, count and checksum for verify.
//!
//! - **Units.** Without `partition_expr` the table (within its bounds) is one unit;
//!   with it, one unit per value of the expression, selected by `(<expr>) <=> <value>`
//!   (NULL-safe). A unit with more than `max_rows` rows (or `max_bytes`, estimated from
//!   the server's average row length) is cut by `split_by` — the primary key, usually —
//!   into ranges whose lower ends are every n-th key in order, read in one window-
//!   function pass: `(k IS NULL OR k < b1)`, `k >= b1 AND k < b2`, …, `k >= bn`. The
//!   ranges are disjoint and cover every row whatever the key's type.
//! - **Export.** One connection, one repeatable-read snapshot (`START TRANSACTION WITH
//!   CONSISTENT SNAPSHOT`): first the unit's count and checksum, then its rows through
//!   the text protocol, formatted by [`super::text`] into the store's writer in 1 MiB
//!   pieces, counted again as bytes ([`crate::engines::rows::StreamTracker`]). The
//!   object is committed only if the rows written equal the snapshot's count; the
//!   checksum is recorded with the file.
//! - **Checksum.** Per row the first 64 bits of MD5 over every column's bytes, each
//!   length-prefixed and NULL-marked, summed on the server (`templates/mysql/count`):
//!   order-independent and additive, so a partition's is the sum of its chunks'. Verify
//!   recomputes it on the source: equal means the rows exported are the rows there now.
//!
//! Values in filters are literals of the type the server reported for them: numbers
//! bare, dates quoted, binary strings as hex, other strings quoted (hex with the
//! connection's character set when they hold a backslash, which would read otherwise
//! under `NO_BACKSLASH_ESCAPES`).

use std::sync::Arc;

use bytes::Bytes;
use minijinja::{context, Value as Ctx};
use mysql_async::consts::ColumnType;
use mysql_async::prelude::Queryable;
use mysql_async::{Column, Conn, Row, Value};
use tokio_util::sync::CancellationToken;

use super::text::{is_numeric, TextFormat};
use super::MysqlClient;
use crate::engines::export::{ExportPath, ExportUnit, ExportedFile};
use crate::engines::rows::StreamTracker;
use crate::engines::source::{
    ExportSource, ExportSourceEntry, OpenSource, Signature, SourceRef, Units, UnitsRequest,
};
use crate::engines::store::Store;
use crate::plan::schema::ConnectionKind;
use crate::plan::ExportFormat;
use crate::task::TaskFailure;
use crate::task::{Chunk, Partition, TaskKind};
use crate::templates::Templates;

/// Most chunks one unit is cut into.
const MAX_CHUNKS: u64 = 1000;
/// Bytes gathered before a write to the store.
const WRITE_SIZE: usize = 1 << 20;
/// The `character_set` of binary columns (and of numbers and dates) in result metadata.
const BINARY_CHARSET: u16 = 63;

/// The registry's line for this engine.
pub const EXPORT_SOURCE: ExportSourceEntry = ExportSourceEntry {
    kind: ConnectionKind::Mysql,
    formats: &[ExportFormat::Csv, ExportFormat::Tsv],
    unsupported: &[
        (
            "partitions",
            "use partition_expr: a mysql source lists its units itself",
        ),
        (
            "partition_range",
            "use partition_expr: a mysql source lists its units itself",
        ),
        (
            "server_side",
            "remove it: rows from a mysql source always stream through flow",
        ),
        (
            "formatting",
            "remove it: flow formats the rows of a mysql source itself",
        ),
    ],
    templates,
    open: MysqlSource::open,
};

const SPLIT: &[&str] = &[
    "mysql/chunk_bounds.sql.j2",
    "mysql/count.sql.j2",
    "mysql/partition_values.sql.j2",
    "mysql/table_size.sql.j2",
];
const EXPORT: &[&str] = &[
    "mysql/begin_snapshot.sql.j2",
    "mysql/columns.sql.j2",
    "mysql/count.sql.j2",
    "mysql/isolation.sql.j2",
    "mysql/select.sql.j2",
];
const VERIFY: &[&str] = &["mysql/columns.sql.j2", "mysql/count.sql.j2"];

/// The templates an export task of `kind` renders from a mysql source.
fn templates(kind: TaskKind) -> Vec<&'static str> {
    match kind {
        TaskKind::Split => SPLIT.to_vec(),
        TaskKind::Export => EXPORT.to_vec(),
        TaskKind::Verify => VERIFY.to_vec(),
        _ => Vec::new(),
    }
}

/// The export source of one mysql connection.
pub struct MysqlSource {
    client: MysqlClient,
    templates: Templates,
    task_templates: Option<Arc<[&'static str]>>,
}

/// A column of a source: its quoted name and its type as the server reports it.
struct SourceColumn {
    quoted: String,
    name: String,
}

impl MysqlSource {
    fn open(open: &OpenSource<'_>) -> Result<Arc<dyn ExportSource>, TaskFailure> {
        let client = open.clients.get_or_open(open.name, || {
            Ok(MysqlClient::from_connection(open.connection)?)
        })?;
        Ok(Arc::new(MysqlSource {
            client,
            templates: open.templates.clone(),
            task_templates: None,
        }))
    }

    fn fail(&self, action: &str, message: impl std::fmt::Display) -> TaskFailure {
        TaskFailure::permanent(format!(
            "mysql `{}`: {action}: {message}",
            self.client.name()
        ))
    }

    /// Renders `templates/mysql/<name>.sql.j2`.
    fn sql(&self, name: &str, ctx: Ctx) -> Result<String, TaskFailure> {
        let full = format!("mysql/{name}.sql.j2");
        self.templates
            .render_in_task(&full, &ctx, self.task_templates.as_deref())
            .map_err(|e| self.fail(&format!("render {full}"), e))
    }

    /// Runs a query on `conn`; returns its columns and rows.
    async fn query(
        &self,
        conn: &mut Conn,
        action: &str,
        sql: &str,
    ) -> Result<(Arc<[Column]>, Vec<Row>), TaskFailure> {
        let err = |e| TaskFailure::from(self.client.err(action, e));
        let mut result = conn.query_iter(sql).await.map_err(err)?;
        let columns = result.columns().unwrap_or_else(|| Arc::from(Vec::new()));
        let rows: Vec<Row> = result.collect().await.map_err(err)?;
        Ok((columns, rows))
    }

    async fn execute(&self, conn: &mut Conn, action: &str, sql: &str) -> Result<(), TaskFailure> {
        conn.query_drop(sql)
            .await
            .map_err(|e| self.client.err(action, e).into())
    }

    /// The columns of `from`.
    async fn columns(&self, conn: &mut Conn, from: &str) -> Result<Vec<SourceColumn>, TaskFailure> {
        let sql = self.sql("columns", context! { from => from })?;
        let (columns, _) = self.query(conn, "list columns", &sql).await?;
        Ok(columns
            .iter()
            .map(|c| {
                let name = c.name_str().into_owned();
                SourceColumn {
                    quoted: quote_identifier(&name),
                    name,
                }
            })
            .collect())
    }

    /// Rows and checksum of `from` where `filter`, on `conn`.
    async fn count(
        &self,
        conn: &mut Conn,
        action: &str,
        from: &str,
        filter: Option<&str>,
        columns: Option<&[SourceColumn]>,
    ) -> Result<Signature, TaskFailure> {
        let quoted: Option<Vec<&str>> =
            columns.map(|cs| cs.iter().map(|c| c.quoted.as_str()).collect());
        let sql = self.sql(
            "count",
            context! { from => from, filter => filter, columns => quoted },
        )?;
        let (_, rows) = self.query(conn, action, &sql).await?;
        let row = rows
            .first()
            .ok_or_else(|| self.fail(action, "the count query returned no row"))?;
        let rows_now = text_at(row, 0)
            .and_then(|t| t.parse::<u64>().ok())
            .ok_or_else(|| self.fail(action, "the count is not a number"))?;
        let checksum = match columns {
            None => None,
            Some(_) => Some(
                text_at(row, 1)
                    .and_then(|t| t.parse::<u128>().ok())
                    // The exact sum, reduced to 64 bits: still additive.
                    .map(|sum| sum as u64)
                    .ok_or_else(|| self.fail(action, "the checksum is not a number"))?,
            ),
        };
        Ok(Signature {
            rows: rows_now,
            checksum,
        })
    }

    /// Rows and bytes per row the server estimates for a table (0 when unknown).
    async fn bytes_per_row(
        &self,
        conn: &mut Conn,
        database: &str,
        table: &str,
    ) -> Result<u64, TaskFailure> {
        let sql = self.sql(
            "table_size",
            context! { database => string_literal(database), table => string_literal(table) },
        )?;
        let (_, rows) = self.query(conn, "estimate the table's size", &sql).await?;
        let number = |i| {
            rows.first()
                .and_then(|r| text_at(r, i))
                .and_then(|t| t.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let (rows, bytes) = (number(0), number(1));
        Ok(bytes.checked_div(rows).unwrap_or(0))
    }

    /// The chunks of a unit of `rows` rows cut by `split_by` into about `per_chunk` each.
    async fn chunks(
        &self,
        conn: &mut Conn,
        from: &str,
        filter: Option<&str>,
        split_by: &str,
        rows: u64,
        per_chunk: u64,
    ) -> Result<Vec<Chunk>, TaskFailure> {
        let pieces = rows.div_ceil(per_chunk.max(1)).min(MAX_CHUNKS);
        let step = rows.div_ceil(pieces.max(1)).max(1);
        let sql = self.sql(
            "chunk_bounds",
            context! { from => from, filter => filter, split_by => split_by, step => step },
        )?;
        let (columns, found) = self.query(conn, "find chunk bounds", &sql).await?;
        let column = columns
            .first()
            .ok_or_else(|| self.fail("find chunk bounds", "no column in the result"))?;
        let mut bounds: Vec<String> = Vec::new();
        for row in &found {
            let Some(Value::Bytes(bytes)) = row.as_ref(0) else {
                continue;
            };
            let literal = literal(bytes, column)
                .ok_or_else(|| self.fail("find chunk bounds", format!("`{split_by}` printed a value flow cannot quote back; split by a number, date or string column")))?;
            if bounds.last() != Some(&literal) {
                bounds.push(literal);
            }
        }
        if bounds.is_empty() {
            return Ok(Vec::new());
        }
        let mut chunks = Vec::with_capacity(bounds.len() + 1);
        let mut push = |filter: String| {
            let index = chunks.len() as u32;
            chunks.push(Chunk {
                index,
                filter,
                rows: Some(step),
            })
        };
        push(format!(
            "({split_by} IS NULL OR {split_by} < {})",
            bounds[0]
        ));
        for pair in bounds.windows(2) {
            push(format!(
                "{split_by} >= {} AND {split_by} < {}",
                pair[0], pair[1]
            ));
        }
        push(format!("{split_by} >= {}", bounds[bounds.len() - 1]));
        Ok(chunks)
    }
}

#[async_trait::async_trait]
impl ExportSource for MysqlSource {
    fn for_task(&self, templates: Vec<&'static str>) -> Arc<dyn ExportSource> {
        Arc::new(MysqlSource {
            client: self.client.clone(),
            templates: self.templates.clone(),
            task_templates: Some(templates.into()),
        })
    }

    fn sql_from(&self, from: SourceRef<'_>) -> String {
        match from {
            SourceRef::Table { database, table } => {
                format!("{}.{}", quote_identifier(database), quote_identifier(table))
            }
            // A derived table needs a name in MySQL.
            SourceRef::Query(q) => format!("({q}) AS `flow_query`"),
        }
    }

    async fn split(&self, r: &UnitsRequest) -> Result<Units, TaskFailure> {
        let from = self.sql_from(SourceRef::Table {
            database: &r.database,
            table: &r.table,
        });
        let mut conn = self.client.connect().await?;
        let per_row = self.bytes_per_row(&mut conn, &r.database, &r.table).await?;
        let mut partitions = Vec::new();
        match r.partition_expr.as_deref().filter(|e| !e.trim().is_empty()) {
            None => {
                let s = self
                    .count(&mut conn, "count rows", &from, r.bounds.as_deref(), None)
                    .await?;
                partitions.push(Partition {
                    id: "all".into(),
                    value: None,
                    filter: None,
                    rows: Some(s.rows),
                    bytes: Some(s.rows * per_row),
                    chunks: Vec::new(),
                });
            }
            Some(expr) => {
                let sql = self.sql(
                    "partition_values",
                    context! { from => &from, partition_expr => expr, filter => &r.bounds },
                )?;
                let action = "list partition values";
                let (columns, rows) = self.query(&mut conn, action, &sql).await?;
                let column = columns
                    .first()
                    .ok_or_else(|| self.fail(action, "no column in the result"))?;
                let mut ids = std::collections::BTreeSet::new();
                for row in &rows {
                    let count = text_at(row, 1)
                        .and_then(|t| t.parse::<u64>().ok())
                        .unwrap_or(0);
                    let (value, filter) = match row.as_ref(0) {
                        Some(Value::Bytes(bytes)) => {
                            let l = literal(bytes, column).ok_or_else(|| {
                                self.fail(action, format!("partition_expr `{expr}` gives a value flow cannot quote back; use an expression of numbers, dates or strings"))
                            })?;
                            (Some(bytes.clone()), format!("({expr}) <=> {l}"))
                        }
                        _ => (None, format!("({expr}) IS NULL")),
                    };
                    let id = partition_id(value.as_deref());
                    if !ids.insert(id.clone()) {
                        return Err(self.fail(action, format!("two values of partition_expr `{expr}` give the partition id `{id}`")));
                    }
                    partitions.push(Partition {
                        id,
                        value: Some(match &value {
                            Some(v) => String::from_utf8_lossy(v).into_owned(),
                            None => "NULL".into(),
                        }),
                        filter: Some(filter),
                        rows: Some(count),
                        bytes: Some(count * per_row),
                        chunks: Vec::new(),
                    });
                }
            }
        }
        let by_bytes = match (r.max_bytes, per_row) {
            (Some(b), p) if p > 0 => Some((b / p).max(1)),
            _ => None,
        };
        let limit = match (r.max_rows, by_bytes) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut cut = 0;
        if let (Some(limit), Some(split_by)) = (limit, r.split_by.as_deref()) {
            for p in partitions.iter_mut() {
                let rows = p.rows.unwrap_or(0);
                if rows > limit {
                    let filter =
                        crate::engines::and_all([p.filter.as_deref(), r.bounds.as_deref()]);
                    p.chunks = self
                        .chunks(&mut conn, &from, filter.as_deref(), split_by, rows, limit)
                        .await?;
                    cut += 1;
                }
            }
        }
        let _ = conn.disconnect().await;
        let rows: u64 = partitions.iter().filter_map(|p| p.rows).sum();
        let bytes: u64 = partitions.iter().filter_map(|p| p.bytes).sum();
        let note = format!(
            "{} unit(s), {rows} rows{}",
            partitions.len(),
            if cut > 0 {
                format!(", {cut} cut into key ranges")
            } else {
                String::new()
            }
        );
        Ok(Units {
            partitions,
            rows,
            bytes,
            note,
        })
    }

    async fn export_unit(
        &self,
        unit: &ExportUnit,
        store: &dyn Store,
        cancel: &CancellationToken,
    ) -> Result<(ExportedFile, String), TaskFailure> {
        let action = format!("export {} to {}", unit.from, store.location(&unit.key));
        let mut conn = self.client.connect().await?;
        self.execute(
            &mut conn,
            "set isolation",
            &self.sql("isolation", context! {})?,
        )
        .await?;
        self.execute(
            &mut conn,
            "start a snapshot",
            &self.sql("begin_snapshot", context! {})?,
        )
        .await?;
        let columns = self.columns(&mut conn, &unit.from).await?;
        let snapshot = self
            .count(
                &mut conn,
                "count and checksum the unit",
                &unit.from,
                unit.filter.as_deref(),
                Some(&columns),
            )
            .await?;
        let sql = self.sql(
            "select",
            context! { from => &unit.from, filter => &unit.filter },
        )?;
        let mut writer = store.create(&unit.key).await?;
        let streamed = self
            .stream(
                &mut conn,
                &sql,
                &action,
                unit.format,
                &columns,
                writer.as_mut(),
                cancel,
            )
            .await;
        let (written, tracker) = match streamed {
            Ok(done) => done,
            Err(e) => {
                writer.abort().await;
                if cancel.is_cancelled() {
                    return Err(self.client.kill(&action, conn.id()).await.into());
                }
                return Err(e);
            }
        };
        let _ = conn.disconnect().await;
        let summary = tracker.finish();
        if written != snapshot.rows || summary.rows != Some(written) {
            writer.abort().await;
            return Err(self.fail(
                &action,
                format!(
                    "the snapshot counted {} rows, flow formatted {written} and the file holds {}; \
                     nothing was committed (report the column types)",
                    snapshot.rows,
                    summary.rows.unwrap_or(0)
                ),
            ));
        }
        let meta = writer.commit().await?;
        let file = ExportedFile {
            key: unit.key.clone(),
            location: store.location(&unit.key),
            rows: written,
            bytes: meta.size,
            blake3: Some(summary.blake3),
            row_checksum: None,
            path: ExportPath::Streamed,
            chunk: unit.chunk,
            version: meta.version,
            source_checksum: snapshot.checksum.map(|c| format!("{c:016x}")),
        };
        Ok((file, "streamed from one snapshot, formatted by flow".into()))
    }

    async fn signature(
        &self,
        action: &str,
        from: &str,
        filter: Option<&str>,
        checksum: bool,
    ) -> Result<Signature, TaskFailure> {
        let mut conn = self.client.connect().await?;
        let columns = match checksum {
            true => Some(self.columns(&mut conn, from).await?),
            false => None,
        };
        let s = self
            .count(&mut conn, action, from, filter, columns.as_deref())
            .await?;
        let _ = conn.disconnect().await;
        Ok(s)
    }
}

impl MysqlSource {
    /// Streams the rows of `sql` into `writer`; returns the rows written and the tracker
    /// of the bytes.
    #[allow(clippy::too_many_arguments)]
    async fn stream(
        &self,
        conn: &mut Conn,
        sql: &str,
        action: &str,
        format: ExportFormat,
        columns: &[SourceColumn],
        writer: &mut dyn crate::engines::store::ObjectWriter,
        cancel: &CancellationToken,
    ) -> Result<(u64, StreamTracker), TaskFailure> {
        let err = |e| TaskFailure::from(self.client.err(action, e));
        let mut result = conn.query_iter(sql).await.map_err(err)?;
        let types: Vec<ColumnType> = result
            .columns()
            .map(|cs| cs.iter().map(|c| c.column_type()).collect())
            .unwrap_or_default();
        let text = TextFormat::new(format, &types).ok_or_else(|| {
            self.fail(
                action,
                format!("format {format:?} cannot be written from mysql; use csv or tsv"),
            )
        })?;
        let mut tracker = StreamTracker::new(format);
        let mut buf = Vec::with_capacity(WRITE_SIZE + 64 * 1024);
        let names: Vec<String> = columns.iter().map(|c| c.name.clone()).collect();
        text.header(&names, &mut buf);
        let mut rows = 0u64;
        loop {
            let next = match cancel.run_until_cancelled(result.next()).await {
                Some(next) => next.map_err(err)?,
                None => return Err(TaskFailure::transient(format!("{action}: cancelled"))),
            };
            let Some(row) = next else { break };
            text.row((0..row.len()).map(|i| row.as_ref(i)), &mut buf)
                .map_err(|e| self.fail(action, e))?;
            rows += 1;
            if buf.len() >= WRITE_SIZE {
                let piece = Bytes::from(std::mem::replace(
                    &mut buf,
                    Vec::with_capacity(WRITE_SIZE + 64 * 1024),
                ));
                tracker.feed(&piece);
                writer.write(piece).await?;
            }
        }
        if !buf.is_empty() {
            let piece = Bytes::from(buf);
            tracker.feed(&piece);
            writer.write(piece).await?;
        }
        Ok((rows, tracker))
    }
}

/// The text of column `i` of a row.
fn text_at(row: &Row, i: usize) -> Option<String> {
    match row.as_ref(i)? {
        Value::Bytes(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::Int(n) => Some(n.to_string()),
        Value::UInt(n) => Some(n.to_string()),
        _ => None,
    }
}

/// A MySQL identifier, quoted.
pub fn quote_identifier(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// A string literal that reads back the same under any `sql_mode`.
fn string_literal(text: &str) -> String {
    string_bytes_literal(text.as_bytes())
}

fn string_bytes_literal(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) if !s.contains('\\') => format!("'{}'", s.replace('\'', "''")),
        _ => format!("_utf8mb4 X'{}'", hex(bytes)),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// The literal of a value the server printed for `column`; None when it cannot be
/// written back faithfully.
fn literal(bytes: &[u8], column: &Column) -> Option<String> {
    let t = column.column_type();
    if is_numeric(t) {
        let text = std::str::from_utf8(bytes).ok()?;
        let plain = !text.is_empty()
            && text
                .chars()
                .all(|c| c.is_ascii_digit() || matches!(c, '-' | '+' | '.' | 'e' | 'E'));
        return plain.then(|| text.to_string());
    }
    use ColumnType::*;
    match t {
        MYSQL_TYPE_DATE
        | MYSQL_TYPE_NEWDATE
        | MYSQL_TYPE_DATETIME
        | MYSQL_TYPE_DATETIME2
        | MYSQL_TYPE_TIMESTAMP
        | MYSQL_TYPE_TIMESTAMP2
        | MYSQL_TYPE_TIME
        | MYSQL_TYPE_TIME2 => {
            let text = std::str::from_utf8(bytes).ok()?;
            text.chars()
                .all(|c| c.is_ascii_digit() || matches!(c, '-' | ':' | ' ' | '.'))
                .then(|| format!("'{text}'"))
        }
        _ if column.character_set() == BINARY_CHARSET => Some(format!("X'{}'", hex(bytes))),
        _ => Some(string_bytes_literal(bytes)),
    }
}

/// A partition id (a task id and path component) for a value: the value itself when
/// it is plain, else its plain characters and a hash of the whole.
fn partition_id(value: Option<&[u8]>) -> String {
    let Some(bytes) = value else {
        return "null".into();
    };
    let text = String::from_utf8_lossy(bytes);
    let plain: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if !plain.is_empty() && plain == text {
        plain
    } else {
        let plain = if plain.is_empty() {
            "value".into()
        } else {
            plain
        };
        let hash = blake3::hash(bytes).to_hex();
        format!("{plain}-{}", &hash[..8])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_ids_are_plain_or_hashed_and_never_collide_on_sanitising() {
        assert_eq!(partition_id(Some(b"202401")), "202401");
        assert_eq!(partition_id(None), "null");
        let a = partition_id(Some(b"a b"));
        let b = partition_id(Some(b"a_b"));
        assert_ne!(a, b);
        assert!(a.starts_with("a_b-"));
        assert!(partition_id(Some(b"")).starts_with("value-"));
    }

    #[test]
    fn string_literals_survive_quotes_and_backslashes() {
        assert_eq!(string_literal("it's"), "'it''s'");
        assert_eq!(string_literal("a\\b"), "_utf8mb4 X'615C62'");
        assert_eq!(quote_identifier("we`ird"), "`we``ird`");
    }
}
