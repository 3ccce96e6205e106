//! Durable task state: what ran, with which inputs, and how it ended.
//!
//! The state answers three questions: may a task be skipped on `--resume` (it is
//! `done` with the same fingerprint), why must it run again (the stored named inputs
//! differ from the new ones — [`resume`]), and what happened (`flow status`, the
//! report, `flow plan`).
//!
//! Storage sits behind [`StateStore`] — SQLite in WAL mode by default ([`SqliteStore`]),
//! a map in memory for tests and the benchmark baseline ([`MemoryStore`]). Nobody
//! writes to a store directly during a run: transitions go through the [`StateWriter`],
//! a thread that drains a channel and commits one transaction per batch (group commit),
//! so 100k tasks cost a few hundred commits instead of 100k fsyncs. Every transition
//! gets a sequence number, and the writer publishes the highest committed one; the
//! scheduler waits for that number before it starts a task (so a task that ran is
//! always on record as `running`) and before it releases the dependents of a finished
//! task (so a dependent never starts on a completion a `kill -9` could lose).
//!
//! Besides task records, the state keeps the process group of each exec step attempt
//! that is running ([`ProcessRecord`]): a killed flow cannot stop them, so the next
//! run finds them there and stops them before the step runs again.
//!
//! Records never contain secrets: inputs are the task's named inputs, which the graph
//! builds from `${env:…}` placeholders, never from resolved values.

pub mod lock;
mod memory;
pub mod resume;
pub mod sqlite;
mod writer;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use petgraph::graph::NodeIndex;

use crate::graph::{Fingerprint, Partition, Task, TaskGraph, TaskId, TaskKind};
use crate::process::GroupId;
use crate::task::TaskOutcome;

pub use memory::MemoryStore;
pub use resume::{
    decide, plan_status, plan_status_at, Action, DirtyReason, RunReason, TaskDecision,
};
pub use sqlite::SqliteStore;
pub use writer::{ProcessLog, StateWriter, WriterStatus};

/// Where a task stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Pending,
    Running,
    Done,
    Failed,
    Skipped,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 5] = [
        TaskStatus::Pending,
        TaskStatus::Running,
        TaskStatus::Done,
        TaskStatus::Failed,
        TaskStatus::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Pending => "pending",
            TaskStatus::Running => "running",
            TaskStatus::Done => "done",
            TaskStatus::Failed => "failed",
            TaskStatus::Skipped => "skipped",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        TaskStatus::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One task as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub id: TaskId,
    /// The kind as text, so a state written by a newer flow still loads.
    pub kind: String,
    /// Fingerprint of the inputs the task last ran (or was registered) with.
    pub fingerprint: Fingerprint,
    /// Named inputs behind the fingerprint; diffed on resume to say what changed.
    pub inputs: BTreeMap<String, String>,
    pub status: TaskStatus,
    /// Attempts of the last run of the task (1 = succeeded or failed at once).
    pub attempts: u32,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub rows: Option<u64>,
    pub bytes: Option<u64>,
    pub checksum: Option<String>,
    pub outputs: Vec<String>,
    /// Structured detail (a split's partition list, an exec step's exit code).
    pub detail: serde_json::Value,
    pub note: Option<String>,
    /// Last error (failed), last transient error (running, retrying) or why the task
    /// was skipped.
    pub error: Option<String>,
}

impl TaskRecord {
    /// A fresh `pending` record for a task definition.
    fn pending(id: &TaskId, def: &Def) -> Self {
        TaskRecord {
            id: id.clone(),
            kind: def.kind.clone(),
            fingerprint: def.fingerprint.clone(),
            inputs: def.inputs.clone(),
            status: TaskStatus::Pending,
            attempts: 0,
            started_at: None,
            ended_at: None,
            rows: None,
            bytes: None,
            checksum: None,
            outputs: Vec::new(),
            detail: serde_json::Value::Null,
            note: None,
            error: None,
        }
    }

    /// A `pending` record for `task` (tests, tools).
    pub fn for_task(task: &Task) -> Self {
        TaskRecord::pending(&task.id, &Def::of(task))
    }

