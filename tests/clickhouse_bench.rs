//! Engine-level throughput of the streamed export (ignored by default; needs the
//! `bench.trips` table that scripts/bench-export creates). Run with
//! `cargo test --release --test clickhouse_bench -- --ignored --nocapture`.
//! The end-to-end comparison with clickhouse-client is scripts/bench-export.

mod clickhouse_common;
mod support;

use std::sync::Arc;
use std::time::Instant;

use flow::engines::clickhouse::export::{export_streamed, ExportUnit};
use flow::engines::clickhouse::split::{split, Grouping, SplitRequest};
use flow::engines::store::fs::FsStore;
use flow::engines::store::Store;
use flow::plan::{ExportFormat, Formatting, ServerSide};
use tokio_util::sync::CancellationToken;

fn vm_hwm_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark; needs bench.trips (scripts/bench-export)"]
async fn streamed_export_throughput() {
    let parallel: usize = std::env::var("BENCH_PARALLEL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let ch = clickhouse_common::ch(&support::ch_url());
    let parts = split(
        &ch,
        &SplitRequest {
            database: "bench".into(),
            table: "trips".into(),
            grouping: Grouping::Expression,
            partition_expr: Some("toYYYYMM(pickup_date)".into()),
            bounds: None,
            split_by: None,
            max_rows: None,
            max_bytes: None,
            declared: None,
        },
    )
    .await
    .unwrap()
    .partitions;
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(FsStore::new(dir.path()));
    let start = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel));
    let mut tasks = Vec::new();
    for p in parts {
        let (ch, store, sem) = (ch.clone(), store.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await.unwrap();
            let unit = ExportUnit {
                from: "`bench`.`trips`".into(),
                filter: p.filter.clone(),
                key: format!("trips/{}.csv", p.id),
                format: ExportFormat::Csv,
                server_side: ServerSide::Never,
                formatting: Formatting::Auto,
                chunk: None,
            };
            export_streamed(&ch, store.as_ref(), &unit, &CancellationToken::new())
                .await
                .unwrap()
                .0
        }));
    }
    let mut rows = 0;
    let mut bytes = 0;
    for t in tasks {
        let f = t.await.unwrap();
        rows += f.rows;
        bytes += f.bytes;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "streamed export: {rows} rows, {} MiB in {secs:.2} s ({:.0} MiB/s), {parallel} at a time, VmHWM {} MB",
        bytes >> 20,
        (bytes as f64 / 1048576.0) / secs,
        vm_hwm_kb() / 1024
    );
}

/// Receiving only (no store): BENCH_MODE=plain|framed[-track] compares the plain HTTP
/// body (4 KiB chunks on 18.16) with `compress=1` framing, optionally with row counting.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark; needs bench.trips (scripts/bench-export)"]
async fn http_receive_throughput() {
    let mode = std::env::var("BENCH_MODE").unwrap_or_default();
    let ch = clickhouse_common::ch(&support::ch_url());
    let start = Instant::now();
    let mut tasks = Vec::new();
    let parallel: usize = std::env::var("BENCH_PARALLEL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let sem = Arc::new(tokio::sync::Semaphore::new(parallel));
    for m in 1..=12 {
        let (ch, sem, mode) = (ch.clone(), sem.clone(), mode.clone());
        tasks.push(tokio::spawn(async move {
            let _p = sem.acquire().await.unwrap();
            let sql = format!("SELECT * FROM bench.trips WHERE toYYYYMM(pickup_date) = 2015{m:02}");
            let mut cur = if mode.contains("framed") {
                ch.client.stream_framed("x", &sql, "CSVWithNames").unwrap()
            } else {
                ch.client.stream("x", &sql, "CSVWithNames").unwrap()
            };
            let mut tracker =
                flow::engines::clickhouse::rows::StreamTracker::new(ExportFormat::Csv);
            let mut n = 0usize;
            let mut chunks = 0usize;
            while let Some(c) = cur.next().await.unwrap() {
                n += c.len();
                chunks += 1;
                if mode.contains("track") {
                    tracker.feed(&c);
                }
            }
            (n, chunks)
        }));
    }
    let mut total = 0;
    let mut chunks = 0;
    for t in tasks {
        let (n, c) = t.await.unwrap();
        total += n;
        chunks += c;
    }
    println!(
        "mode {mode:?}: {} MiB in {:.2}s, {} chunks (avg {} B)",
        total >> 20,
        start.elapsed().as_secs_f64(),
        chunks,
        total / chunks.max(1)
    );
}
