//! The ClickHouse engine's basics against real servers (18.16 and the modern engine):
//! capabilities, error classification, and the split with its sub-split.

mod clickhouse_common;
mod support;

use clickhouse_common::ch;
use flow::engines::clickhouse::split::{split, Grouping, SplitRequest};
use flow::engines::clickhouse::{Feature, Version};

fn servers() -> Vec<(&'static str, String)> {
    vec![
        ("18.16", support::ch_url()),
        ("modern", support::chdb_url()),
    ]
}

#[tokio::test]
async fn capabilities_follow_the_version() {
    let old = ch(&support::ch_url()).caps().await.unwrap();
    assert_eq!(old.version, Version::new(18, 16, 1));
    for f in [
        Feature::StoragePolicies,
        Feature::ExchangeTables,
        Feature::InsertIntoS3,
        Feature::Parquet,
        Feature::TypedValidation,
    ] {
        assert!(!old.has(f), "{f:?}");
    }
    let new = ch(&support::chdb_url()).caps().await.unwrap();
    assert!(new.version.major >= 24, "{}", new.version);
    for f in [
        Feature::StoragePolicies,
        Feature::ExchangeTables,
        Feature::InsertIntoS3,
        Feature::Parquet,
        Feature::MovePartitionToTable,
    ] {
        assert!(new.has(f), "{f:?}");
    }
}

#[tokio::test]
async fn errors_are_classified_from_server_codes() {
    for (name, url) in servers() {
        let ch = ch(&url);
        let e = ch.client.execute("test", "SELEC 1").await.unwrap_err();
        assert_eq!(e.code, Some(62), "{name}: {e}");
        assert!(!e.retryable, "{name}: syntax errors are permanent");
        assert!(e.to_string().contains("SYNTAX_ERROR"), "{name}: {e}");
        let e = ch
            .client
            .execute("test", "SELECT * FROM no_such_db_x.no_such_table")
            .await
            .unwrap_err();
        assert!(matches!(e.code, Some(60 | 81)), "{name}: {e}");
        assert!(!e.retryable, "{name}");
        // A query stopped by its own time limit is transient.
        let e = ch
            .client
            .text(
                "test",
                "SELECT count() FROM system.numbers SETTINGS max_execution_time = 1, timeout_overflow_mode = 'throw'",
                "TSV",
            )
            .await
            .unwrap_err();
        assert_eq!(e.code, Some(159), "{name}: {e}");
        assert!(e.retryable, "{name}: TIMEOUT_EXCEEDED is transient");
    }
    // Connection refused: transient.
    let e = ch("http://127.0.0.1:1")
        .client
        .execute("test", "SELECT 1")
        .await
        .unwrap_err();
    assert!(e.retryable, "{e}");
}