    /// The outcome a done task reported, as dependents and reports see it.
    pub fn outcome(&self) -> TaskOutcome {
        TaskOutcome {
            rows: self.rows,
            bytes: self.bytes,
            checksum: self.checksum.clone(),
            outputs: self.outputs.clone(),
            detail: self.detail.clone(),
            note: self.note.clone(),
        }
    }

    /// Wall time of the last run, when it finished.
    pub fn duration(&self) -> Option<std::time::Duration> {
        let (start, end) = (self.started_at?, self.ended_at?);
        (end - start).to_std().ok()
    }

    fn set_def(&mut self, def: &Def) {
        self.kind.clone_from(&def.kind);
        self.fingerprint.clone_from(&def.fingerprint);
        self.inputs.clone_from(&def.inputs);
    }

    /// Back to `pending`, results cleared; the stored inputs stay so the next run can
    /// still tell what changed.
    fn reset(&mut self) {
        self.status = TaskStatus::Pending;
        self.attempts = 0;
        self.started_at = None;
        self.ended_at = None;
        self.rows = None;
        self.bytes = None;
        self.checksum = None;
        self.outputs.clear();
        self.detail = serde_json::Value::Null;
        self.note = None;
        self.error = None;
    }
}

/// A task of a run's graph, by reference: transitions carry this instead of copies of
/// ids and inputs, so 100k queued transitions cost 100k pointers.
#[derive(Clone)]
pub struct TaskRef {
    graph: Arc<TaskGraph>,
    index: NodeIndex,
}

impl TaskRef {
    pub fn new(graph: Arc<TaskGraph>, index: NodeIndex) -> Self {
        TaskRef { graph, index }
    }

    /// A reference to a task outside any run (tools, tests).
    pub fn single(task: Task) -> Self {
        let mut graph = TaskGraph::new();
        let index = graph.add(task).expect("a one-task graph has unique ids");
        TaskRef {
            graph: Arc::new(graph),
            index,
        }
    }

    pub fn task(&self) -> &Task {
        self.graph.task(self.index)
    }
}

impl fmt::Debug for TaskRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TaskRef({})", self.task().id)
    }
}

/// A change of one task's state.
#[derive(Clone, Debug)]
pub enum Transition {
    /// Known to this run: inserted as `pending` when new; a row still `pending` takes
    /// the new definition; any other row keeps what it last ran with.
    Register(TaskRef),
    /// An attempt is about to start.
    Start {
        task: TaskRef,
        attempt: u32,
        at: DateTime<Utc>,
    },
    /// An attempt failed with a transient error; another follows.
    Retry {
        id: TaskId,
        attempt: u32,
        error: String,
    },
    Done {
        task: TaskRef,
        attempts: u32,
        started_at: DateTime<Utc>,
        ended_at: DateTime<Utc>,
        outcome: TaskOutcome,
    },
    Failed {
        task: TaskRef,
        attempts: u32,
        started_at: Option<DateTime<Utc>>,
        ended_at: DateTime<Utc>,
        error: String,
    },
    /// Not run because a dependency failed (`reason` says which).
    Skipped { task: TaskRef, reason: String },
    /// Back to `pending` (`flow state reset`).
    Reset { id: TaskId },
    /// A done task recorded by an earlier flow, whose recorded inputs are unchanged but
    /// lack inputs this flow adds: it stays done and takes the new definition, so the
    /// new inputs are compared from now on.
    Rerecord(TaskRef),
}

impl Transition {
    pub fn id(&self) -> &TaskId {
        match self {
            Transition::Register(task)
            | Transition::Rerecord(task)
            | Transition::Start { task, .. }
            | Transition::Done { task, .. }
            | Transition::Failed { task, .. }
            | Transition::Skipped { task, .. } => &task.task().id,
            Transition::Retry { id, .. } | Transition::Reset { id } => id,
        }
    }

