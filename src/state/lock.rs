//! One run per plan state: an OS advisory lock plus a record of who holds it.
//!
//! Correctness comes from `flock` on `<state>.lock` beside the database: the kernel
//! releases it when the holder dies, however it dies, so a crashed run never blocks
//! the next one. The file's content — pid, host, start time, heartbeat — is only for
//! messages: "locked by pid 4242 on host db1, last heartbeat 2s ago". The holder
//! rewrites the heartbeat every [`HEARTBEAT_INTERVAL`].
//!
//! Stale locks: the flock is held but the holder is gone — its pid is dead on this
//! host, or, for a holder on another host sharing the folder, it has been silent (no
//! heartbeat) for [`STALE_AFTER`]. Such a lock is reported with the fix, and
//! `flow unlock --force` breaks it by unlinking the file: the next run creates a new
//! file and locks that. A run re-checks after locking that the path still names the
//! file it locked, so an unlink racing with an acquire cannot give two holders. A
//! holder alive on this host is never stale, however long it has been silent: a
//! stopped (SIGSTOP) or hung flow wakes up and carries on, so only stopping it makes
//! its lock free.
//!
//! Fencing: the holder's heartbeat thread also checks, every [`FENCE_CHECK`], that the
//! path still names the file it locked. When it does not — the lock was broken, and
//! perhaps taken by another run — it raises [`PlanLock::lost`] with who holds the lock
//! now, and the run stops instead of working beside the new holder.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::process::ProcStat;

/// How often the holder refreshes its heartbeat.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(5);
/// A heartbeat older than this marks a holder on another host as stale.
pub const STALE_AFTER: Duration = Duration::from_secs(30);
/// How often the holder checks that its lock is still its own.
pub const FENCE_CHECK: Duration = Duration::from_secs(1);

/// Who holds (or held) a lock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    pub pid: u32,
    pub host: String,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    /// The command line of the holder (`flow apply plans/x.toml --resume`).
    #[serde(default)]
    pub command: String,
    /// The holder's start time (clock ticks since boot, `/proc/<pid>/stat`), so a pid
    /// handed to another process after the holder died is not taken for the holder.
    /// None in records of older flows.
    #[serde(default)]
    pub start: Option<u64>,
}

impl LockRecord {
    fn current() -> Self {
        let now = Utc::now();
        LockRecord {
            pid: std::process::id(),
            host: this_host(),
            started_at: now,
            heartbeat_at: now,
            command: std::env::args().collect::<Vec<_>>().join(" "),
            start: ProcStat::of(std::process::id()).map(|s| s.start),
        }
    }

    fn to_json(&self) -> String {
        // Fixed-width timestamps keep every rewrite the same length, so a reader never
        // sees a shortened file.
        serde_json::json!({
            "pid": self.pid,
            "host": self.host,
            "started_at": self.started_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            "heartbeat_at": self.heartbeat_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            "command": self.command,
            "start": self.start,
        })
        .to_string()
            + "\n"
    }

    /// Time since the last heartbeat.
    pub fn silence(&self) -> Duration {
        (Utc::now() - self.heartbeat_at)
            .to_std()
            .unwrap_or_default()
    }
}

/// Why a held lock looks abandoned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Staleness {
    /// The holder's pid is not running on this host.
    DeadProcess,
    /// No heartbeat for this long (a holder on another host).
    Silent(Duration),
}

/// The state of a lock file, as `flow status` and `flow unlock` see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockInfo {
    /// Whether a process holds the flock right now.
    pub held: bool,
    /// The record in the file; None when missing or unreadable.
    pub record: Option<LockRecord>,
    /// Set when held but the holder looks gone.
    pub stale: Option<Staleness>,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{}", held_message(.path, .holder.as_deref(), .stale.as_ref()))]
    Held {
        path: PathBuf,
        holder: Option<Box<LockRecord>>,
        stale: Option<Staleness>,
    },
    #[error("lock file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}; {} — breaking the lock of a live run would let two runs write one state", held_message(.path, Some(.holder), None), stop_hint(.holder.pid))]
    HolderAlive {
        path: PathBuf,
        holder: Box<LockRecord>,
    },
}

