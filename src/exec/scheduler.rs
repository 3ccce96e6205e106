//! The scheduler: one loop that starts tasks when their dependencies are done, within
//! the limits, and records every transition.
//!
//! Shape (after cargo's `job_queue`): a single `select!` loop owns all scheduling
//! state; tasks run as tokio tasks and report back through a `JoinSet`. The loop never
//! leaves with `?`: a task failure, a state error or Ctrl-C only flips it into
//! *stopping* — nothing new starts, running tasks finish — and the run ends with a
//! [`RunSummary`] that says what happened.
//!
//! Durability without stalls: transitions go to the [`StateWriter`] (group commit),
//! which commits them in sequence order. A task's runner is called only once its
//! `running` record is committed — waited for by sequence number, from inside the loop
//! without blocking it. Because its dependencies' `done` records were queued before
//! that `running` record, they are committed by then too. So:
//! - after a `kill -9` every task whose work may have begun is on record and is
//!   reported as re-run by `--resume`;
//! - a dependent never starts on a completion that could be lost;
//! - and a chain costs one commit wait per task, not two: a finished task releases its
//!   dependents at once, and their `running` records usually share a batch with its
//!   `done` record.
//!
//! Permits are taken when a task is chosen (global first, then connections, see
//! [`limits`](super::limits)) and freed when its attempt ends, not when its `done`
//! commits, so a slow disk never holds a slot idle. Retries give their permits back
//! while they wait for the backoff.
//!
//! Failure policy: a failed task's dependents are skipped (recorded with the reason);
//! without `keep_going` the run also stops starting anything else. Interrupts: the
//! first stops starting tasks; the second cancels running tasks through their
//! `CancellationToken` and, after a short grace, aborts them.
//!
//! Fencing: a run may be given a [`fence`](Scheduler::fence), a flag the plan's lock
//! raises when it finds itself broken or taken by another holder. From then on the run
//! is no longer the plan's only writer: it starts nothing (the flag is read again right
//! before each task's runner is called) and cancels what is running, as a second
//! interrupt would.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use petgraph::graph::NodeIndex;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::limits::{Blocked, ConnectionLimit, Limits, Permits};
use super::retry::RetryPolicy;
use super::runner::{Dependency, TaskContext, TaskFailure, TaskOutcome, TaskRunner};
use super::{Event, Observer};
use crate::graph::{TaskGraph, TaskId};
use crate::state::{StateError, StateWriter, TaskRef, Transition, WriterStatus};

/// How long running tasks get to return after the second interrupt before they are
/// aborted.
pub const CANCEL_GRACE: Duration = Duration::from_secs(10);

/// What the run does with a node.
#[derive(Clone, Debug, PartialEq)]
pub enum Start {
    /// Run it when its dependencies are done.
    Run,
    /// Already done (resume): not run; the outcome feeds its dependents.
    Done(TaskOutcome),
    /// Not part of this run (the split phase runs only split tasks).
    Excluded,
    /// Failed (or was skipped) earlier in this invocation — a table's split, with
    /// `--keep-going`: not run again; its dependents are skipped and counted.
    FailedBefore,
}

/// Settings of one run.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Global bound on running tasks.
    pub concurrency: usize,
    /// Per-connection bounds and pauses, by connection name.
    pub connections: HashMap<String, ConnectionLimit>,
    pub retry: RetryPolicy,
    /// Let branches independent of a failure go on.
    pub keep_going: bool,
    /// Where runners may write logs (`TaskContext::log_dir`).
    pub log_dir: PathBuf,
    /// Commit a task's `running` record before calling its runner (default). Off,
    /// starts are recorded lazily (a runner waits only for its dependencies' `done`
    /// records): a task killed right after it began may then be on record as `pending`
    /// rather than `running`, and is not reported as re-run.
    pub durable_starts: bool,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            concurrency: 4,
            connections: HashMap::new(),
            retry: RetryPolicy::default(),
            keep_going: false,
            log_dir: PathBuf::from(".flow/logs"),
            durable_starts: true,
        }
    }
}

/// Why a run stopped starting tasks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// A task failed (and `keep_going` is off).
    Failure(TaskId),
    /// Ctrl-C / SIGTERM.
    Interrupted,
    /// The state could not be written.
    State(String),
    /// The plan's lock was broken or taken by another holder (the message says who).
    LockLost(String),
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::Failure(id) => write!(f, "task `{id}` failed"),
            StopReason::Interrupted => f.write_str("interrupted"),
            StopReason::State(e) => write!(f, "state error: {e}"),
            StopReason::LockLost(e) => write!(f, "lost the plan's lock: {e}"),
        }
    }
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct RunSummary {
    /// Tasks that finished in this run.
    pub done: usize,
    /// Tasks that were done before and did not run.
    pub already_done: usize,
    pub failed: Vec<(TaskId, String)>,
    /// Skipped tasks and the failed task that caused it.
    pub skipped: Vec<(TaskId, TaskId)>,
    /// Tasks of the run that never started (the run stopped first).
    pub not_started: usize,
    /// Retries scheduled.
    pub retries: usize,
    /// Failed attempts, retried or not.
    pub errors: usize,
    /// Ids of the tasks started in this run.
    pub ran: HashSet<TaskId>,
    /// Why the run stopped early, first reason.
    pub stopped: Option<StopReason>,
    pub interrupted: bool,
    /// Running tasks were cancelled (second interrupt).
    pub cancelled: bool,
    /// The plan's lock was lost: why, and who holds it now.
    pub lock_lost: Option<String>,
    pub state_error: Option<StateError>,
    pub elapsed: Duration,
    /// Writer statistics at the end: transactions and transitions committed.
    pub commits: u64,
    pub transitions: u64,
}