    /// The owned form, as stores keep it.
    pub fn entry(&self) -> Entry {
        let mut e = Entry::new(self.op(), self.id().clone());
        match self {
            Transition::Register(task) | Transition::Rerecord(task) => {
                e.def = Some(Def::of(task.task()))
            }
            Transition::Start { task, attempt, at } => {
                e.def = Some(Def::of(task.task()));
                e.attempts = Some(*attempt);
                e.started_at = Some(*at);
            }
            Transition::Retry { attempt, error, .. } => {
                e.attempts = Some(*attempt);
                e.error = Some(error.clone());
            }
            Transition::Done {
                task,
                attempts,
                started_at,
                ended_at,
                outcome,
            } => {
                e.def = Some(Def::of(task.task()));
                e.attempts = Some(*attempts);
                e.started_at = Some(*started_at);
                e.ended_at = Some(*ended_at);
                e.outcome = Some(outcome.clone());
            }
            Transition::Failed {
                task,
                attempts,
                started_at,
                ended_at,
                error,
            } => {
                e.def = Some(Def::of(task.task()));
                e.attempts = Some(*attempts);
                e.started_at = *started_at;
                e.ended_at = Some(*ended_at);
                e.error = Some(error.clone());
            }
            Transition::Skipped { task, reason } => {
                e.def = Some(Def::of(task.task()));
                e.error = Some(reason.clone());
            }
            Transition::Reset { .. } => {}
        }
        e
    }

    pub fn op(&self) -> Op {
        match self {
            Transition::Register(_) => Op::Register,
            Transition::Start { .. } => Op::Start,
            Transition::Retry { .. } => Op::Retry,
            Transition::Done { .. } => Op::Done,
            Transition::Failed { .. } => Op::Failed,
            Transition::Skipped { .. } => Op::Skipped,
            Transition::Reset { .. } => Op::Reset,
            Transition::Rerecord(_) => Op::Rerecord,
        }
    }
}

/// Kinds of transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Register,
    Start,
    Retry,
    Done,
    Failed,
    Skipped,
    Reset,
    Rerecord,
}

impl Op {
    const ALL: [Op; 8] = [
        Op::Register,
        Op::Start,
        Op::Retry,
        Op::Done,
        Op::Failed,
        Op::Skipped,
        Op::Reset,
        Op::Rerecord,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Register => "register",
            Op::Start => "start",
            Op::Retry => "retry",
            Op::Done => "done",
            Op::Failed => "failed",
            Op::Skipped => "skipped",
            Op::Reset => "reset",
            Op::Rerecord => "rerecord",
        }
    }

    pub fn parse(text: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|o| o.as_str() == text)
    }
}

/// What identifies a task's work: kind, fingerprint, named inputs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Def {
    pub kind: String,
    pub fingerprint: Fingerprint,
    pub inputs: BTreeMap<String, String>,
}

impl Def {
    pub fn of(task: &Task) -> Self {
        Def {
            kind: task.kind.as_str().to_string(),
            fingerprint: task.fingerprint.clone(),
            inputs: task.inputs.to_map(),
        }
    }
}

/// A transition in owned form: what the SQLite journal stores, and what every store
/// folds into records with [`fold`] — one definition of what a transition means.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub op: Op,
    pub id: TaskId,
    pub def: Option<Def>,
    pub attempts: Option<u32>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub outcome: Option<TaskOutcome>,
    pub error: Option<String>,
}

impl Entry {
    pub fn new(op: Op, id: TaskId) -> Self {
        Entry {
            op,
            id,
            def: None,
            attempts: None,
            started_at: None,
            ended_at: None,
            outcome: None,
            error: None,
        }
    }
}

