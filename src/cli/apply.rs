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
//! 3. Split phase: the graph expanded without partitions holds the split tasks; run
//!    them (and anything they depend on). Their outcomes — the partition lists — are
//!    stored, so a resumed run expands the same partitions.
//! 4. Run phase: expand with the listed partitions, decide per task (skip done, re-run
//!    interrupted, say why a task is dirty), run.
//! 5. Whatever happened: flush and compact the state, write the report and metrics,
//!    print the summary and, when it stopped early, how to resume.
//!
//! Ctrl-C: the first stops starting tasks and lets running ones finish; the second
//! cancels them. Either way state, report and metrics are written before exiting.
//! A run whose lock is broken or taken while it runs stops the same way as after a
//! second Ctrl-C, and exits 3 naming the new holder.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use chrono::Utc;
use petgraph::graph::NodeIndex;
use tokio_util::sync::CancellationToken;

use super::{
    load_plan, OutputFormat, EXIT_FAILED, EXIT_INTERRUPTED, EXIT_LOCKED, EXIT_OK, EXIT_USAGE,
};
use crate::engines::exec::KILL_GRACE;
use crate::exec::process_group::{self, GroupError};
use crate::exec::runner::TaskRunner;
use crate::exec::scheduler::{Interrupts, RunOptions, RunSummary, Scheduler, Start, StopReason};
use crate::exec::{ConnectionLimit, Progress, ProgressMode, RetryPolicy};
use crate::graph::expand::{expand, PartitionMap};
use crate::graph::expand::{SUPERSEDED_TEMPLATES_INPUT, TEMPLATE_INPUT};
use crate::graph::{TaskGraph, TaskId, TaskKind};
use crate::metrics::Metrics;
use crate::plan::Plan;
use crate::report::{self, ReportContext};
use crate::state::lock::{LockError, PlanLock};
use crate::state::{
    self, decide, Action, RunReason, SqliteStore, StateStore, StateWriter, TaskDecision,
    TaskRecord, TaskRef, Transition,
};
use crate::templates::Templates;

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

/// Replaces each whole-database entry (`table = "*"`) by the tables it covers now:
/// MergeTree tables not yet on the target policy. A table moved by an earlier run is on
/// the policy already and drops out, so a resumed run lists what is left to do.
async fn list_whole_databases(plan: Plan, templates: &Templates) -> anyhow::Result<Plan> {
    let wildcards = plan.wildcard_tables();
    if wildcards.is_empty() {
        return Ok(plan);
    }
    let shared = Arc::new(plan.clone());
    let engines = crate::engines::table::TableRunner::new(shared, templates.clone());
    let mut listed = std::collections::BTreeMap::new();
    for index in wildcards {
        let table = &plan.tables[index];
        let ch = engines
            .clickhouse(&table.source)
            .map_err(|e| anyhow::anyhow!("table {}: {}", table.name, e.message))?;
        let names = crate::engines::clickhouse::s3_policy::tables_to_move(
            &ch,
            &table.database,
            &table.storage_policy,
        )
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "table {}: listing the tables of {}: {e}",
                table.name,
                table.database
            )
        })?;
        crate::errln!(
            "{}: {} table(s) to move: {}",
            table.name,
            names.len(),
            names.join(", ")
        );
        listed.insert(index, names);
    }
    Ok(plan.with_listed_tables(&listed))
}