impl RunSummary {
    pub fn success(&self) -> bool {
        self.failed.is_empty()
            && self.skipped.is_empty()
            && self.stopped.is_none()
            && self.state_error.is_none()
            && self.not_started == 0
            && !self.interrupted
    }
}

/// Interrupt requests (Ctrl-C presses) as a counter.
#[derive(Clone, Debug)]
pub struct Interrupts(watch::Receiver<u32>);

/// Sends interrupts to a run (tests, and the signal listener).
#[derive(Clone, Debug)]
pub struct InterruptSender(Arc<watch::Sender<u32>>);

impl InterruptSender {
    pub fn interrupt(&self) {
        self.0.send_modify(|n| *n += 1);
    }

    pub fn count(&self) -> u32 {
        *self.0.borrow()
    }
}

impl Interrupts {
    pub fn channel() -> (InterruptSender, Interrupts) {
        let (tx, rx) = watch::channel(0);
        (InterruptSender(Arc::new(tx)), Interrupts(rx))
    }

    /// Never interrupted.
    pub fn none() -> Interrupts {
        Interrupts::channel().1
    }

    /// Counts SIGINT and SIGTERM. Must be called inside a tokio runtime.
    pub fn from_signals() -> std::io::Result<(InterruptSender, Interrupts)> {
        use tokio::signal::unix::{signal, SignalKind};
        let (tx, rx) = Interrupts::channel();
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let sender = tx.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(()) = int.recv() => sender.interrupt(),
                    Some(()) = term.recv() => sender.interrupt(),
                    else => break,
                }
            }
        });
        Ok((tx, rx))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum NodeState {
    Excluded,
    /// Waiting for dependencies.
    Waiting,
    /// In a lane's queue.
    Ready,
    /// Permits taken, waiting for the `running` commit.
    Starting,
    Running,
    /// Waiting for a retry's backoff.
    Retrying,
    Done,
    Failed,
    Skipped,
}

struct Node {
    state: NodeState,
    remaining: u32,
    attempt: u32,
    started_at: Option<DateTime<Utc>>,
    started: Option<Instant>,
    /// Outcome for dependents; dropped once all of them have started.
    outcome: Option<Arc<TaskOutcome>>,
    unstarted_dependents: u32,
    lane: usize,
    /// Sequence number of the `done` record (0: done before this run).
    done_seq: u64,
}

/// What a finished attempt reports back: node, attempt number, result.
type Attempt = (usize, u32, Result<TaskOutcome, TaskFailure>);

struct Lane {
    connections: Vec<String>,
    queue: VecDeque<usize>,
}

/// Runs one graph. Build with [`Scheduler::new`], add observers, call [`run`](Scheduler::run).
pub struct Scheduler<'w> {
    graph: Arc<TaskGraph>,
    runner: Arc<dyn TaskRunner>,
    writer: &'w StateWriter,
    options: RunOptions,
    observers: Vec<Arc<dyn Observer>>,
    phase: String,
    fence: Option<watch::Receiver<Option<String>>>,
}

impl<'w> Scheduler<'w> {
    pub fn new(
        graph: Arc<TaskGraph>,
        runner: Arc<dyn TaskRunner>,
        writer: &'w StateWriter,
        options: RunOptions,
    ) -> Self {
        Scheduler {
            graph,
            runner,
            writer,
            options,
            observers: Vec::new(),
            phase: "run".to_string(),
            fence: None,
        }
    }

    /// Stops the run when `lost` holds a message: the plan's lock is gone (see the
    /// module docs).
    pub fn fence(mut self, lost: watch::Receiver<Option<String>>) -> Self {
        self.fence = Some(lost);
        self
    }

    pub fn observe(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observers.push(observer);
        self
    }

    /// Names the phase in events (`split`, `run`).
    pub fn phase(mut self, phase: &str) -> Self {
        self.phase = phase.to_string();
        self
    }

    /// Runs the graph; `starts[i]` says what to do with node `i`.
    pub async fn run(&self, starts: Vec<Start>, interrupts: Interrupts) -> RunSummary {
        assert_eq!(starts.len(), self.graph.len(), "one start per node");
        let mut run = Run::new(self, &starts, interrupts);
        for o in &self.observers {
            o.event(&Event::Begin {
                phase: &self.phase,
                graph: &self.graph,
                starts: &starts,
            });
        }
        run.failed_before(&starts);
        run.main_loop().await;
        run.finish().await
    }
}

struct Run<'s, 'w> {
    s: &'s Scheduler<'w>,
    nodes: Vec<Node>,
    lanes: Vec<Lane>,
    lane_cursor: usize,
    limits: Limits,
    /// Tasks waiting for a commit before they are spawned: (sequence number, node).
    pending_commits: BinaryHeap<Reverse<(u64, usize)>>,
    /// Their permits and attempt numbers.
    waiting: HashMap<usize, (Permits, u32)>,
    commits: watch::Receiver<WriterStatus>,
    delayed: BinaryHeap<Reverse<(Instant, usize)>>,
    last_error: HashMap<usize, String>,
    join_set: JoinSet<Attempt>,
    running_ids: HashMap<tokio::task::Id, usize>,
    /// Tasks holding permits: starting or running.
    active: usize,
    pause_wake: Option<Instant>,
    abort_at: Option<Instant>,
    cancel: CancellationToken,
    interrupts: Interrupts,
    interrupts_open: bool,
    fence: Option<watch::Receiver<Option<String>>>,
    summary: RunSummary,
    began: Instant,
}