/// Applies one entry to a task's record (None: not stored yet); returns the new record.
pub fn fold(record: Option<TaskRecord>, e: &Entry) -> Option<TaskRecord> {
    let mut record = match (record, &e.def) {
        (Some(r), _) => r,
        (None, Some(def)) => TaskRecord::pending(&e.id, def),
        // Retry or reset of a task the store does not know: nothing to change.
        (None, None) => return None,
    };
    match e.op {
        Op::Register => {
            if record.status == TaskStatus::Pending {
                if let Some(def) = &e.def {
                    record.set_def(def);
                }
            }
        }
        Op::Start => {
            if let Some(def) = &e.def {
                record.set_def(def);
            }
            record.status = TaskStatus::Running;
            record.attempts = e.attempts.unwrap_or(1);
            record.started_at = e.started_at;
            record.ended_at = None;
            record.error = None;
        }
        Op::Retry => {
            record.attempts = e.attempts.unwrap_or(record.attempts);
            record.error.clone_from(&e.error);
        }
        Op::Done => {
            if let Some(def) = &e.def {
                record.set_def(def);
            }
            let o = e.outcome.clone().unwrap_or_default();
            record.status = TaskStatus::Done;
            record.attempts = e.attempts.unwrap_or(1);
            record.started_at = e.started_at;
            record.ended_at = e.ended_at;
            record.rows = o.rows;
            record.bytes = o.bytes;
            record.checksum = o.checksum;
            record.outputs = o.outputs;
            record.detail = o.detail;
            record.note = o.note;
            record.error = None;
        }
        Op::Failed => {
            if let Some(def) = &e.def {
                record.set_def(def);
            }
            record.status = TaskStatus::Failed;
            record.attempts = e.attempts.unwrap_or(1);
            record.started_at = e.started_at;
            record.ended_at = e.ended_at;
            record.error.clone_from(&e.error);
        }
        Op::Skipped => {
            if let Some(def) = &e.def {
                record.set_def(def);
            }
            record.status = TaskStatus::Skipped;
            record.error.clone_from(&e.error);
        }
        Op::Reset => record.reset(),
        Op::Rerecord => {
            if record.status == TaskStatus::Done {
                if let Some(def) = &e.def {
                    record.set_def(def);
                }
            }
        }
    }
    Some(record)
}

/// One `flow apply` invocation, kept for `flow status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRecord {
    pub id: i64,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub pid: u32,
    pub host: String,
    /// `success`, `failed`, `interrupted`, `aborted`; None while running or when the
    /// process was killed.
    pub outcome: Option<String>,
}

/// The process group of a task's running attempt (exec steps), on record from before
/// its command runs until the group is gone.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcessRecord {
    pub task: TaskId,
    pub attempt: u32,
    pub started_at: DateTime<Utc>,
    pub group: GroupId,
}

/// A task's process group started (Some) or is gone (None).
pub type GroupChange = (TaskId, Option<ProcessRecord>);

/// A problem with the state storage. Messages name the file and say what to do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StateError {
    #[error("cannot open the state database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: Arc<rusqlite::Error>,
    },
    #[error("state database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: Arc<rusqlite::Error>,
    },
    #[error(
        "state database {path} was written by a newer flow (schema version {found}, this flow knows {known}); upgrade flow, or start over with `--restart`"
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("state database {path}: task `{id}` has an unreadable {column} ({problem}); reset it with `flow state reset` or start over with `--restart`")]
    Corrupt {
        path: PathBuf,
        id: String,
        column: &'static str,
        problem: String,
    },
    #[error(
        "state database {path} is damaged: {problem}. It is not taken for \"no earlier state\": move it away to start over (`mv {path} {path}.bad`), or run `flow apply` with `--restart`, which keeps a copy of it beside it and starts a new one"
    )]
    Damaged { path: PathBuf, problem: String },
    #[error("the state writer stopped after an earlier error: {0}")]
    WriterStopped(String),
}

/// Storage of task records. Implementations commit each `apply` batch atomically.
pub trait StateStore: Send {
    /// A short description for messages (the database path, or "memory").
    fn describe(&self) -> String;
    /// Every stored record, ordered by id.
    fn records(&mut self) -> Result<Vec<TaskRecord>, StateError>;
    /// Applies a batch of transitions in one transaction.
    fn apply(&mut self, batch: &[Transition]) -> Result<(), StateError>;
    /// Discards every task record and run (`--restart`).
    fn clear(&mut self) -> Result<(), StateError>;
    /// Folds pending journal entries into the records (SQLite); a no-op elsewhere.
    fn compact(&mut self) -> Result<(), StateError> {
        Ok(())
    }
    /// Records the start of a run; returns its id.
    fn begin_run(&mut self, pid: u32, host: &str, at: DateTime<Utc>) -> Result<i64, StateError>;
    fn end_run(&mut self, id: i64, outcome: &str, at: DateTime<Utc>) -> Result<(), StateError>;
    /// Runs, most recent first, at most `limit`.
    fn runs(&mut self, limit: usize) -> Result<Vec<RunRecord>, StateError>;
    /// Records the process group of a task's running attempt (replacing the one on
    /// record), or forgets it (None); the whole batch in one transaction.
    fn set_process_groups(&mut self, changes: &[GroupChange]) -> Result<(), StateError>;
    /// The process groups on record, by task id.
    fn process_groups(&mut self) -> Result<Vec<ProcessRecord>, StateError>;
}

