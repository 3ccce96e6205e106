//! What a partition's parts prove about its rows, so that rows are read only once.
//!
//! A part's `hash_of_all_files` (`system.parts`) is a hash of the checksums of every
//! file of the part: two parts with the same hash hold the same bytes, hence the same
//! rows. `MOVE PARTITION … TO TABLE`, `REPLACE PARTITION` and `ATTACH PARTITION` keep
//! the hash (the files are linked or copied, only the part's name changes); an insert,
//! a merge, a mutation or a lightweight delete makes new parts with new hashes. So the
//! multiset of (rows, hash) of a partition's active parts identifies its content:
//! when it is the same as when the rows were counted and checksummed, the figures
//! still hold, whoever writes into the table, and need not be read again.
//!
//! A reading is [`Signed`] only when the part set was the same just before and just
//! after it (parts never come back once replaced, so the read saw exactly that set).

use std::collections::BTreeMap;

use minijinja::context;
use serde::{Deserialize, Serialize};

use super::{json_str, json_u64, Ch, ChError, Stats};

/// The active parts with rows of one partition of one table: (rows, hash of all files),
/// sorted. Empty: the partition holds no row.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartSet(Vec<(u64, String)>);

impl PartSet {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The rows of the partition, from the parts' metadata.
    pub fn rows(&self) -> u64 {
        self.0.iter().map(|(rows, _)| rows).sum()
    }

    /// How many parts hold rows.
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

/// Rows and checksum of a partition, with the part set they were read from when it is
/// known not to have changed during the reading (`None`: proven of nothing).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signed {
    pub stats: Stats,
    pub parts: Option<PartSet>,
}

impl Signed {
    /// The figures of an empty partition: nothing to read.
    pub fn empty() -> Self {
        Signed {
            stats: Stats::default(),
            parts: Some(PartSet::default()),
        }
    }

    /// These figures, if they were read from exactly `parts`.
    pub fn if_of(&self, parts: &PartSet) -> Option<Stats> {
        (self.parts.as_ref() == Some(parts)).then_some(self.stats)
    }
}

/// The part sets of partition `partition_id` in `tables` of `database` (a table
/// without rows there maps to an empty set), in one query.
pub async fn part_sets(
    ch: &Ch,
    database: &str,
    tables: &[&str],
    partition_id: &str,
) -> Result<BTreeMap<String, PartSet>, ChError> {
    let rows = ch
        .rows(
            &format!("list the parts of partition {partition_id}"),
            "partition_parts",
            context! { database => database, tables => tables, partition_id => partition_id },
        )
        .await?;
    let mut sets: BTreeMap<String, PartSet> = tables
        .iter()
        .map(|t| (t.to_string(), PartSet::default()))
        .collect();
    for row in &rows {
        let (Some(table), Some(rows), Some(hash)) = (
            json_str(row, "table"),
            json_u64(row, "rows"),
            json_str(row, "hash"),
        ) else {
            return Err(ChError::flow(
                ch.name(),
                format!("list the parts of partition {partition_id}"),
                format!("system.parts returned a row without table, rows or hash: {row:?}"),
            ));
        };
        sets.entry(table).or_default().0.push((rows, hash));
    }
    for set in sets.values_mut() {
        set.0.sort();
    }
    Ok(sets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(parts: &[(u64, &str)]) -> PartSet {
        let mut v: Vec<_> = parts.iter().map(|(r, h)| (*r, h.to_string())).collect();
        v.sort();
        PartSet(v)
    }

    #[test]
    fn figures_hold_only_for_the_parts_they_were_read_from() {
        let read = Signed {
            stats: Stats {
                rows: 7,
                checksum: 42,
            },
            parts: Some(set(&[(3, "a"), (4, "b")])),
        };
        assert_eq!(read.if_of(&set(&[(4, "b"), (3, "a")])), Some(read.stats));
        // A merge (one new part), an insert (one more part), a mutation (new hash).
        assert_eq!(read.if_of(&set(&[(7, "c")])), None);
        assert_eq!(read.if_of(&set(&[(3, "a"), (4, "b"), (1, "d")])), None);
        assert_eq!(read.if_of(&set(&[(3, "a"), (4, "e")])), None);
        let unproven = Signed {
            parts: None,
            ..read.clone()
        };
        assert_eq!(unproven.if_of(&set(&[(3, "a"), (4, "b")])), None);
        assert_eq!(
            Signed::empty().if_of(&PartSet::default()),
            Some(Stats::default())
        );
        assert_eq!(set(&[(3, "a"), (4, "b")]).rows(), 7);
    }
}