pub async fn run(args: &ApplyArgs) -> anyhow::Result<u8> {
    let (plan, templates) = match load_plan(&args.plan, &args.vars) {
        Ok(loaded) => loaded,
        Err(code) => return Ok(code),
    };
    let db = plan.state_db_path();
    let plan = match list_whole_databases(plan, &templates).await {
        Ok(plan) => Arc::new(plan),
        Err(e) => {
            crate::errln!("error: {e}");
            return Ok(EXIT_FAILED);
        }
    };

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

    let runner: Arc<dyn TaskRunner> = Arc::new(crate::engines::Dispatch::new(
        plan.clone(),
        templates.clone(),
    ));
    let options = run_options(&plan, args.keep_going);
    let ctx = Ctx {
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
    let outcome = ctx.apply().await;

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

struct Ctx<'a> {
    plan: &'a Arc<Plan>,
    templates: &'a Templates,
    writer: &'a StateWriter,
    runner: Arc<dyn TaskRunner>,
    options: RunOptions,
    progress: Arc<Progress>,
    metrics: Arc<Metrics>,
    interrupts: Interrupts,
    /// Raised by the plan's lock when it is broken or taken (fencing).
    lost: tokio::sync::watch::Receiver<Option<String>>,
    resuming: bool,
    /// The upgrade note was printed.
    upgrade_said: std::sync::atomic::AtomicBool,
}

impl Ctx<'_> {
    fn records(&self) -> anyhow::Result<HashMap<TaskId, TaskRecord>> {
        Ok(state::by_id(self.writer.with_store(|s| s.records())?))
    }

    /// Both phases; returns the last graph and the phases' summaries.
    async fn apply(&self) -> anyhow::Result<(Arc<TaskGraph>, Vec<RunSummary>)> {
        let mut summaries = Vec::new();
        let first = expand(self.plan, self.templates, &PartitionMap::new())
            .context("expanding the plan into tasks")?;
        let first = Arc::new(first);
        let splits: Vec<NodeIndex> = first
            .indices()
            .filter(|&i| first.task(i).kind == TaskKind::Split)
            .collect();
        let mut ran = HashSet::new();
        // Splits (and what they depend on) that failed or were skipped in this run.
        let mut failed_before = HashSet::new();
        if !splits.is_empty() {
            let selected = with_dependencies(&first, &splits);
            let records = self.records()?;
            let decisions = decide(&first, &records, &HashSet::new());
            self.rerecord(&first, &decisions, Some(&selected));
            self.announce(&decisions, &records, Some(&selected), &HashSet::new());
            let starts = starts(&decisions, &records, Some(&selected));
            let summary = self.schedule(first.clone(), "split", starts).await;
            ran.clone_from(&summary.ran);
            // A failed split stops only its own table: the run phase skips that
            // table's tasks (and, without --keep-going, starts nothing, counting what
            // did not start). An interrupt or a state error ends the run here.
            let stop = summary.interrupted
                || summary.state_error.is_some()
                || matches!(
                    summary.stopped,
                    Some(StopReason::State(_) | StopReason::Interrupted)
                );
            failed_before.extend(summary.failed.iter().map(|(id, _)| id.clone()));
            failed_before.extend(summary.skipped.iter().map(|(id, _)| id.clone()));
            summaries.push(summary);
            if stop {
                return Ok((first, summaries));
            }
        }
        let records = self.records()?;
        let partitions = state::listed_partitions(&first, &records, &self.plan.state_db_path())?;
        let graph = expand(self.plan, self.templates, &partitions)
            .map_err(|e| anyhow::anyhow!("{e}\n  help: {}", e.help()))
            .context("expanding the plan with the listed partitions; nothing was exported")?;
        let graph = Arc::new(graph);
        let decisions = decide(&graph, &records, &ran);
        self.rerecord(&graph, &decisions, None);
        self.announce(&decisions, &records, None, &ran);
        let mut starts = starts(&decisions, &records, None);
        for (start, d) in starts.iter_mut().zip(&decisions) {
            if failed_before.contains(&d.id) {
                *start = Start::FailedBefore;
            }
        }
        let summary = self.schedule(graph.clone(), "run", starts).await;
        summaries.push(summary);
        Ok((graph, summaries))
    }

    async fn schedule(&self, graph: Arc<TaskGraph>, phase: &str, starts: Vec<Start>) -> RunSummary {
        Scheduler::new(
            graph,
            self.runner.clone(),
            self.writer,
            self.options.clone(),
        )
        .phase(phase)
        .fence(self.lost.clone())
        .observe(self.progress.clone())
        .observe(self.metrics.clone())
        .run(starts, self.interrupts.clone())
        .await
    }

    /// Records again the done tasks an earlier flow recorded without the inputs this
    /// flow adds; they stay done. Said once per run.
    fn rerecord(
        &self,
        graph: &Arc<TaskGraph>,
        decisions: &[TaskDecision],
        selected: Option<&HashSet<NodeIndex>>,
    ) {
        let mut names = std::collections::BTreeSet::new();
        let mut count = 0;
        for d in decisions.iter().filter(|d| !d.upgraded.is_empty()) {
            if selected.is_some_and(|s| !s.contains(&d.index)) {
                continue;
            }
            self.writer
                .send(Transition::Rerecord(TaskRef::new(graph.clone(), d.index)));
            names.extend(d.upgraded.iter().map(|n| {
                if n.starts_with(TEMPLATE_INPUT) || n == SUPERSEDED_TEMPLATES_INPUT {
                    // One name for the family, not one per template.
                    format!("`{TEMPLATE_INPUT}*` (each template the task uses)")
                } else {
                    format!("`{n}`")
                }
            }));
            count += 1;
        }
        if count > 0
            && !self
                .upgrade_said
                .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            let names: Vec<String> = names.into_iter().collect();
            self.progress.println(&format!(
                "upgrade: {count} done task(s) were recorded by an earlier flow without input(s) {}; their other inputs are unchanged, so they stay done and these inputs are recorded from now on",
                names.join(", ")
            ));
        }
    }

    /// Says what a resumed run will do differently: re-runs, dirty and kept tasks.
    fn announce(
        &self,
        decisions: &[TaskDecision],
        records: &HashMap<TaskId, TaskRecord>,
        selected: Option<&HashSet<NodeIndex>>,
        already: &HashSet<TaskId>,
    ) {
        if records.is_empty() {
            if self.resuming {
                self.progress
                    .println("resume: no earlier state; starting from the beginning");
            }
            return;
        }
        let relevant: Vec<&TaskDecision> = decisions
            .iter()
            .filter(|d| selected.is_none_or(|s| s.contains(&d.index)))
            .filter(|d| !already.contains(&d.id))
            .collect();
        let count = |f: &dyn Fn(&Action) -> bool| relevant.iter().filter(|d| f(&d.action)).count();
        let done = count(&|a| matches!(a, Action::Skip));
        let kept = count(&|a| matches!(a, Action::Keep(_)));
        let rerun = count(&|a| matches!(a, Action::Run(RunReason::Interrupted)));
        let dirty = count(&|a| matches!(a, Action::Run(RunReason::Dirty(_))));
        let again = count(&|a| {
            matches!(
                a,
                Action::Run(RunReason::Failed(_) | RunReason::SkippedBefore)
            )
        });
        let fresh = count(&|a| matches!(a, Action::Run(RunReason::New | RunReason::Pending)));
        self.progress.println(&format!(
            "resume: {done} done (skipped), {rerun} interrupted (re-run), {again} failed or skipped before (run again), {dirty} dirty, {kept} kept (once), {fresh} not run yet"
        ));
        const SHOWN: usize = 20;
        let mut shown_dirty = 0;
        let mut shown_again = 0;
        for d in &relevant {
            let line = match &d.action {
                Action::Run(RunReason::Interrupted) => {
                    format!("re-run {}: was running when the previous run stopped", d.id)
                }
                Action::Keep(_) => format!("kept {}: {}", d.id, d.reason().unwrap_or_default()),
                Action::Run(RunReason::Dirty(reason)) => {
                    shown_dirty += 1;
                    if shown_dirty > SHOWN {
                        continue;
                    }
                    format!("dirty {}: {reason}", d.id)
                }
                Action::Run(reason @ (RunReason::Failed(_) | RunReason::SkippedBefore)) => {
                    shown_again += 1;
                    if shown_again > SHOWN {
                        continue;
                    }
                    format!("again {}: {reason}", d.id)
                }
                _ => continue,
            };
            self.progress.println(&line);
        }
        for (n, what) in [
            (shown_dirty, "dirty"),
            (shown_again, "failed or skipped before"),
        ] {
            if n > SHOWN {
                self.progress.println(&format!(
                    "… and {} more {what} tasks (`flow plan` lists them all)",
                    n - SHOWN
                ));
            }
        }
    }
}

