//! Running task graphs.
//!
//! [`scheduler`] owns ordering, permits ([`limits`]), retries ([`retry`]), failure
//! policy, cancellation and the durable state transitions; [`runner`] is the contract
//! with whatever does a task's work; [`process_group`] finds and stops the OS processes
//! an exec step started. What happens during a run is published as
//! [`Event`]s to [`Observer`]s — the progress display ([`progress`]) and the metrics —
//! so the scheduler knows nothing about terminals or Prometheus.

pub mod limits;
pub mod process_group;
pub mod progress;
pub mod retry;
pub mod runner;
pub mod scheduler;

use std::time::Duration;

use crate::graph::{Task, TaskGraph, TaskId};
use runner::{TaskFailure, TaskOutcome};

pub use limits::ConnectionLimit;
pub use progress::{Progress, ProgressMode};
pub use retry::RetryPolicy;
pub use scheduler::{Interrupts, RunOptions, RunSummary, Scheduler, Start, StopReason};

/// Something that happened during a run. Borrowed: observers copy what they keep.
#[derive(Debug)]
pub enum Event<'a> {
    /// A run (or a phase of one) begins; `starts[i]` is the plan for node `i`.
    Begin {
        phase: &'a str,
        graph: &'a TaskGraph,
        starts: &'a [Start],
    },
    Started {
        task: &'a Task,
        attempt: u32,
    },
    Done {
        task: &'a Task,
        outcome: &'a TaskOutcome,
        attempts: u32,
        elapsed: Duration,
    },
    /// Attempt `attempt` failed transiently; the next one starts after `delay`.
    Retry {
        task: &'a Task,
        attempt: u32,
        max_attempts: u32,
        delay: Duration,
        failure: &'a TaskFailure,
    },
    Failed {
        task: &'a Task,
        attempts: u32,
        error: &'a str,
    },
    /// Not run because `because` failed.
    Skipped {
        task: &'a Task,
        because: &'a TaskId,
    },
    /// The run stops starting tasks; `running` tasks are still going.
    Stopping {
        reason: &'a StopReason,
        running: usize,
    },
    End {
        summary: &'a RunSummary,
    },
}

/// Receives run events; called from the scheduler loop, so keep it quick.
pub trait Observer: Send + Sync {
    fn event(&self, event: &Event<'_>);
}
