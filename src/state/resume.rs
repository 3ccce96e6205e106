//! Resume decisions: for each task of a graph, skip it, run it (and say why), or keep
//! it (a `once` task that is done but dirty).
//!
//! A task is skipped only when it is `done` with the same fingerprint and none of its
//! dependencies runs again in this run. Everything else runs, with a reason a person
//! can act on — cargo's `DirtyReason` idea: the stored named inputs are diffed against
//! the new ones, so the message is "input `upper` changed", not "fingerprint differs".
//! A dependency that runs again makes its done dependents dirty too (a re-loaded
//! partition must be verified again), and `flow state reset` relies on that.
//!
//! `once = true` tasks are never re-run automatically: when dirty they are kept as
//! done and reported, and `flow state reset` is the way to run them again.

use std::collections::{HashMap, HashSet};
use std::fmt;

use petgraph::graph::NodeIndex;

use super::{StateError, StateStore, TaskRecord, TaskStatus};
use crate::graph::{Task, TaskGraph, TaskId, TaskKind};

/// Why a done task no longer matches the plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DirtyReason {
    /// Named inputs differ.
    Inputs {
        changed: Vec<String>,
        added: Vec<String>,
        removed: Vec<String>,
    },
    /// The task id now names a different kind of task.
    Kind { from: String, to: String },
    /// Same inputs, different fingerprint (flow's fingerprinting changed).
    Fingerprint,
    /// A dependency runs again in this run.
    Dependency(TaskId),
}

fn names(list: &[String]) -> String {
    list.iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for DirtyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DirtyReason::Inputs {
                changed,
                added,
                removed,
            } => {
                let mut parts = Vec::new();
                for (list, verb) in [(changed, "changed"), (added, "added"), (removed, "removed")] {
                    match list.len() {
                        0 => {}
                        1 => parts.push(format!("input {} {verb}", names(list))),
                        _ => parts.push(format!("inputs {} {verb}", names(list))),
                    }
                }
                f.write_str(&parts.join("; "))
            }
            DirtyReason::Kind { from, to } => write!(f, "kind changed from `{from}` to `{to}`"),
            DirtyReason::Fingerprint => {
                f.write_str("fingerprint changed (same inputs; this flow fingerprints differently)")
            }
            DirtyReason::Dependency(id) => write!(f, "dependency `{id}` runs again"),
        }
    }
}

/// Why a task runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RunReason {
    /// Not in the state (first run, or the plan grew).
    New,
    /// In the state, never started.
    Pending,
    /// Failed in an earlier run.
    Failed(Option<String>),
    /// Was running when the previous run stopped (crash, kill): runs again.
    Interrupted,
    /// Skipped in an earlier run because a dependency failed.
    SkippedBefore,
    /// Done, but no longer matches the plan.
    Dirty(DirtyReason),
}

impl fmt::Display for RunReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunReason::New => f.write_str("new"),
            RunReason::Pending => f.write_str("pending"),
            RunReason::Failed(Some(e)) => {
                write!(f, "failed before: {}", e.lines().next().unwrap_or_default())
            }
            RunReason::Failed(None) => f.write_str("failed before"),
            RunReason::Interrupted => f.write_str("was running when the previous run stopped"),
            RunReason::SkippedBefore => f.write_str("skipped before (a dependency failed)"),
            RunReason::Dirty(d) => d.fmt(f),
        }
    }
}

/// What a run does with a task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Done with the same fingerprint: not run; its stored outcome feeds dependents.
    Skip,
    Run(RunReason),
    /// `once = true`, done, dirty: not re-run automatically.
    Keep(DirtyReason),
}

/// The decision for one task of a graph.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskDecision {
    pub index: NodeIndex,
    pub id: TaskId,
    /// Status in the state, None when the task is not there.
    pub stored: Option<TaskStatus>,
    pub action: Action,
    /// A skipped task recorded by an earlier flow without these inputs, which this flow
    /// adds (see [`ADDED_INPUTS`]): it stays done and should be recorded again.
    pub upgraded: Vec<String>,
}

