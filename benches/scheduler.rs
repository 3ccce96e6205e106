//! Scheduler + durable state throughput: 100k trivial tasks (1000 chains of 100).
//!
//! The runner returns at once, so this measures what flow itself costs per task:
//! scheduling, permits, the group-committed `running` and `done` records (with the same
//! waits as a real run) and the SQLite writes. The same graph runs with state in
//! memory (same writer thread, no SQLite) for the baseline. Each configuration runs in
//! its own process (the bench re-executes itself), so peak memory — VmHWM from
//! /proc/self/status — is that run's own.
//!
//! Run: `cargo bench --bench scheduler`. Knobs: FLOW_BENCH_TASKS=N (size),
//! FLOW_BENCH_CONCURRENCY=C (global bound, default 256), FLOW_BENCH_SYNC=normal
//! (`synchronous = NORMAL`), FLOW_BENCH_LAZY_STARTS=1 (`running` records not waited
//! for). With durable starts every task start waits for a commit, so at low
//! concurrency trivial tasks are bound by commit latency (one fsync), not by CPU.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use flow::exec::runner::{TaskContext, TaskFailure, TaskOutcome, TaskRunner};
use flow::exec::scheduler::{Interrupts, RunOptions, Scheduler, Start};
use flow::exec::RetryPolicy;
use flow::graph::{Placement, Task, TaskGraph, TaskKind, WorkUnit};
use flow::state::sqlite::Durability;
use flow::state::{shared, MemoryStore, SharedStore, SqliteStore, StateWriter};

struct Immediate;

#[async_trait::async_trait]
impl TaskRunner for Immediate {
    async fn run(&self, _task: &Task, _ctx: TaskContext) -> Result<TaskOutcome, TaskFailure> {
        Ok(TaskOutcome {
            rows: Some(1),
            ..TaskOutcome::default()
        })
    }
}

fn graph(chains: usize, length: usize) -> TaskGraph {
    let mut g = TaskGraph::new();
    for c in 0..chains {
        let mut prev = None;
        for k in 0..length {
            let mut inputs = BTreeMap::new();
            inputs.insert("chain".to_string(), c.to_string());
            inputs.insert("step".to_string(), k.to_string());
            let task = Task::new(
                format!("bench/c{c:04}/t{k:03}"),
                TaskKind::Exec,
                WorkUnit::Step { step: 0 },
                vec![format!("conn{}", c % 4)],
                Placement::External,
                inputs,
            );
            let i = g.add(task).expect("ids are unique");
            if let Some(p) = prev {
                g.depend(i, p);
            }
            prev = Some(i);
        }
    }
    g
}

fn vm_hwm_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

struct Measurement {
    name: &'static str,
    tasks: usize,
    elapsed: Duration,
    hwm_kib: Option<u64>,
    commits: u64,
}

fn run_one(
    rt: &tokio::runtime::Runtime,
    name: &'static str,
    store: SharedStore,
    chains: usize,
    length: usize,
    concurrency: usize,
) -> Measurement {
    let started = Instant::now();
    let g = Arc::new(graph(chains, length));
    let n = g.len();
    let graph_built = started.elapsed();
    let graph_hwm = vm_hwm_kib();
    let writer = StateWriter::spawn(store);
    let options = RunOptions {
        concurrency,
        retry: RetryPolicy::never(),
        log_dir: std::env::temp_dir(),
        durable_starts: std::env::var("FLOW_BENCH_LAZY_STARTS").is_err(),
        ..RunOptions::default()
    };
    let scheduler = Scheduler::new(g, Arc::new(Immediate), &writer, options);
    let summary = rt.block_on(scheduler.run(vec![Start::Run; n], Interrupts::none()));
    let ran = started.elapsed();
    // The end of a real run: fold the journal into the task table.
    writer
        .with_store(|s| s.compact())
        .expect("compaction succeeds");
    let elapsed = started.elapsed();
    println!(
        "  {name}: graph built in {:.3}s (peak RSS {} MiB), scheduler {:.3}s, compaction {:.3}s",
        graph_built.as_secs_f64(),
        graph_hwm.map_or(0, |k| k / 1024),
        (ran - graph_built).as_secs_f64(),
        (elapsed - ran).as_secs_f64()
    );
    let hwm_kib = vm_hwm_kib();
    assert!(summary.success(), "{name}: {summary:?}");
    assert_eq!(summary.done, n);
    let records = writer.with_store(|s| s.records().expect("records load"));
    assert_eq!(records.len(), n);
    assert!(records
        .iter()
        .all(|r| r.status == flow::state::TaskStatus::Done));
    drop(records);
    writer.close();
    Measurement {
        name,
        tasks: n,
        elapsed,
        hwm_kib,
        commits: summary.commits,
    }
}

