//! `flow apply`: run a plan, durably, resumably.
//!
//! The order of things, and why:
//! 1. Load and check the plan; take the plan's lock (one apply per state) — a second
//!    apply is refused with the holder's pid and host.
//! 2. Open the state. A plan with state needs `--resume` or `--restart`: running over
//!    an earlier run silently would either redo work or skip it, and the user should
//!    choose which. Then stop what a killed earlier run left running: the process
//!    groups of exec steps still on record (a step must not run beside its own
//!    earlier attempt).
//! 3. Under the lock, list the tables of whole-database entries; then the library's
//!    [`crate::run::Run`]: discovery rounds (the split tasks, whose outcomes — the
//!    partition lists — are stored, so a resumed run expands the same partitions),
//!    then the run phase, each deciding per task (skip done, re-run interrupted, say
//!    why a task is dirty).
//! 5. Whatever happened: flush and compact the state, write the report and metrics,
//!    print the summary and, when it stopped early, how to resume.
//!
//! Ctrl-C: the first stops starting tasks and lets running ones finish; the second
//! cancels them. Either way state, report and metrics are written before exiting.
//! A run whose lock is broken or taken while it runs stops the same way as after a
//! second Ctrl-C, and exits 3 naming the new holder.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use chrono::Utc;
use tokio_util::sync::CancellationToken;

use super::{
    load_plan, OutputFormat, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_LOCKED, EXIT_OK, EXIT_USAGE,
};
use crate::exec::process_group::{self, GroupError};
use crate::exec::runner::TaskRunner;
use crate::exec::scheduler::{Interrupts, RunOptions, RunSummary};
use crate::exec::{ConnectionLimit, Progress, ProgressMode, RetryPolicy};
use crate::graph::TaskId;
use crate::metrics::Metrics;
use crate::plan::Plan;
use crate::report::{self, ReportContext};
use crate::run::{list_whole_databases, Run};
use crate::runtime::exec_steps::KILL_GRACE;
use crate::state::lock::{LockError, PlanLock};
use crate::state::{self, SqliteStore, StateStore, StateWriter};

/// How progress is shown.
#[derive(Debug, Clone, Copy, clap::ValueEnum, PartialEq, Eq)]
pub enum ProgressArg {
    /// A progress bar on a terminal, plain lines otherwise.
    Auto,
    /// One line per event (started, done, failed, skipped, retry), and a `progress`
    /// line (tasks, rates, ETA, running tasks) every 10 s and at the end.
    Plain,
    /// Only the summary.
    Quiet,
}

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// The plan file.
    pub plan: PathBuf,
    /// Continue a run that stopped (crash, Ctrl-C, failure): tasks done with the same
    /// inputs are skipped, interrupted and failed ones run again.
    #[arg(long, conflicts_with = "restart")]
    pub resume: bool,
    /// Discard the plan's state and start over.
    #[arg(long)]
    pub restart: bool,
    /// After a failure, let tasks that do not depend on it go on.
    #[arg(long)]
    pub keep_going: bool,
    /// Override a plan variable: NAME=VALUE (repeatable).
    #[arg(long = "var", value_parser = super::parse_var)]
    pub vars: Vec<(String, String)>,
    /// Write Prometheus metrics to this file when the run ends (textfile collector).
    #[arg(long)]
    pub metrics_file: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics while running, e.g. 127.0.0.1:9464.
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// `json` prints the final report on stdout.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
    /// How progress is shown on stderr.
    #[arg(long, value_enum, default_value_t = ProgressArg::Auto)]
    pub progress: ProgressArg,
}

/// The command that resumes this run, for messages.
fn resume_command(args: &ApplyArgs) -> String {
    let mut cmd = format!("flow apply {} --resume", args.plan.display());
    for (k, v) in &args.vars {
        cmd.push_str(&format!(" --var {k}={v}"));
    }
    if args.keep_going {
        cmd.push_str(" --keep-going");
    }
    cmd
}