#[tokio::test]
async fn split_lists_partitions_within_bounds_and_cuts_big_ones_exactly() {
    for (name, url) in servers() {
        let db = support::ChDatabase::new(&url, "split");
        let t = format!("{}.trips", db.name());
        db.exec(&format!(
            "CREATE TABLE {t} (d Date, k String, v UInt64, n Nullable(UInt32)) \
             ENGINE = MergeTree PARTITION BY (toYYYYMM(d), k) ORDER BY (d, v)"
        ));
        // 4 months × 2 keys; June/eu is big; some n are NULL.
        db.exec(&format!(
            "INSERT INTO {t} SELECT toDate('2015-05-01') + (number % 120), \
             if(number % 3 = 0, 'eu', 'us'), number, if(number % 7 = 0, NULL, toUInt32(number % 1000)) \
             FROM system.numbers LIMIT 12000"
        ));
        db.exec(&format!(
            "INSERT INTO {t} SELECT toDate('2015-06-10'), 'eu', number, if(number % 5 = 0, NULL, toUInt32(number)) \
             FROM system.numbers LIMIT 5000"
        ));
        let ch = ch(&url);
        let req = SplitRequest {
            database: db.name().into(),
            table: "trips".into(),
            grouping: Grouping::Expression,
            partition_expr: Some("toYYYYMM(d)".into()),
            bounds: Some("(toYYYYMM(d) >= 201506) AND (toYYYYMM(d) <= 201507)".into()),
            split_by: Some("n".into()),
            max_rows: Some(2000),
            max_bytes: None,
            declared: None,
        };
        let result = split(&ch, &req).await.unwrap();
        let ids: Vec<&str> = result.partitions.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, vec!["201506", "201507"], "{name}");
        let total: u64 = db
            .exec(&format!(
                "SELECT count() FROM {t} WHERE toYYYYMM(d) BETWEEN 201506 AND 201507"
            ))
            .trim()
            .parse()
            .unwrap();
        assert_eq!(result.rows, total, "{name}");
        assert!(result.note.contains("cut into"), "{name}: {}", result.note);
        for p in &result.partitions {
            assert!(!p.chunks.is_empty(), "{name}: {} should be cut", p.id);
            let filter = p.filter.clone().unwrap();
            let rows: u64 = db
                .exec(&format!("SELECT count() FROM {t} WHERE {filter}"))
                .trim()
                .parse()
                .unwrap();
            assert_eq!(p.rows, Some(rows), "{name}");
            // Every row is in exactly one chunk.
            let sum_chunks: u64 = p.chunks.iter().map(|c| c.rows.unwrap()).sum();
            assert_eq!(sum_chunks, rows, "{name}: chunk rows add up");
            let in_any = p
                .chunks
                .iter()
                .map(|c| format!("({})", c.filter))
                .collect::<Vec<_>>();
            let overlaps = db.exec(&format!(
                "SELECT count() FROM {t} WHERE {filter} AND ({}) != 1",
                p.chunks
                    .iter()
                    .map(|c| format!("toUInt8(ifNull({}, 0))", c.filter))
                    .collect::<Vec<_>>()
                    .join(" + ")
            ));
            assert_eq!(overlaps.trim(), "0", "{name}: rows in no or several chunks");
            let missing = db.exec(&format!(
                "SELECT count() FROM {t} WHERE {filter} AND NOT ({})",
                in_any.join(" OR ")
            ));
            assert_eq!(missing.trim(), "0", "{name}");
            for c in &p.chunks {
                let n: u64 = db
                    .exec(&format!(
                        "SELECT count() FROM {t} WHERE {filter} AND ({})",
                        c.filter
                    ))
                    .trim()
                    .parse()
                    .unwrap();
                assert_eq!(c.rows, Some(n), "{name}: chunk {}", c.index);
            }
        }

        // Tuple key, physical grouping: partition ids as the server names them.
        let req = SplitRequest {
            grouping: Grouping::Physical,
            partition_expr: None,
            split_by: None,
            max_rows: None,
            ..req
        };
        let result = split(&ch, &req).await.unwrap();
        assert_eq!(result.partitions.len(), 4, "{name}: 2 months × 2 keys");
        let old_server = name == "18.16";
        for p in &result.partitions {
            let filter = p.filter.as_deref().unwrap();
            assert!(filter.starts_with("_partition_id = "), "{filter}");
            // 18.16 reads every part for a `_partition_id` filter: the key's value is
            // added, which it prunes by; the rows selected are the same.
            assert_eq!(filter.contains(" AND ("), old_server, "{name}: {filter}");
            let rows: u64 = db
                .exec(&format!(
                    "SELECT count() FROM {t} WHERE ({filter}) AND {}",
                    req.bounds.as_deref().unwrap()
                ))
                .trim()
                .parse()
                .unwrap();
            assert_eq!(p.rows, Some(rows), "{name}: {filter}");
            assert!(
                p.value.as_deref().unwrap().starts_with("(2015"),
                "{:?}",
                p.value
            );
        }

        // Expression grouping by the table's own tuple key.
        let req = SplitRequest {
            grouping: Grouping::Expression,
            bounds: None,
            ..req
        };
        let result = split(&ch, &req).await.unwrap();
        assert_eq!(result.partitions.len(), 8, "{name}");
        assert!(
            result.partitions.iter().any(|p| p.id == "201506-eu"),
            "{name}"
        );

        // Declared partitions: a missing one is an empty unit, named in the note.
        let req = SplitRequest {
            partition_expr: Some("toYYYYMM(d)".into()),
            declared: Some(vec!["201506".into(), "201512".into()]),
            ..req
        };
        let result = split(&ch, &req).await.unwrap();
        assert_eq!(result.partitions.len(), 2);
        assert_eq!(result.partitions[1].rows, Some(0));
        assert!(result.note.contains("201512"), "{}", result.note);

        // An unpartitioned table is one unit.
        db.exec(&format!(
            "CREATE TABLE {}.flat (v UInt64) ENGINE = MergeTree ORDER BY v",
            db.name()
        ));
        db.exec(&format!(
            "INSERT INTO {}.flat SELECT number FROM system.numbers LIMIT 10",
            db.name()
        ));
        let req = SplitRequest {
            table: "flat".into(),
            partition_expr: None,
            declared: None,
            ..req
        };
        let result = split(&ch, &req).await.unwrap();
        assert_eq!(result.partitions.len(), 1, "{name}");
        assert_eq!(result.partitions[0].id, "all");
        assert_eq!(result.partitions[0].rows, Some(10));
    }
}
