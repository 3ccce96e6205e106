//! Group commit: one thread owns the writes, the scheduler never waits on SQLite
//! unless it has to.
//!
//! Senders number every transition (a sequence number, in channel order) and go on.
//! The writer thread blocks for the first message, drains whatever else is queued (up
//! to [`MAX_BATCH`]), applies it as one transaction and publishes the highest sequence
//! number committed on a watch channel. While a commit is in flight the next batch
//! fills up on its own, so the batch size adapts to the load: one transition per
//! commit when idle, thousands under a burst. Whoever needs durability — the scheduler
//! before starting a task or releasing a finished task's dependents, `flush` at the
//! end of a run — waits for its sequence number; everything else is fire and forget.
//!
//! After a failed commit the writer stops applying (later transitions could depend on
//! the lost ones) and every waiter gets the error.
//!
//! Exec steps record their process groups through the same thread ([`ProcessLog`], a
//! handle a running task can keep): a group is on record before its command runs.

use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use tokio::sync::{mpsc, watch};

use super::{GroupChange, ProcessRecord, SharedStore, StateError, StateStore, Transition};
use crate::graph::TaskId;

/// The most transitions in one transaction; bounds the latency of a commit.
pub(crate) const MAX_BATCH: usize = 16_384;

enum Msg {
    Write(u64, Transition),
    Mark(u64),
    Group(u64, GroupChange),
}

/// The sending side, shared by the writer handle and the process logs.
type Sender = Arc<Mutex<(u64, Option<mpsc::UnboundedSender<Msg>>)>>;

fn push(sender: &Sender, make: impl FnOnce(u64) -> Msg) -> u64 {
    let mut guard = sender.lock().unwrap_or_else(|p| p.into_inner());
    guard.0 += 1;
    let seq = guard.0;
    if let Some(tx) = &guard.1 {
        // The receiver lives as long as the thread, which lives until `close`.
        let _ = tx.send(make(seq));
    }
    seq
}

async fn wait_for(status: &watch::Receiver<WriterStatus>, seq: u64) -> Result<(), StateError> {
    let mut rx = status.clone();
    let result = rx
        .wait_for(|s| s.committed >= seq || s.error.is_some())
        .await;
    match result {
        Ok(s) => match &s.error {
            Some(e) if s.committed < seq => Err(e.clone()),
            _ => Ok(()),
        },
        Err(_) => Err(StateError::WriterStopped(
            "the state writer thread is gone".into(),
        )),
    }
}

/// What the writer has done so far.
#[derive(Clone, Debug, Default)]
pub struct WriterStatus {
    /// Highest sequence number whose transition is committed.
    pub committed: u64,
    /// Transactions committed.
    pub batches: u64,
    /// Transitions committed.
    pub transitions: u64,
    /// The error that stopped the writer.
    pub error: Option<StateError>,
}

/// Handle to the writer thread; cheap to share by reference.
pub struct StateWriter {
    sender: Sender,
    status: watch::Receiver<WriterStatus>,
    thread: Mutex<Option<JoinHandle<()>>>,
    store: SharedStore,
}

impl std::fmt::Debug for StateWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateWriter")
            .field("status", &*self.status.borrow())
            .finish()
    }
}

