//! `flow status PLAN`: what the state says — every task's status, attempts, duration,
//! rows, bytes and last error — plus whether a run holds the lock right now.
//!
//! Reads only the state (safe while an apply runs: SQLite WAL readers do not block the
//! writer); it does not expand the plan, so it shows what ran, not what would run
//! (`flow plan` does that).

use std::path::PathBuf;

use serde::Serialize;

use super::{load_plan, OutputFormat, EXIT_OK};
use crate::state::lock::{self, LockInfo, Staleness};
use crate::state::{self, RunRecord, SqliteStore, StateStore, TaskRecord, TaskStatus};

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The plan file.
    pub plan: PathBuf,
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
}

#[derive(Debug, Serialize)]
struct LockJson {
    held: bool,
    pid: Option<u32>,
    host: Option<String>,
    started_at: Option<String>,
    heartbeat_at: Option<String>,
    stale: Option<String>,
}

#[derive(Debug, Serialize)]
struct StatusJson<'a> {
    plan: &'a str,
    state: String,
    lock: Option<LockJson>,
    last_run: Option<&'a RunRecord>,
    counts: std::collections::BTreeMap<TaskStatus, usize>,
    tasks: &'a [TaskRecord],
}

fn stale_text(s: &Staleness) -> String {
    match s {
        Staleness::DeadProcess => "holder process is not running".to_string(),
        Staleness::Silent(d) => format!(
            "no heartbeat for {}",
            humantime::format_duration(std::time::Duration::from_secs(d.as_secs()))
        ),
    }
}

fn lock_json(info: &LockInfo) -> LockJson {
    let r = info.record.as_ref();
    LockJson {
        held: info.held,
        pid: r.map(|r| r.pid),
        host: r.map(|r| r.host.clone()),
        started_at: r.map(|r| r.started_at.to_rfc3339()),
        heartbeat_at: r.map(|r| r.heartbeat_at.to_rfc3339()),
        stale: info.stale.as_ref().map(stale_text),
    }
}

fn human_bytes(b: u64) -> String {
    indicatif::HumanBytes(b).to_string()
}

/// Prints `text` on stdout; a closed pipe (`flow status … | head`) is not an error.
fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

pub async fn run(args: &StatusArgs) -> anyhow::Result<u8> {
    let (plan, _) = match load_plan(&args.plan, &[]) {
        Ok(loaded) => loaded,
        Err(code) => return Ok(code),
    };
    let db = plan.state_db_path();
    let Some(mut store) = SqliteStore::open_existing(&db)? else {
        match args.format {
            OutputFormat::Json => outln!(
                "{}",
                serde_json::json!({ "plan": plan.name, "state": db.display().to_string(), "tasks": [] })
            ),
            OutputFormat::Text => outln!(
                "plan `{}` has no state yet ({} does not exist); `flow apply {}` starts it",
                plan.name,
                db.display(),
                args.plan.display()
            ),
        }
        return Ok(EXIT_OK);
    };
    let mut out = String::new();
    macro_rules! outln {
        ($out:ident, $($arg:tt)*) => {{
            use std::fmt::Write as _;
            let _ = writeln!($out, $($arg)*);
        }};
    }
    let records = store.records()?;
    let runs = store.runs(1)?;
    let lock = lock::inspect(&db)?;
    let counts = state::count_by_status(&records);

    if args.format == OutputFormat::Json {
        let json = StatusJson {
            plan: &plan.name,
            state: db.display().to_string(),
            lock: lock.as_ref().map(lock_json),
            last_run: runs.first(),
            counts,
            tasks: &records,
        };
        outln!(out, "{}", serde_json::to_string_pretty(&json)?);
        emit(&out)?;
        return Ok(EXIT_OK);
    }

    outln!(out, "plan `{}` — state {}", plan.name, db.display());
    match &lock {
        Some(info) if info.held => {
            let who = info.record.as_ref().map_or_else(
                || "a flow whose lock record is unreadable".to_string(),
                |r| {
                    format!(
                        "pid {} on host {} since {} (last heartbeat {}s ago)",
                        r.pid,
                        r.host,
                        r.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
                        r.silence().as_secs()
                    )
                },
            );
            outln!(out, "running now: {who}");
            if let Some(stale) = &info.stale {
                outln!(
                    out,
                    "  the lock looks stale ({}); if that run is gone: flow unlock {} --force",
                    stale_text(stale),
                    args.plan.display()
                );
            }
        }
        _ => {
            if let Some(run) = runs.first() {
                outln!(
                    out,
                    "last run: started {} by pid {} on {}, {}",
                    run.started_at.format("%Y-%m-%d %H:%M:%S UTC"),
                    run.pid,
                    run.host,
                    match (&run.outcome, run.ended_at) {
                        (Some(o), Some(end)) =>
                            format!("ended {} ({o})", end.format("%Y-%m-%d %H:%M:%S UTC")),
                        _ => "did not finish (killed?)".to_string(),
                    }
                );
            }
        }
    }
    let summary: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    outln!(
        out,
        "tasks: {}",
        if summary.is_empty() {
            "none".to_string()
        } else {
            summary.join(", ")
        }
    );
    if records.is_empty() {
        emit(&out)?;
        return Ok(EXIT_OK);
    }
    out.push('\n');
    let id_width = records
        .iter()
        .map(|r| r.id.as_str().len())
        .max()
        .unwrap_or(2)
        .clamp(2, 60);
    outln!(
        out,
        "{:<8} {:>8} {:>9} {:>12} {:>10}  {:<id_width$}  ERROR",
        "STATUS",
        "ATTEMPTS",
        "DURATION",
        "ROWS",
        "BYTES",
        "ID"
    );
    for r in &records {
        let duration = r
            .duration()
            .map(|d| format!("{:.1}s", d.as_secs_f64()))
            .unwrap_or_default();
        let error = r
            .error
            .as_deref()
            .map(|e| {
                let line = e.lines().next().unwrap_or_default();
                if line.chars().count() > 100 {
                    format!("{}…", line.chars().take(100).collect::<String>())
                } else {
                    line.to_string()
                }
            })
            .unwrap_or_default();
        outln!(
            out,
            "{:<8} {:>8} {:>9} {:>12} {:>10}  {:<id_width$}  {}",
            r.status.as_str(),
            r.attempts,
            duration,
            r.rows.map(|v| v.to_string()).unwrap_or_default(),
            r.bytes.map(human_bytes).unwrap_or_default(),
            r.id.as_str(),
            error
        );
    }
    emit(&out)?;
    Ok(EXIT_OK)
}