pub async fn run(args: &ApplyArgs) -> anyhow::Result<u8> {
    let (plan, templates) = match load_plan(&args.plan, &args.vars) {
        Ok(loaded) => loaded,
        Err(code) => return Ok(code),
    };
    let db = plan.state_db_path();

    let lock = match PlanLock::acquire(&db) {
        Ok(lock) => lock,
        Err(e @ LockError::Held { .. }) => {
            let stale = matches!(&e, LockError::Held { stale: Some(_), .. });
            crate::errln!("error: plan `{}`: {e}", plan.name);
            if stale {
                crate::errln!(
                    "  help: if no flow is running for this plan, break the lock with `flow unlock {} --force`",
                    args.plan.display()
                );
            } else {
                crate::errln!(
                    "  help: wait for that run to finish (`flow status {}` shows its progress)",
                    args.plan.display()
                );
            }
            return Ok(EXIT_LOCKED);
        }
        Err(e) => return Err(e).context("taking the plan's lock"),
    };
    if let Some(previous) = &lock.previous {
        crate::errln!(
            "note: the previous run (pid {} on host {}, started {}) ended without releasing its lock — it was probably killed",
            previous.pid,
            previous.host,
            previous.started_at.format("%Y-%m-%d %H:%M:%S UTC")
        );
    }

    // Listed under the lock: what a run covers is decided by the run that holds it.
    let plan = match list_whole_databases(plan, &templates).await {
        Ok((plan, listed)) => {
            for (entry, tables) in listed {
                crate::errln!(
                    "{entry}: {} table(s) to move: {}",
                    tables.len(),
                    tables.join(", ")
                );
            }
            Arc::new(plan)
        }
        Err(e) => {
            crate::errln!("error: {e}");
            return Ok(EXIT_FAILED);
        }
    };

    let mut store = match SqliteStore::open(&db) {
        Ok(store) => store,
        Err(state::StateError::Damaged { .. }) if args.restart => {
            let kept = SqliteStore::set_aside(&db)
                .with_context(|| format!("moving the damaged state {} aside", db.display()))?;
            crate::errln!(
                "restart: the damaged state {} was kept as {}; starting a new one",
                db.display(),
                kept.display()
            );
            SqliteStore::open(&db)?
        }
        Err(e @ state::StateError::Damaged { .. }) => {
            crate::errln!("error: {e}");
            return Ok(EXIT_FAILED);
        }
        Err(e) => return Err(e.into()),
    };
    if store.has_tasks()? && !args.resume && !args.restart {
        let counts = state::count_by_status(&store.records()?);
        let summary: Vec<String> = counts
            .iter()
            .map(|(status, n)| format!("{n} {status}"))
            .collect();
        crate::errln!(
            "error: plan `{}` has state from an earlier run in {} ({})",
            plan.name,
            db.display(),
            summary.join(", ")
        );
        crate::errln!("  continue it:  {}", resume_command(args));
        crate::errln!(
            "  start over:   flow apply {} --restart",
            args.plan.display()
        );
        return Ok(EXIT_USAGE);
    }
    if let Err(e) = stop_earlier_attempts(&mut store).await {
        crate::errln!("error: plan `{}`: {e:#}", plan.name);
        return Ok(EXIT_FAILED);
    }
    if args.restart && store.has_tasks()? {
        store.clear()?;
        crate::errln!("restart: discarded the state in {}", db.display());
    }
    if let Some(code) = claim_state(&mut store, &plan, &db, args)? {
        return Ok(code);
    }
    let progress = Arc::new(Progress::new(match args.progress {
        ProgressArg::Auto => ProgressMode::Auto,
        ProgressArg::Plain => ProgressMode::Plain,
        ProgressArg::Quiet => ProgressMode::Quiet,
    }));
    let started_at = Utc::now();
    let metrics = Metrics::new(&plan.name);
    metrics.start(started_at);
    let server_stop = CancellationToken::new();
    if let Some(addr) = args.metrics_addr {
        let bound = metrics
            .serve(addr, server_stop.clone())
            .await
            .with_context(|| format!("serving metrics on {addr} (is the port free?)"))?;
        crate::errln!("metrics: http://{bound}/metrics");
    }
    let (_interrupt_sender, interrupts) =
        Interrupts::from_signals().context("installing the Ctrl-C handler")?;

    let run_id = store.begin_run(std::process::id(), &state::lock::this_host(), started_at)?;
    let writer = StateWriter::spawn(state::shared(store));

    let runner: Arc<dyn TaskRunner> = Arc::new(crate::runtime::Dispatch::new(
        plan.clone(),
        templates.clone(),
    ));
    let options = run_options(&plan, args.keep_going);
    let run = Run {
        plan: &plan,
        templates: &templates,
        writer: &writer,
        runner,
        options,
        progress: progress.clone(),
        metrics: metrics.clone(),
        interrupts,
        lost: lock.lost(),
        resuming: args.resume,
        upgrade_said: Default::default(),
    };
    let outcome = run.run().await;

    // Whatever happened: state, report, metrics, summary.
    let ended_at = Utc::now();
    let (graph, summaries, error) = match outcome {
        Ok((graph, summaries)) => (Some(graph), summaries, None),
        Err(e) => (None, Vec::new(), Some(e)),
    };
    let interrupted = summaries.iter().any(|s| s.interrupted);
    let cancelled = summaries.iter().any(|s| s.cancelled);
    let lock_lost = summaries.iter().find_map(|s| s.lock_lost.clone());
    let flush_error = writer.flush().await.err();
    let compact_error = writer.with_store(|s| s.compact()).err();
    let success =
        error.is_none() && flush_error.is_none() && summaries.iter().all(RunSummary::success);
    let outcome_word = if lock_lost.is_some() {
        "lost-lock"
    } else if cancelled {
        "aborted"
    } else if interrupted {
        "interrupted"
    } else if success {
        "success"
    } else {
        "failed"
    };
    let _ = writer.with_store(|s| s.end_run(run_id, outcome_word, ended_at));
    metrics.finish(ended_at);
    progress.finish();

    let records = writer.with_store(|s| s.records()).map(state::by_id);
    let mut report_written = None;
    let warnings = match &records {
        Ok(records) => crate::warnings::empty_selections(&plan, records),
        Err(_) => Vec::new(),
    };
    for w in &warnings {
        crate::errln!("warning: {w}");
    }
    if let (Some(graph), Ok(records)) = (&graph, &records) {
        let report = report::build(
            &ReportContext {
                plan: plan.name.clone(),
                table_names: plan.tables.iter().map(|t| t.name.clone()).collect(),
                volume_names: plan.volumes.iter().map(|v| v.name.clone()).collect(),
                state_path: db.display().to_string(),
                started_at,
                ended_at,
                outcome: outcome_word.to_string(),
                warnings,
            },
            graph,
            records,
        );
        match report.write(&plan.report_path) {
            Ok(()) => report_written = Some(plan.report_path.clone()),
            Err(e) => crate::errln!(
                "error: cannot write the report {}: {e}",
                plan.report_path.display()
            ),
        }
        if args.format == OutputFormat::Json {
            crate::outln!("{}", report.to_json());
        }
    }
    if let Some(path) = &args.metrics_file {
        if let Err(e) = metrics.write_file(path) {
            crate::errln!(
                "error: cannot write the metrics file {}: {e}",
                path.display()
            );
        }
    }
    server_stop.cancel();
    writer.close();
    drop(lock);

    let summary_text = summary_text(&plan, &summaries, started_at, ended_at);
    if args.format == OutputFormat::Text {
        super::emit(&summary_text);
    } else {
        crate::redact::to_stderr(&summary_text);
    }
    if let Some(path) = report_written {
        crate::errln!("report: {}", path.display());
    }
    for e in [flush_error, compact_error].into_iter().flatten() {
        crate::errln!("error: the state could not be saved: {e}");
    }
    if let Err(e) = &records {
        crate::errln!("error: reading the state back: {e}");
    }
    if let Some(e) = &error {
        crate::errln!("error: {e:#}");
    }
    if let Some(lost) = &lock_lost {
        crate::errln!(
            "error: plan `{}`: lost the plan's lock: {lost}; stopped starting tasks and cancelled the running ones, so as not to run beside the other holder",
            plan.name
        );
        return Ok(EXIT_LOCKED);
    }
    if !success && error.is_none() {
        crate::errln!("to resume: {}", resume_command(args));
    }
    Ok(if success {
        EXIT_OK
    } else if interrupted {
        EXIT_INTERRUPTED
    } else {
        EXIT_FAILED
    })
}