impl<'s, 'w> Run<'s, 'w> {
    fn new(s: &'s Scheduler<'w>, starts: &[Start], interrupts: Interrupts) -> Self {
        let graph = &s.graph;
        let n = graph.len();
        let mut lanes: Vec<Lane> = Vec::new();
        let mut lane_of: HashMap<&[String], usize> = HashMap::new();
        let mut nodes = Vec::with_capacity(n);
        let mut summary = RunSummary::default();
        for index in graph.indices() {
            let task = graph.task(index);
            let i = index.index();
            let (state, outcome) = match &starts[i] {
                Start::Run => (NodeState::Waiting, None),
                Start::Done(o) => (NodeState::Done, Some(Arc::new(o.clone()))),
                Start::Excluded => (NodeState::Excluded, None),
                Start::FailedBefore => (NodeState::Failed, None),
            };
            let mut lane = 0;
            if state == NodeState::Waiting {
                lane = *lane_of
                    .entry(task.connections.as_slice())
                    .or_insert_with(|| {
                        lanes.push(Lane {
                            connections: task.connections.clone(),
                            queue: VecDeque::new(),
                        });
                        lanes.len() - 1
                    });
            }
            if state == NodeState::Done {
                summary.already_done += 1;
            }
            let remaining = if state == NodeState::Waiting {
                graph
                    .dependencies(index)
                    .filter(|d| !matches!(starts[d.index()], Start::Done(_)))
                    .count() as u32
            } else {
                0
            };
            let unstarted_dependents = graph
                .dependents(index)
                .filter(|d| matches!(starts[d.index()], Start::Run))
                .count() as u32;
            nodes.push(Node {
                state,
                remaining,
                attempt: 0,
                started_at: None,
                started: None,
                outcome: outcome.filter(|_| unstarted_dependents > 0),
                unstarted_dependents,
                lane,
                done_seq: 0,
            });
        }
        for (i, node) in nodes.iter_mut().enumerate() {
            if node.state == NodeState::Waiting && node.remaining == 0 {
                node.state = NodeState::Ready;
                lanes[node.lane].queue.push_back(i);
            }
        }
        // Register the tasks of this run: `flow status` lists them from the start.
        for (i, node) in nodes.iter().enumerate() {
            if !matches!(
                node.state,
                NodeState::Excluded | NodeState::Done | NodeState::Failed
            ) {
                s.writer.send(Transition::Register(TaskRef::new(
                    graph.clone(),
                    NodeIndex::new(i),
                )));
            }
        }
        let limits = Limits::new(
            s.options.concurrency,
            s.options.connections.iter().map(|(k, v)| (k.clone(), *v)),
        );
        Run {
            s,
            nodes,
            lanes,
            lane_cursor: 0,
            limits,
            pending_commits: BinaryHeap::new(),
            waiting: HashMap::new(),
            commits: s.writer.subscribe(),
            delayed: BinaryHeap::new(),
            last_error: HashMap::new(),
            join_set: JoinSet::new(),
            running_ids: HashMap::new(),
            active: 0,
            pause_wake: None,
            abort_at: None,
            cancel: CancellationToken::new(),
            interrupts,
            interrupts_open: true,
            fence: s.fence.clone(),
            summary,
            began: Instant::now(),
        }
    }

    fn emit(&self, event: Event<'_>) {
        for o in &self.s.observers {
            o.event(&event);
        }
    }

