//! The runtime: which code runs a task of a plan. [`Dispatch`] is the one
//! [`TaskRunner`] of a run; it routes on the task's unit: exec steps go to
//! [`exec_steps`], sql steps to [`sql_steps`], table tasks to [`table`], which
//! dispatches on the strategy to its runtime, volume tasks to [`volume_tasks`].
//!
//! It is the layer above both the engines (what talks to servers) and the strategies
//! (what a table entry turns into): it reads the strategy's settings of a table and
//! calls the engine code with them.

pub mod exec_steps;
pub mod sql_steps;
mod table;
mod volume_tasks;

use std::sync::Arc;

use crate::exec::runner::{TaskContext, TaskFailure, TaskOutcome, TaskRunner};
use crate::graph::expand::render_step_text;
use crate::graph::{Task, TaskKind, WorkUnit};
use crate::plan::Plan;
use crate::templates::Templates;
use exec_steps::{ExecCommand, ExecRunner};
use sql_steps::SqlRunner;
pub use table::TableRunner;
pub use volume_tasks::VolumeRunner;

/// Turns an exec task into its command.
type ResolveExec = Box<dyn Fn(&Task) -> Result<ExecCommand, TaskFailure> + Send + Sync>;

/// One runner for a whole run: exec steps run here, sql steps and table tasks go to
/// their engines.
pub struct Dispatch {
    exec: ExecRunner<ResolveExec>,
    sql: SqlRunner,
    table: TableRunner,
    volume: VolumeRunner,
}

impl Dispatch {
    pub fn new(plan: Arc<Plan>, templates: Templates) -> Self {
        let p = plan.clone();
        let t = templates.clone();
        Dispatch {
            exec: ExecRunner::new(Box::new(move |task: &Task| exec_command(&p, &t, task))),
            sql: SqlRunner::new(plan.clone(), templates.clone()),
            volume: VolumeRunner::new(plan.clone()),
            table: TableRunner::new(plan, templates),
        }
    }
}

#[async_trait::async_trait]
impl TaskRunner for Dispatch {
    async fn run(&self, task: &Task, ctx: TaskContext) -> Result<TaskOutcome, TaskFailure> {
        // By the unit first: a step's kind says its runner; a table task goes to its
        // strategy's runtime, whatever its kind.
        match (&task.unit, task.kind) {
            (WorkUnit::Step { .. }, TaskKind::Exec) => self.exec.run(task, ctx).await,
            (WorkUnit::Step { .. }, TaskKind::Sql) => self.sql.run(task, ctx).await,
            (WorkUnit::Step { .. }, kind) => Err(TaskFailure::permanent(format!(
                "task `{}`: a step is sql or exec, not `{kind}`",
                task.id
            ))),
            (WorkUnit::Table { .. } | WorkUnit::Partition { .. }, _) => {
                self.table.run(task, ctx).await
            }
            (WorkUnit::Volume { .. }, _) => self.volume.run(task, ctx).await,
        }
    }
}

/// The command of an exec step: its template rendered with real values, its
/// environment resolved, its working directory relative to the plan.
pub fn exec_command(
    plan: &Plan,
    templates: &Templates,
    task: &Task,
) -> Result<ExecCommand, TaskFailure> {
    let WorkUnit::Step { step } = task.unit else {
        return Err(TaskFailure::permanent(format!(
            "task `{}` is an exec task but not a step",
            task.id
        )));
    };
    let step = plan.steps.get(step).ok_or_else(|| {
        TaskFailure::permanent(format!("task `{}`: step index out of range", task.id))
    })?;
    let command = render_step_text(plan, templates, step, true)
        .map_err(|e| TaskFailure::permanent(format!("step `{}`: {e}", step.id)))?;
    let mut cmd = ExecCommand::new(command);
    for (name, value) in &step.env {
        let value = value.resolve().map_err(|e| {
            TaskFailure::permanent(format!(
                "step `{}`: env `{name}`: {e}; set it before running flow",
                step.id
            ))
        })?;
        cmd.env.insert(name.clone(), value);
    }
    let base = plan.base_dir();
    cmd.cwd = Some(match &step.cwd {
        Some(dir) if dir.is_absolute() => dir.clone(),
        Some(dir) => base.join(dir),
        None => base.to_path_buf(),
    });
    cmd.timeout = step.timeout;
    Ok(cmd)
}