/// Makes sure the state belongs to this plan file and records it: two plan files with
/// the same `name` in one state folder would otherwise resume each other's tasks. A
/// state whose recorded plan file no longer exists was moved with its plan, and is
/// taken over. Returns an exit code when the run must not go on.
fn claim_state(
    store: &mut SqliteStore,
    plan: &Plan,
    db: &std::path::Path,
    args: &ApplyArgs,
) -> anyhow::Result<Option<u8>> {
    let this = std::fs::canonicalize(&args.plan).unwrap_or_else(|_| args.plan.clone());
    match store.plan_file()? {
        Some(recorded) if recorded == this => return Ok(None),
        Some(recorded) if recorded.exists() && store.has_tasks()? => {
            crate::errln!(
                "error: the state {} belongs to the plan file {}, which also has the name `{}`; this is {}",
                db.display(),
                recorded.display(),
                plan.name,
                this.display()
            );
            crate::errln!(
                "  help: give one of the two plans its own `name` (or `state_dir`) in [plan]; to run this file over that state anyway, start over with `flow apply {} --restart`",
                args.plan.display()
            );
            return Ok(Some(EXIT_USAGE));
        }
        Some(recorded) if store.has_tasks()? => crate::errln!(
            "note: the plan file of this state moved from {} to {}; the state goes on with it",
            recorded.display(),
            this.display()
        ),
        _ => {}
    }
    store.set_plan_file(&this)?;
    Ok(None)
}

