//! Strategy `copy` against real servers: same server (18.16 and modern), across
//! servers and versions, re-runs that never duplicate, a killed load, a cancelled load
//! whose INSERT is killed on the server, and the swap.

mod clickhouse_common;
mod support;

use std::time::{Duration, Instant};

use clickhouse_common::{ch, stats, AWKWARD_COLUMNS, AWKWARD_VALUES};
use flow::engines::clickhouse::copy::CopyJob;
use flow::engines::clickhouse::split::{split, Grouping, SplitRequest};
use flow::engines::clickhouse::{Ch, ChClient, ChParams};
use flow::graph::Partition;
use flow::templates::Templates;
use tokio_util::sync::CancellationToken;

fn create_source(db: &support::ChDatabase) {
    db.exec(&format!(
        "CREATE TABLE {}.trips ({AWKWARD_COLUMNS}) ENGINE = MergeTree \
         PARTITION BY (toYYYYMM(d), k) ORDER BY id",
        db.name()
    ));
    db.exec(&format!(
        "INSERT INTO {}.trips VALUES {AWKWARD_VALUES}",
        db.name()
    ));
    db.exec(&format!(
        "INSERT INTO {}.trips SELECT number + 100, toDate('2015-06-01') + number % 90, \
         toDateTime('2015-06-01 00:00:00') + number * 3600, if(number % 2 = 0, 'eu', 'us'), \
         concat('row ', toString(number)), if(number % 3 = 0, NULL, toInt32(number)), NULL, \
         toDecimal64(number, 4) / 7, [toString(number)], [toInt32(number)] \
         FROM system.numbers LIMIT 5000",
        db.name()
    ));
}

async fn partitions(ch: &Ch, db: &str, bounds: Option<&str>) -> Vec<Partition> {
    split(
        ch,
        &SplitRequest {
            database: db.into(),
            table: "trips".into(),
            grouping: Grouping::Physical,
            partition_expr: None,
            bounds: bounds.map(str::to_string),
            split_by: None,
            max_rows: None,
            max_bytes: None,
            declared: None,
        },
    )
    .await
    .unwrap()
    .partitions
}

fn job(
    source: &Ch,
    target: &Ch,
    same: bool,
    src_db: &str,
    dst_db: &str,
    bounds: Option<&str>,
) -> CopyJob {
    CopyJob {
        source: source.clone(),
        target: target.clone(),
        same_server: same,
        src_db: src_db.into(),
        src_table: "trips".into(),
        dst_db: dst_db.into(),
        dst_table: "trips".into(),
        bounds: bounds.map(str::to_string),
        swap_with: "trips_live".into(),
    }
}

/// prepare, load every partition twice, verify; target = source per partition.
async fn copy_all(job: &CopyJob, parts: &[Partition]) {
    let cancel = CancellationToken::new();
    job.prepare().await.unwrap();
    job.prepare().await.unwrap();
    for p in parts {
        let first = job.load(p, &cancel).await.unwrap();
        // A re-run (killed before state was written) replaces, never adds.
        let second = job.load(p, &cancel).await.unwrap();
        assert_eq!(first.rows, second.rows, "partition {}", p.id);
        let v = job
            .verify(p)
            .await
            .unwrap_or_else(|e| panic!("verify {}: {e}", p.id));
        assert!(v.note.contains("target = source"), "{}", v.note);
    }
}