impl TaskDecision {
    /// One word for listings (`flow plan`): done, pending, failed, running, skipped,
    /// dirty, kept.
    pub fn label(&self) -> &'static str {
        match &self.action {
            Action::Skip => "done",
            Action::Keep(_) => "kept",
            Action::Run(RunReason::Dirty(_)) => "dirty",
            Action::Run(RunReason::New | RunReason::Pending) => "pending",
            Action::Run(RunReason::Failed(_)) => "failed",
            Action::Run(RunReason::Interrupted) => "running",
            Action::Run(RunReason::SkippedBefore) => "skipped",
        }
    }

    /// Why, in words; None for plain done and pending tasks.
    pub fn reason(&self) -> Option<String> {
        match &self.action {
            Action::Skip | Action::Run(RunReason::New | RunReason::Pending) => None,
            Action::Keep(d) => Some(format!(
                "{d}; not re-run because the step has `once = true` (reset it with `flow state reset` to run it again)"
            )),
            Action::Run(RunReason::Interrupted) => Some(
                "was running when the previous run stopped (or is running now); runs again on --resume"
                    .to_string(),
            ),
            Action::Run(r) => Some(r.to_string()),
        }
    }

    pub fn runs(&self) -> bool {
        matches!(self.action, Action::Run(_))
    }
}

/// Inputs that a flow release added to fingerprints, by name (`x`) or family (`x.`).
/// A done task recorded without any input of a family was recorded by an earlier flow:
/// if nothing else differs it stays done, and is recorded again with the new inputs —
/// upgrading flow in the middle of a migration does not redo the migration.
pub const ADDED_INPUTS: &[&str] = &[
    // identity of the connections a task uses
    "connection.",
    // a manifest's key, computed at expansion
    "path",
    // a split's declared partitions
    "partitions",
    // the templates a task uses, each on its own (in place of `templates`, a hash of
    // every built-in template: see `Task::superseded`)
    "template.",
];

fn family(name: &str) -> Option<&'static str> {
    ADDED_INPUTS.iter().copied().find(|f| {
        if f.ends_with('.') {
            name.starts_with(f)
        } else {
            name == *f
        }
    })
}

/// The inputs `task` has that `record` lacks only because an earlier flow did not
/// record them, and those `record` has in place of some (`Task::superseded`); empty
/// when anything else differs.
fn upgrade_inputs(record: &TaskRecord, task: &Task) -> Vec<String> {
    if record.kind != task.kind.as_str() {
        return Vec::new();
    }
    let mut added = Vec::new();
    for (name, value) in &task.inputs {
        match record.inputs.get(name) {
            Some(old) if old == value => {}
            Some(_) => return Vec::new(),
            None => match family(name) {
                Some(f) if !record.inputs.keys().any(|k| family(k) == Some(f)) => {
                    added.push(name.clone())
                }
                _ => return Vec::new(),
            },
        }
    }
    let superseded = |name: &String, value: &String| {
        task.superseded
            .as_ref()
            .and_then(|s| s.get(name))
            .is_some_and(|v| v == value)
    };
    for (name, value) in &record.inputs {
        if task.inputs.contains_key(name) {
            continue;
        }
        if !superseded(name, value) {
            return Vec::new();
        }
        // Recorded in place of inputs this flow has (or, for a task that has none of
        // them, of nothing): recording again drops it.
        added.push(name.clone());
    }
    added
}

/// Compares a done record with the task the plan now makes.
pub fn dirty_reason(record: &TaskRecord, task: &Task) -> Option<DirtyReason> {
    if record.fingerprint == task.fingerprint {
        return None;
    }
    if record.kind != task.kind.as_str() {
        return Some(DirtyReason::Kind {
            from: record.kind.clone(),
            to: task.kind.as_str().to_string(),
        });
    }
    let mut changed = Vec::new();
    let mut added = Vec::new();
    let mut removed = Vec::new();
    for (name, value) in &task.inputs {
        match record.inputs.get(name) {
            None => added.push(name.clone()),
            Some(old) if old != value => changed.push(name.clone()),
            Some(_) => {}
        }
    }
    for name in record.inputs.keys() {
        if !task.inputs.contains_key(name) {
            removed.push(name.clone());
        }
    }
    if changed.is_empty() && added.is_empty() && removed.is_empty() {
        Some(DirtyReason::Fingerprint)
    } else {
        Some(DirtyReason::Inputs {
            changed,
            added,
            removed,
        })
    }
}

