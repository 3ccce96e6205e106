//! Benchmark: check and expand a plan of 1,000 tables × 100 partitions (100k tasks)
//! offline, against parsing the same TOML alone (the floor any checker pays), side by
//! side in one run. Reports times, the ratio, and peak memory (VmHWM).
//!
//! Run: `cargo bench --bench expand`

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use flow::check::{check_source, LoadOptions};
use flow::plan::schema::PlanFile;
use flow::plan::SourceFile;

fn plan_text(tables: usize, partitions: usize) -> String {
    let mut s = String::from(
        "[plan]\nname = \"bench\"\nconcurrency = 8\n\n[connections.ch]\nkind = \"clickhouse\"\nurl = \"http://127.0.0.1:8123\"\npassword = \"${env:CH_PASSWORD:-}\"\n\n[connections.lake]\nkind = \"fs\"\npath = \"out\"\n",
    );
    let ids: Vec<String> = (0..partitions)
        .map(|p| format!("\"{}\"", 200_000 + p))
        .collect();
    let list = ids.join(", ");
    for t in 0..tables {
        let _ = write!(
            s,
            "\n[[tables]]\nsource = \"ch\"\ndatabase = \"db\"\ntable = \"t{t}\"\npartition_expr = \"toYYYYMM(d)\"\nlower = \"toYYYYMM(d) >= 200000\"\nupper = \"toYYYYMM(d) <= 209999\"\npartitions = [{list}]\nstrategy = \"export\"\ntarget = \"lake\"\npath = \"{{{{ table.name }}}}/{{{{ partition_id }}}}/part-{{{{ chunk }}}}.csv\"\n"
        );
    }
    s
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn main() {
    let text = plan_text(1000, 100);
    let rounds = 3;

    let mut parse_best = f64::MAX;
    for _ in 0..rounds {
        let start = Instant::now();
        let file: PlanFile = toml::from_str(&text).expect("bench plan parses");
        std::hint::black_box(&file);
        parse_best = parse_best.min(start.elapsed().as_secs_f64());
    }

    let mut full_best = f64::MAX;
    let mut tasks = 0;
    let mut edges = 0;
    for _ in 0..rounds {
        let start = Instant::now();
        let loaded = check_source(
            SourceFile {
                path: PathBuf::from("bench.toml"),
                text: text.clone(),
            },
            &LoadOptions::default(),
        );
        assert!(loaded.plan.is_some(), "bench plan is valid");
        let graph = loaded.graph.expect("the checker expands a valid plan");
        full_best = full_best.min(start.elapsed().as_secs_f64());
        tasks = graph.len();
        edges = graph.edge_count();
    }
    println!(
        "plan: 1000 tables x 100 partitions (100k units), {} KiB of TOML",
        text.len() / 1024
    );
    println!("tasks: {tasks} (export + verify per partition, split + manifest per table), edges: {edges}");
    println!("parse only (baseline):        {:>8.3} s", parse_best);
    println!("check + expand (flow):        {:>8.3} s", full_best);
    println!(
        "ratio (flow / parse):         {:>8.2}",
        full_best / parse_best
    );
    println!("peak memory (VmHWM):          {:>8.1} MB", peak_rss_mb());
}