fn lock(store: &SharedStore) -> MutexGuard<'_, Box<dyn StateStore>> {
    store
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl StateWriter {
    /// Starts the writer thread for `store`.
    pub fn spawn(store: SharedStore) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Msg>();
        let (status_tx, status_rx) = watch::channel(WriterStatus::default());
        let thread_store = store.clone();
        let thread = std::thread::Builder::new()
            .name("flow-state-writer".into())
            .spawn(move || {
                let mut messages = Vec::with_capacity(1024);
                let mut transitions = Vec::with_capacity(1024);
                let mut groups = Vec::new();
                while let Some(first) = rx.blocking_recv() {
                    messages.push(first);
                    while messages.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(m) => messages.push(m),
                            Err(_) => break,
                        }
                    }
                    let mut last = 0;
                    for m in messages.drain(..) {
                        match m {
                            Msg::Write(seq, t) => {
                                last = seq;
                                transitions.push(t);
                            }
                            Msg::Mark(seq) => last = seq,
                            Msg::Group(seq, change) => {
                                last = seq;
                                groups.push(change);
                            }
                        }
                    }
                    if status_tx.borrow().error.is_some() {
                        transitions.clear();
                        groups.clear();
                        continue;
                    }
                    let count = transitions.len() as u64;
                    let result = {
                        let mut store = lock(&thread_store);
                        store
                            .apply(&transitions)
                            .and_then(|()| store.set_process_groups(&groups))
                    };
                    transitions.clear();
                    groups.clear();
                    status_tx.send_modify(|s| match result {
                        Ok(()) => {
                            s.committed = last;
                            s.batches += u64::from(count > 0);
                            s.transitions += count;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "state commit failed");
                            s.error = Some(e);
                        }
                    });
                }
            })
            .expect("spawning the state writer thread");
        StateWriter {
            sender: Arc::new(Mutex::new((0, Some(tx)))),
            status: status_rx,
            thread: Mutex::new(Some(thread)),
            store,
        }
    }

    fn push(&self, make: impl FnOnce(u64) -> Msg) -> u64 {
        push(&self.sender, make)
    }

    /// A handle for recording process groups, which running tasks keep.
    pub fn process_log(&self) -> ProcessLog {
        ProcessLog {
            sender: self.sender.clone(),
            status: self.status.clone(),
        }
    }

    /// Queues a transition; returns its sequence number.
    pub fn send(&self, transition: Transition) -> u64 {
        self.push(|seq| Msg::Write(seq, transition))
    }

    /// A sequence number that is committed once everything queued before it is.
    pub fn mark(&self) -> u64 {
        self.push(Msg::Mark)
    }

    /// The writer's progress, for waiting inside a `select!`.
    pub fn subscribe(&self) -> watch::Receiver<WriterStatus> {
        self.status.clone()
    }

    pub fn status(&self) -> WriterStatus {
        self.status.borrow().clone()
    }

    /// Waits until `seq` is committed.
    pub async fn wait_for(&self, seq: u64) -> Result<(), StateError> {
        wait_for(&self.status, seq).await
    }

    /// Waits until everything queued so far is committed.
    pub async fn flush(&self) -> Result<(), StateError> {
        let seq = self.mark();
        self.wait_for(seq).await
    }

    /// The store, for reads (records, runs) and for writes outside a run.
    pub fn store(&self) -> &SharedStore {
        &self.store
    }

    /// Runs `f` on the store, serialized with the writer's batches.
    pub fn with_store<T>(&self, f: impl FnOnce(&mut dyn StateStore) -> T) -> T {
        f(lock(&self.store).as_mut())
    }

    /// Stops the thread after it has committed what is queued.
    pub fn close(&self) {
        self.sender.lock().unwrap_or_else(|p| p.into_inner()).1 = None;
        if let Some(thread) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

/// Records the process groups of running exec steps through the writer thread.
#[derive(Clone)]
pub struct ProcessLog {
    sender: Sender,
    status: watch::Receiver<WriterStatus>,
}

impl std::fmt::Debug for ProcessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProcessLog")
    }
}

impl ProcessLog {
    /// Records the group and returns once the record is committed.
    pub async fn started(&self, record: ProcessRecord) -> Result<(), StateError> {
        let seq = push(&self.sender, |seq| {
            Msg::Group(seq, (record.task.clone(), Some(record)))
        });
        wait_for(&self.status, seq).await
    }

    /// The task's group is gone; the record goes (fire and forget: a record left by a
    /// crash only makes the next run look for a group that is not there).
    pub fn ended(&self, task: &TaskId) {
        push(&self.sender, |seq| Msg::Group(seq, (task.clone(), None)));
    }
}

impl Drop for StateWriter {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{shared, MemoryStore, SqliteStore, TaskStatus};

    #[tokio::test]
    async fn flush_commits_everything_queued_in_few_batches() {
        let dir = tempfile::tempdir().unwrap();
        let store = shared(SqliteStore::open(&dir.path().join("s.db")).unwrap());
        let writer = StateWriter::spawn(store);
        for i in 0..2000 {
            writer.send(Transition::Register(crate::state::tests::def(
                &format!("t/{i}"),
                "1",
            )));
        }
        writer.flush().await.unwrap();
        let status = writer.status();
        assert_eq!(status.transitions, 2000);
        assert!(status.batches < 2000, "{status:?}");
        let records = writer.with_store(|s| s.records().unwrap());
        assert_eq!(records.len(), 2000);
        assert!(records.iter().all(|r| r.status == TaskStatus::Pending));
    }

    #[tokio::test]
    async fn wait_for_returns_after_the_commit() {
        let writer = StateWriter::spawn(shared(MemoryStore::new()));
        let seq = writer.send(Transition::Register(crate::state::tests::def("t/a", "1")));
        writer.wait_for(seq).await.unwrap();
        assert!(writer.status().committed >= seq);
        writer.close();
        // Sending after close is harmless.
        writer.send(Transition::Reset {
            id: crate::graph::TaskId("t/a".into()),
        });
    }
}
