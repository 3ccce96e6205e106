//! The run of a plan, in the library: what `flow apply` does between taking the lock
//! and writing the report.
//!
//! Discovery tasks (a table's split; later, listing jobs or volumes) run first, as real
//! tasks — locked, retried, recorded — and their outcomes re-expand the graph, round
//! after round, until no new discovery task appears; then the rest runs. Every phase
//! decides per task from the state (skip done, re-run interrupted, say why a task is
//! dirty, record again what an earlier flow recorded without today's inputs). The CLI
//! keeps the arguments, the display and the exit codes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use anyhow::Context as _;
use petgraph::graph::NodeIndex;

use crate::exec::runner::TaskRunner;
use crate::exec::scheduler::{Interrupts, RunOptions, RunSummary, Scheduler, Start, StopReason};
use crate::exec::Progress;
use crate::graph::expand::{expand, PartitionMap};
use crate::graph::expand::{SUPERSEDED_TEMPLATES_INPUT, TEMPLATE_INPUT};
use crate::graph::{TaskGraph, TaskId};
use crate::metrics::Metrics;
use crate::plan::Plan;
use crate::state::{
    self, decide, Action, RunReason, StateWriter, TaskDecision, TaskRecord, TaskRef, Transition,
};
use crate::templates::Templates;

/// Replaces each whole-database entry (`table = "*"`) by the tables it covers now:
/// MergeTree tables not yet on the target policy. A table moved by an earlier run is on
/// the policy already and drops out, so a resumed run lists what is left to do.
///
/// Returns the plan and, per whole-database entry, its name and the tables listed.
pub async fn list_whole_databases(
    plan: Plan,
    templates: &Templates,
) -> anyhow::Result<(Plan, Vec<(String, Vec<String>)>)> {
    let wildcards = plan.wildcard_tables();
    if wildcards.is_empty() {
        return Ok((plan, Vec::new()));
    }
    let mut said = Vec::new();
    let shared = Arc::new(plan.clone());
    let engines = crate::runtime::TableRunner::new(shared, templates.clone());
    let mut listed = std::collections::BTreeMap::new();
    for index in wildcards {
        let table = &plan.tables[index];
        let names = engines
            .tables_of_database(table)
            .await
            .map_err(|e| anyhow::anyhow!("table {}: {}", table.name, e.message))?;
        said.push((table.name.clone(), names.clone()));
        listed.insert(index, names);
    }
    Ok((plan.with_listed_tables(&listed), said))
}

/// One apply of a plan: the state writer, the runner and the observers it reports to.
pub struct Run<'a> {
    pub plan: &'a Arc<Plan>,
    pub templates: &'a Templates,
    pub writer: &'a StateWriter,
    pub runner: Arc<dyn TaskRunner>,
    pub options: RunOptions,
    pub progress: Arc<Progress>,
    pub metrics: Arc<Metrics>,
    pub interrupts: Interrupts,
    /// Raised by the plan's lock when it is broken or taken (fencing).
    pub lost: tokio::sync::watch::Receiver<Option<String>>,
    pub resuming: bool,
    /// The upgrade note was printed.
    pub upgrade_said: std::sync::atomic::AtomicBool,
}

impl Run<'_> {
    fn records(&self) -> anyhow::Result<HashMap<TaskId, TaskRecord>> {
        Ok(state::by_id(self.writer.with_store(|s| s.records())?))
    }

    /// Discovery rounds, then the rest; returns the last graph and each phase's summary
    /// (the discovery rounds', then the run's).
    ///
    /// A discovery task (a split) lists what the plan covers; it runs as a task —
    /// locked, retried, recorded — and its outcome re-expands the graph. Rounds go on
    /// until no discovery task is left that this run has not handled; a failed one stops
    /// only its own table.
    pub async fn run(&self) -> anyhow::Result<(Arc<TaskGraph>, Vec<RunSummary>)> {
        let mut summaries = Vec::new();
        let mut graph = Arc::new(
            expand(self.plan, self.templates, &PartitionMap::new())
                .context("expanding the plan into tasks")?,
        );
        let mut ran = HashSet::new();
        // Discovery tasks handled in an earlier round (run, or done before).
        let mut handled: HashSet<TaskId> = HashSet::new();
        // Discovery tasks (and what they depend on) that failed or were skipped.
        let mut failed_before = HashSet::new();
        loop {
            let discovery: Vec<NodeIndex> = graph
                .indices()
                .filter(|&i| {
                    let t = graph.task(i);
                    t.kind.is_discovery() && !handled.contains(&t.id)
                })
                .collect();
            if discovery.is_empty() {
                break;
            }
            handled.extend(discovery.iter().map(|&i| graph.task(i).id.clone()));
            let selected = with_dependencies(&graph, &discovery);
            let records = self.records()?;
            let decisions = decide(&graph, &records, &ran);
            self.rerecord(&graph, &decisions, Some(&selected));
            self.announce(&decisions, &records, Some(&selected), &ran);
            let starts = starts(&decisions, &records, Some(&selected));
            let summary = self.schedule(graph.clone(), "split", starts).await;
            ran.extend(summary.ran.iter().cloned());
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
                return Ok((graph, summaries));
            }
            let records = self.records()?;
            let partitions =
                state::listed_partitions(&graph, &records, &self.plan.state_db_path())?;
            graph = Arc::new(
                expand(self.plan, self.templates, &partitions)
                    .map_err(|e| anyhow::anyhow!("{e}\n  help: {}", e.help()))
                    .context(
                        "expanding the plan with the listed partitions; nothing was exported",
                    )?,
            );
        }
        let records = self.records()?;
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
