//! Split: which partitions a table task works on, how big they are, and how to cut
//! the oversized ones.
//!
//! Two groupings:
//! - **expression** (export): one unit per value of the partition expression (the
//!   plan's `partition_expr`, default the table's own key) that has rows within the
//!   bounds: `SELECT <expr>, count() … WHERE <bounds> GROUP BY 1`. The values come back
//!   in the `Values` format, so the filter `(<expr>) = <literal>` uses the server's own
//!   literal (dates, tuples, quoted strings). This works on 18.16 and on 26, needs no
//!   `_partition_id`, and allows an expression other than the physical key (an export
//!   by month from a table partitioned by day).
//! - **physical** (copy, s3-policy): one unit per `system.parts` partition id with rows
//!   within the bounds; the filter is `_partition_id = '<id>'`, which both versions
//!   have, and REPLACE/DROP/MOVE PARTITION ID act on exactly those rows. Servers before
//!   storage policies (18.16) read every part of the table for such a filter (a
//!   partition's checksum took as long as the whole table's); there the filter also
//!   says `(<partition key>) = <the partition's value>`, which they prune by, once a
//!   count has shown that it selects every row of the partition (then it does for any
//!   row written later too: the key's value is what names the partition).
//!
//! Sizes come from `system.parts` (the usual size report: rows, compressed and
//! uncompressed bytes per partition); a unit's bytes are its share of the uncompressed bytes, which
//! is what a text export writes. A unit bigger than `max_rows`/`max_bytes` is cut by
//! `split_by` into half-open ranges at boundaries from `quantiles(…)`: `NOT (>= b1)`,
//! `>= b1 AND < b2`, …, `>= bn` (NULLs and NaN go to the first chunk, ±inf to the ends). The ranges are disjoint
//! and cover every value, so every row is in exactly one chunk however approximate the
//! quantiles are; only the chunk sizes are approximate.
//!
//! Declared partitions (an explicit list or range in the plan) are split online too,
//! for their rows and chunks. A declared id the source does not have is kept as an
//! empty partition (rows = 0) and named in the note: an export writes an empty file
//! for it, a move has nothing to do. Failing instead would make a month-range plan
//! fail on a month without data.

use std::collections::{BTreeMap, BTreeSet};

use minijinja::context;

use super::values::{equals_filter, id_from_literal, parse_values};
use super::{and_all, json_str, json_u64, partition_id_filter, Ch, ChError, Feature};
use crate::engines::source::UnitsRequest;
use crate::task::{Chunk, Partition};

/// Most chunks one partition is cut into.
pub const MAX_CHUNKS: u64 = 1000;

/// How units are formed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grouping {
    Expression,
    Physical,
}

/// What to split.
#[derive(Clone, Debug)]
pub struct SplitRequest {
    pub database: String,
    pub table: String,
    pub grouping: Grouping,
    /// The plan's partition expression (expression grouping); None = the table's key.
    pub partition_expr: Option<String>,
    /// Row filter from lower/upper.
    pub bounds: Option<String>,
    pub split_by: Option<String>,
    pub max_rows: Option<u64>,
    pub max_bytes: Option<u64>,
    /// Only these partition ids (declared offline).
    pub declared: Option<Vec<String>>,
}

impl SplitRequest {
    /// The split of an export source's request (or a copy's, a move's) by `grouping`.
    pub fn of_units(r: &UnitsRequest, grouping: Grouping) -> Self {
        SplitRequest {
            database: r.database.clone(),
            table: r.table.clone(),
            grouping,
            partition_expr: r.partition_expr.clone(),
            bounds: r.bounds.clone(),
            split_by: r.split_by.clone(),
            max_rows: r.max_rows,
            max_bytes: r.max_bytes,
            declared: r.declared.clone(),
        }
    }
}

/// One line of the size report (rows and bytes of one partition).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct PartSize {
    pub partition: String,
    pub partition_id: String,
    pub rows: u64,
    pub compressed_bytes: u64,
    pub uncompressed_bytes: u64,
    pub parts: u64,
}

