//! `sql` steps: a user's statement template, rendered with real environment values and
//! run on the step's connection — ClickHouse over HTTP, MySQL/MariaDB/StarRocks over
//! the MySQL protocol.
//!
//! A step may hold several statements separated by `;`. ClickHouse's HTTP interface
//! takes one statement per request, so the text is split at the `;` tokens the SQL
//! tokenizer sees (none inside strings, quoted names or comments), and the statements
//! run in order; the first failure stops the step. Before the first is sent, the
//! rendered text is classified (`plan::destructive`): a destructive statement in a
//! step not marked `destructive = true` is refused and nothing runs. The rendered text
//! is never logged (it may hold secrets from `env`).
//!
//! A cancelled step (second Ctrl-C) or one past its `timeout` does not leave its
//! statement running: it is killed on the server (ClickHouse by `query_id`, MySQL by
//! connection id).

use std::sync::Arc;

use crate::engines::clickhouse::ChClient;
use crate::engines::mysql::MysqlClient;
use crate::exec::runner::{TaskContext, TaskFailure, TaskOutcome, TaskRunner};
use crate::graph::{Task, WorkUnit};
use crate::plan::schema::ConnectionKind;
use crate::plan::Plan;
use crate::templates::Templates;

/// Runs the plan's `sql` steps.
#[derive(Clone, Debug)]
pub struct SqlRunner {
    plan: Arc<Plan>,
    templates: Templates,
}

impl SqlRunner {
    pub fn new(plan: Arc<Plan>, templates: Templates) -> Self {
        SqlRunner { plan, templates }
    }
}

#[async_trait::async_trait]
impl TaskRunner for SqlRunner {
    async fn run(&self, task: &Task, ctx: TaskContext) -> Result<TaskOutcome, TaskFailure> {
        let WorkUnit::Step { step } = &task.unit else {
            return Err(TaskFailure::permanent(format!(
                "task `{}` is not a step; the sql runner only runs sql steps",
                task.id
            )));
        };
        let step = self.plan.steps.get(*step).ok_or_else(|| {
            TaskFailure::permanent(format!("task `{}`: step index out of range", task.id))
        })?;
        let conn_name = step.connection.as_deref().ok_or_else(|| {
            TaskFailure::permanent(format!("sql step `{}` has no `connection`", step.id))
        })?;
        let conn = self.plan.connections.get(conn_name).ok_or_else(|| {
            TaskFailure::permanent(format!(
                "sql step `{}`: connection `{conn_name}` is not defined",
                step.id
            ))
        })?;
        let text = crate::graph::expand::render_step_text(&self.plan, &self.templates, step, true)
            .map_err(|e| TaskFailure::permanent(format!("sql step `{}`: {e}", step.id)))?;
        // The rendered text, with real environment values, is checked right before
        // anything is sent: a destructive statement in an unmarked step never runs.
        if let Some((problem, fix)) = crate::plan::destructive::refusal(step, &text, conn.kind) {
            return Err(TaskFailure::permanent(format!(
                "{problem}; nothing was sent to `{conn_name}`. Fix: {fix}"
            )));
        }
        let statements = crate::plan::destructive::split(&text, conn.kind);
        if statements.is_empty() {
            return Err(TaskFailure::permanent(format!(
                "sql step `{}` renders to no statement",
                step.id
            )));
        }
        // A timeout stops the statement the way a second Ctrl-C does: it is killed on
        // the server, not left running there while a retry starts it again.
        let stop = ctx.cancel.child_token();
        let timer = step.timeout.map(|limit| {
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(limit).await;
                stop.cancel();
            })
        });
        let run = async {
            match conn.kind {
                ConnectionKind::Clickhouse => {
                    let client = ChClient::from_connection(conn)?;
                    for (i, sql) in statements.iter().enumerate() {
                        let action = format!(
                            "step `{}` statement {} of {}",
                            step.id,
                            i + 1,
                            statements.len()
                        );
                        client.execute_cancellable(&action, sql, &stop).await?;
                    }
                    Ok::<Option<u64>, TaskFailure>(None)
                }
                ConnectionKind::Mysql | ConnectionKind::Starrocks => {
                    let client = MysqlClient::from_connection(conn)?;
                    Ok(Some(client.execute_all(&statements, &stop).await?))
                }
                other => Err(TaskFailure::permanent(format!(
                    "sql step `{}`: connection `{conn_name}` is of kind `{}`, which runs no SQL",
                    step.id,
                    other.as_str()
                ))),
            }
        };
        let result = run.await;
        if let Some(timer) = timer {
            timer.abort();
        }
        let affected = match (result, step.timeout) {
            (Err(e), Some(limit)) if stop.is_cancelled() && !ctx.cancel.is_cancelled() => {
                return Err(TaskFailure::transient(format!(
                    "sql step `{}` timed out after {}: {}",
                    step.id,
                    humantime::format_duration(limit),
                    e.message
                )))
            }
            (result, _) => result?,
        };
        Ok(TaskOutcome {
            rows: affected,
            note: Some(format!(
                "{} statement(s) on `{conn_name}` ({})",
                statements.len(),
                conn.kind.as_str()
            )),
            ..Default::default()
        })
    }
}