    fn task(&self, i: usize) -> &'s crate::graph::Task {
        let s: &'s Scheduler<'w> = self.s;
        s.graph.task(NodeIndex::new(i))
    }

    fn def(&self, i: usize) -> TaskRef {
        TaskRef::new(self.s.graph.clone(), NodeIndex::new(i))
    }

    /// Tasks that failed earlier in this invocation: their dependents are skipped now,
    /// and without keep-going nothing else starts (and is counted as not started).
    fn failed_before(&mut self, starts: &[Start]) {
        for (i, start) in starts.iter().enumerate() {
            if matches!(start, Start::FailedBefore) {
                let id = self.task(i).id.clone();
                self.skip_downstream(i, &id);
                if !self.s.options.keep_going {
                    self.stop(StopReason::Failure(id));
                }
            }
        }
    }

    fn stopping(&self) -> bool {
        self.summary.stopped.is_some()
    }

    fn stop(&mut self, reason: StopReason) {
        if self.summary.stopped.is_none() {
            self.emit(Event::Stopping {
                reason: &reason,
                running: self.active,
            });
            self.summary.stopped = Some(reason);
        }
    }

    /// The fence's message, when the lock is lost.
    fn fence_lost(&self) -> Option<String> {
        self.fence.as_ref().and_then(|f| f.borrow().clone())
    }

    /// Another holder has the lock: start nothing, cancel what runs.
    fn lock_lost(&mut self, message: String) {
        if self.summary.lock_lost.is_some() {
            return;
        }
        tracing::error!(error = %message, running = self.active, "lost the plan's lock; stopping");
        self.summary.lock_lost = Some(message.clone());
        self.stop(StopReason::LockLost(message));
        self.cancel.cancel();
        self.abort_at = Some(Instant::now() + CANCEL_GRACE);
    }

    async fn main_loop(&mut self) {
        loop {
            if let Some(message) = self.fence_lost() {
                self.lock_lost(message);
            }
            self.process_commits();
            self.process_due(Instant::now());
            if !self.stopping() {
                self.fill(Instant::now());
            }
            if self.active == 0
                && self.pending_commits.is_empty()
                && (self.stopping() || (self.lanes_empty() && self.delayed.is_empty()))
            {
                break;
            }
            let next_retry = if self.stopping() {
                None
            } else {
                self.delayed.peek().map(|Reverse((at, _))| *at)
            };
            let wake = [next_retry, self.pause_wake, self.abort_at]
                .into_iter()
                .flatten()
                .min();
            let has_tasks = !self.join_set.is_empty();
            let wait_commits = !self.pending_commits.is_empty();
            let interrupts_open = self.interrupts_open;
            let fence_open = self.fence.is_some() && self.summary.lock_lost.is_none();
            tokio::select! {
                changed = changed_opt(&mut self.fence), if fence_open => {
                    if changed.is_err() {
                        // The heartbeat ended: after raising the fence (its message
                        // stays readable), or with the lock released.
                        if let Some(message) = self.fence_lost() {
                            self.lock_lost(message);
                        }
                        self.fence = None;
                    }
                }
                joined = self.join_set.join_next_with_id(), if has_tasks => {
                    if let Some(joined) = joined {
                        self.joined(joined);
                    }
                }
                changed = self.commits.changed(), if wait_commits => {
                    if changed.is_err() {
                        self.state_failed(StateError::WriterStopped(
                            "the state writer thread ended".into(),
                        ));
                    }
                }
                changed = self.interrupts.0.changed(), if interrupts_open => {
                    match changed {
                        Ok(()) => self.interrupted(),
                        Err(_) => self.interrupts_open = false,
                    }
                }
                _ = sleep_until_opt(wake), if wake.is_some() => {
                    if self.abort_at.is_some_and(|at| at <= Instant::now()) {
                        self.abort_at = None;
                        self.join_set.abort_all();
                    }
                }
            }
        }
    }

    fn lanes_empty(&self) -> bool {
        self.lanes.iter().all(|l| l.queue.is_empty())
    }

    /// Starts what the limits allow, one task per lane per round for fairness.
    fn fill(&mut self, now: Instant) {
        self.pause_wake = None;
        if self.lanes.is_empty() {
            return;
        }
        loop {
            let mut progressed = false;
            let count = self.lanes.len();
            for k in 0..count {
                let l = (self.lane_cursor + k) % count;
                let Some(&i) = self.lanes[l].queue.front() else {
                    continue;
                };
                match self.limits.try_acquire(&self.lanes[l].connections, now) {
                    Ok(permits) => {
                        self.lanes[l].queue.pop_front();
                        self.begin(i, permits);
                        progressed = true;
                    }
                    Err(Blocked::Global) => {
                        self.lane_cursor = (l + 1) % count;
                        return;
                    }
                    Err(Blocked::Connection(_)) => {}
                    Err(Blocked::Pause(at)) => {
                        self.pause_wake = Some(self.pause_wake.map_or(at, |w| w.min(at)));
                    }
                }
            }
            self.lane_cursor = (self.lane_cursor + 1) % count;
            if !progressed {
                return;
            }
        }
    }

    /// Permits are taken: record the start, spawn once it is durable.
    fn begin(&mut self, i: usize, permits: Permits) {
        let node = &mut self.nodes[i];
        if node.attempt == 0 {
            node.attempt = 1;
        }
        let attempt = node.attempt;
        let at = Utc::now();
        if node.started_at.is_none() {
            node.started_at = Some(at);
            node.started = Some(Instant::now());
        }
        node.state = NodeState::Starting;
        self.active += 1;
        let seq = self.s.writer.send(Transition::Start {
            task: self.def(i),
            attempt,
            at,
        });
        // Queued after the dependencies' `done` records, so committed after them.
        let gate = if self.s.options.durable_starts {
            seq
        } else {
            self.s
                .graph
                .dependencies(NodeIndex::new(i))
                .map(|d| self.nodes[d.index()].done_seq)
                .max()
                .unwrap_or(0)
        };
        if gate <= self.commits.borrow().committed {
            self.spawn(i, permits, attempt);
        } else {
            self.waiting.insert(i, (permits, attempt));
            self.pending_commits.push(Reverse((gate, i)));
        }
    }

    fn spawn(&mut self, i: usize, permits: Permits, attempt: u32) {
        if let Some(message) = self.fence_lost() {
            // Not started: another holder may be running this very task.
            self.lock_lost(message);
            drop(permits);
            self.active -= 1;
            self.nodes[i].state = NodeState::Waiting;
            return;
        }
        if self.summary.cancelled {
            drop(permits);
            self.active -= 1;
            self.fail(
                i,
                "cancelled before it started (second interrupt)".to_string(),
            );
            return;
        }
        self.nodes[i].state = NodeState::Running;
        let index = NodeIndex::new(i);
        let mut dependencies = Vec::new();
        for d in self.s.graph.dependencies(index) {
            let dep = &mut self.nodes[d.index()];
            if attempt == 1 {
                dep.unstarted_dependents = dep.unstarted_dependents.saturating_sub(1);
            }
            if let Some(o) = &dep.outcome {
                let task = self.s.graph.task(d);
                dependencies.push(Dependency {
                    id: task.id.clone(),
                    kind: task.kind,
                    outcome: (**o).clone(),
                });
            }
            if dep.unstarted_dependents == 0 {
                dep.outcome = None;
            }
        }
        let task = self.task(i);
        self.emit(Event::Started { task, attempt });
        tracing::debug!(task = %task.id, attempt, "task started");
        self.summary.ran.insert(task.id.clone());
        let ctx = TaskContext {
            cancel: self.cancel.clone(),
            attempt,
            log_dir: self.s.options.log_dir.clone(),
            dependencies,
            processes: self.s.writer.process_log(),
        };
        let graph = self.s.graph.clone();
        let runner = self.s.runner.clone();
        let span = tracing::info_span!("task", id = %task.id, kind = %task.kind, attempt);
        let handle = self.join_set.spawn(
            async move {
                let _permits = permits;
                let task = graph.task(index);
                let result = AssertUnwindSafe(runner.run(task, ctx)).catch_unwind().await;
                let result = result.unwrap_or_else(|panic| {
                    let msg = panic
                        .downcast_ref::<String>()
                        .map(String::as_str)
                        .or_else(|| panic.downcast_ref::<&str>().copied())
                        .unwrap_or("unknown panic");
                    Err(TaskFailure::permanent(format!("the task panicked: {msg}")))
                });
                (i, attempt, result)
            }
            .instrument(span),
        );
        self.running_ids.insert(handle.id(), i);
    }

    fn joined(&mut self, joined: Result<(tokio::task::Id, Attempt), tokio::task::JoinError>) {
        match joined {
            Ok((id, (i, attempt, result))) => {
                self.running_ids.remove(&id);
                self.finished(i, attempt, result);
            }
            Err(e) => {
                if let Some(i) = self.running_ids.remove(&e.id()) {
                    self.active -= 1;
                    self.fail(
                        i,
                        format!(
                            "aborted: did not stop within {}s of the second interrupt",
                            CANCEL_GRACE.as_secs()
                        ),
                    );
                }
            }
        }
    }

    fn finished(&mut self, i: usize, attempt: u32, result: Result<TaskOutcome, TaskFailure>) {
        self.active -= 1;
        match result {
            Ok(outcome) => {
                let node = &mut self.nodes[i];
                node.state = NodeState::Done;
                let elapsed = node.started.map(|s| s.elapsed()).unwrap_or_default();
                let started_at = node.started_at.unwrap_or_else(Utc::now);
                self.summary.done += 1;
                let seq = self.s.writer.send(Transition::Done {
                    task: self.def(i),
                    attempts: attempt,
                    started_at,
                    ended_at: Utc::now(),
                    outcome: outcome.clone(),
                });
                self.nodes[i].done_seq = seq;
                let task = self.task(i);
                tracing::debug!(task = %task.id, attempts = attempt, "task done");
                self.emit(Event::Done {
                    task,
                    outcome: &outcome,
                    attempts: attempt,
                    elapsed,
                });
                if self.nodes[i].unstarted_dependents > 0 {
                    self.nodes[i].outcome = Some(Arc::new(outcome));
                }
                self.release(i);
            }
            Err(mut failure) => {
                // Every failure text enters here: masked once, it reaches state, logs,
                // events and the summary without a secret.
                failure.message = crate::redact::text(&failure.message);
                self.summary.errors += 1;
                let max = self.s.options.retry.max_attempts();
                let delay = if self.stopping() {
                    None
                } else {
                    self.s.options.retry.next_delay(&failure, attempt)
                };
                if let Some(delay) = delay {
                    self.summary.retries += 1;
                    self.nodes[i].state = NodeState::Retrying;
                    self.nodes[i].attempt = attempt + 1;
                    self.s.writer.send(Transition::Retry {
                        id: self.task(i).id.clone(),
                        attempt,
                        error: failure.message.clone(),
                    });
                    self.delayed.push(Reverse((Instant::now() + delay, i)));
                    self.last_error.insert(i, failure.message.clone());
                    let task = self.task(i);
                    // Shown by the progress line; a log record at warn would repeat it.
                    tracing::info!(task = %task.id, attempt, error = %failure.message, ?delay, "transient failure, retrying");
                    self.emit(Event::Retry {
                        task,
                        attempt,
                        max_attempts: max,
                        delay,
                        failure: &failure,
                    });
                } else {
                    let mut message = failure.message.clone();
                    if failure.retryable && attempt >= max && max > 1 {
                        message
                            .push_str(&format!(" (transient; gave up after {attempt} attempts)"));
                    } else if failure.retryable && self.stopping() && attempt < max {
                        message.push_str(" (transient; not retried because the run is stopping)");
                    }
                    self.nodes[i].attempt = attempt;
                    self.fail(i, message);
                }
            }
        }
    }

    /// Records a failure, skips everything downstream, stops unless keep-going.
    fn fail(&mut self, i: usize, message: String) {
        let node = &mut self.nodes[i];
        node.state = NodeState::Failed;
        let attempts = node.attempt.max(1);
        let started_at = node.started_at;
        self.s.writer.send(Transition::Failed {
            task: self.def(i),
            attempts,
            started_at,
            ended_at: Utc::now(),
            error: message.clone(),
        });
        let id = self.task(i).id.clone();
        // The user sees the failure from the progress line and the summary; at the
        // default log level (warn) this record would print it a second time.
        tracing::info!(task = %id, attempts, error = %message, "task failed");
        self.emit(Event::Failed {
            task: self.task(i),
            attempts,
            error: &message,
        });
        self.summary.failed.push((id.clone(), message));
        self.skip_downstream(i, &id);
        if !self.s.options.keep_going {
            self.stop(StopReason::Failure(id));
        }
    }

    fn skip_downstream(&mut self, failed: usize, failed_id: &TaskId) {
        let mut stack = vec![failed];
        while let Some(i) = stack.pop() {
            let dependents: Vec<usize> = self
                .s
                .graph
                .dependents(NodeIndex::new(i))
                .map(|d| d.index())
                .collect();
            for d in dependents {
                if self.nodes[d].state != NodeState::Waiting {
                    continue;
                }
                self.nodes[d].state = NodeState::Skipped;
                let reason = format!("dependency `{failed_id}` failed");
                self.s.writer.send(Transition::Skipped {
                    task: self.def(d),
                    reason,
                });
                self.emit(Event::Skipped {
                    task: self.task(d),
                    because: failed_id,
                });
                self.summary
                    .skipped
                    .push((self.task(d).id.clone(), failed_id.clone()));
                stack.push(d);
            }
        }
    }

    fn process_commits(&mut self) {
        let status = self.commits.borrow_and_update().clone();
        if let Some(error) = status.error {
            if self.summary.state_error.is_none() {
                self.state_failed(error);
            }
            return;
        }
        while let Some(&Reverse((seq, i))) = self.pending_commits.peek() {
            if seq > status.committed {
                break;
            }
            self.pending_commits.pop();
            let (permits, attempt) = self.waiting.remove(&i).expect("waiting tasks have permits");
            self.spawn(i, permits, attempt);
        }
    }

    /// A task finished: dependents whose dependencies are all done become ready.
    fn release(&mut self, i: usize) {
        let dependents: Vec<usize> = self
            .s
            .graph
            .dependents(NodeIndex::new(i))
            .map(|d| d.index())
            .collect();
        for d in dependents {
            let node = &mut self.nodes[d];
            if node.state != NodeState::Waiting {
                continue;
            }
            node.remaining = node.remaining.saturating_sub(1);
            if node.remaining == 0 {
                node.state = NodeState::Ready;
                self.lanes[node.lane].queue.push_back(d);
            }
        }
    }

    /// The state cannot be written: nothing that waits for a commit can proceed.
    fn state_failed(&mut self, error: StateError) {
        tracing::error!(error = %error, "state error; stopping the run");
        self.stop(StopReason::State(error.to_string()));
        self.summary.state_error = Some(error);
        // Tasks waiting for a commit never start; finished tasks whose `done` is not
        // on record run again next time.
        self.pending_commits.clear();
        for (i, (permits, _)) in std::mem::take(&mut self.waiting) {
            drop(permits);
            self.active -= 1;
            self.nodes[i].state = NodeState::Waiting;
        }
    }

    fn process_due(&mut self, now: Instant) {
        while let Some(Reverse((at, i))) = self.delayed.peek().copied() {
            if at > now {
                break;
            }
            self.delayed.pop();
            if self.stopping() {
                // Dealt with in `finish`.
                self.delayed.push(Reverse((at, i)));
                break;
            }
            self.last_error.remove(&i);
            self.nodes[i].state = NodeState::Ready;
            let lane = self.nodes[i].lane;
            self.lanes[lane].queue.push_front(i);
        }
    }

    fn interrupted(&mut self) {
        let presses = *self.interrupts.0.borrow_and_update();
        if presses >= 1 && !self.summary.interrupted {
            self.summary.interrupted = true;
            self.stop(StopReason::Interrupted);
        }
        if presses >= 2 && !self.summary.cancelled {
            self.summary.cancelled = true;
            self.cancel.cancel();
            self.abort_at = Some(Instant::now() + CANCEL_GRACE);
            tracing::warn!(running = self.active, "cancelling running tasks");
        }
    }

    async fn finish(mut self) -> RunSummary {
        // Retries still waiting: the run stopped, so their last failure stands.
        while let Some(Reverse((_, i))) = self.delayed.pop() {
            let error = self
                .last_error
                .remove(&i)
                .unwrap_or_else(|| "transient failure".to_string());
            self.nodes[i].attempt = self.nodes[i].attempt.saturating_sub(1).max(1);
            self.fail(
                i,
                format!("{error} (transient; not retried because the run stopped)"),
            );
        }
        self.summary.not_started = self
            .nodes
            .iter()
            .filter(|n| matches!(n.state, NodeState::Waiting | NodeState::Ready))
            .count();
        if let Err(e) = self.s.writer.flush().await {
            if self.summary.state_error.is_none() {
                self.summary.state_error = Some(e);
            }
        }
        let status = self.s.writer.status();
        self.summary.commits = status.batches;
        self.summary.transitions = status.transitions;
        self.summary.elapsed = self.began.elapsed();
        let summary = std::mem::take(&mut self.summary);
        self.emit(Event::End { summary: &summary });
        summary
    }
}

