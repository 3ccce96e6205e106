//! Strategy `copy`: a ClickHouse table into another table, on the same or another
//! server, partition by partition.
//!
//! - prepare: the target is created from the source's own `CREATE TABLE` text when
//!   absent (same columns, engine, keys); when present, its columns and partition key
//!   must match the source's, or the copy stops before writing anything.
//! - load: the partition's rows go into a fresh staging table (`CREATE … AS target`)
//!   — by `INSERT … SELECT` on one server, or streamed as Native from the source's
//!   HTTP response into an `INSERT … FORMAT Native` on the other — and then
//!   `REPLACE PARTITION ID … FROM staging` swaps them into the target atomically. A
//!   re-run replaces the partition again instead of adding rows: no duplicates, and a
//!   crash mid-load — or a cancel, which kills the `INSERT … SELECT` on the server —
//!   leaves only a staging table that the next attempt drops. On one
//!   server without bounds, with identical definitions, the partition is replaced
//!   straight from the source (hard links, no data copied).
//! - verify: rows and the cross-version checksum of [`super::checksum`], source
//!   (partition within bounds) against target partition.
//! - swap (optional): exchanges the target with another table on the target server
//!   (default: the source's name there). A marker table `<target>__flow_swap` records
//!   the copy's identity (its UUID on Atomic databases, or is renamed in the same
//!   RENAME statement elsewhere), so a swap that happened before a crash is detected
//!   and not done twice. Drop the marker to swap again in a later migration.

use minijinja::context;
use tokio_util::sync::CancellationToken;

use super::checksum::{checksum_expr_for, compared_for, Column};
use super::errors::exception_in_tail;
use super::part_sets::part_sets;
use super::{and_all, partition_id_filter, qualified, Ch, ChError, Feature, Stats};
use crate::task::Partition;
use crate::task::TaskFailure;
use crate::templates::quote_identifier;

/// Bytes collected before they are sent on to the target's INSERT.
const SEND_BUFFER: usize = 1 << 20;

/// One copy job: where from, where to.
#[derive(Clone, Debug)]
pub struct CopyJob {
    pub source: Ch,
    pub target: Ch,
    pub same_server: bool,
    pub src_db: String,
    pub src_table: String,
    pub dst_db: String,
    pub dst_table: String,
    /// Row filter from lower/upper, applied to the source.
    pub bounds: Option<String>,
    /// The table the target is exchanged with by `swap` (on the target server).
    pub swap_with: String,
}

/// What a step did, for the task outcome.
#[derive(Clone, Debug, Default)]
pub struct StepResult {
    pub rows: u64,
    pub checksum: Option<String>,
    pub note: String,
    pub outputs: Vec<String>,
}