/// The split's result.
#[derive(Clone, Debug, Default)]
pub struct SplitResult {
    pub partitions: Vec<Partition>,
    pub rows: u64,
    pub bytes: u64,
    /// The size report of the whole table (all active parts).
    pub sizes: Vec<PartSize>,
    /// One line for humans.
    pub note: String,
}

fn normalize(expr: &str) -> String {
    expr.chars().filter(|c| !c.is_whitespace()).collect()
}

/// Seed 004's report: rows and sizes per partition from `system.parts`.
pub async fn size_report(ch: &Ch, database: &str, table: &str) -> Result<Vec<PartSize>, ChError> {
    let rows = ch
        .rows(
            &format!("list partitions of {database}.{table}"),
            "parts",
            context! { database => database, table => table },
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| PartSize {
            partition: json_str(r, "partition").unwrap_or_default(),
            partition_id: json_str(r, "partition_id").unwrap_or_default(),
            rows: json_u64(r, "rows").unwrap_or(0),
            compressed_bytes: json_u64(r, "compressed_bytes").unwrap_or(0),
            uncompressed_bytes: json_u64(r, "uncompressed_bytes").unwrap_or(0),
            parts: json_u64(r, "parts").unwrap_or(0),
        })
        .collect())
}

/// `_partition_id = '<id>' AND (<key>) = <value>` when the second half selects the
/// partition's `rows` (within the bounds) exactly, else `_partition_id = '<id>'` alone.
async fn pruned_partition_filter(
    ch: &Ch,
    from: &str,
    partition_key: &str,
    size: &PartSize,
    rows: u64,
    req: &SplitRequest,
) -> Result<String, ChError> {
    let by_id = partition_id_filter(&size.partition_id);
    let by_key = equals_filter(partition_key, &size.partition);
    let counted = ch
        .stats(
            &format!("check the key filter of partition {}", size.partition_id),
            from,
            and_all([Some(by_key.as_str()), req.bounds.as_deref()]).as_deref(),
            None,
        )
        .await?;
    if counted.rows == rows {
        Ok(format!("{by_id} AND {by_key}"))
    } else {
        tracing::warn!(
            partition = %size.partition_id, by_key = %by_key, counted = counted.rows, rows,
            "the partition's key filter does not select its rows; every read of it scans the table"
        );
        Ok(by_id)
    }
}