#[tokio::test]
async fn copy_on_one_server_equals_source_per_partition() {
    for url in [support::ch_url(), support::chdb_url()] {
        let src = support::ChDatabase::new(&url, "copysrc");
        let dst = support::ChDatabase::new(&url, "copydst");
        create_source(&src);
        let ch = ch(&url);
        // Without bounds: partitions replaced straight from the source.
        let parts = partitions(&ch, src.name(), None).await;
        assert!(parts.len() >= 6);
        let j = job(&ch, &ch, true, src.name(), dst.name(), None);
        copy_all(&j, &parts).await;
        let from = format!("{}.trips", src.name());
        let to = format!("{}.trips", dst.name());
        assert_eq!(stats(&ch, &from, None).await, stats(&ch, &to, None).await);
        // The partitions were replaced straight from the source: a server that lists
        // part hashes proves them equal without reading a row; 18.16 reads both sides.
        let modern = url == support::chdb_url();
        let v = j.verify(&parts[0]).await.unwrap();
        assert_eq!(v.note.contains("not read"), modern, "{}", v.note);
        // A row more in the target partition: other parts, so the rows are read, and
        // the verify fails.
        dst.exec(&format!(
            "INSERT INTO {to} SELECT * FROM {from} WHERE _partition_id = '{}' LIMIT 1",
            parts[0].id
        ));
        let e = j.verify(&parts[0]).await.unwrap_err();
        assert!(e.message.contains("source"), "{}", e.message);
        j.load(&parts[0], &CancellationToken::new()).await.unwrap();
        j.verify(&parts[0]).await.unwrap();

        // With bounds: only rows within them, through a staging table.
        let dst2 = support::ChDatabase::new(&url, "copydst");
        let bounds = "d >= '2015-06-15' AND d < '2015-08-10'";
        let parts = partitions(&ch, src.name(), Some(bounds)).await;
        let j = job(&ch, &ch, true, src.name(), dst2.name(), Some(bounds));
        copy_all(&j, &parts).await;
        let to2 = format!("{}.trips", dst2.name());
        assert_eq!(
            stats(&ch, &from, Some(bounds)).await,
            stats(&ch, &to2, None).await
        );
        let staging = dst2.exec(&format!(
            "SELECT count() FROM system.tables WHERE database = '{}' AND name LIKE '%flow_stage%'",
            dst2.name()
        ));
        assert_eq!(staging.trim(), "0", "staging tables are dropped");
    }
}

#[tokio::test]
async fn copy_across_servers_and_versions() {
    // 18.16 → modern: Native streamed through flow; checksums agree across versions.
    let src = support::ChDatabase::new(&support::ch_url(), "xsrc");
    let dst = support::ChDatabase::new(&support::chdb_url(), "xdst");
    create_source(&src);
    let old = ch(&support::ch_url());
    let new = ch(&support::chdb_url());
    let parts = partitions(&old, src.name(), None).await;
    let j = job(&old, &new, false, src.name(), dst.name(), None);
    copy_all(&j, &parts).await;
    let a = stats(&old, &format!("{}.trips", src.name()), None).await;
    let b = stats(&new, &format!("{}.trips", dst.name()), None).await;
    assert_eq!(
        a, b,
        "same rows, same checksum on 18.16 and the modern engine"
    );
    assert!(a.rows > 5000);

    // And back: modern → 18.16.
    let back = support::ChDatabase::new(&support::ch_url(), "xback");
    let parts = partitions(&new, dst.name(), None).await;
    let j = job(&new, &old, false, dst.name(), back.name(), None);
    copy_all(&j, &parts).await;
    let c = stats(&old, &format!("{}.trips", back.name()), None).await;
    assert_eq!(a, c);
}

#[tokio::test]
async fn a_killed_load_leaves_only_a_staging_table_that_the_next_attempt_drops() {
    let url = support::chdb_url();
    let src = support::ChDatabase::new(&url, "killsrc");
    let dst = support::ChDatabase::new(&url, "killdst");
    create_source(&src);
    let ch = ch(&url);
    let bounds = "id > 0";
    let parts = partitions(&ch, src.name(), Some(bounds)).await;
    let j = job(&ch, &ch, true, src.name(), dst.name(), Some(bounds));
    j.prepare().await.unwrap();
    let p = &parts[0];
    // As if the process died mid-INSERT: a staging table with half the rows (and junk).
    dst.exec(&format!(
        "CREATE TABLE {0}.trips__flow_stage_{1} AS {0}.trips",
        dst.name(),
        p.id
    ));
    dst.exec(&format!(
        "INSERT INTO {0}.trips__flow_stage_{1} SELECT * FROM {2}.trips WHERE _partition_id = '{1}' LIMIT 1",
        dst.name(),
        p.id,
        src.name()
    ));
    // And the target partition holds an older, different copy.
    dst.exec(&format!(
        "INSERT INTO {0}.trips SELECT * FROM {1}.trips WHERE _partition_id = '{2}' LIMIT 2",
        dst.name(),
        src.name(),
        p.id
    ));
    assert!(j.verify(p).await.is_err());
    j.load(p, &CancellationToken::new()).await.unwrap();
    j.verify(p).await.unwrap();
}