/// A store shared between the writer thread and readers (status, resume, report).
pub type SharedStore = Arc<Mutex<Box<dyn StateStore>>>;

/// Wraps a store for sharing.
pub fn shared(store: impl StateStore + 'static) -> SharedStore {
    Arc::new(Mutex::new(Box::new(store)))
}

/// Records by id, for lookups.
pub fn by_id(records: Vec<TaskRecord>) -> HashMap<TaskId, TaskRecord> {
    records.into_iter().map(|r| (r.id.clone(), r)).collect()
}

/// Reads every record of the state database at `path`; None when there is none yet.
/// Safe while an apply runs (WAL readers do not block the writer).
pub fn read_records(path: &Path) -> Result<Option<Vec<TaskRecord>>, StateError> {
    match SqliteStore::open_existing(path)? {
        Some(mut store) => store.records().map(Some),
        None => Ok(None),
    }
}

/// The partitions each table's split listed, by table index: the `detail` of every
/// done split task of `graph` (split tasks have the same id whatever the partitions).
/// A resumed run expands with these, so its task set does not drift.
pub fn listed_partitions(
    graph: &TaskGraph,
    records: &HashMap<TaskId, TaskRecord>,
    state: &Path,
) -> Result<BTreeMap<usize, Vec<Arc<Partition>>>, StateError> {
    let mut out = BTreeMap::new();
    for task in graph.tasks().filter(|t| t.kind == TaskKind::Split) {
        let (Some(table), Some(record)) = (task.unit.table(), records.get(&task.id)) else {
            continue;
        };
        if record.status != TaskStatus::Done {
            continue;
        }
        let partitions: Vec<Partition> =
            serde_json::from_value(record.detail.clone()).map_err(|e| StateError::Corrupt {
                path: state.to_path_buf(),
                id: task.id.to_string(),
                column: "detail (the split's partition list)",
                problem: e.to_string(),
            })?;
        out.insert(table, partitions.into_iter().map(Arc::new).collect());
    }
    Ok(out)
}

/// Counts of records by status, for summaries.
pub fn count_by_status(records: &[TaskRecord]) -> BTreeMap<TaskStatus, usize> {
    let mut counts = BTreeMap::new();
    for record in records {
        *counts.entry(record.status).or_insert(0) += 1;
    }
    counts
}

