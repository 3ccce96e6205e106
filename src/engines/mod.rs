//! Engines: the code that talks to databases, stores and commands.
//!
//! [`Dispatch`] is the one [`TaskRunner`] of a run: exec steps go to [`exec`], sql
//! steps to [`sql`], table tasks to [`table`], which dispatches on the strategy.

pub mod aws;
pub mod clickhouse;
pub mod exec;
pub mod export;
pub mod mysql;
pub mod registry;
pub mod rows;
pub mod source;
pub mod sql;
pub mod store;
pub mod table;

use std::sync::Arc;

use crate::exec::runner::{TaskContext, TaskFailure, TaskOutcome, TaskRunner};
use crate::graph::expand::render_step_text;
use crate::graph::{Task, TaskKind, WorkUnit};
use crate::plan::Plan;
use crate::templates::Templates;
use exec::{ExecCommand, ExecRunner};
use sql::SqlRunner;
use table::TableRunner;

/// Turns an exec task into its command.
type ResolveExec = Box<dyn Fn(&Task) -> Result<ExecCommand, TaskFailure> + Send + Sync>;

/// One runner for a whole run: exec steps run here, sql steps and table tasks go to
/// their engines.
pub struct Dispatch {
    exec: ExecRunner<ResolveExec>,
    sql: SqlRunner,
    table: TableRunner,
}

impl Dispatch {
    pub fn new(plan: Arc<Plan>, templates: Templates) -> Self {
        let p = plan.clone();
        let t = templates.clone();
        Dispatch {
            exec: ExecRunner::new(Box::new(move |task: &Task| exec_command(&p, &t, task))),
            sql: SqlRunner::new(plan.clone(), templates.clone()),
            table: TableRunner::new(plan, templates),
        }
    }
}

#[async_trait::async_trait]
impl TaskRunner for Dispatch {
    async fn run(&self, task: &Task, ctx: TaskContext) -> Result<TaskOutcome, TaskFailure> {
        match task.kind {
            TaskKind::Exec => self.exec.run(task, ctx).await,
            TaskKind::Sql => self.sql.run(task, ctx).await,
            _ => self.table.run(task, ctx).await,
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

/// `a AND b AND c` of the present parts, each parenthesized; None when empty.
pub fn and_all<'a>(parts: impl IntoIterator<Item = Option<&'a str>>) -> Option<String> {
    let parts: Vec<String> = parts
        .into_iter()
        .flatten()
        .filter(|p| !p.trim().is_empty())
        .map(|p| format!("({p})"))
        .collect();
    if parts.is_empty() {
        None
    } else {
        Some(parts.join(" AND "))
    }
}