fn ago(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// How to stop a live holder on this host.
fn stop_hint(pid: u32) -> String {
    if crate::process::stopped(pid) {
        // A stopped process keeps SIGTERM pending until it is continued.
        format!("stop it first (`kill {pid}; kill -CONT {pid}`)")
    } else {
        format!("stop it first (`kill {pid}`)")
    }
}

fn held_message(path: &Path, holder: Option<&LockRecord>, stale: Option<&Staleness>) -> String {
    let mut msg = match holder {
        Some(h) => format!(
            "another flow holds the lock {}: pid {} on host {} (started {}, last heartbeat {} ago)",
            path.display(),
            h.pid,
            h.host,
            h.started_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            ago(h.silence()),
        ),
        None => format!(
            "another flow holds the lock {} (its record is unreadable)",
            path.display()
        ),
    };
    match stale {
        Some(Staleness::DeadProcess) => {
            msg.push_str("; that process is not running any more, so the lock is stale")
        }
        Some(Staleness::Silent(d)) => msg.push_str(&format!(
            "; it has sent no heartbeat for {}, so it looks hung or gone",
            ago(*d)
        )),
        None => {
            let here = holder.filter(|h| h.host == this_host());
            if let Some(h) = here.filter(|h| crate::process::stopped(h.pid)) {
                msg.push_str(&format!(
                    "; it is stopped (SIGSTOP or Ctrl-Z): `kill -CONT {}` lets it go on",
                    h.pid
                ));
            } else if let Some(h) = holder.filter(|h| h.silence() > STALE_AFTER) {
                msg.push_str(&format!(
                    "; it has sent no heartbeat for {} but its process is alive (hung?)",
                    ago(h.silence())
                ));
            }
        }
    }
    msg
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> LockError + '_ {
    move |source| LockError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub use crate::process::this_host;

/// Whether `pid` names a live process on this host.
pub fn pid_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    match nix::sys::signal::kill(nix::unistd::Pid::from_raw(raw), None) {
        Ok(()) => true,
        Err(nix::errno::Errno::EPERM) => true,
        Err(_) => false,
    }
}

/// Whether the holder of a record made on this host still runs: its pid is alive and,
/// when the record has it, with the same start time.
fn holder_alive(record: &LockRecord) -> bool {
    pid_alive(record.pid)
        && record
            .start
            .is_none_or(|start| ProcStat::of(record.pid).is_none_or(|s| s.start == start))
}

/// The lock file beside a state database (`.flow/trips.db` → `.flow/trips.lock`).
pub fn lock_path(state_db: &Path) -> PathBuf {
    state_db.with_extension("lock")
}

fn read_record(file: &mut File) -> Option<LockRecord> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(text.trim()).ok()
}

fn staleness(record: Option<&LockRecord>) -> Option<Staleness> {
    let record = record?;
    if record.host == this_host() {
        // Here the pid decides: a live holder is never stale, however silent.
        return (!holder_alive(record)).then_some(Staleness::DeadProcess);
    }
    let silence = record.silence();
    (silence > STALE_AFTER).then_some(Staleness::Silent(silence))
}

fn same_file(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// A held lock; released (and its file removed) on drop.
#[derive(Debug)]
pub struct PlanLock {
    path: PathBuf,
    file: File,
    /// The record left by an earlier holder that did not release the lock (killed).
    pub previous: Option<LockRecord>,
    heartbeat: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
    lost: watch::Receiver<Option<String>>,
}

impl PlanLock {
    /// Takes the lock of the state database at `state_db`, or says who holds it.
    pub fn acquire(state_db: &Path) -> Result<PlanLock, LockError> {
        let path = lock_path(state_db);
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io_err(&path))?;
        }
        for _ in 0..8 {
            let mut file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(io_err(&path))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(TryLockError::WouldBlock) => {
                    let holder = read_record(&mut file);
                    let stale = staleness(holder.as_ref());
                    return Err(LockError::Held {
                        path,
                        holder: holder.map(Box::new),
                        stale,
                    });
                }
                Err(TryLockError::Error(e)) => return Err(io_err(&path)(e)),
            }
            if !same_file(&file, &path) {
                // Unlinked (released or broken) between open and lock: try again.
                continue;
            }
            let previous = read_record(&mut file);
            let record = LockRecord::current();
            write_record(&file, &record).map_err(io_err(&path))?;
            let (lost_tx, lost) = watch::channel(None);
            let mut lock = PlanLock {
                path,
                file,
                previous,
                heartbeat: None,
                lost,
            };
            lock.start_heartbeat(record, lost_tx);
            return Ok(lock);
        }
        Err(io_err(&path)(std::io::Error::other(
            "the lock file kept being replaced while taking it",
        )))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Holds a message once the lock is found broken or taken (fencing).
    pub fn lost(&self) -> watch::Receiver<Option<String>> {
        self.lost.clone()
    }

    fn start_heartbeat(&mut self, mut record: LockRecord, lost: watch::Sender<Option<String>>) {
        let Ok(file) = self.file.try_clone() else {
            return;
        };
        let path = self.path.clone();
        let (stop, stopped) = mpsc::channel::<()>();
        let handle = std::thread::Builder::new()
            .name("flow-lock-heartbeat".into())
            .spawn(move || {
                let mut last_beat = std::time::Instant::now();
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(FENCE_CHECK) {
                    if !same_file(&file, &path) {
                        let message = taken_message(&path);
                        tracing::error!(lock = %path.display(), "{message}");
                        let _ = lost.send(Some(message));
                        return;
                    }
                    if last_beat.elapsed() >= HEARTBEAT_INTERVAL {
                        last_beat = std::time::Instant::now();
                        record.heartbeat_at = Utc::now();
                        if let Err(e) = write_record(&file, &record) {
                            tracing::warn!(error = %e, "cannot refresh the lock heartbeat");
                        }
                    }
                }
            });
        if let Ok(handle) = handle {
            self.heartbeat = Some((stop, handle));
        }
    }
}