/// Matches task ids against a shell-style pattern: `*` matches any run of characters
/// (including `/`), `?` one character; everything else is literal.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::graph::{Placement, TaskKind, WorkUnit};

    pub(crate) fn def(id: &str, input: &str) -> TaskRef {
        let mut inputs = BTreeMap::new();
        inputs.insert("upper".to_string(), input.to_string());
        TaskRef::single(Task::new(
            id,
            TaskKind::Export,
            WorkUnit::Table { table: 0 },
            vec![],
            Placement::Metadata,
            inputs,
        ))
    }

    /// The same sequence against any store: registration, a full run, a reset.
    pub(crate) fn exercise(store: &mut dyn StateStore) {
        let a = def("t/a", "1");
        let b = def("t/b", "1");
        let now = Utc::now();
        store
            .apply(&[
                Transition::Register(a.clone()),
                Transition::Register(b.clone()),
            ])
            .unwrap();
        let records = store.records().unwrap();
        assert_eq!(records.len(), 2);
        assert!(records.iter().all(|r| r.status == TaskStatus::Pending));

        let outcome = TaskOutcome {
            rows: Some(10),
            bytes: Some(20),
            checksum: Some("c".into()),
            outputs: vec!["x.csv".into()],
            detail: serde_json::json!([{"id": "201506"}]),
            note: Some("n".into()),
        };
        store
            .apply(&[
                Transition::Start {
                    task: a.clone(),
                    attempt: 1,
                    at: now,
                },
                Transition::Retry {
                    id: a.task().id.clone(),
                    attempt: 2,
                    error: "reset".into(),
                },
                Transition::Done {
                    task: a.clone(),
                    attempts: 2,
                    started_at: now,
                    ended_at: now,
                    outcome: outcome.clone(),
                },
                Transition::Failed {
                    task: b.clone(),
                    attempts: 1,
                    started_at: Some(now),
                    ended_at: now,
                    error: "boom".into(),
                },
            ])
            .unwrap();
        let records = store.records().unwrap();
        let ra = &records[0];
        assert_eq!(ra.status, TaskStatus::Done);
        assert_eq!(ra.attempts, 2);
        assert_eq!(ra.outcome(), outcome);
        assert_eq!(ra.inputs.get("upper").map(String::as_str), Some("1"));
        assert_eq!(
            ra.started_at.map(|t| t.timestamp_millis()),
            Some(now.timestamp_millis())
        );
        assert_eq!(records[1].status, TaskStatus::Failed);
        assert_eq!(records[1].error.as_deref(), Some("boom"));

        // Compaction changes nothing visible.
        let before = store.records().unwrap();
        store.compact().unwrap();
        assert_eq!(store.records().unwrap(), before);

        // Registering a changed definition does not overwrite a row that ran.
        let a2 = def("t/a", "2");
        store.apply(&[Transition::Register(a2)]).unwrap();
        let records = store.records().unwrap();
        assert_eq!(
            records[0].inputs.get("upper").map(String::as_str),
            Some("1")
        );

        store
            .apply(&[Transition::Reset {
                id: a.task().id.clone(),
            }])
            .unwrap();
        let records = store.records().unwrap();
        assert_eq!(records[0].status, TaskStatus::Pending);
        assert_eq!(records[0].rows, None);

        let run = store.begin_run(42, "host", now).unwrap();
        store.end_run(run, "success", now).unwrap();
        let runs = store.runs(5).unwrap();
        assert_eq!(runs[0].outcome.as_deref(), Some("success"));
        assert_eq!(runs[0].pid, 42);

        let group = ProcessRecord {
            task: a.task().id.clone(),
            attempt: 2,
            started_at: now,
            group: GroupId {
                pgid: 4242,
                leader_start: 123_456,
                boot_id: "boot".into(),
                host: "host".into(),
            },
        };
        store
            .set_process_groups(&[(group.task.clone(), Some(group.clone()))])
            .unwrap();
        let mut found = store.process_groups().unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!(
            found[0].started_at.timestamp_millis(),
            now.timestamp_millis()
        );
        found[0].started_at = now;
        assert_eq!(found[0], group);
        store
            .set_process_groups(&[(group.task.clone(), None)])
            .unwrap();
        assert!(store.process_groups().unwrap().is_empty());
        store
            .set_process_groups(&[(group.task.clone(), Some(group.clone()))])
            .unwrap();

        store.clear().unwrap();
        assert!(store.records().unwrap().is_empty());
        assert!(store.runs(5).unwrap().is_empty());
        assert!(store.process_groups().unwrap().is_empty());
    }

    #[test]
    fn glob_matches_like_a_shell() {
        assert!(glob_match("t/*/export", "t/201506/export"));
        assert!(glob_match("*", "anything/at/all"));
        assert!(glob_match("t/2015??/*", "t/201506/load"));
        assert!(!glob_match("t/2015??/*", "t/20150/load"));
        assert!(glob_match("t/*", "t/a/b"));
        assert!(!glob_match("t/a", "t/ab"));
        assert!(glob_match("*load", "t/x/load"));
        assert!(!glob_match("*load", "t/x/loader"));
    }

    #[test]
    fn status_round_trips() {
        for s in TaskStatus::ALL {
            assert_eq!(TaskStatus::parse(s.as_str()), Some(s));
        }
    }
}
