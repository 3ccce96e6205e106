//! `flow unlock PLAN [--force]`: deal with a lock whose holder is gone.
//!
//! Without `--force` it only looks: it says who holds the lock and whether the holder
//! looks gone, and removes a record left by a killed run (harmless: nobody holds the
//! OS lock). With `--force` it breaks a *stale* lock — holder pid dead on this host,
//! or no heartbeat for a while — and refuses to break a live one.

use std::path::PathBuf;

use super::{load_plan, EXIT_LOCKED, EXIT_OK};
use crate::state::lock::{self, Broken, Staleness};

#[derive(Debug, clap::Args)]
pub struct UnlockArgs {
    /// The plan file.
    pub plan: PathBuf,
    /// Break the lock when its holder is gone (dead pid, or no heartbeat).
    #[arg(long)]
    pub force: bool,
}

fn why(s: &Staleness) -> String {
    match s {
        Staleness::DeadProcess => "its process is not running".to_string(),
        Staleness::Silent(d) => format!(
            "no heartbeat for {}",
            humantime::format_duration(std::time::Duration::from_secs(d.as_secs()))
        ),
    }
}

pub async fn run(args: &UnlockArgs) -> anyhow::Result<u8> {
    let (plan, _) = match load_plan(&args.plan, &[]) {
        Ok(loaded) => loaded,
        Err(code) => return Ok(code),
    };
    let db = plan.state_db_path();
    let Some(info) = lock::inspect(&db)? else {
        outln!("plan `{}` is not locked", plan.name);
        return Ok(EXIT_OK);
    };
    if info.held && !args.force {
        let who = info.record.as_ref().map_or_else(
            || "a process whose lock record is unreadable".to_string(),
            |r| format!("pid {} on host {}", r.pid, r.host),
        );
        match &info.stale {
            Some(stale) => outln!(
                "plan `{}` is locked by {who}, which looks gone ({}); break the lock with `flow unlock {} --force`",
                plan.name,
                why(stale),
                args.plan.display()
            ),
            None => outln!(
                "plan `{}` is locked by {who}, which is alive; wait for it or stop it first",
                plan.name
            ),
        }
        return Ok(EXIT_LOCKED);
    }
    match lock::break_lock(&db) {
        Ok(Broken::NoLock) => outln!("plan `{}` is not locked", plan.name),
        Ok(Broken::Leftover(record)) => match record {
            Some(r) => outln!(
                "plan `{}` is not locked; removed the record left by pid {} on host {} (that run was probably killed)",
                plan.name, r.pid, r.host
            ),
            None => outln!("plan `{}` is not locked; removed a leftover lock file", plan.name),
        },
        Ok(Broken::Stale(record, stale)) => {
            let who = record.map_or_else(
                || "an unknown holder".to_string(),
                |r| format!("pid {} on host {}", r.pid, r.host),
            );
            outln!(
                "broke the lock of plan `{}` held by {who} ({}); the next `flow apply --resume` can run",
                plan.name,
                why(&stale)
            );
        }
        Err(e) => {
            eprintln!("error: plan `{}`: {e}", plan.name);
            return Ok(EXIT_LOCKED);
        }
    }
    Ok(EXIT_OK)
}