/// Lists and sizes the units of a table.
pub async fn split(ch: &Ch, req: &SplitRequest) -> Result<SplitResult, ChError> {
    let from = super::qualified(&req.database, &req.table);
    let info = ch.table(&req.database, &req.table).await?;
    let sizes = size_report(ch, &req.database, &req.table).await?;
    let total_rows: u64 = sizes.iter().map(|s| s.rows).sum();
    let total_uncompressed: u64 = sizes.iter().map(|s| s.uncompressed_bytes).sum();
    let total_compressed: u64 = sizes.iter().map(|s| s.compressed_bytes).sum();
    let share = |rows: u64, of_rows: u64, of_bytes: u64| -> u64 {
        if of_rows == 0 {
            0
        } else {
            ((of_bytes as u128 * rows as u128) / of_rows as u128) as u64
        }
    };

    let mut partitions = Vec::new();
    let mut notes = Vec::new();
    match req.grouping {
        Grouping::Physical => {
            let prune_by_key = !ch.caps().await?.has(Feature::StoragePolicies)
                && !info.partition_key.trim().is_empty();
            let in_bounds: BTreeMap<String, u64> = match &req.bounds {
                Some(bounds) => ch
                    .rows(
                        &format!("count rows within bounds in {from}"),
                        "partition_id_rows",
                        context! { from => &from, filter => bounds },
                    )
                    .await?
                    .iter()
                    .filter_map(|r| Some((json_str(r, "partition_id")?, json_u64(r, "rows")?)))
                    .collect(),
                None => sizes
                    .iter()
                    .map(|s| (s.partition_id.clone(), s.rows))
                    .collect(),
            };
            for size in &sizes {
                let Some(&rows) = in_bounds.get(&size.partition_id) else {
                    continue;
                };
                if rows == 0 {
                    continue;
                }
                let filter = if prune_by_key {
                    pruned_partition_filter(ch, &from, &info.partition_key, size, rows, req).await?
                } else {
                    partition_id_filter(&size.partition_id)
                };
                partitions.push(Partition {
                    id: size.partition_id.clone(),
                    value: Some(size.partition.clone()),
                    filter: Some(filter),
                    rows: Some(rows),
                    bytes: Some(share(rows, size.rows, size.uncompressed_bytes)),
                    chunks: vec![],
                });
            }
        }
        Grouping::Expression => {
            let expr = req
                .partition_expr
                .clone()
                .filter(|e| !e.trim().is_empty())
                .unwrap_or_else(|| info.partition_key.clone());
            if expr.trim().is_empty() {
                // Unpartitioned table and no expression: the whole table is one unit.
                let stats = ch
                    .stats(
                        &format!("count rows of {from}"),
                        &from,
                        req.bounds.as_deref(),
                        None,
                    )
                    .await?;
                partitions.push(Partition {
                    id: "all".into(),
                    value: None,
                    filter: None,
                    rows: Some(stats.rows),
                    bytes: Some(share(stats.rows, total_rows, total_uncompressed)),
                    chunks: vec![],
                });
                notes.push("table has no partition key: one unit".to_string());
            } else {
                let physical = normalize(&expr) == normalize(&info.partition_key);
                let by_value: BTreeMap<&str, &PartSize> =
                    sizes.iter().map(|s| (s.partition.as_str(), s)).collect();
                let sql = ch.sql(
                    "partition_values",
                    context! { from => &from, partition_expr => &expr, filter => &req.bounds },
                )?;
                let text = ch
                    .client
                    .text(&format!("list partition values of {from}"), &sql, "Values")
                    .await?;
                let rows = parse_values(&text).map_err(|m| {
                    ChError::flow(ch.name(), format!("list partition values of {from}"), m)
                })?;
                let mut seen = BTreeSet::new();
                for row in rows {
                    let [literal, count] = <[String; 2]>::try_from(row).map_err(|_| {
                        ChError::flow(
                            ch.name(),
                            "list partition values",
                            "expected (value, rows) rows",
                        )
                    })?;
                    let count: u64 = count.parse().unwrap_or(0);
                    let bytes = match by_value.get(literal.as_str()) {
                        Some(size) if physical => share(count, size.rows, size.uncompressed_bytes),
                        _ => share(count, total_rows, total_uncompressed),
                    };
                    let mut id = id_from_literal(&literal);
                    if !seen.insert(id.clone()) {
                        id = format!("{id}-{}", &blake3::hash(literal.as_bytes()).to_hex()[..8]);
                    }
                    partitions.push(Partition {
                        id,
                        filter: Some(equals_filter(&expr, &literal)),
                        value: Some(literal),
                        rows: Some(count),
                        bytes: Some(bytes),
                        chunks: vec![],
                    });
                }
            }
        }
    }

    if let Some(declared) = &req.declared {
        let mut by_id: BTreeMap<String, Partition> =
            partitions.into_iter().map(|p| (p.id.clone(), p)).collect();
        let mut kept = Vec::new();
        let mut missing = Vec::new();
        for id in declared {
            match by_id.remove(id) {
                Some(p) => kept.push(p),
                None => {
                    missing.push(id.clone());
                    kept.push(Partition {
                        id: id.clone(),
                        value: None,
                        // Selects nothing: an export writes an empty file with a header.
                        filter: Some("0".into()),
                        rows: Some(0),
                        bytes: Some(0),
                        chunks: vec![],
                    });
                }
            }
        }
        if !missing.is_empty() {
            notes.push(format!(
                "declared partition(s) without rows in the source: {}",
                missing.join(", ")
            ));
        }
        if !by_id.is_empty() {
            notes.push(format!(
                "{} partition(s) with rows are not declared and are skipped",
                by_id.len()
            ));
        }
        partitions = kept;
    }

    // Sub-split oversized units.
    let mut chunked = 0;
    let mut oversized_without_split_by = Vec::new();
    for p in partitions.iter_mut() {
        let rows = p.rows.unwrap_or(0);
        let bytes = p.bytes.unwrap_or(0);
        let by_rows = req.max_rows.filter(|&m| m > 0).map(|m| rows.div_ceil(m));
        let by_bytes = req.max_bytes.filter(|&m| m > 0).map(|m| bytes.div_ceil(m));
        let pieces = by_rows
            .unwrap_or(1)
            .max(by_bytes.unwrap_or(1))
            .min(MAX_CHUNKS);
        if pieces <= 1 || req.grouping == Grouping::Physical {
            if pieces > 1 {
                oversized_without_split_by.push(p.id.clone());
            }
            continue;
        }
        let Some(split_by) = &req.split_by else {
            oversized_without_split_by.push(p.id.clone());
            continue;
        };
        let filter =
            and_all([p.filter.as_deref(), req.bounds.as_deref()]).unwrap_or_else(|| "1".into());
        p.chunks = sub_split(ch, &from, &filter, split_by, pieces).await?;
        if !p.chunks.is_empty() {
            chunked += 1;
        }
    }
    if !oversized_without_split_by.is_empty() {
        notes.push(format!(
            "{} partition(s) exceed max_rows/max_bytes but are not cut ({}): {}",
            oversized_without_split_by.len(),
            if req.grouping == Grouping::Physical {
                "partitions move whole"
            } else {
                "set `split_by`"
            },
            oversized_without_split_by.join(", ")
        ));
    }

    let rows: u64 = partitions.iter().filter_map(|p| p.rows).sum();
    let bytes: u64 = partitions.iter().filter_map(|p| p.bytes).sum();
    let mut note = format!(
        "{} partition(s), {} rows, ~{} to export; table: {} rows, {} compressed, {} uncompressed in {} partition(s)",
        partitions.len(),
        rows,
        human_bytes(bytes),
        total_rows,
        human_bytes(total_compressed),
        human_bytes(total_uncompressed),
        sizes.len(),
    );
    if let Some(largest) = partitions.iter().max_by_key(|p| p.rows.unwrap_or(0)) {
        note.push_str(&format!(
            "; largest {} ({} rows)",
            largest.id,
            largest.rows.unwrap_or(0)
        ));
    }
    if chunked > 0 {
        let total_chunks: usize = partitions.iter().map(|p| p.chunks.len()).sum();
        note.push_str(&format!(
            "; {chunked} cut into {total_chunks} chunks by {}",
            req.split_by.as_deref().unwrap_or_default()
        ));
    }
    for n in notes {
        note.push_str("; ");
        note.push_str(&n);
    }
    for s in &sizes {
        tracing::info!(
            table = %format!("{}.{}", req.database, req.table),
            partition = %s.partition,
            partition_id = %s.partition_id,
            rows = s.rows,
            compressed_bytes = s.compressed_bytes,
            uncompressed_bytes = s.uncompressed_bytes,
            parts = s.parts,
            "partition size"
        );
    }
    Ok(SplitResult {
        partitions,
        rows,
        bytes,
        sizes,
        note,
    })
}