/// Who has the lock at `path` now that it is not ours.
fn taken_message(path: &Path) -> String {
    let record = File::open(path).ok().and_then(|mut f| read_record(&mut f));
    match record {
        Some(h) => format!(
            "the lock {} was broken and is now held by pid {} on host {} (started {}, `{}`)",
            path.display(),
            h.pid,
            h.host,
            h.started_at.to_rfc3339_opts(SecondsFormat::Secs, true),
            h.command
        ),
        None if path.exists() => format!(
            "the lock {} was broken and replaced by another holder (its record is unreadable)",
            path.display()
        ),
        None => format!(
            "the lock file {} was removed (broken with `flow unlock --force`, or deleted)",
            path.display()
        ),
    }
}

fn write_record(file: &File, record: &LockRecord) -> std::io::Result<()> {
    let text = record.to_json();
    file.write_all_at(text.as_bytes(), 0)?;
    file.set_len(text.len() as u64)?;
    let mut f = file;
    f.flush()
}

impl Drop for PlanLock {
    fn drop(&mut self) {
        if let Some((stop, handle)) = self.heartbeat.take() {
            drop(stop);
            let _ = handle.join();
        }
        // Remove the file while still holding the lock, and only if it is ours; a
        // waiting acquirer that opened it notices the unlink and retries.
        if same_file(&self.file, &self.path) {
            let _ = std::fs::remove_file(&self.path);
        }
        // Closing the file releases the flock.
    }
}

/// Looks at the lock without taking it; None when there is no lock file.
pub fn inspect(state_db: &Path) -> Result<Option<LockInfo>, LockError> {
    let path = lock_path(state_db);
    let mut file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&path)(e)),
    };
    let record = read_record(&mut file);
    let held = match file.try_lock_shared() {
        Ok(()) => {
            let _ = file.unlock();
            false
        }
        Err(TryLockError::WouldBlock) => true,
        Err(TryLockError::Error(e)) => return Err(io_err(&path)(e)),
    };
    let stale = if held {
        staleness(record.as_ref())
    } else {
        None
    };
    Ok(Some(LockInfo {
        held,
        record,
        stale,
    }))
}

/// What `break_lock` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Broken {
    /// There was no lock file.
    NoLock,
    /// Nobody held the lock; the leftover record (of a killed run) was removed.
    Leftover(Option<LockRecord>),
    /// A stale holder's lock was broken.
    Stale(Option<LockRecord>, Staleness),
}

