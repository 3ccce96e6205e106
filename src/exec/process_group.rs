//! The processes of an exec step's attempt, as one process group that flow can find
//! again — even after flow itself was killed.
//!
//! A step's shell is the leader of a new process group, and everything it starts stays
//! in that group unless it leaves on purpose (`setsid`, a daemonising tool). The group
//! is what flow stops on a cancel, on a timeout and when a step ends with processes
//! left behind ([`stop`]), and what it records in the state before the command may run
//! ([`GroupId`]). Recording matters because nothing kills the shell's children when
//! flow dies: a `kill -9` of flow leaves them running, and a `--resume` that started
//! the step again would run two attempts at once. So the next `flow apply` looks up the
//! groups recorded as running and stops what is left of them first.
//!
//! A group is identified by its id (the leader's pid), the leader's start time
//! (`/proc/<pid>/stat` field 22, clock ticks since boot) and the boot id. Linux does not
//! hand out a pid while a process group of that number has members, and a process that
//! got the number later has another start time: so a reused number is never taken for
//! the step's group. Zombies count as gone: they run nothing, and an init that does not
//! reap them would keep them forever.

use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::process::{boot_id, this_host};
pub use crate::process::{describe, stopped, GroupId, Member, ProcStat};

/// How often a stopping group is looked at.
const POLL: Duration = Duration::from_millis(50);
/// How long a group gets to vanish after SIGKILL (a process in uninterruptible sleep,
/// on a hung NFS mount say, can take a while).
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Why a group could not be looked at or stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("process group {pgid} was started on host {host}; flow cannot see that host's processes from here")]
    Elsewhere { pgid: u32, host: String },
    #[error("process group {pgid} is still running after SIGKILL: {}", describe(.members))]
    Unkillable { pgid: u32, members: Vec<Member> },
}

impl GroupId {
    /// Whether the id can name a step's group at all: never 0 (to `killpg`, the
    /// caller's own group), 1 (init's) or flow's own group, whatever a state file says.
    fn plausible(&self) -> bool {
        self.pgid > 1 && self.pgid != nix::unistd::getpgrp().as_raw() as u32
    }

    /// The group's live members, leader first; empty when the group is gone.
    pub fn members(&self) -> Result<Vec<Member>, GroupError> {
        if !self.plausible() {
            return Ok(Vec::new());
        }
        if self.host != this_host() {
            return Err(GroupError::Elsewhere {
                pgid: self.pgid,
                host: self.host.clone(),
            });
        }
        if self.boot_id != boot_id() {
            return Ok(Vec::new());
        }
        let Ok(raw) = i32::try_from(self.pgid) else {
            return Ok(Vec::new());
        };
        if killpg(Pid::from_raw(raw), None) == Err(nix::errno::Errno::ESRCH) {
            // No process at all in the group, zombies included.
            return Ok(Vec::new());
        }
        if let Some(leader) = ProcStat::of(self.pgid) {
            if leader.start != self.leader_start {
                // The number belongs to a newer process: the group is long gone.
                return Ok(Vec::new());
            }
        }
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Ok(Vec::new());
        };
        let mut members: Vec<Member> = dir
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter_map(|pid| Some((pid, ProcStat::of(pid)?)))
            .filter(|(_, s)| s.pgrp == self.pgid && !s.zombie())
            .map(|(pid, s)| Member { pid, name: s.name })
            .collect();
        members.sort_by_key(|m| (m.pid != self.pgid, m.pid));
        Ok(members)
    }

    fn signal(&self, signal: Signal) {
        if !self.plausible() {
            return;
        }
        if let Ok(raw) = i32::try_from(self.pgid) {
            let _ = killpg(Pid::from_raw(raw), signal);
        }
    }

    /// Waits up to `limit` for the group to be gone; the members left.
    async fn wait_gone(&self, limit: Duration) -> Result<Vec<Member>, GroupError> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let members = self.members()?;
            if members.is_empty() || tokio::time::Instant::now() >= deadline {
                return Ok(members);
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

/// What [`stop`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stopped {
    /// The members found running when it began.
    pub members: Vec<Member>,
    /// SIGTERM was not enough within the grace period.
    pub killed: bool,
}