/// Decides every task of `graph` against the stored `records`. `ran_this_run` holds
/// ids that already ran earlier in this invocation (the split phase): their done
/// dependents from an earlier run are dirty too. The result is in node-index order.
pub fn decide(
    graph: &TaskGraph,
    records: &HashMap<TaskId, TaskRecord>,
    ran_this_run: &HashSet<TaskId>,
) -> Vec<TaskDecision> {
    let mut decisions: Vec<Option<TaskDecision>> = vec![None; graph.len()];
    for index in graph.topological() {
        let task = graph.task(index);
        let record = records.get(&task.id);
        let own = match record {
            None => Action::Run(RunReason::New),
            Some(r) => match r.status {
                TaskStatus::Pending => Action::Run(RunReason::Pending),
                TaskStatus::Running => Action::Run(RunReason::Interrupted),
                TaskStatus::Failed => Action::Run(RunReason::Failed(r.error.clone())),
                TaskStatus::Skipped => Action::Run(RunReason::SkippedBefore),
                TaskStatus::Done => match dirty_reason(r, task) {
                    None => Action::Skip,
                    Some(_) if !upgrade_inputs(r, task).is_empty() => Action::Skip,
                    Some(d) if task.once => Action::Keep(d),
                    Some(d) => Action::Run(RunReason::Dirty(d)),
                },
            },
        };
        let action = if own == Action::Skip {
            // A split that runs again only lists units; each unit's own inputs (its
            // filter, its key) say whether the unit changed, so it does not dirty them.
            let rerun_dependency = graph.dependencies(index).find(|d| {
                if graph.task(*d).kind == TaskKind::Split {
                    return false;
                }
                let dep = decisions[d.index()]
                    .as_ref()
                    .expect("dependencies come first in topological order");
                dep.runs() || ran_this_run.contains(&dep.id)
            });
            match rerun_dependency {
                None => Action::Skip,
                Some(d) => {
                    let reason = DirtyReason::Dependency(graph.task(d).id.clone());
                    if task.once {
                        Action::Keep(reason)
                    } else {
                        Action::Run(RunReason::Dirty(reason))
                    }
                }
            }
        } else {
            own
        };
        let upgraded = match (record, &action) {
            (Some(r), Action::Skip) if r.fingerprint != task.fingerprint => upgrade_inputs(r, task),
            _ => Vec::new(),
        };
        decisions[index.index()] = Some(TaskDecision {
            index,
            id: task.id.clone(),
            stored: record.map(|r| r.status),
            action,
            upgraded,
        });
    }
    decisions
        .into_iter()
        .map(|d| d.expect("every node is in the topological order"))
        .collect()
}

/// Status and dirty reason of every task of `graph`, from the state in `store`; what
/// `flow plan` shows next to each task.
pub fn plan_status(
    graph: &TaskGraph,
    store: &mut dyn StateStore,
) -> Result<Vec<TaskDecision>, StateError> {
    let records = store
        .records()?
        .into_iter()
        .map(|r| (r.id.clone(), r))
        .collect();
    Ok(decide(graph, &records, &HashSet::new()))
}

