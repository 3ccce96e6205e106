//! The embedded default: one SQLite database per plan (`.flow/<plan>.db`).
//!
//! WAL mode, so `flow status` and `flow plan` read while an apply writes, and a batch
//! of transitions is one transaction — the writer thread decides the batches. With
//! `synchronous = FULL` every commit reaches the disk before the scheduler acts on it,
//! which survives power loss as well as `kill -9`; group commit keeps that affordable.
//!
//! Transitions are appended to a `journal` table, not applied to `tasks` in place:
//! updating rows of a 100k-task table in place dirties a random page per row, and
//! every commit rewrites all of them into the WAL (measured: ~30k transitions/s,
//! whatever the sync mode). Appends touch the last pages only. Reads fold the journal
//! over `tasks` (both in one read transaction, so they see one moment), and
//! [`compact`](StateStore::compact) folds it into `tasks` for good — at the end of a run,
//! and whenever it grows past [`COMPACT_AT`] entries. Both use [`fold`], the one
//! definition of what a transition means.
//!
//! Schema versions: 1 had `tasks`, `journal` and `runs`; 2 adds `processes` (the
//! process groups of running exec steps). Every statement of [`SCHEMA`] is `IF NOT
//! EXISTS`, so bringing an older database up to date is running it again.
//!
//! Timestamps are RFC 3339 text and JSON columns are text, so the file can be read
//! with the `sqlite3` shell when something needs explaining.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Row};

use super::{
    fold, Def, Entry, GroupChange, Op, ProcessRecord, RunRecord, StateError, StateStore,
    TaskRecord, TaskStatus, Transition,
};
use crate::graph::{Fingerprint, TaskId};
use crate::process::GroupId;
use crate::task::TaskOutcome;

const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tasks (
    id          TEXT PRIMARY KEY NOT NULL,
    kind        TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    inputs      TEXT NOT NULL,
    status      TEXT NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    started_at  TEXT,
    ended_at    TEXT,
    rows        INTEGER,
    bytes       INTEGER,
    checksum    TEXT,
    outputs     TEXT NOT NULL DEFAULT '[]',
    detail      TEXT NOT NULL DEFAULT 'null',
    note        TEXT,
    error       TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS journal (
    seq         INTEGER PRIMARY KEY,
    op          TEXT NOT NULL,
    id          TEXT NOT NULL,
    kind        TEXT,
    fingerprint TEXT,
    inputs      TEXT,
    attempts    INTEGER,
    started_at  TEXT,
    ended_at    TEXT,
    rows        INTEGER,
    bytes       INTEGER,
    checksum    TEXT,
    outputs     TEXT,
    detail      TEXT,
    note        TEXT,
    error       TEXT
);
CREATE TABLE IF NOT EXISTS runs (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    started_at  TEXT NOT NULL,
    ended_at    TEXT,
    pid         INTEGER NOT NULL,
    host        TEXT NOT NULL,
    outcome     TEXT
);
CREATE TABLE IF NOT EXISTS processes (
    task         TEXT PRIMARY KEY NOT NULL,
    attempt      INTEGER NOT NULL,
    started_at   TEXT NOT NULL,
    pgid         INTEGER NOT NULL,
    leader_start INTEGER NOT NULL,
    boot_id      TEXT NOT NULL,
    host         TEXT NOT NULL
) WITHOUT ROWID;
";

/// Journal entries that trigger a compaction.
pub const COMPACT_AT: u64 = 200_000;

const TASK_COLUMNS: &str = "id, kind, fingerprint, inputs, status, attempts, started_at,
    ended_at, rows, bytes, checksum, outputs, detail, note, error";

const JOURNAL_INSERT: &str = "INSERT INTO journal (op, id, kind, fingerprint, inputs,
        attempts, started_at, ended_at, rows, bytes, checksum, outputs, detail, note, error)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)";

/// Registration goes straight into `tasks` (new rows arrive in id order, so these are
/// appends too): insert as pending; a row still pending takes the new definition.
const REGISTER: &str = "INSERT INTO tasks (id, kind, fingerprint, inputs, status)
    VALUES (?1, ?2, ?3, ?4, 'pending')
    ON CONFLICT(id) DO UPDATE SET kind = excluded.kind, fingerprint = excluded.fingerprint,
        inputs = excluded.inputs
    WHERE tasks.status = 'pending'";

/// Compaction, fast path: a task whose newest entry is `done` is fully described by it.
const COMPACT_DONE: &str = "INSERT OR REPLACE INTO tasks (id, kind, fingerprint, inputs, status,
        attempts, started_at, ended_at, rows, bytes, checksum, outputs, detail, note, error)
    SELECT j.id, j.kind, j.fingerprint, j.inputs, 'done', j.attempts, j.started_at, j.ended_at,
        j.rows, j.bytes, j.checksum, coalesce(j.outputs, '[]'), coalesce(j.detail, 'null'),
        j.note, NULL
    FROM journal j JOIN (SELECT id, max(seq) AS newest FROM journal GROUP BY id) n
        ON j.seq = n.newest
    WHERE j.op = 'done'";

