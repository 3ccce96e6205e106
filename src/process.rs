//! The identity of OS processes, as flow records it: what `/proc/<pid>/stat` says
//! about a process, this boot and this host, and a process group as the state stores
//! it. A leaf: `state` (locks, recorded groups) and `exec` (stopping groups) both use
//! it, and it uses neither.

use serde::{Deserialize, Serialize};

/// What `/proc/<pid>/stat` says about a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcStat {
    /// The command name (`comm`, at most 15 bytes).
    pub name: String,
    /// State letter: `R`, `S`, `D`, `T` (stopped), `Z` (zombie)…
    pub state: char,
    pub pgrp: u32,
    /// Start time in clock ticks since boot.
    pub start: u64,
}

impl ProcStat {
    /// The process's stat; None when there is no such process (or no /proc).
    pub fn of(pid: u32) -> Option<ProcStat> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        Self::parse(&text)
    }

    /// `pid (comm) state ppid pgrp …`: the name may hold spaces and parentheses, so the
    /// fields are counted from the last `)`.
    fn parse(text: &str) -> Option<ProcStat> {
        let (head, rest) = text.rsplit_once(')')?;
        let name = head.split_once('(')?.1.to_string();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // Fields from 3 on: state is 3, pgrp 5, starttime 22.
        Some(ProcStat {
            name,
            state: fields.first()?.chars().next()?,
            pgrp: fields.get(2)?.parse().ok()?,
            start: fields.get(19)?.parse().ok()?,
        })
    }

    pub fn zombie(&self) -> bool {
        self.state == 'Z'
    }
}

/// Whether `pid` is a process stopped by a signal (SIGSTOP, Ctrl-Z) or a tracer.
pub fn stopped(pid: u32) -> bool {
    ProcStat::of(pid).is_some_and(|s| matches!(s.state, 'T' | 't'))
}

/// This boot's id: a process group recorded before a reboot is gone.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// A process group as recorded in the state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupId {
    pub pgid: u32,
    /// The leader's start time (clock ticks since boot).
    pub leader_start: u64,
    pub boot_id: String,
    pub host: String,
}

impl GroupId {
    /// The group led by `pid` (a process that just called `setpgid(0, 0)`).
    pub fn of_leader(pid: u32) -> std::io::Result<GroupId> {
        let stat = ProcStat::of(pid).ok_or_else(|| {
            std::io::Error::other(format!("cannot read /proc/{pid}/stat of the step's shell"))
        })?;
        Ok(GroupId {
            pgid: pid,
            leader_start: stat.start,
            boot_id: boot_id(),
            host: this_host(),
        })
    }
}

/// A live member of a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub pid: u32,
    pub name: String,
}

/// `1234 (sh), 1240 (sleep)`.
pub fn describe(members: &[Member]) -> String {
    members
        .iter()
        .map(|m| format!("{} ({})", m.pid, m.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// This host's name, as locks and recorded process groups name it.
pub fn this_host() -> String {
    hostname::get()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let s = ProcStat::parse(
            "42 (a (b) c) S 1 40 40 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 200",
        )
        .unwrap();
        assert_eq!(s.name, "a (b) c");
        assert_eq!(s.state, 'S');
        assert_eq!(s.pgrp, 40);
        assert_eq!(s.start, 987654);
        assert!(ProcStat::parse("garbage").is_none());
        assert!(ProcStat::parse("1 (x) S 1").is_none());
    }

    #[test]
    fn this_process_has_a_stat() {
        let me = ProcStat::of(std::process::id()).unwrap();
        assert!(me.start > 0);
        assert!(!me.zombie());
    }
}