async fn changed_opt(
    rx: &mut Option<watch::Receiver<Option<String>>>,
) -> Result<(), watch::error::RecvError> {
    match rx {
        Some(rx) => rx.changed().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Placement, Task, TaskKind, WorkUnit};
    use crate::state::{shared, MemoryStore, SharedStore, SqliteStore, TaskStatus};
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    /// A runner that checks the durability invariants at every start and follows a
    /// script: ids listed in `fail` fail permanently, in `flaky` fail transiently
    /// `n` times first.
    struct Fake {
        store: SharedStore,
        running: AtomicUsize,
        peak: AtomicUsize,
        per_conn: Mutex<HashMap<String, (usize, usize)>>,
        fail: HashSet<String>,
        flaky: Mutex<HashMap<String, u32>>,
        started: Mutex<Vec<(String, u32)>>,
        sleep: Duration,
        violations: Mutex<Vec<String>>,
        /// Check that the task's own `running` record is durable (durable starts).
        check_running: bool,
    }

    impl Fake {
        fn new(store: SharedStore) -> Self {
            Fake {
                store,
                running: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
                per_conn: Mutex::new(HashMap::new()),
                fail: HashSet::new(),
                flaky: Mutex::new(HashMap::new()),
                started: Mutex::new(Vec::new()),
                sleep: Duration::from_millis(2),
                violations: Mutex::new(Vec::new()),
                check_running: true,
            }
        }
    }

    #[async_trait::async_trait]
    impl TaskRunner for Fake {
        async fn run(&self, task: &Task, ctx: TaskContext) -> Result<TaskOutcome, TaskFailure> {
            {
                let records = self.store.lock().unwrap().records().unwrap();
                let by_id: HashMap<_, _> = records.iter().map(|r| (r.id.clone(), r)).collect();
                let mut v = self.violations.lock().unwrap();
                match by_id.get(&task.id) {
                    Some(r) if r.status == TaskStatus::Running => {}
                    _ if !self.check_running => {}
                    other => v.push(format!(
                        "{} started while recorded {:?}",
                        task.id,
                        other.map(|r| r.status)
                    )),
                }
                for dep in ctx.dependencies.iter().map(|d| &d.id) {
                    if by_id.get(dep).map(|r| r.status) != Some(TaskStatus::Done) {
                        v.push(format!("{} started before {dep} was durably done", task.id));
                    }
                }
            }
            self.started
                .lock()
                .unwrap()
                .push((task.id.to_string(), ctx.attempt));
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.peak.fetch_max(now, Ordering::SeqCst);
            for c in &task.connections {
                let mut m = self.per_conn.lock().unwrap();
                let e = m.entry(c.clone()).or_default();
                e.0 += 1;
                e.1 = e.1.max(e.0);
            }
            tokio::select! {
                _ = tokio::time::sleep(self.sleep) => {}
                _ = ctx.cancel.cancelled() => {}
            }
            for c in &task.connections {
                self.per_conn.lock().unwrap().get_mut(c).unwrap().0 -= 1;
            }
            self.running.fetch_sub(1, Ordering::SeqCst);
            if ctx.cancel.is_cancelled() {
                return Err(TaskFailure::permanent("cancelled"));
            }
            if self.fail.contains(task.id.as_str()) {
                return Err(TaskFailure::permanent("scripted failure"));
            }
            let mut flaky = self.flaky.lock().unwrap();
            if let Some(n) = flaky.get_mut(task.id.as_str()) {
                if *n > 0 {
                    *n -= 1;
                    return Err(TaskFailure::transient("scripted transient failure"));
                }
            }
            Ok(TaskOutcome {
                rows: Some(1),
                ..TaskOutcome::default()
            })
        }
    }

    fn task(id: &str, connections: &[&str]) -> Task {
        Task::new(
            id,
            TaskKind::Exec,
            WorkUnit::Step { step: 0 },
            connections.iter().map(|s| s.to_string()).collect(),
            Placement::External,
            BTreeMap::new(),
        )
    }

    /// `chains` chains of `len` tasks; chain `c` uses connection `c{c % 2}`.
    fn chains(chains: usize, len: usize) -> TaskGraph {
        let mut g = TaskGraph::new();
        for c in 0..chains {
            let conn = format!("c{}", c % 2);
            let mut prev = None;
            for k in 0..len {
                let i = g.add(task(&format!("{c}/{k}"), &[&conn])).unwrap();
                if let Some(p) = prev {
                    g.depend(i, p);
                }
                prev = Some(i);
            }
        }
        g
    }

    fn options(concurrency: usize) -> RunOptions {
        RunOptions {
            concurrency,
            retry: RetryPolicy::new(2, Duration::from_millis(1)),
            log_dir: std::env::temp_dir(),
            ..RunOptions::default()
        }
    }

    async fn run(
        graph: TaskGraph,
        fake: impl FnOnce(SharedStore) -> Fake,
        options: RunOptions,
    ) -> (RunSummary, Arc<Fake>, SharedStore) {
        let store = shared(MemoryStore::new());
        let fake = Arc::new(fake(store.clone()));
        let writer = StateWriter::spawn(store.clone());
        let n = graph.len();
        let scheduler = Scheduler::new(Arc::new(graph), fake.clone(), &writer, options);
        let summary = scheduler.run(vec![Start::Run; n], Interrupts::none()).await;
        assert!(
            fake.violations.lock().unwrap().is_empty(),
            "{:?}",
            fake.violations.lock().unwrap()
        );
        (summary, fake, store)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn limits_hold_and_everything_runs_once() {
        let mut opts = options(5);
        opts.connections.insert(
            "c0".into(),
            ConnectionLimit {
                max_concurrency: Some(2),
                pause_between: None,
            },
        );
        let (summary, fake, store) = run(chains(12, 5), Fake::new, opts).await;
        assert!(summary.success(), "{summary:?}");
        assert_eq!(summary.done, 60);
        assert!(fake.peak.load(Ordering::SeqCst) <= 5);
        assert!(
            fake.peak.load(Ordering::SeqCst) >= 3,
            "some concurrency happened"
        );
        assert!(fake.per_conn.lock().unwrap()["c0"].1 <= 2);
        let started = fake.started.lock().unwrap();
        let unique: HashSet<_> = started.iter().map(|(id, _)| id).collect();
        assert_eq!(unique.len(), started.len());
        let records = store.lock().unwrap().records().unwrap();
        assert!(records.iter().all(|r| r.status == TaskStatus::Done));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn lazy_starts_still_wait_for_dependencies_to_be_durable() {
        let mut opts = options(8);
        opts.durable_starts = false;
        let (summary, _, _) = run(
            chains(8, 10),
            |s| {
                let mut f = Fake::new(s);
                f.check_running = false;
                f.sleep = Duration::ZERO;
                f
            },
            opts,
        )
        .await;
        assert!(summary.success(), "{summary:?}");
        assert_eq!(summary.done, 80);
    }

    #[tokio::test]
    async fn a_failure_skips_dependents_and_stops_the_run() {
        let (summary, fake, store) = run(
            chains(3, 4),
            |s| {
                let mut f = Fake::new(s);
                f.fail.insert("0/1".into());
                f
            },
            options(1),
        )
        .await;
        assert!(!summary.success());
        assert_eq!(summary.failed.len(), 1);
        assert_eq!(summary.skipped.len(), 2, "0/2 and 0/3");
        assert!(summary.not_started > 0, "{summary:?}");
        let started = fake.started.lock().unwrap();
        assert!(!started.iter().any(|(id, _)| id == "0/2" || id == "0/3"));
        let records: HashMap<_, _> = store
            .lock()
            .unwrap()
            .records()
            .unwrap()
            .into_iter()
            .map(|r| (r.id.to_string(), r))
            .collect();
        assert_eq!(records["0/1"].status, TaskStatus::Failed);
        assert_eq!(records["0/3"].status, TaskStatus::Skipped);
        assert_eq!(
            records["0/3"].error.as_deref(),
            Some("dependency `0/1` failed")
        );
    }

    #[tokio::test]
    async fn keep_going_runs_independent_branches() {
        let mut opts = options(2);
        opts.keep_going = true;
        let (summary, _, _) = run(
            chains(3, 4),
            |s| {
                let mut f = Fake::new(s);
                f.fail.insert("0/1".into());
                f
            },
            opts,
        )
        .await;
        assert_eq!(summary.done, 12 - 3);
        assert_eq!(summary.skipped.len(), 2);
        assert_eq!(summary.not_started, 0);
    }

    #[tokio::test]
    async fn only_transient_failures_are_retried() {
        let (summary, fake, store) = run(
            chains(2, 1),
            |s| {
                let mut f = Fake::new(s);
                f.flaky.lock().unwrap().insert("0/0".into(), 2);
                f.fail.insert("1/0".into());
                f
            },
            {
                let mut o = options(2);
                o.keep_going = true;
                o
            },
        )
        .await;
        assert_eq!(summary.retries, 2);
        let started = fake.started.lock().unwrap();
        assert_eq!(started.iter().filter(|(id, _)| id == "0/0").count(), 3);
        assert_eq!(started.iter().filter(|(id, _)| id == "1/0").count(), 1);
        let records = store.lock().unwrap().records().unwrap();
        assert_eq!(records[0].status, TaskStatus::Done);
        assert_eq!(records[0].attempts, 3);
    }

    #[tokio::test]
    async fn retries_give_up_after_the_limit() {
        let (summary, fake, _) = run(
            chains(1, 2),
            |s| {
                let f = Fake::new(s);
                f.flaky.lock().unwrap().insert("0/0".into(), 10);
                f
            },
            options(1),
        )
        .await;
        assert_eq!(fake.started.lock().unwrap().len(), 3);
        assert!(
            summary.failed[0].1.contains("gave up after 3 attempts"),
            "{summary:?}"
        );
        assert_eq!(summary.skipped.len(), 1);
    }

    #[tokio::test]
    async fn pause_between_spaces_starts() {
        let mut opts = options(10);
        opts.connections.insert(
            "c0".into(),
            ConnectionLimit {
                max_concurrency: None,
                pause_between: Some(Duration::from_millis(30)),
            },
        );
        let started = std::time::Instant::now();
        let (summary, _, _) = run(chains(1, 4), Fake::new, opts).await;
        assert!(summary.success());
        assert!(
            started.elapsed() >= Duration::from_millis(90),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn first_interrupt_drains_second_cancels() {
        let dir = tempfile::tempdir().unwrap();
        let store = shared(SqliteStore::open(&dir.path().join("s.db")).unwrap());
        let mut f = Fake::new(store.clone());
        f.sleep = Duration::from_secs(60);
        let fake = Arc::new(f);
        let writer = StateWriter::spawn(store.clone());
        let graph = chains(4, 3);
        let n = graph.len();
        let scheduler = Scheduler::new(Arc::new(graph), fake.clone(), &writer, options(2));
        let (tx, rx) = Interrupts::channel();
        let t = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            tx.interrupt();
            tokio::time::sleep(Duration::from_millis(100)).await;
            tx.interrupt();
        });
        let summary = tokio::time::timeout(
            Duration::from_secs(10),
            scheduler.run(vec![Start::Run; n], rx),
        )
        .await
        .expect("the second interrupt ends the run promptly");
        t.await.unwrap();
        assert!(summary.interrupted && summary.cancelled);
        assert_eq!(
            fake.started.lock().unwrap().len(),
            2,
            "nothing new after the first"
        );
        assert_eq!(summary.failed.len(), 2);
        assert_eq!(summary.not_started, n - 2 - summary.skipped.len());
    }

    /// The fence goes up while two tasks run: they are cancelled, nothing else starts,
    /// and the summary says why.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_raised_fence_cancels_running_tasks_and_starts_nothing() {
        let store = shared(MemoryStore::new());
        let mut f = Fake::new(store.clone());
        f.sleep = Duration::from_secs(60);
        let fake = Arc::new(f);
        let writer = StateWriter::spawn(store.clone());
        let graph = chains(4, 3);
        let n = graph.len();
        let (raise, fence) = watch::channel(None);
        let scheduler =
            Scheduler::new(Arc::new(graph), fake.clone(), &writer, options(2)).fence(fence);
        let t = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            raise
                .send(Some("held by pid 4242 on host db2".to_string()))
                .unwrap();
        });
        let summary = tokio::time::timeout(
            Duration::from_secs(10),
            scheduler.run(vec![Start::Run; n], Interrupts::none()),
        )
        .await
        .expect("a lost lock ends the run promptly");
        t.await.unwrap();
        assert_eq!(
            summary.lock_lost.as_deref(),
            Some("held by pid 4242 on host db2")
        );
        assert!(matches!(summary.stopped, Some(StopReason::LockLost(_))));
        assert_eq!(fake.started.lock().unwrap().len(), 2, "nothing new started");
        assert_eq!(summary.failed.len(), 2, "the running ones were cancelled");
        assert!(!summary.success());
    }

    #[tokio::test]
    async fn done_tasks_are_not_run_and_feed_dependents() {
        let store = shared(MemoryStore::new());
        let fake = Arc::new(Fake::new(store.clone()));
        let writer = StateWriter::spawn(store.clone());
        let graph = chains(1, 3);
        // The first task is done from an earlier run.
        let graph = Arc::new(graph);
        writer.send(Transition::Done {
            task: TaskRef::new(graph.clone(), NodeIndex::new(0)),
            attempts: 1,
            started_at: Utc::now(),
            ended_at: Utc::now(),
            outcome: TaskOutcome::default(),
        });
        writer.flush().await.unwrap();
        let starts = vec![
            Start::Done(TaskOutcome {
                note: Some("from before".into()),
                ..TaskOutcome::default()
            }),
            Start::Run,
            Start::Run,
        ];
        let scheduler = Scheduler::new(graph, fake.clone(), &writer, options(2));
        let summary = scheduler.run(starts, Interrupts::none()).await;
        assert!(summary.success());
        assert_eq!(summary.already_done, 1);
        assert_eq!(summary.done, 2);
        assert!(fake.violations.lock().unwrap().is_empty());
    }
}