fn print(m: &Measurement) {
    println!(
        "{:<38} {:>8} tasks in {:>7.3}s = {:>9.0} completions/s, {:>5} commits, peak RSS {}",
        m.name,
        m.tasks,
        m.elapsed.as_secs_f64(),
        m.tasks as f64 / m.elapsed.as_secs_f64(),
        m.commits,
        m.hwm_kib.map_or("unknown".to_string(), |k| format!(
            "{:.1} MiB",
            k as f64 / 1024.0
        )),
    );
}

/// Runs one configuration in this process and prints a machine-readable line.
fn child(which: &str, chains: usize, length: usize, concurrency: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let m = match which {
        "memory" => run_one(
            &rt,
            "memory state",
            shared(MemoryStore::new()),
            chains,
            length,
            concurrency,
        ),
        _ => run_one(
            &rt,
            "sqlite state (WAL, synchronous=FULL)",
            shared(
                SqliteStore::open_with(
                    &dir.path().join("bench.db"),
                    if std::env::var("FLOW_BENCH_SYNC").as_deref() == Ok("normal") {
                        Durability::Normal
                    } else {
                        Durability::Full
                    },
                )
                .expect("open state"),
            ),
            chains,
            length,
            concurrency,
        ),
    };
    print(&m);
    println!(
        "RESULT {} {} {}",
        m.tasks,
        m.elapsed.as_secs_f64(),
        m.hwm_kib.unwrap_or(0)
    );
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let tasks: usize = std::env::var("FLOW_BENCH_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let concurrency: usize = std::env::var("FLOW_BENCH_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256);
    let length = 100.min(tasks);
    let chains = tasks.div_ceil(length);
    if let Ok(which) = std::env::var("FLOW_BENCH_CHILD") {
        child(&which, chains, length, concurrency);
        return;
    }
    println!(
        "scheduler bench: {} tasks ({chains} chains of {length}), concurrency {concurrency}, {} cores; each configuration in its own process",
        chains * length,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    // One process per configuration, so peak memory is each run's own.
    let exe = std::env::current_exe().expect("the bench knows its own path");
    let mut results = Vec::new();
    for which in ["memory", "sqlite"] {
        let out = std::process::Command::new(&exe)
            .env("FLOW_BENCH_CHILD", which)
            .output()
            .expect("the bench can run itself");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{which} run failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for line in text.lines().filter(|l| !l.starts_with("RESULT ")) {
            println!("{line}");
        }
        let result = text
            .lines()
            .find_map(|l| l.strip_prefix("RESULT "))
            .expect("the child prints a RESULT line");
        let v: Vec<f64> = result
            .split(' ')
            .map(|x| x.parse().expect("numbers"))
            .collect();
        results.push((v[0] / v[1], v[2] / 1024.0));
    }
    let (memory, sqlite) = (results[0], results[1]);
    println!(
        "durable / in-memory: throughput {:.2}, peak memory {:.2}",
        sqlite.0 / memory.0,
        sqlite.1 / memory.1
    );
    println!(
        "durable completions/s: {:.0} ({} the 20000/s aim)",
        sqlite.0,
        if sqlite.0 >= 20_000.0 {
            "meets"
        } else {
            "BELOW"
        }
    );
}