fn col_list(columns: &[Column]) -> String {
    columns
        .iter()
        .map(|c| quote_identifier(&c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

fn normalize(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

impl CopyJob {
    fn src(&self) -> String {
        qualified(&self.src_db, &self.src_table)
    }

    fn dst(&self) -> String {
        qualified(&self.dst_db, &self.dst_table)
    }

    fn staging_name(&self, partition_id: &str) -> String {
        format!("{}__flow_stage_{partition_id}", self.dst_table)
    }

    /// Creates the target from the source definition, or checks the existing one.
    pub async fn prepare(&self) -> Result<StepResult, TaskFailure> {
        if self.same_server && self.src_db == self.dst_db && self.src_table == self.dst_table {
            return Err(TaskFailure::permanent(format!(
                "copy of {}: source and target are the same table; set `target_table` or \
                 `target_database`",
                self.src()
            )));
        }
        let src_info = self.source.table(&self.src_db, &self.src_table).await?;
        let src_cols = self.source.columns(&self.src()).await?;
        let existing = self
            .target
            .tables(&self.dst_db, &[self.dst_table.as_str()])
            .await?
            .remove(&self.dst_table);
        match existing {
            Some(info) => {
                let dst_cols = self.target.columns(&self.dst()).await?;
                let names = |cols: &[Column]| {
                    cols.iter()
                        .map(|c| format!("{} {}", c.name, c.data_type))
                        .collect::<Vec<_>>()
                };
                if names(&src_cols) != names(&dst_cols) {
                    return Err(TaskFailure::permanent(format!(
                        "copy to {}: the target exists with other columns ({}) than the source \
                         ({}); drop it or choose another `target_table`",
                        self.dst(),
                        names(&dst_cols).join(", "),
                        names(&src_cols).join(", ")
                    )));
                }
                if normalize(&info.partition_key) != normalize(&src_info.partition_key) {
                    return Err(TaskFailure::permanent(format!(
                        "copy to {}: the target is partitioned by `{}`, the source by `{}`; \
                         partitions could not be replaced one by one",
                        self.dst(),
                        info.partition_key,
                        src_info.partition_key
                    )));
                }
                Ok(StepResult {
                    note: format!("target {} exists with the same columns", self.dst()),
                    outputs: vec![self.dst()],
                    ..Default::default()
                })
            }
            None => {
                let definition =
                    super::ddl::definition(&src_info.create_table_query).map_err(|m| {
                        TaskFailure::permanent(format!(
                            "copy of {}: cannot reuse the source definition: {m}",
                            self.src()
                        ))
                    })?;
                self.target
                    .run(
                        &format!("create database {}", self.dst_db),
                        "create_database",
                        context! { database => &self.dst_db },
                    )
                    .await?;
                self.target
                    .run(
                        &format!("create {}", self.dst()),
                        "create_table",
                        context! { table => self.dst(), definition => definition },
                    )
                    .await?;
                Ok(StepResult {
                    note: format!("created {} from the source definition", self.dst()),
                    outputs: vec![self.dst()],
                    ..Default::default()
                })
            }
        }
    }

    /// The partition's rows: the split's physical filter (`_partition_id`, and the key's
    /// value where the server prunes only by that), valid on the target too, whose
    /// partition key is the source's.
    fn partition_filter(partition: &Partition) -> String {
        partition
            .filter
            .clone()
            .unwrap_or_else(|| partition_id_filter(&partition.id))
    }

    fn source_filter(&self, partition: &Partition) -> String {
        let filter = Self::partition_filter(partition);
        and_all([Some(filter.as_str()), self.bounds.as_deref()])
            .expect("a partition filter is present")
    }

    /// Copies one partition; re-running replaces it again.
    pub async fn load(
        &self,
        partition: &Partition,
        cancel: &CancellationToken,
    ) -> Result<StepResult, TaskFailure> {
        let pid = &partition.id;
        let action = format!("copy partition {pid} of {} to {}", self.src(), self.dst());
        if self.same_server && self.bounds.is_none() {
            let infos = self
                .source
                .tables(&self.src_db, &[self.src_table.as_str()])
                .await?;
            let dst_infos = self
                .target
                .tables(&self.dst_db, &[self.dst_table.as_str()])
                .await?;
            let same_definition = match (infos.get(&self.src_table), dst_infos.get(&self.dst_table))
            {
                (Some(a), Some(b)) => {
                    super::ddl::definition(&a.create_table_query).ok()
                        == super::ddl::definition(&b.create_table_query).ok()
                }
                _ => false,
            };
            if same_definition {
                self.target
                    .run(
                        &action,
                        "replace_partition",
                        context! { target => self.dst(), source => self.src(), partition_id => pid },
                    )
                    .await?;
                let stats = self
                    .target
                    .stats(
                        &action,
                        &self.dst(),
                        Some(&Self::partition_filter(partition)),
                        None,
                    )
                    .await?;
                return Ok(StepResult {
                    rows: stats.rows,
                    note: format!(
                        "REPLACE PARTITION ID '{pid}' straight from the source ({} rows, no data copied)",
                        stats.rows
                    ),
                    outputs: vec![self.dst()],
                    ..Default::default()
                });
            }
        }
        let staging_name = self.staging_name(pid);
        let staging = qualified(&self.dst_db, &staging_name);
        self.target
            .run(&action, "drop_table", context! { table => &staging })
            .await?;
        self.target
            .run(
                &action,
                "create_like",
                context! { table => &staging, like => self.dst(), storage_policy => None::<String> },
            )
            .await?;
        let columns = self.target.columns(&self.dst()).await?;
        let cols = col_list(&columns);
        let filter = self.source_filter(partition);
        let path = if self.same_server {
            self.target
                .run_cancellable(
                    &action,
                    "insert_select",
                    context! {
                        target => &staging, columns => &cols, from => self.src(), filter => &filter,
                        settings => super::keep_rows_as_stored(&self.target).await?,
                    },
                    cancel,
                )
                .await?;
            "INSERT … SELECT inside the server"
        } else {
            self.stream_native(&staging, &cols, &filter, cancel).await?;
            "streamed as Native between servers"
        };
        let staged = self.target.stats(&action, &staging, None, None).await?;
        self.target
            .run(
                &action,
                "replace_partition",
                context! { target => self.dst(), source => &staging, partition_id => pid },
            )
            .await?;
        self.target
            .run(&action, "drop_table", context! { table => &staging })
            .await?;
        Ok(StepResult {
            rows: staged.rows,
            note: format!(
                "{} rows {path} into staging, then REPLACE PARTITION ID '{pid}'",
                staged.rows
            ),
            outputs: vec![self.dst()],
            ..Default::default()
        })
    }

    async fn stream_native(
        &self,
        staging: &str,
        cols: &str,
        filter: &str,
        cancel: &CancellationToken,
    ) -> Result<(), TaskFailure> {
        let action = format!("stream {} to {staging}", self.src());
        let select = self.source.sql(
            "select",
            context! { columns => cols, from => self.src(), filter => filter },
        )?;
        let insert_sql = self.target.sql(
            "insert_stream",
            context! { target => staging, columns => cols, format => "Native" },
        )?;
        let mut cursor = self.source.client.stream(&action, &select, "Native")?;
        let mut insert = self.target.client.insert(&insert_sql);
        let mut tail: Vec<u8> = Vec::new();
        let mut pending = bytes::BytesMut::with_capacity(SEND_BUFFER);
        loop {
            let next = tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    return Err(TaskFailure::transient(format!("{action}: cancelled")));
                }
                next = cursor.next() => next,
            };
            match next {
                Ok(Some(chunk)) => {
                    tail.extend_from_slice(&chunk[chunk.len().saturating_sub(4096)..]);
                    if tail.len() > 8192 {
                        tail.drain(..tail.len() - 4096);
                    }
                    // Old servers answer in 4 KiB chunks: send 1 MiB pieces instead.
                    pending.extend_from_slice(&chunk);
                    if pending.len() >= SEND_BUFFER {
                        insert
                            .send(pending.split().freeze())
                            .await
                            .map_err(|e| self.target.client.map_err(&action, &e))?;
                    }
                }
                Ok(None) => break,
                Err(e) => return Err(self.source.client.map_err(&action, &e).into()),
            }
        }
        if let Some(exception) = exception_in_tail(&tail) {
            // Dropping `insert` without `end` aborts the INSERT.
            return Err(super::client::server_error(
                self.source.name(),
                &action,
                &exception,
                self.source.client.redactor(),
            )
            .into());
        }
        if !pending.is_empty() {
            insert
                .send(pending.freeze())
                .await
                .map_err(|e| self.target.client.map_err(&action, &e))?;
        }
        insert
            .end()
            .await
            .map_err(|e| self.target.client.map_err(&action, &e))?;
        Ok(())
    }

    /// Source partition (within bounds) against the target partition. Where both
    /// sides have the same column types the checksums hash Decimals and UUIDs as bytes
    /// (every supported version agrees), otherwise in a canonical text form; across
    /// servers the two sides are read at the same time (one query on each server, as
    /// when read one after the other).
    pub async fn compare(&self, partition: &Partition) -> Result<(Stats, Stats), ChError> {
        let src_cols = self.source.columns(&self.src()).await?;
        let dst_cols = self.target.columns(&self.dst()).await?;
        let compared = compared_for(&src_cols, &dst_cols);
        let (src_checksum, dst_checksum) = (
            checksum_expr_for(&src_cols, compared),
            checksum_expr_for(&dst_cols, compared),
        );
        let (src_action, dst_action) = (
            format!("checksum partition {} of {}", partition.id, self.src()),
            format!("checksum partition {} of {}", partition.id, self.dst()),
        );
        let src_filter = self.source_filter(partition);
        let dst_filter = Self::partition_filter(partition);
        let (src_from, dst_from) = (self.src(), self.dst());
        let src = self.source.stats(
            &src_action,
            &src_from,
            Some(&src_filter),
            Some(&src_checksum),
        );
        let dst = self.target.stats(
            &dst_action,
            &dst_from,
            Some(&dst_filter),
            Some(&dst_checksum),
        );
        if self.same_server {
            Ok((src.await?, dst.await?))
        } else {
            tokio::try_join!(src, dst)
        }
    }

    pub async fn verify(&self, partition: &Partition) -> Result<StepResult, TaskFailure> {
        if let Some(rows) = self.same_parts(partition).await? {
            return Ok(StepResult {
                rows,
                checksum: None,
                note: format!(
                    "target = source by their parts: the target partition's parts are the \
                     source's, byte for byte (system.parts hashes of all files; {rows} rows, \
                     not read)"
                ),
                outputs: vec![self.dst()],
            });
        }
        let (src, dst) = self.compare(partition).await?;
        if src != dst {
            return Err(TaskFailure::permanent(format!(
                "verify partition {} of {} → {}: source {} but target {}; the load task \
                 replaces the whole partition when run again (rows changed during the copy? \
                 bound the table with `upper`)",
                partition.id,
                self.src(),
                self.dst(),
                src.describe(),
                dst.describe()
            )));
        }
        Ok(StepResult {
            rows: dst.rows,
            checksum: Some(dst.checksum_text()),
            note: format!("target = source: {}", dst.describe()),
            outputs: vec![self.dst()],
        })
    }

    /// On one server without bounds, the rows of the target partition when its parts
    /// hold the same bytes as the source partition's (what `REPLACE PARTITION` straight
    /// from the source makes); None when they do not, or the server lists no part
    /// hashes (18.16): then the rows are read.
    async fn same_parts(&self, partition: &Partition) -> Result<Option<u64>, ChError> {
        if !self.same_server
            || self.bounds.is_some()
            || !self.target.caps().await?.has(Feature::StoragePolicies)
        {
            return Ok(None);
        }
        let pid = &partition.id;
        let mut src = part_sets(&self.source, &self.src_db, &[&self.src_table], pid).await?;
        let mut dst = part_sets(&self.target, &self.dst_db, &[&self.dst_table], pid).await?;
        let (src, dst) = (
            src.remove(&self.src_table).unwrap_or_default(),
            dst.remove(&self.dst_table).unwrap_or_default(),
        );
        Ok((!src.is_empty() && src == dst).then(|| dst.rows()))
    }

    /// Exchanges the target with `swap_with` on the target server, once.
    pub async fn swap(&self) -> Result<StepResult, TaskFailure> {
        let ch = &self.target;
        let a = self.swap_with.clone();
        let b = self.dst_table.clone();
        let marker = format!("{b}__flow_swap");
        let caps = ch.caps().await?;
        let db_engine = database_engine(ch, &self.dst_db).await?;
        let exchange = caps.has(Feature::ExchangeTables)
            && matches!(db_engine.as_str(), "Atomic" | "Replicated");
        let done = format!("{b}__flow_swap_done");
        let tables = ch
            .tables(
                &self.dst_db,
                &[a.as_str(), b.as_str(), marker.as_str(), done.as_str()],
            )
            .await?;
        let qa = qualified(&self.dst_db, &a);
        let qb = qualified(&self.dst_db, &b);
        let qm = qualified(&self.dst_db, &marker);
        if exchange {
            let Some(info_b) = tables.get(&b) else {
                return Err(TaskFailure::permanent(format!("swap: {qb} does not exist")));
            };
            if !tables.contains_key(&a) {
                return Err(TaskFailure::permanent(format!(
                    "swap: {qa} does not exist; nothing to exchange {qb} with (set settings.swap_with)"
                )));
            }
            let uuid_a = tables.get(&a).and_then(|t| t.uuid.clone());
            let recorded = match tables.get(&marker) {
                Some(_) => marker_comment(ch, &self.dst_db, &marker).await?,
                None => None,
            };
            let copy_uuid = match recorded {
                Some(u) if Some(&u) == uuid_a.as_ref() => {
                    return Ok(StepResult {
                        note: format!("already swapped: {qa} is the copy"),
                        outputs: vec![qa],
                        ..Default::default()
                    })
                }
                Some(u) => u,
                None => {
                    let u = info_b
                        .uuid
                        .clone()
                        .ok_or_else(|| TaskFailure::permanent(format!("swap: {qb} has no UUID")))?;
                    ch.run(
                        "record the swap",
                        "create_marker",
                        context! { table => &qm, if_not_exists => true, comment => &u },
                    )
                    .await?;
                    u
                }
            };
            if info_b.uuid.as_deref() != Some(copy_uuid.as_str()) {
                return Err(TaskFailure::permanent(format!(
                    "swap: the marker {qm} names a table that is neither {qa} nor {qb}; drop the \
                     marker if a new copy should be swapped in"
                )));
            }
            ch.run(
                "exchange tables",
                "exchange_tables",
                context! { a => &qa, b => &qb },
            )
            .await?;
            Ok(StepResult {
                note: format!("EXCHANGE TABLES {qa} AND {qb}"),
                outputs: vec![qa],
                ..Default::default()
            })
        } else {
            if tables.contains_key(&done) {
                return Ok(StepResult {
                    note: format!("already swapped (marker {done} exists)"),
                    outputs: vec![qa],
                    ..Default::default()
                });
            }
            if !tables.contains_key(&a) || !tables.contains_key(&b) {
                return Err(TaskFailure::permanent(format!(
                    "swap: both {qa} and {qb} must exist"
                )));
            }
            ch.run(
                "prepare the swap marker",
                "create_marker",
                context! { table => &qm, if_not_exists => true, comment => None::<String> },
            )
            .await?;
            let tmp = qualified(&self.dst_db, &format!("{b}__flow_swap_tmp"));
            let markers = vec![context! { from => &qm, to => qualified(&self.dst_db, &done) }];
            ch.run(
                "swap tables",
                "rename_swap",
                context! { a => &qa, b => &qb, tmp => &tmp, markers => markers },
            )
            .await?;
            Ok(StepResult {
                note: format!("RENAME chain swapped {qa} and {qb}"),
                outputs: vec![qa],
                ..Default::default()
            })
        }
    }
}

/// The engine of a database (`Atomic`, `Ordinary`, …).
pub async fn database_engine(ch: &Ch, database: &str) -> Result<String, ChError> {
    let rows = ch
        .rows(
            &format!("look up database {database}"),
            "database_engine",
            context! { database => database },
        )
        .await?;
    Ok(rows
        .first()
        .and_then(|r| super::json_str(r, "engine"))
        .unwrap_or_default())
}

/// The comment of a marker table; None when there is no such table.
pub async fn marker_comment(
    ch: &Ch,
    database: &str,
    name: &str,
) -> Result<Option<String>, ChError> {
    let rows = ch
        .rows(
            &format!("read marker {database}.{name}"),
            "marker_info",
            context! { database => database, name => name },
        )
        .await?;
    Ok(rows
        .first()
        .map(|r| super::json_str(r, "comment").unwrap_or_default()))
}