/// Types whose values can be cut into ranges (`quantiles` and `<`/`>=` work and are
/// ordered), optionally Nullable.
const RANGE_TYPES: &[&str] = &["UInt", "Int", "Float", "Decimal", "Date", "DateTime"];

/// Refuses a `split_by` column whose type cannot be cut into ranges, naming the column,
/// its type and the types that work — before any chunk is formed.
async fn check_split_type(
    ch: &Ch,
    from: &str,
    split_by: &str,
    action: &str,
) -> Result<(), ChError> {
    let sql = format!("SELECT toTypeName({split_by}) FROM {from} LIMIT 1");
    let text = ch.client.text(action, &sql, "TabSeparated").await?;
    let type_name = text.trim();
    let inner = type_name
        .strip_prefix("Nullable(")
        .and_then(|t| t.strip_suffix(')'))
        .unwrap_or(type_name);
    if type_name.is_empty() || RANGE_TYPES.iter().any(|t| inner.starts_with(t)) {
        return Ok(());
    }
    Err(ChError::flow(
        ch.name(),
        action,
        format!(
            "`split_by = \"{split_by}\"` is of type {type_name}, which cannot be cut into \
             ranges; use a column of an integer, Float, Decimal, Date or DateTime type \
             (Nullable allowed), e.g. the table's time column"
        ),
    ))
}