/// Compaction, slow path: entries of tasks whose newest entry is not `done`, in order.
/// (The newest entry per task is found by grouping ids and sequence numbers only.)
const COMPACT_REST: &str = "SELECT op, id, kind, fingerprint, inputs, attempts, started_at,
        ended_at, rows, bytes, checksum, outputs, detail, note, error
    FROM journal
    WHERE id IN (SELECT j.id FROM journal j
                 JOIN (SELECT id, max(seq) AS newest FROM journal GROUP BY id) n
                     ON j.seq = n.newest
                 WHERE j.op <> 'done')
    ORDER BY seq";

const TASK_PUT: &str = "INSERT OR REPLACE INTO tasks (id, kind, fingerprint, inputs, status,
        attempts, started_at, ended_at, rows, bytes, checksum, outputs, detail, note, error)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)";

/// How hard a commit tries to reach the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous = FULL`: a commit survives power loss (the default).
    Full,
    /// `synchronous = NORMAL`: a commit survives a killed process, not power loss.
    Normal,
}

pub struct SqliteStore {
    path: PathBuf,
    conn: Connection,
    journal_rows: u64,
    /// The `synchronous` setting of task transitions.
    sync: &'static str,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish()
    }
}

fn ts(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn int(v: Option<u64>) -> Option<i64> {
    v.map(|v| i64::try_from(v).unwrap_or(i64::MAX))
}

/// SQLite's own verdict that a file is not a (healthy) database, as [`StateError::Damaged`].
fn damaged(path: &Path, e: &rusqlite::Error) -> Option<StateError> {
    let problem = match e.sqlite_error_code()? {
        rusqlite::ErrorCode::NotADatabase => "it is not an SQLite database",
        rusqlite::ErrorCode::DatabaseCorrupt => "SQLite reports the file as corrupt",
        _ => return None,
    };
    Some(StateError::Damaged {
        path: path.to_path_buf(),
        problem: format!("{problem} ({e})"),
    })
}

fn open_error(path: &Path, e: rusqlite::Error) -> StateError {
    damaged(path, &e).unwrap_or_else(|| StateError::Open {
        path: path.to_path_buf(),
        source: Arc::new(e),
    })
}

/// A 0-byte state file is not "no state": SQLite would happily treat it as a new,
/// empty database, and a run would start over as if nothing had been done. (A database
/// whose pages are all still in its WAL has a non-empty `-wal` file and is fine.)
fn refuse_empty(path: &Path) -> Result<(), StateError> {
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    if meta.is_dir() {
        return Err(StateError::Damaged {
            path: path.to_path_buf(),
            problem: "it is a folder, not a file".into(),
        });
    }
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    let wal_len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    if meta.len() == 0 && wal_len == 0 {
        return Err(StateError::Damaged {
            path: path.to_path_buf(),
            problem: "the file is empty (0 bytes)".into(),
        });
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating when missing) the state database at `path`, and its folder.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        Self::open_with(path, Durability::Full)
    }

    pub fn open_with(path: &Path, durability: Durability) -> Result<Self, StateError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| StateError::Open {
                path: path.to_path_buf(),
                source: Arc::new(rusqlite::Error::InvalidPath(
                    format!("cannot create {}: {e}", parent.display()).into(),
                )),
            })?;
        }
        if !path.exists() {
            Self::create(path)?;
        }
        refuse_empty(path)?;
        let conn = Connection::open(path).map_err(|e| open_error(path, e))?;
        Self::init(path, conn, durability)
    }

    /// Creates a new state database under a temporary name and renames it into place
    /// once its schema is written, so a run killed at any moment never leaves an empty
    /// file behind (which the next run would report as damaged).
    fn create(path: &Path) -> Result<(), StateError> {
        let tmp = PathBuf::from(format!("{}.new-{}", path.display(), std::process::id()));
        let conn = Connection::open(&tmp).map_err(|e| open_error(&tmp, e))?;
        // Closing the connection checkpoints the WAL into the file.
        drop(Self::init(&tmp, conn, Durability::Full)?);
        std::fs::rename(&tmp, path).map_err(|e| StateError::Open {
            path: path.to_path_buf(),
            source: Arc::new(rusqlite::Error::InvalidPath(
                format!("cannot move {} into place: {e}", tmp.display()).into(),
            )),
        })
    }

    /// Moves a damaged state database (and its WAL and shared-memory files) aside to
    /// `<db>.damaged-<UTC time>`, so `--restart` can start a new one without losing
    /// what the old file holds. Returns where it went.
    pub fn set_aside(path: &Path) -> std::io::Result<PathBuf> {
        let stamp = Utc::now().format("%Y%m%dT%H%M%SZ");
        let kept = PathBuf::from(format!("{}.damaged-{stamp}", path.display()));
        std::fs::rename(path, &kept)?;
        for suffix in ["-wal", "-shm"] {
            let side = PathBuf::from(format!("{}{suffix}", path.display()));
            if side.exists() {
                std::fs::rename(&side, format!("{}{suffix}", kept.display()))?;
            }
        }
        Ok(kept)
    }

    /// Opens an existing state database; None when there is none (nothing ran yet).
    pub fn open_existing(path: &Path) -> Result<Option<Self>, StateError> {
        if !path.exists() {
            return Ok(None);
        }
        refuse_empty(path)?;
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| open_error(path, e))?;
        Self::init(path, conn, Durability::Full).map(Some)
    }

    fn init(path: &Path, conn: Connection, durability: Durability) -> Result<Self, StateError> {
        let mut store = SqliteStore {
            path: path.to_path_buf(),
            conn,
            journal_rows: 0,
            sync: match durability {
                Durability::Full => "FULL",
                Durability::Normal => "NORMAL",
            },
        };
        let sync = store.sync;
        store
            .conn
            .busy_timeout(std::time::Duration::from_secs(10))
            .map_err(|e| store.err(e))?;
        // Look before changing anything: a file that is not flow's state stays as it was.
        let version: i64 = store
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| store.err(e))?;
        if version == 0 {
            let tables: i64 = store
                .conn
                .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
                .map_err(|e| store.err(e))?;
            if tables > 0 {
                return Err(StateError::Damaged {
                    path: path.to_path_buf(),
                    problem: format!(
                        "it is an SQLite database with {tables} table(s), but not one flow wrote (no schema version)"
                    ),
                });
            }
        }
        let mode: String = store
            .conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(|e| store.err(e))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), mode, "state database is not in WAL mode");
        }
        store
            .conn
            .pragma_update(None, "synchronous", sync)
            .map_err(|e| store.err(e))?;
        // Compaction sorts and rewrites the journal: keep that in memory.
        store
            .conn
            .execute_batch("PRAGMA temp_store = MEMORY; PRAGMA cache_size = -16384;")
            .map_err(|e| store.err(e))?;
        if version > SCHEMA_VERSION {
            return Err(StateError::NewerSchema {
                path: path.to_path_buf(),
                found: version,
                known: SCHEMA_VERSION,
            });
        }
        if version < SCHEMA_VERSION {
            // Only a new or older database is written here: a reader (`flow status`
            // during an apply) of a current one must not need the write lock.
            store
                .conn
                .execute_batch(&format!(
                    "BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                ))
                .map_err(|e| store.err(e))?;
        }
        let rows: i64 = store
            .conn
            .query_row("SELECT count(*) FROM journal", [], |r| r.get(0))
            .map_err(|e| store.err(e))?;
        store.journal_rows = rows.max(0) as u64;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: rusqlite::Error) -> StateError {
        damaged(&self.path, &e).unwrap_or_else(|| StateError::Sqlite {
            path: self.path.clone(),
            source: Arc::new(e),
        })
    }

    fn corrupt(&self, id: &str, column: &'static str, problem: impl ToString) -> StateError {
        StateError::Corrupt {
            path: self.path.clone(),
            id: id.to_string(),
            column,
            problem: problem.to_string(),
        }
    }

    fn time(
        &self,
        row: &Row<'_>,
        col: usize,
        id: &str,
        name: &'static str,
    ) -> Result<Option<DateTime<Utc>>, StateError> {
        let text: Option<String> = row.get(col).map_err(|e| self.err(e))?;
        text.map(|t| {
            DateTime::parse_from_rfc3339(&t)
                .map(|d| d.with_timezone(&Utc))
                .map_err(|e| self.corrupt(id, name, e))
        })
        .transpose()
    }

    fn json<T: serde::de::DeserializeOwned>(
        &self,
        row: &Row<'_>,
        col: usize,
        id: &str,
        name: &'static str,
    ) -> Result<Option<T>, StateError> {
        let text: Option<String> = row.get(col).map_err(|e| self.err(e))?;
        text.map(|t| serde_json::from_str(&t).map_err(|e| self.corrupt(id, name, e)))
            .transpose()
    }

    /// A `tasks` row (columns in [`TASK_COLUMNS`] order).
    fn record(&self, row: &Row<'_>) -> Result<TaskRecord, StateError> {
        let get_err = |e| self.err(e);
        let id: String = row.get(0).map_err(get_err)?;
        let status: String = row.get(4).map_err(get_err)?;
        let rows: Option<i64> = row.get(8).map_err(get_err)?;
        let bytes: Option<i64> = row.get(9).map_err(get_err)?;
        let attempts: i64 = row.get(5).map_err(get_err)?;
        Ok(TaskRecord {
            kind: row.get(1).map_err(get_err)?,
            fingerprint: Fingerprint(row.get(2).map_err(get_err)?),
            inputs: self.json(row, 3, &id, "inputs")?.unwrap_or_default(),
            status: TaskStatus::parse(&status)
                .ok_or_else(|| self.corrupt(&id, "status", format!("`{status}`")))?,
            attempts: u32::try_from(attempts).unwrap_or(0),
            started_at: self.time(row, 6, &id, "started_at")?,
            ended_at: self.time(row, 7, &id, "ended_at")?,
            rows: rows.map(|v| v.max(0) as u64),
            bytes: bytes.map(|v| v.max(0) as u64),
            checksum: row.get(10).map_err(get_err)?,
            outputs: self.json(row, 11, &id, "outputs")?.unwrap_or_default(),
            detail: self
                .json(row, 12, &id, "detail")?
                .unwrap_or(serde_json::Value::Null),
            note: row.get(13).map_err(get_err)?,
            error: row.get(14).map_err(get_err)?,
            id: TaskId(id),
        })
    }

    /// A `journal` row (columns after `seq`, in insertion order).
    fn entry(&self, row: &Row<'_>) -> Result<Entry, StateError> {
        let get_err = |e| self.err(e);
        let op: String = row.get(0).map_err(get_err)?;
        let id: String = row.get(1).map_err(get_err)?;
        let op =
            Op::parse(&op).ok_or_else(|| self.corrupt(&id, "journal op", format!("`{op}`")))?;
        let kind: Option<String> = row.get(2).map_err(get_err)?;
        let def = match kind {
            Some(kind) => Some(Def {
                kind,
                fingerprint: Fingerprint(
                    row.get::<_, Option<String>>(3)
                        .map_err(get_err)?
                        .unwrap_or_default(),
                ),
                inputs: self.json(row, 4, &id, "inputs")?.unwrap_or_default(),
            }),
            None => None,
        };
        let attempts: Option<i64> = row.get(5).map_err(get_err)?;
        let outcome = if op == Op::Done {
            let rows: Option<i64> = row.get(8).map_err(get_err)?;
            let bytes: Option<i64> = row.get(9).map_err(get_err)?;
            Some(TaskOutcome {
                rows: rows.map(|v| v.max(0) as u64),
                bytes: bytes.map(|v| v.max(0) as u64),
                checksum: row.get(10).map_err(get_err)?,
                outputs: self.json(row, 11, &id, "outputs")?.unwrap_or_default(),
                detail: self
                    .json(row, 12, &id, "detail")?
                    .unwrap_or(serde_json::Value::Null),
                note: row.get(13).map_err(get_err)?,
            })
        } else {
            None
        };
        Ok(Entry {
            op,
            def,
            attempts: attempts.map(|a| u32::try_from(a).unwrap_or(0)),
            started_at: self.time(row, 6, &id, "started_at")?,
            ended_at: self.time(row, 7, &id, "ended_at")?,
            outcome,
            error: row.get(14).map_err(get_err)?,
            id: TaskId(id),
        })
    }

    fn journal_insert(tx: &rusqlite::Transaction<'_>, t: &Transition) -> rusqlite::Result<()> {
        // Written straight from the transition: no owned copy of the inputs.
        let (task, attempts, started_at, ended_at, outcome, error) = match t {
            Transition::Register(task) | Transition::Rerecord(task) => {
                (Some(task.task()), None, None, None, None, None)
            }
            Transition::Start { task, attempt, at } => (
                Some(task.task()),
                Some(*attempt),
                Some(at),
                None,
                None,
                None,
            ),
            Transition::Retry { attempt, error, .. } => {
                (None, Some(*attempt), None, None, None, Some(error.as_str()))
            }
            Transition::Done {
                task,
                attempts,
                started_at,
                ended_at,
                outcome,
            } => (
                Some(task.task()),
                Some(*attempts),
                Some(started_at),
                Some(ended_at),
                Some(outcome),
                None,
            ),
            Transition::Failed {
                task,
                attempts,
                started_at,
                ended_at,
                error,
            } => (
                Some(task.task()),
                Some(*attempts),
                started_at.as_ref(),
                Some(ended_at),
                None,
                Some(error.as_str()),
            ),
            Transition::Skipped { task, reason } => (
                Some(task.task()),
                None,
                None,
                None,
                None,
                Some(reason.as_str()),
            ),
            Transition::Reset { .. } => (None, None, None, None, None, None),
        };
        let inputs =
            task.map(|t| serde_json::to_string(&t.inputs).expect("a map of strings serializes"));
        let outputs = outcome
            .map(|o| serde_json::to_string(&o.outputs).expect("a list of strings serializes"));
        let detail =
            outcome.map(|o| serde_json::to_string(&o.detail).expect("a JSON value serializes"));
        tx.prepare_cached(JOURNAL_INSERT)?.execute(params![
            t.op().as_str(),
            t.id().as_str(),
            task.map(|t| t.kind.as_str()),
            task.map(|t| t.fingerprint.0.as_str()),
            inputs,
            attempts,
            started_at.map(ts),
            ended_at.map(ts),
            int(outcome.and_then(|o| o.rows)),
            int(outcome.and_then(|o| o.bytes)),
            outcome.and_then(|o| o.checksum.as_deref()),
            outputs,
            detail,
            // Text from servers and commands is masked on its way into the state.
            outcome
                .and_then(|o| o.note.as_deref())
                .map(crate::redact::text),
            error.map(crate::redact::text),
        ])?;
        Ok(())
    }

    fn put_task(tx: &rusqlite::Transaction<'_>, r: &TaskRecord) -> rusqlite::Result<()> {
        tx.prepare_cached(TASK_PUT)?.execute(params![
            r.id.as_str(),
            r.kind,
            r.fingerprint.0,
            serde_json::to_string(&r.inputs).expect("a map of strings serializes"),
            r.status.as_str(),
            r.attempts,
            r.started_at.as_ref().map(ts),
            r.ended_at.as_ref().map(ts),
            int(r.rows),
            int(r.bytes),
            r.checksum,
            serde_json::to_string(&r.outputs).expect("a list of strings serializes"),
            serde_json::to_string(&r.detail).expect("a JSON value serializes"),
            r.note.as_deref().map(crate::redact::text),
            r.error.as_deref().map(crate::redact::text),
        ])?;
        Ok(())
    }

    fn read_journal(&self, tx: &rusqlite::Transaction<'_>) -> Result<Vec<Entry>, StateError> {
        let mut stmt = tx
            .prepare_cached(
                "SELECT op, id, kind, fingerprint, inputs, attempts, started_at, ended_at,
                        rows, bytes, checksum, outputs, detail, note, error
                 FROM journal ORDER BY seq",
            )
            .map_err(|e| self.err(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(|e| self.err(e))? {
            out.push(self.entry(row)?);
        }
        Ok(out)
    }
}

impl StateStore for SqliteStore {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn records(&mut self) -> Result<Vec<TaskRecord>, StateError> {
        // One read transaction: `tasks` and `journal` from the same moment.
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        let mut records = BTreeMap::new();
        {
            let mut stmt = tx
                .prepare_cached(&format!("SELECT {TASK_COLUMNS} FROM tasks"))
                .map_err(|e| self.err(e))?;
            let mut rows = stmt.query([]).map_err(|e| self.err(e))?;
            while let Some(row) = rows.next().map_err(|e| self.err(e))? {
                let r = self.record(row)?;
                records.insert(r.id.clone(), r);
            }
        }
        for e in self.read_journal(&tx)? {
            let current = records.remove(&e.id);
            if let Some(r) = fold(current, &e) {
                records.insert(e.id, r);
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(records.into_values().collect())
    }

    fn apply(&mut self, batch: &[Transition]) -> Result<(), StateError> {
        if batch.is_empty() {
            return Ok(());
        }
        let registers = batch.iter().any(|t| matches!(t, Transition::Register(_)));
        if registers && self.journal_rows > 0 {
            // A registration must see every earlier transition applied.
            self.compact()?;
        }
        let tx = rusqlite::Transaction::new_unchecked(
            &self.conn,
            rusqlite::TransactionBehavior::Immediate,
        )
        .map_err(|e| self.err(e))?;
        let mut journaled = 0u64;
        for t in batch {
            let result = match t {
                Transition::Register(task) if journaled == 0 => {
                    let task = task.task();
                    tx.prepare_cached(REGISTER)
                        .and_then(|mut stmt| {
                            stmt.execute(params![
                                task.id.as_str(),
                                task.kind.as_str(),
                                task.fingerprint.0,
                                serde_json::to_string(&task.inputs)
                                    .expect("a map of strings serializes"),
                            ])
                        })
                        .map(|_| ())
                }
                _ => {
                    journaled += 1;
                    Self::journal_insert(&tx, t)
                }
            };
            result.map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))?;
        self.journal_rows += journaled;
        if self.journal_rows >= COMPACT_AT {
            self.compact()?;
        }
        Ok(())
    }

    fn compact(&mut self) -> Result<(), StateError> {
        if self.journal_rows == 0 {
            return Ok(());
        }
        let tx = rusqlite::Transaction::new_unchecked(
            &self.conn,
            rusqlite::TransactionBehavior::Immediate,
        )
        .map_err(|e| self.err(e))?;
        tx.execute(COMPACT_DONE, []).map_err(|e| self.err(e))?;
        let mut rest: HashMap<TaskId, Option<TaskRecord>> = HashMap::new();
        {
            let mut get = tx
                .prepare_cached(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"))
                .map_err(|e| self.err(e))?;
            let mut stmt = tx.prepare_cached(COMPACT_REST).map_err(|e| self.err(e))?;
            let mut rows = stmt.query([]).map_err(|e| self.err(e))?;
            while let Some(row) = rows.next().map_err(|e| self.err(e))? {
                let e = self.entry(row)?;
                if !rest.contains_key(&e.id) {
                    let mut found = get.query(params![e.id.as_str()]).map_err(|e| self.err(e))?;
                    let current = match found.next().map_err(|e| self.err(e))? {
                        Some(row) => Some(self.record(row)?),
                        None => None,
                    };
                    rest.insert(e.id.clone(), current);
                }
                let slot = rest.get_mut(&e.id).expect("inserted above");
                *slot = fold(slot.take(), &e);
            }
        }
        for r in rest.values().flatten() {
            Self::put_task(&tx, r).map_err(|e| self.err(e))?;
        }
        tx.execute("DELETE FROM journal", [])
            .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        self.journal_rows = 0;
        Ok(())
    }

    fn clear(&mut self) -> Result<(), StateError> {
        self.conn
            .execute_batch(
                "BEGIN IMMEDIATE; DELETE FROM tasks; DELETE FROM journal; DELETE FROM runs;
                 DELETE FROM processes; COMMIT;",
            )
            .map_err(|e| self.err(e))?;
        self.journal_rows = 0;
        Ok(())
    }

    fn begin_run(&mut self, pid: u32, host: &str, at: DateTime<Utc>) -> Result<i64, StateError> {
        self.conn
            .execute(
                "INSERT INTO runs (started_at, pid, host) VALUES (?1, ?2, ?3)",
                params![ts(&at), pid, host],
            )
            .map_err(|e| self.err(e))?;
        Ok(self.conn.last_insert_rowid())
    }

    fn end_run(&mut self, id: i64, outcome: &str, at: DateTime<Utc>) -> Result<(), StateError> {
        self.conn
            .execute(
                "UPDATE runs SET ended_at = ?2, outcome = ?3 WHERE id = ?1",
                params![id, ts(&at), outcome],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn runs(&mut self, limit: usize) -> Result<Vec<RunRecord>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT id, started_at, ended_at, pid, host, outcome FROM runs
                 ORDER BY id DESC LIMIT ?1",
            )
            .map_err(|e| self.err(e))?;
        let parse = |t: String| {
            DateTime::parse_from_rfc3339(&t)
                .map(|d| d.with_timezone(&Utc))
                .ok()
        };
        let rows = stmt
            .query_map(params![limit as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, Option<String>>(5)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, started, ended, pid, host, outcome) = row.map_err(|e| self.err(e))?;
            out.push(RunRecord {
                id,
                started_at: parse(started).unwrap_or_default(),
                ended_at: ended.and_then(parse),
                pid: u32::try_from(pid).unwrap_or(0),
                host,
                outcome,
            });
        }
        Ok(out)
    }

    fn set_process_groups(&mut self, changes: &[GroupChange]) -> Result<(), StateError> {
        if changes.is_empty() {
            return Ok(());
        }
        // A group record only has to survive flow's death, not the machine's (a power
        // loss ends every process of the group too): no fsync, so the command it gates
        // does not wait for the disk.
        self.conn
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| self.err(e))?;
        let result = self.write_process_groups(changes);
        self.conn
            .pragma_update(None, "synchronous", self.sync)
            .map_err(|e| self.err(e))?;
        result
    }

    fn process_groups(&mut self) -> Result<Vec<ProcessRecord>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT task, attempt, started_at, pgid, leader_start, boot_id, host
                 FROM processes ORDER BY task",
            )
            .map_err(|e| self.err(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(|e| self.err(e))? {
            out.push(self.process_group(row)?);
        }
        Ok(out)
    }
}

impl SqliteStore {
    /// The plan file this state belongs to (its absolute path, recorded by `apply`);
    /// None for a new state, or one written before flow recorded it.
    pub fn plan_file(&self) -> Result<Option<PathBuf>, StateError> {
        let has_meta = self
            .conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'",
                [],
                |_| Ok(()),
            )
            .optional()
            .map_err(|e| self.err(e))?
            .is_some();
        if !has_meta {
            return Ok(None);
        }
        self.conn
            .query_row("SELECT value FROM meta WHERE key = 'plan_file'", [], |r| {
                r.get::<_, String>(0)
            })
            .optional()
            .map(|v| v.map(PathBuf::from))
            .map_err(|e| self.err(e))
    }

    /// Records the plan file this state belongs to.
    pub fn set_plan_file(&mut self, file: &Path) -> Result<(), StateError> {
        self.conn
            .execute_batch("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL)")
            .map_err(|e| self.err(e))?;
        self.conn
            .execute(
                "INSERT INTO meta (key, value) VALUES ('plan_file', ?1)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![file.display().to_string()],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn write_process_groups(&self, changes: &[GroupChange]) -> Result<(), StateError> {
        let tx = rusqlite::Transaction::new_unchecked(
            &self.conn,
            rusqlite::TransactionBehavior::Immediate,
        )
        .map_err(|e| self.err(e))?;
        for (task, record) in changes {
            match record {
                Some(r) => tx
                    .prepare_cached(
                        "INSERT OR REPLACE INTO processes
                             (task, attempt, started_at, pgid, leader_start, boot_id, host)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )
                    .and_then(|mut stmt| {
                        stmt.execute(params![
                            task.as_str(),
                            r.attempt,
                            ts(&r.started_at),
                            r.group.pgid,
                            i64::try_from(r.group.leader_start).unwrap_or(i64::MAX),
                            r.group.boot_id,
                            r.group.host,
                        ])
                    }),
                None => tx
                    .prepare_cached("DELETE FROM processes WHERE task = ?1")
                    .and_then(|mut stmt| stmt.execute(params![task.as_str()])),
            }
            .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    fn process_group(&self, row: &Row<'_>) -> Result<ProcessRecord, StateError> {
        let get_err = |e| self.err(e);
        let task: String = row.get(0).map_err(get_err)?;
        let attempt: i64 = row.get(1).map_err(get_err)?;
        let pgid: i64 = row.get(3).map_err(get_err)?;
        let leader_start: i64 = row.get(4).map_err(get_err)?;
        Ok(ProcessRecord {
            attempt: u32::try_from(attempt).unwrap_or(0),
            started_at: self
                .time(row, 2, &task, "processes.started_at")?
                .unwrap_or_default(),
            group: GroupId {
                pgid: u32::try_from(pgid)
                    .map_err(|_| self.corrupt(&task, "processes.pgid", pgid))?,
                leader_start: u64::try_from(leader_start).unwrap_or(0),
                boot_id: row.get(5).map_err(get_err)?,
                host: row.get(6).map_err(get_err)?,
            },
            task: TaskId(task),
        })
    }

    /// Whether any task has been recorded (a plain `apply` refuses to run over state).
    pub fn has_tasks(&self) -> Result<bool, StateError> {
        self.conn
            .query_row(
                "SELECT 1 WHERE EXISTS (SELECT 1 FROM tasks) OR EXISTS (SELECT 1 FROM journal)",
                [],
                |_| Ok(()),
            )
            .optional()
            .map(|r| r.is_some())
            .map_err(|e| self.err(e))
    }

    /// Entries waiting in the journal.
    pub fn journal_len(&self) -> u64 {
        self.journal_rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_store_follows_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nested").join("plan.db");
        let mut store = SqliteStore::open(&path).unwrap();
        super::super::tests::exercise(&mut store);
    }

    #[test]
    fn state_survives_reopening_and_is_in_wal_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plan.db");
        {
            let mut store = SqliteStore::open(&path).unwrap();
            store
                .apply(&[Transition::Register(super::super::tests::def("t/a", "1"))])
                .unwrap();
        }
        let mut store = SqliteStore::open_existing(&path).unwrap().unwrap();
        assert!(store.has_tasks().unwrap());
        assert_eq!(store.records().unwrap().len(), 1);
        let mode: String = store
            .conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        assert!(SqliteStore::open_existing(&dir.path().join("none.db"))
            .unwrap()
            .is_none());
    }

    /// Random transitions, random compaction points, a reopen in the middle: the SQLite
    /// store always reads the same records as the in-memory one.
    #[test]
    fn journal_and_compaction_agree_with_the_memory_store() {
        use crate::state::{MemoryStore, TaskRef};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plan.db");
        let mut sqlite = SqliteStore::open(&path).unwrap();
        let mut memory = MemoryStore::new();
        let mut rng = fastrand::Rng::with_seed(7);
        let tasks: Vec<TaskRef> = (0..12)
            .map(|i| super::super::tests::def(&format!("t/{i}"), &format!("{}", i % 3)))
            .collect();
        let changed: Vec<TaskRef> = (0..12)
            .map(|i| super::super::tests::def(&format!("t/{i}"), "changed"))
            .collect();
        // SQLite keeps milliseconds.
        let now = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap();
        for round in 0..60 {
            let mut batch = Vec::new();
            for _ in 0..rng.usize(1..8) {
                let i = rng.usize(0..tasks.len());
                let task = if rng.bool() { &tasks[i] } else { &changed[i] };
                let id = task.task().id.clone();
                batch.push(match rng.u8(0..7) {
                    0 => Transition::Register(task.clone()),
                    1 => Transition::Start {
                        task: task.clone(),
                        attempt: rng.u32(1..4),
                        at: now,
                    },
                    2 => Transition::Retry {
                        id,
                        attempt: rng.u32(1..4),
                        error: format!("transient {round}"),
                    },
                    3 => Transition::Done {
                        task: task.clone(),
                        attempts: 1,
                        started_at: now,
                        ended_at: now,
                        outcome: TaskOutcome {
                            rows: Some(round),
                            outputs: vec![format!("o{round}")],
                            ..TaskOutcome::default()
                        },
                    },
                    4 => Transition::Failed {
                        task: task.clone(),
                        attempts: 2,
                        started_at: rng.bool().then_some(now),
                        ended_at: now,
                        error: format!("boom {round}"),
                    },
                    5 => Transition::Skipped {
                        task: task.clone(),
                        reason: "dependency failed".into(),
                    },
                    _ => Transition::Reset { id },
                });
            }
            sqlite.apply(&batch).unwrap();
            memory.apply(&batch).unwrap();
            match rng.u8(0..6) {
                0 => sqlite.compact().unwrap(),
                1 => {
                    drop(sqlite);
                    sqlite = SqliteStore::open(&path).unwrap();
                }
                _ => {}
            }
            assert_eq!(
                sqlite.records().unwrap(),
                memory.records().unwrap(),
                "round {round}"
            );
        }
        sqlite.compact().unwrap();
        assert_eq!(sqlite.journal_len(), 0);
        assert_eq!(sqlite.records().unwrap(), memory.records().unwrap());
    }

    /// A database written before the `processes` table existed (schema 1) opens, keeps
    /// its tasks and runs, and records process groups from then on.
    #[test]
    fn a_version_1_database_opens_and_gains_the_process_table() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plan.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE tasks (id TEXT PRIMARY KEY NOT NULL, kind TEXT NOT NULL,
                    fingerprint TEXT NOT NULL, inputs TEXT NOT NULL, status TEXT NOT NULL,
                    attempts INTEGER NOT NULL DEFAULT 0, started_at TEXT, ended_at TEXT,
                    rows INTEGER, bytes INTEGER, checksum TEXT,
                    outputs TEXT NOT NULL DEFAULT '[]', detail TEXT NOT NULL DEFAULT 'null',
                    note TEXT, error TEXT) WITHOUT ROWID;
                 CREATE TABLE journal (seq INTEGER PRIMARY KEY, op TEXT NOT NULL,
                    id TEXT NOT NULL, kind TEXT, fingerprint TEXT, inputs TEXT,
                    attempts INTEGER, started_at TEXT, ended_at TEXT, rows INTEGER,
                    bytes INTEGER, checksum TEXT, outputs TEXT, detail TEXT, note TEXT,
                    error TEXT);
                 CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT,
                    started_at TEXT NOT NULL, ended_at TEXT, pid INTEGER NOT NULL,
                    host TEXT NOT NULL, outcome TEXT);
                 INSERT INTO tasks (id, kind, fingerprint, inputs, status, attempts)
                    VALUES ('t/a', 'exec', 'f1', '{}', 'running', 1);
                 INSERT INTO journal (op, id, attempts, error)
                    VALUES ('retry', 't/a', 2, 'reset');
                 INSERT INTO runs (started_at, pid, host)
                    VALUES ('2026-01-01T00:00:00.000Z', 7, 'h');
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let mut store = SqliteStore::open_existing(&path).unwrap().unwrap();
        let records = store.records().unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].status, TaskStatus::Running);
        assert_eq!(records[0].attempts, 2);
        assert_eq!(store.runs(5).unwrap()[0].pid, 7);
        assert!(store.process_groups().unwrap().is_empty());
        let version: i64 = store
            .conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }

    #[test]
    fn a_newer_schema_is_refused_with_a_fix() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plan.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.pragma_update(None, "user_version", 99).unwrap();
        }
        let err = SqliteStore::open(&path).unwrap_err().to_string();
        assert!(err.contains("newer flow"), "{err}");
        assert!(err.contains("--restart"), "{err}");
    }
}