/// [`plan_status`] from the state database at `db`, for `flow plan`: None when the
/// plan has no state yet. Safe while an apply runs.
pub fn plan_status_at(
    db: &std::path::Path,
    graph: &TaskGraph,
) -> Result<Option<Vec<TaskDecision>>, StateError> {
    match super::SqliteStore::open_existing(db)? {
        Some(mut store) => plan_status(graph, &mut store).map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::{Placement, TaskKind, WorkUnit};
    use std::collections::BTreeMap;

    fn task(id: &str, upper: &str) -> Task {
        let mut inputs = BTreeMap::new();
        inputs.insert("upper".to_string(), upper.to_string());
        inputs.insert("path".to_string(), "p".to_string());
        Task::new(
            id,
            TaskKind::Export,
            WorkUnit::Table { table: 0 },
            vec![],
            Placement::Metadata,
            inputs,
        )
    }

    fn done(task: &Task) -> TaskRecord {
        let mut r = TaskRecord::for_task(task);
        r.status = TaskStatus::Done;
        r
    }

    /// a → b → c, plus an independent d.
    fn graph(upper_b: &str, once_c: bool) -> TaskGraph {
        let mut g = TaskGraph::new();
        let a = g.add(task("a", "1")).unwrap();
        let b = g.add(task("b", upper_b)).unwrap();
        let mut tc = task("c", "1");
        tc.once = once_c;
        let c = g.add(tc).unwrap();
        g.add(task("d", "1")).unwrap();
        g.depend(b, a);
        g.depend(c, b);
        g
    }

    fn records(g: &TaskGraph) -> HashMap<TaskId, TaskRecord> {
        g.tasks().map(|t| (t.id.clone(), done(t))).collect()
    }

    #[test]
    fn done_with_same_fingerprint_is_skipped() {
        let g = graph("1", false);
        let d = decide(&g, &records(&g), &HashSet::new());
        assert!(d.iter().all(|d| d.action == Action::Skip), "{d:?}");
    }

    #[test]
    fn a_changed_input_is_named_and_dependents_follow() {
        let old = graph("1", false);
        let new = graph("2", false);
        let d = decide(&new, &records(&old), &HashSet::new());
        assert_eq!(d[0].action, Action::Skip);
        assert_eq!(
            d[1].reason().as_deref(),
            Some("input `upper` changed"),
            "{d:?}"
        );
        assert_eq!(d[2].reason().as_deref(), Some("dependency `b` runs again"));
        assert_eq!(d[3].action, Action::Skip);
    }

    #[test]
    fn once_tasks_are_kept_and_reported() {
        let old = graph("1", true);
        let new = graph("2", true);
        let d = decide(&new, &records(&old), &HashSet::new());
        assert_eq!(d[2].label(), "kept");
        assert!(d[2].reason().unwrap().contains("once = true"));
    }

    #[test]
    fn running_failed_skipped_and_missing_tasks_run() {
        let g = graph("1", false);
        let mut recs = records(&g);
        recs.get_mut(&TaskId("a".into())).unwrap().status = TaskStatus::Running;
        recs.get_mut(&TaskId("b".into())).unwrap().status = TaskStatus::Failed;
        recs.get_mut(&TaskId("c".into())).unwrap().status = TaskStatus::Skipped;
        recs.remove(&TaskId("d".into()));
        let d = decide(&g, &recs, &HashSet::new());
        assert_eq!(d[0].action, Action::Run(RunReason::Interrupted));
        assert_eq!(d[1].action, Action::Run(RunReason::Failed(None)));
        assert_eq!(d[2].action, Action::Run(RunReason::SkippedBefore));
        assert_eq!(d[3].action, Action::Run(RunReason::New));
    }

    #[test]
    fn tasks_that_ran_earlier_in_this_run_make_dependents_dirty() {
        let g = graph("1", false);
        let ran: HashSet<TaskId> = [TaskId("a".into())].into();
        let d = decide(&g, &records(&g), &ran);
        assert_eq!(d[0].action, Action::Skip);
        assert_eq!(d[1].reason().as_deref(), Some("dependency `a` runs again"));
    }

    #[test]
    fn added_removed_and_kind_changes_are_explained() {
        let t = task("a", "1");
        let mut r = done(&t);
        r.inputs.remove("path");
        r.inputs.insert("old".into(), "x".into());
        r.fingerprint = crate::graph::Fingerprint("other".into());
        assert_eq!(
            dirty_reason(&r, &t).unwrap().to_string(),
            "input `path` added; input `old` removed"
        );
        r.kind = "load".into();
        assert_eq!(
            dirty_reason(&r, &t).unwrap().to_string(),
            "kind changed from `load` to `export`"
        );
    }
}