/// Cuts the rows `filter` selects into about `pieces` chunks by `split_by`.
async fn sub_split(
    ch: &Ch,
    from: &str,
    filter: &str,
    split_by: &str,
    pieces: u64,
) -> Result<Vec<Chunk>, ChError> {
    let action = format!("find chunk boundaries by {split_by} in {from}");
    check_split_type(ch, from, split_by, &action).await?;
    let levels: Vec<String> = (1..pieces)
        .map(|i| format!("{}", i as f64 / pieces as f64))
        .collect();
    let sql = ch.sql(
        "quantiles",
        context! { from => from, filter => filter, split_by => split_by, levels => levels },
    )?;
    let text = ch.client.text(&action, &sql, "Values").await?;
    let rows = parse_values(&text).map_err(|m| ChError::flow(ch.name(), &action, m))?;
    let Some(row) = rows.into_iter().next() else {
        return Ok(vec![]);
    };
    let (array, type_name) = match row.as_slice() {
        [a, t] => (a.clone(), t.trim_matches('\'').to_string()),
        _ => {
            return Err(ChError::flow(
                ch.name(),
                &action,
                "unexpected quantiles result",
            ))
        }
    };
    let inner = array
        .trim()
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .unwrap_or_default();
    let mut bounds: Vec<String> = if inner.trim().is_empty() {
        vec![]
    } else {
        parse_values(&format!("({inner})"))
            .map_err(|m| ChError::flow(ch.name(), &action, m))?
            .into_iter()
            .next()
            .unwrap_or_default()
    };
    bounds.retain(|b| !super::values::is_null(b) && b != "nan" && b != "inf" && b != "-inf");
    bounds.dedup();
    if bounds.is_empty() {
        return Ok(vec![]);
    }
    let nullable = type_name.starts_with("Nullable(") || type_name.contains("(Nullable(");
    let col = format!("({split_by})");
    let mut chunks = Vec::new();
    let n = bounds.len();
    for i in 0..=n {
        let mut filter = match (i.checked_sub(1).map(|j| &bounds[j]), bounds.get(i)) {
            // Not `< hi`: NaN compares false with everything and must land somewhere.
            (None, Some(hi)) => format!("NOT ({col} >= {hi})"),
            (Some(lo), Some(hi)) => format!("{col} >= {lo} AND {col} < {hi}"),
            (Some(lo), None) => format!("{col} >= {lo}"),
            (None, None) => unreachable!("there is at least one boundary"),
        };
        if i == 0 && nullable {
            filter = format!("({filter}) OR {col} IS NULL");
        }
        chunks.push(Chunk {
            index: i as u32,
            filter,
            rows: None,
        });
    }
    // Rows per chunk, with the same boundaries.
    let mut arms = Vec::new();
    if nullable {
        arms.push(format!("isNull{col}, 0"));
    }
    for (i, b) in bounds.iter().enumerate() {
        if i == 0 {
            arms.push(format!("NOT ({col} >= {b}), 0"));
        } else {
            arms.push(format!("{col} < {b}, {i}"));
        }
    }
    let chunk_expr = format!("multiIf({}, {n})", arms.join(", "));
    let counts: BTreeMap<u64, u64> = ch
        .rows(
            &format!("count rows per chunk in {from}"),
            "chunk_rows",
            context! { from => from, filter => filter, chunk_expr => chunk_expr },
        )
        .await?
        .iter()
        .filter_map(|r| Some((json_u64(r, "chunk")?, json_u64(r, "rows")?)))
        .collect();
    for c in chunks.iter_mut() {
        c.rows = Some(counts.get(&u64::from(c.index)).copied().unwrap_or(0));
    }
    Ok(chunks)
}

/// `1.5 GiB`-style sizes.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(10), "10 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