/// `seeds` and everything they depend on.
fn with_dependencies(graph: &TaskGraph, seeds: &[NodeIndex]) -> HashSet<NodeIndex> {
    let mut out = HashSet::new();
    let mut stack: Vec<NodeIndex> = seeds.to_vec();
    while let Some(i) = stack.pop() {
        if out.insert(i) {
            stack.extend(graph.dependencies(i));
        }
    }
    out
}

fn starts(
    decisions: &[TaskDecision],
    records: &HashMap<TaskId, TaskRecord>,
    selected: Option<&HashSet<NodeIndex>>,
) -> Vec<Start> {
    decisions
        .iter()
        .map(|d| {
            if selected.is_some_and(|s| !s.contains(&d.index)) {
                return Start::Excluded;
            }
            match &d.action {
                Action::Skip | Action::Keep(_) => Start::Done(
                    records
                        .get(&d.id)
                        .map(TaskRecord::outcome)
                        .unwrap_or_default(),
                ),
                Action::Run(_) => Start::Run,
            }
        })
        .collect()
}

fn summary_text(
    plan: &Plan,
    summaries: &[RunSummary],
    started: chrono::DateTime<Utc>,
    ended: chrono::DateTime<Utc>,
) -> String {
    let done: usize = summaries.iter().map(|s| s.done).sum();
    // Splits done in the split phase count as done before in the run phase.
    let before = match summaries {
        [split, run] => run.already_done.saturating_sub(split.done),
        [only] => only.already_done,
        _ => 0,
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
