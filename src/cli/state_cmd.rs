//! `flow state reset PLAN PATTERN`: put tasks back to `pending`.
//!
//! For the cases resume cannot guess: a task that must run again although its inputs
//! did not change (the target was dropped by hand), or a `once = true` step. The
//! pattern is a glob on task ids (`*` matches any characters, `/` included). Tasks
//! that depend on a reset task run again too on the next `--resume`, because a
//! dependency that runs again makes its dependents dirty. Takes the plan's lock, so it
//! cannot change the state under a running apply.

use std::path::PathBuf;

use super::{load_plan, EXIT_FAILED, EXIT_LOCKED, EXIT_OK};
use crate::state::lock::PlanLock;
use crate::state::{glob_match, SqliteStore, StateStore, Transition};

#[derive(Debug, clap::Args)]
pub struct StateArgs {
    #[command(subcommand)]
    pub command: StateCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum StateCommand {
    /// Put the tasks whose id matches PATTERN back to pending (and so their dependents
    /// run again on the next `flow apply --resume`).
    Reset(ResetArgs),
}

#[derive(Debug, clap::Args)]
pub struct ResetArgs {
    /// The plan file.
    pub plan: PathBuf,
    /// Glob on task ids: `*` matches any characters (including `/`), `?` one.
    pub pattern: String,
}

pub async fn run(args: &StateArgs) -> anyhow::Result<u8> {
    match &args.command {
        StateCommand::Reset(reset) => run_reset(reset),
    }
}

fn run_reset(args: &ResetArgs) -> anyhow::Result<u8> {
    let (plan, _) = match load_plan(&args.plan, &[]) {
        Ok(loaded) => loaded,
        Err(code) => return Ok(code),
    };
    let db = plan.state_db_path();
    let _lock = match PlanLock::acquire(&db) {
        Ok(lock) => lock,
        Err(e) => {
            eprintln!("error: plan `{}`: {e}", plan.name);
            eprintln!("  help: the state cannot change while a run holds the lock");
            return Ok(EXIT_LOCKED);
        }
    };
    let Some(mut store) = SqliteStore::open_existing(&db)? else {
        eprintln!(
            "error: plan `{}` has no state ({} does not exist); nothing to reset",
            plan.name,
            db.display()
        );
        return Ok(EXIT_FAILED);
    };
    let matched: Vec<_> = store
        .records()?
        .into_iter()
        .filter(|r| glob_match(&args.pattern, r.id.as_str()))
        .collect();
    if matched.is_empty() {
        eprintln!(
            "error: no task of plan `{}` matches `{}`\n  help: `flow status {}` lists the task ids; `*` matches any characters",
            plan.name,
            args.pattern,
            args.plan.display()
        );
        return Ok(EXIT_FAILED);
    }
    let batch: Vec<Transition> = matched
        .iter()
        .map(|r| Transition::Reset { id: r.id.clone() })
        .collect();
    store.apply(&batch)?;
    store.compact()?;
    outln!(
        "reset {} task(s) of plan `{}` to pending:",
        matched.len(),
        plan.name
    );
    for r in matched.iter().take(50) {
        outln!("  {} (was {})", r.id, r.status);
    }
    if matched.len() > 50 {
        outln!("  … and {} more", matched.len() - 50);
    }
    outln!(
        "run them with `flow apply {} --resume` (tasks that depend on them run again too)",
        args.plan.display()
    );
    Ok(EXIT_OK)
}