/// Breaks a lock nobody should hold any more (`flow unlock --force`). Refuses when the
/// holder is alive on this host (however long silent), or on another host with a
/// fresh heartbeat.
pub fn break_lock(state_db: &Path) -> Result<Broken, LockError> {
    let path = lock_path(state_db);
    let Some(info) = inspect(state_db)? else {
        return Ok(Broken::NoLock);
    };
    if !info.held {
        let _ = std::fs::remove_file(&path);
        return Ok(Broken::Leftover(info.record));
    }
    match info.stale {
        Some(stale) => {
            std::fs::remove_file(&path).map_err(io_err(&path))?;
            Ok(Broken::Stale(info.record, stale))
        }
        None => match info.record {
            Some(holder) => Err(LockError::HolderAlive {
                path,
                holder: Box::new(holder),
            }),
            None => Err(LockError::Held {
                path,
                holder: None,
                stale: None,
            }),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    #[test]
    fn a_second_acquire_names_the_holder_and_release_removes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("plan.db");
        let lock = PlanLock::acquire(&db).unwrap();
        assert!(lock.previous.is_none());
        let err = PlanLock::acquire(&db).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
        assert!(msg.contains(&this_host()), "{msg}");
        match err {
            LockError::Held { stale, .. } => assert_eq!(stale, None),
            other => panic!("{other}"),
        }
        let info = inspect(&db).unwrap().unwrap();
        assert!(info.held);
        drop(lock);
        assert!(!lock_path(&db).exists());
        assert!(inspect(&db).unwrap().is_none());
        PlanLock::acquire(&db).unwrap();
    }

    #[test]
    fn a_killed_holder_leaves_a_record_that_the_next_run_reports() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("plan.db");
        let mut record = LockRecord::current();
        record.pid = dead_pid();
        std::fs::write(lock_path(&db), record.to_json()).unwrap();
        let info = inspect(&db).unwrap().unwrap();
        assert!(!info.held);
        let lock = PlanLock::acquire(&db).unwrap();
        assert_eq!(lock.previous.as_ref().map(|r| r.pid), Some(record.pid));
    }

    #[test]
    fn a_held_lock_of_a_dead_pid_is_stale_and_can_be_broken() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("plan.db");
        let mut record = LockRecord::current();
        record.pid = dead_pid();
        let path = lock_path(&db);
        std::fs::write(&path, record.to_json()).unwrap();
        // Another open file description holds the flock, as a wedged holder would.
        let holder = File::open(&path).unwrap();
        holder.lock().unwrap();
        let err = PlanLock::acquire(&db).unwrap_err();
        assert!(err.to_string().contains("not running any more"), "{err}");
        assert!(matches!(
            break_lock(&db).unwrap(),
            Broken::Stale(_, Staleness::DeadProcess)
        ));
        let lock = PlanLock::acquire(&db).unwrap();
        drop(lock);
        drop(holder);
    }

    #[test]
    fn a_live_fresh_holder_cannot_be_broken() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("plan.db");
        let _lock = PlanLock::acquire(&db).unwrap();
        let err = break_lock(&db).unwrap_err();
        assert!(err.to_string().contains("stop it first"), "{err}");
    }

    #[test]
    fn a_silent_holder_elsewhere_is_stale_a_silent_live_one_here_is_not() {
        let mut record = LockRecord::current();
        record.heartbeat_at = Utc::now() - chrono::Duration::minutes(5);
        assert_eq!(
            staleness(Some(&record)),
            None,
            "this process is alive on this host"
        );
        record.host = "another-host".into();
        assert!(matches!(
            staleness(Some(&record)),
            Some(Staleness::Silent(_))
        ));
        record.heartbeat_at = Utc::now();
        assert_eq!(staleness(Some(&record)), None);
    }

    #[test]
    fn a_reused_pid_is_not_the_holder() {
        let mut record = LockRecord::current();
        assert!(record.start.is_some());
        assert!(holder_alive(&record));
        record.start = record.start.map(|s| s + 1);
        assert_eq!(
            staleness(Some(&record)),
            Some(Staleness::DeadProcess),
            "same pid, another start time: another process"
        );
        record.start = None;
        assert!(
            holder_alive(&record),
            "older records: the pid alone decides"
        );
        let old: LockRecord = serde_json::from_str(
            r#"{"pid":1,"host":"h","started_at":"2026-01-01T00:00:00.000Z","heartbeat_at":"2026-01-01T00:00:00.000Z"}"#,
        )
        .unwrap();
        assert_eq!(old.start, None);
    }

    #[test]
    fn a_live_silent_holder_cannot_be_broken() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("plan.db");
        let path = lock_path(&db);
        let mut record = LockRecord::current();
        record.heartbeat_at = Utc::now() - chrono::Duration::minutes(5);
        std::fs::write(&path, record.to_json()).unwrap();
        let holder = File::open(&path).unwrap();
        holder.lock().unwrap();
        let err = break_lock(&db).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("stop it first"), "{msg}");
        assert!(msg.contains("no heartbeat for 5m"), "{msg}");
        assert!(path.exists());
    }

    #[test]
    fn a_broken_and_taken_lock_raises_the_fence_with_the_new_holder() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("plan.db");
        let lock = PlanLock::acquire(&db).unwrap();
        let mut lost = lock.lost();
        assert!(lost.borrow().is_none());
        std::fs::remove_file(lock.path()).unwrap();
        let mut other = LockRecord::current();
        other.pid = 4242;
        other.host = "db2".into();
        std::fs::write(lock.path(), other.to_json()).unwrap();
        let message = fence_message(&mut lost);
        assert!(message.contains("pid 4242 on host db2"), "{message}");
        drop(lock);
        assert!(
            lock_path(&db).exists(),
            "the new holder's file is left alone"
        );
    }

    /// Waits a few fence checks for the fence to be raised; its message.
    fn fence_message(lost: &mut tokio::sync::watch::Receiver<Option<String>>) -> String {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            tokio::time::timeout(FENCE_CHECK * 5, lost.wait_for(Option::is_some))
                .await
                .expect("the fence is raised within a few checks")
                .unwrap()
                .clone()
                .unwrap()
        })
    }

    #[test]
    fn a_removed_lock_file_raises_the_fence_too() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("plan.db");
        let lock = PlanLock::acquire(&db).unwrap();
        let mut lost = lock.lost();
        std::fs::remove_file(lock.path()).unwrap();
        let message = fence_message(&mut lost);
        assert!(message.contains("was removed"), "{message}");
    }
}