/// Stops the processes of exec step attempts that an earlier, killed run left running
/// (their groups are on record until they are gone), so that no step runs beside its
/// own earlier attempt. Says what it stopped; fails when a group will not die.
async fn stop_earlier_attempts(store: &mut SqliteStore) -> anyhow::Result<()> {
    for record in store.process_groups()? {
        let what = format!(
            "step `{}` (attempt {}, started {})",
            record.task,
            record.attempt,
            record.started_at.format("%Y-%m-%d %H:%M:%S UTC")
        );
        match process_group::stop(&record.group, KILL_GRACE).await {
            Ok(None) => {}
            Ok(Some(stopped)) => crate::errln!(
                "note: {what} was still running from the previous run, which was killed; stopped its processes before anything runs again: {}",
                stopped.describe()
            ),
            Err(e @ GroupError::Elsewhere { .. }) => crate::errln!(
                "warning: {what}: {e}; make sure none of its processes still runs there"
            ),
            Err(e @ GroupError::Unkillable { .. }) => anyhow::bail!(
                "{what} is still running from the previous run and could not be stopped: {e}; stop them by hand (`kill -KILL -- -{}`) and run again",
                record.group.pgid
            ),
        }
        store.set_process_groups(&[(record.task.clone(), None)])?;
    }
    Ok(())
}

fn run_options(plan: &Plan, keep_going: bool) -> RunOptions {
    RunOptions {
        concurrency: plan.concurrency,
        connections: plan
            .connections
            .iter()
            .map(|(name, c)| {
                (
                    name.clone(),
                    ConnectionLimit {
                        max_concurrency: c.max_concurrency,
                        pause_between: c.pause_between,
                    },
                )
            })
            .collect(),
        retry: RetryPolicy::new(plan.retries, plan.retry_backoff),
        keep_going,
        log_dir: {
            let dir = plan.state_dir.join("logs").join(&plan.name);
            std::path::absolute(&dir).unwrap_or(dir)
        },
        durable_starts: true,
    }
}

fn summary_text(
    plan: &Plan,
    summaries: &[RunSummary],
    started: chrono::DateTime<Utc>,
    ended: chrono::DateTime<Utc>,
) -> String {
    let done: usize = summaries.iter().map(|s| s.done).sum();
    // Splits done in a discovery phase count as done before in the run phase.
    let before = match summaries.split_last() {
        Some((run, discovery)) => run
            .already_done
            .saturating_sub(discovery.iter().map(|s| s.done).sum()),
        None => 0,
    };
    let failed: Vec<&(TaskId, String)> = summaries.iter().flat_map(|s| &s.failed).collect();
    let skipped: Vec<&(TaskId, TaskId)> = summaries.iter().flat_map(|s| &s.skipped).collect();
    let not_started: usize = summaries.last().map_or(0, |s| s.not_started);
    let elapsed = (ended - started).to_std().unwrap_or_default();
    let took = if elapsed.as_secs() < 60 {
        format!("{:.1}s", elapsed.as_secs_f64())
    } else {
        humantime::format_duration(std::time::Duration::from_secs(elapsed.as_secs())).to_string()
    };
    let mut out = format!(
        "plan `{}`: {done} done in this run, {before} done before, {} failed, {} skipped, {not_started} not started — {took}\n",
        plan.name,
        failed.len(),
        skipped.len(),
    );
    for (id, error) in failed.iter().take(20) {
        out.push_str(&format!("  failed {id}: {error}\n"));
    }
    if failed.len() > 20 {
        out.push_str(&format!(
            "  … and {} more failures (see the report)\n",
            failed.len() - 20
        ));
    }
    if !skipped.is_empty() {
        let mut by_cause: HashMap<&TaskId, usize> = HashMap::new();
        for (_, cause) in &skipped {
            *by_cause.entry(cause).or_default() += 1;
        }
        for (cause, n) in by_cause {
            out.push_str(&format!("  skipped {n} task(s) that depend on {cause}\n"));
        }
    }
    if let Some(s) = summaries.iter().find(|s| s.interrupted) {
        out.push_str(if s.cancelled {
            "  interrupted twice: running tasks were cancelled\n"
        } else {
            "  interrupted: running tasks were allowed to finish\n"
        });
    }
    if let Some(e) = summaries.iter().find_map(|s| s.state_error.as_ref()) {
        out.push_str(&format!("  state error: {e}\n"));
    }
    out
}