impl Stopped {
    /// `1234 (sh), 1240 (sleep) (SIGTERM)`, for messages.
    pub fn describe(&self) -> String {
        format!(
            "{} ({})",
            describe(&self.members),
            if self.killed {
                "SIGKILL after SIGTERM was ignored"
            } else {
                "SIGTERM"
            }
        )
    }
}

/// Stops every process of the group: SIGTERM, then SIGKILL after `grace`, and waits
/// until none is left. None when nothing was running.
pub async fn stop(group: &GroupId, grace: Duration) -> Result<Option<Stopped>, GroupError> {
    let members = group.members()?;
    if members.is_empty() {
        return Ok(None);
    }
    group.signal(Signal::SIGTERM);
    // A stopped process keeps SIGTERM pending until it is continued.
    group.signal(Signal::SIGCONT);
    let mut killed = false;
    if !group.wait_gone(grace).await?.is_empty() {
        killed = true;
        group.signal(Signal::SIGKILL);
        let left = group.wait_gone(KILL_WAIT).await?;
        if !left.is_empty() {
            return Err(GroupError::Unkillable {
                pgid: group.pgid,
                members: left,
            });
        }
    }
    Ok(Some(Stopped { members, killed }))
}

/// Sends SIGKILL to a group when dropped, unless disarmed: a step's future that is
/// dropped half-way (aborted after the cancel grace, or a panic) takes its processes
/// with it.
#[derive(Debug)]
pub struct KillOnDrop(Option<GroupId>);

impl KillOnDrop {
    pub fn new(group: GroupId) -> Self {
        KillOnDrop(Some(group))
    }

    /// The group is known to be gone.
    pub fn disarm(&mut self) {
        self.0 = None;
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(group) = self.0.take() {
            group.signal(Signal::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[tokio::test]
    async fn a_group_is_found_stopped_and_then_gone_and_a_reused_number_is_not_it() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & sleep 30 & wait"])
            .process_group(0)
            .spawn()
            .unwrap();
        let group = GroupId::of_leader(child.id()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        // Both children forked and turned into `sleep`.
        while group
            .members()
            .unwrap()
            .iter()
            .filter(|m| m.name == "sleep")
            .count()
            < 2
        {
            assert!(
                std::time::Instant::now() < deadline,
                "members did not appear"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let members = group.members().unwrap();
        assert_eq!(members[0].pid, child.id(), "leader first: {members:?}");
        assert_eq!(members[0].name, "sh");
        assert!(
            members[1..].iter().all(|m| m.name == "sleep"),
            "{members:?}"
        );

        let stopped = stop(&group, Duration::from_secs(5)).await.unwrap().unwrap();
        assert_eq!(stopped.members, members);
        assert!(!stopped.killed);
        child.wait().unwrap();
        assert!(group.members().unwrap().is_empty());
        assert_eq!(stop(&group, Duration::from_secs(1)).await.unwrap(), None);

        let mut other = group.clone();
        other.pgid = std::process::id();
        assert!(
            other.members().unwrap().is_empty(),
            "a pid whose start time differs is not the recorded group"
        );
        for pgid in [0, 1, nix::unistd::getpgrp().as_raw() as u32] {
            other.pgid = pgid;
            assert!(
                other.members().unwrap().is_empty(),
                "group {pgid} is never a step's"
            );
        }
        other.host = "elsewhere".into();
        other.pgid = 4242;
        assert!(matches!(other.members(), Err(GroupError::Elsewhere { .. })));
    }

    #[tokio::test]
    async fn a_stopped_member_is_continued_so_that_sigterm_reaches_it() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & kill -STOP $!; wait"])
            .process_group(0)
            .spawn()
            .unwrap();
        let group = GroupId::of_leader(child.id()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let members = group.members().unwrap();
            // The background child may be stopped before it has become `sleep`.
            if members
                .iter()
                .any(|m| m.pid != child.id() && stopped(m.pid))
            {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{members:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        let stopped = stop(&group, Duration::from_secs(5)).await.unwrap().unwrap();
        assert!(!stopped.killed, "SIGTERM was enough: {stopped:?}");
        child.wait().unwrap();
        assert!(group.members().unwrap().is_empty());
    }
}