/// A cancelled load (second Ctrl-C) kills its INSERT … SELECT on the server and fails
/// at once, transiently; the target is untouched, and the next attempt drops the
/// staging table left behind and copies the partition. Rows are read one per block and
/// the bound sleeps a second per row, so the INSERT would take 40 s.
/// On 18.16 only: the chdb front ignores `query_id`, so a kill by query_id cannot
/// find the statement there.
#[tokio::test]
async fn a_cancelled_load_kills_its_insert_on_the_server() {
    let url = support::ch_url();
    let src = support::ChDatabase::new(&url, "cancelsrc");
    let dst = support::ChDatabase::new(&url, "canceldst");
    src.exec(&format!(
        "CREATE TABLE {}.trips (id UInt32, d Date) ENGINE = MergeTree \
         PARTITION BY toYYYYMM(d) ORDER BY id",
        src.name()
    ));
    src.exec(&format!(
        "INSERT INTO {}.trips SELECT number, toDate('2015-06-01') FROM numbers(40)",
        src.name()
    ));
    let one_row_reads = ChClient::new(ChParams {
        name: "src".into(),
        url: url.clone(),
        settings: [("max_block_size".to_string(), "1".to_string())].into(),
        ..Default::default()
    })
    .unwrap();
    let slow_ch = Ch::new(one_row_reads, Templates::new(None).unwrap());
    let probe = ch(&url);
    let parts = partitions(&probe, src.name(), None).await;
    assert_eq!(parts.len(), 1);
    let p = parts[0].clone();
    let slow = job(
        &slow_ch,
        &slow_ch,
        true,
        src.name(),
        dst.name(),
        Some("sleepEachRow(1) = 0"),
    );
    slow.prepare().await.unwrap();

    let staging = format!("`{}`.`trips__flow_stage_{}`", dst.name(), p.id);
    let inserts = format!(
        "SELECT count() FROM system.processes WHERE query LIKE '%INSERT INTO {staging}%' \
         AND query NOT LIKE '%system.processes%'"
    );
    let running = || async {
        probe
            .client
            .text("probe", &inserts, "TSV")
            .await
            .unwrap()
            .trim()
            != "0"
    };
    let cancel = CancellationToken::new();
    let load = tokio::spawn({
        let (slow, p, cancel) = (slow.clone(), p.clone(), cancel.clone());
        async move { slow.load(&p, &cancel).await }
    });
    let t = Instant::now();
    while !running().await {
        assert!(t.elapsed().as_secs() < 30, "the INSERT never showed up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let it run a moment, as a Ctrl-C would.
    tokio::time::sleep(Duration::from_secs(2)).await;
    cancel.cancel();
    let t = Instant::now();
    let err = load.await.unwrap().unwrap_err();
    let took = t.elapsed();
    eprintln!("load returned {took:?} after the cancel: {}", err.message);
    assert!(took.as_secs() < 5, "the load waited {took:?}");
    assert!(err.retryable, "{}", err.message);
    assert!(
        err.message
            .contains("the statement was killed on the server"),
        "{}",
        err.message
    );
    let t = Instant::now();
    while running().await {
        assert!(
            t.elapsed().as_secs() < 5,
            "the INSERT still runs on the server"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("INSERT gone from system.processes after {:?}", t.elapsed());
    let count = |table: String| dst.exec(&format!("SELECT count() FROM {table}"));
    let staged: u64 = count(staging.clone()).trim().parse().unwrap();
    eprintln!("the killed INSERT left {staged} of 40 rows in staging");
    assert!(staged < 40);
    assert_eq!(count(format!("{}.trips", dst.name())).trim(), "0");

    // The next attempt (same rows, no sleep) starts over from a fresh staging table.
    let again = job(
        &slow_ch,
        &slow_ch,
        true,
        src.name(),
        dst.name(),
        Some("sleepEachRow(0) = 0"),
    );
    again.load(&p, &CancellationToken::new()).await.unwrap();
    again.verify(&p).await.unwrap();
    assert_eq!(count(format!("{}.trips", dst.name())).trim(), "40");
}

#[tokio::test]
async fn swap_happens_once() {
    for url in [support::chdb_url(), support::ch_url()] {
        let db = support::ChDatabase::new(&url, "swap");
        create_source(&db);
        db.exec(&format!(
            "CREATE TABLE {0}.trips_live AS {0}.trips",
            db.name()
        ));
        let ch = ch(&url);
        let mut j = job(&ch, &ch, true, db.name(), db.name(), None);
        j.dst_table = "trips_copy".into();
        let parts = partitions(&ch, db.name(), None).await;
        copy_all(&j, &parts).await;
        let copied = stats(&ch, &format!("{}.trips_copy", db.name()), None).await;
        let first = j.swap().await.unwrap();
        assert!(!first.note.contains("already"), "{}", first.note);
        let second = j.swap().await.unwrap();
        assert!(second.note.contains("already swapped"), "{}", second.note);
        assert_eq!(
            stats(&ch, &format!("{}.trips_live", db.name()), None).await,
            copied,
            "the live name holds the copy"
        );
        assert_eq!(
            stats(&ch, &format!("{}.trips_copy", db.name()), None)
                .await
                .rows,
            0,
            "the copy's name holds the old, empty table"
        );
    }
}

#[tokio::test]
async fn decimals_and_uuids_hash_as_bytes_alike_on_18_16_and_the_modern_engine() {
    // The copy compares Decimal and UUID columns as their bytes when both sides have
    // the same types, also across versions: this is the fact it relies on.
    use flow::engines::clickhouse::checksum::{checksum_expr_for, compared_for, Compared};
    let ddl = "(id UInt32, a Decimal(9, 2), b Decimal(18, 4), c Decimal(38, 10), u UUID, \
               n Nullable(Decimal(12, 3)), xs Array(Decimal(10, 2)), us Array(UUID)) \
               ENGINE = MergeTree ORDER BY id";
    // Values built from integers and text, so both versions make the same rows.
    let dec = |scale: u32, expr: &str| {
        format!(
            "CAST(concat(toString({expr}), '.', toString(number % {})) AS Decimal(38, {scale}))",
            10u64.pow(scale.min(4))
        )
    };
    let uuid = "toUUID(concat('61f0c404-5cb3-11e7-907b-', \
                substring(concat(hex(toUInt64(number * 7919 + 1)), '000000000000'), 1, 12)))";
    let rows = format!(
        "SELECT toUInt32(number), {}, {}, {}, {uuid}, if(number % 3 = 0, NULL, {}), [{}, {}], [{uuid}] \
         FROM numbers(5000)",
        dec(2, "intDiv(number, 7) - 300"),
        dec(4, "number * 3 - 9999"),
        dec(10, "number"),
        dec(3, "number"),
        dec(2, "number"),
        dec(2, "0 - 1"),
    );
    let old_db = support::ChDatabase::new(&support::ch_url(), "bytesold");
    let new_db = support::ChDatabase::new(&support::chdb_url(), "bytesnew");
    for db in [&old_db, &new_db] {
        db.exec(&format!("CREATE TABLE {}.t {ddl}", db.name()));
        db.exec(&format!("INSERT INTO {}.t {rows}", db.name()));
    }
    let old = ch(&support::ch_url());
    let new = ch(&support::chdb_url());
    let (t_old, t_new) = (
        format!("{}.t", old_db.name()),
        format!("{}.t", new_db.name()),
    );
    let cols_old = old.columns(&t_old).await.unwrap();
    let cols_new = new.columns(&t_new).await.unwrap();
    assert_eq!(
        compared_for(&cols_old, &cols_new),
        Compared::SameTypes,
        "{cols_old:?} {cols_new:?}"
    );
    // The rows are the same (canonical text agrees), so the bytes must hash alike.
    assert_eq!(
        stats(&old, &t_old, None).await,
        stats(&new, &t_new, None).await,
        "both versions made the same rows"
    );
    let expr_old = checksum_expr_for(&cols_old, Compared::SameTypes);
    let expr_new = checksum_expr_for(&cols_new, Compared::SameTypes);
    assert!(expr_old.contains("reinterpretAsString"), "{expr_old}");
    let a = old
        .stats("bytes checksum", &t_old, None, Some(&expr_old))
        .await
        .unwrap();
    let b = new
        .stats("bytes checksum", &t_new, None, Some(&expr_new))
        .await
        .unwrap();
    assert_eq!(a.rows, 5000);
    assert_eq!(a, b, "the same rows hash alike as bytes on both versions");
}
