//! Strategy `s3-policy` in place (`settings.to_volume` set): the server moves the
//! table's parts to a volume of S3 disks itself, byte for byte, and flow keeps the
//! local bytes until the moved parts are checked.
//!
//! The table is put on `storage_policy` with `MODIFY SETTING` — a policy that holds
//! the table's current volumes and disks under the same names (the server refuses any
//! other) plus the volume `to_volume` of remote disks. Nothing is copied row by row,
//! no second table exists and there is no swap: readers and writers keep the table all
//! along, and a merge or an insert during the move is the server's business.
//!
//! Per partition:
//! - load: `FREEZE PARTITION … WITH NAME <backup>` keeps the partition's parts as they
//!   are (hard links under `shadow/` on each disk, no bytes copied), then each frozen
//!   part not yet on the volume is moved with `MOVE PART … TO VOLUME`. The server then
//!   removes the table's local files, but the frozen links keep them.
//! - verify: every part moved still has the hash of all its files it had when frozen
//!   (so its checksums are the original ones) and is on the volume's disks, and
//!   `CHECK TABLE … PARTITION` — the server reading every file of the partition's parts
//!   back and comparing it with those checksums — passes. A part merged away since was
//!   read by that merge, whose block checksums would have failed on a damaged copy.
//! - drop: checks again that the verified parts are as verified (metadata only), then
//!   `UNFREEZE` removes the kept local bytes: the only destructive statement.
//!
//! Every backup is recorded on the server before it is made: a marker table
//! `<table>__flow_frozen_<key>_<n>` (the key from the plan, the table, the step and
//! the partition) is created before `FREEZE … WITH NAME flow_<key>_<n>` and dropped
//! only after its `UNFREEZE`. So a step that runs again after a kill finds every backup
//! an earlier attempt made (the server lists no backups itself), freezes under the next
//! number, and releases them all once the parts are checked. Every step decides from
//! what `system.parts` and the markers say, so any step can run again after a kill.
//!
//! The catch-up moves, checks and releases in one go the parts that are still off the
//! volume (rows that arrived during the move, partitions the split did not list), and
//! the backups a killed catch-up left. Rows inserted after it land on the policy's
//! first volume, as the policy says. The full verify fails while any backup is left.

use std::collections::{BTreeMap, BTreeSet};

use minijinja::context;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::helper_names;
use super::table_lock::TableLock;
use super::target_policy::TargetPolicy;
use super::{json_str, json_u64, qualified, Ch, ChError, Feature};
use crate::task::Artifact;
use crate::task::TaskFailure;

/// Most backups one step keeps of one partition (one per attempt).
const MAX_BACKUPS: u32 = 100;

/// The step names backups are made under.
const LOAD: &str = "load";
const CATCH_UP: &str = "catch-up";

/// Passes of the catch-up before it reports what is still arriving.
const CATCH_UP_PASSES: usize = 3;

/// The server's code for a directory that exists (FREEZE under a name in use).
const DIRECTORY_ALREADY_EXISTS: u32 = 84;

/// One table's move in place.
#[derive(Clone, Debug)]
pub struct TierMove {
    pub ch: Ch,
    pub database: String,
    pub table: String,
    pub policy: String,
    /// The policy's volume the parts go to.
    pub volume: String,
    /// Who holds the lock (the plan name).
    pub holder: String,
}

/// The table and the tables around it, as `system.tables` lists them now.
#[derive(Debug, Default)]
struct Survey {
    /// The table's storage policy.
    policy: Option<String>,
    /// The lock marker's comment, when there is one.
    lock: Option<String>,
    /// The helper tables of a copy-mode move that exist.
    copy_tables: Vec<String>,
}

/// An active part as `system.parts` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct PartRow {
    partition_id: String,
    name: String,
    rows: u64,
    hash: String,
    disk: String,
}

/// A part that a step moved, as it was when frozen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedPart {
    pub name: String,
    pub rows: u64,
    pub hash: String,
}

/// What load and verify hand on of a partition: the parts frozen (the ones the step
/// moved, and those an earlier attempt of it moved, which are checked all the same).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MovedParts {
    pub parts: Vec<MovedPart>,
    /// Rows of the parts this attempt moved itself.
    pub rows_moved_now: u64,
}

impl Artifact for MovedParts {
    const NAME: &'static str = "s3-policy moved parts";
}

impl MovedParts {
    fn rows(&self) -> u64 {
        self.parts.iter().map(|p| p.rows).sum()
    }
}

/// What a step did.
#[derive(Clone, Debug, Default)]
pub struct TierResult {
    pub rows: u64,
    pub note: String,
    pub moved: Option<MovedParts>,
}

fn fail(msg: String) -> TaskFailure {
    TaskFailure::permanent(msg)
}

impl TierMove {
    fn s(&self) -> String {
        qualified(&self.database, &self.table)
    }

    fn lock(&self) -> TableLock<'_> {
        TableLock {
            ch: &self.ch,
            database: &self.database,
            table: &self.table,
            holder: &self.holder,
        }
    }

    /// The key of `step`'s backups of one partition: from the plan, the table, the
    /// step and the partition.
    fn backup_key(&self, step: &str, partition_id: &str) -> String {
        let key = [
            self.holder.as_str(),
            &self.database,
            &self.table,
            step,
            partition_id,
        ]
        .join("\0");
        blake3::hash(key.as_bytes()).to_hex()[..16].to_string()
    }

    /// The name of backup `n` of `step` for one partition.
    pub fn backup_name(&self, step: &str, partition_id: &str, n: u32) -> String {
        format!("flow_{}_{n}", self.backup_key(step, partition_id))
    }

    /// The prefix of the marker tables that record the table's backups.
    fn markers_prefix(&self) -> String {
        helper_names::frozen_markers_prefix(&self.table)
    }

    fn marker(&self, step: &str, partition_id: &str, n: u32) -> String {
        format!(
            "{}{}_{n}",
            self.markers_prefix(),
            self.backup_key(step, partition_id)
        )
    }

    /// The marker tables of every backup left of the table, by name.
    async fn markers(&self) -> Result<Vec<String>, ChError> {
        self.ch
            .strings(
                "list the backups kept",
                "list_tables",
                context! { database => &self.database, prefix => self.markers_prefix() },
                "name",
            )
            .await
    }

    /// The numbers of `step`'s backups of a partition, among `markers`.
    fn numbers_in(&self, markers: &[String], step: &str, partition_id: &str) -> Vec<u32> {
        let prefix = format!(
            "{}{}_",
            self.markers_prefix(),
            self.backup_key(step, partition_id)
        );
        markers
            .iter()
            .filter_map(|m| m.strip_prefix(&prefix)?.parse().ok())
            .collect()
    }

    /// The table's storage policy and the lock marker's comment, in one query.
    async fn survey(&self) -> Result<Survey, TaskFailure> {
        let marker = TableLock::marker_name(&self.table);
        let copy_tables = helper_names::copy_mode_tables(&self.table);
        let mut names = vec![self.table.as_str(), marker.as_str()];
        names.extend(copy_tables.iter().map(String::as_str));
        let rows = self
            .ch
            .rows(
                &format!("look up {}", self.s()),
                "policy_tables",
                context! { database => &self.database, tables => names },
            )
            .await?;
        let mut survey = Survey::default();
        let mut found = false;
        for r in &rows {
            match json_str(r, "name") {
                Some(n) if n == self.table => {
                    found = true;
                    survey.policy = json_str(r, "storage_policy");
                }
                Some(n) if n == marker => survey.lock = json_str(r, "comment"),
                Some(n) if copy_tables.contains(&n) => survey.copy_tables.push(n),
                _ => {}
            }
        }
        if !found {
            return Err(fail(format!(
                "s3-policy: table {} does not exist; check `database` and `table`",
                self.s()
            )));
        }
        Ok(survey)
    }

    /// Checks this plan holds the lock and the table is on the policy (prepare ran).
    async fn check_ready(&self) -> Result<(), TaskFailure> {
        let Survey { policy, lock, .. } = self.survey().await?;
        self.lock().check(lock.as_deref())?;
        if policy.as_deref() != Some(self.policy.as_str()) {
            return Err(fail(format!(
                "s3-policy: {} is on storage policy `{}`, not `{}`: its prepare step has not \
                 switched it, or someone switched it back; resume to run prepare again",
                self.s(),
                policy.unwrap_or_default(),
                self.policy
            )));
        }
        Ok(())
    }

    /// [`Self::check_ready`], then the disks of the target volume: how every step but
    /// prepare starts.
    async fn ready_disks(&self) -> Result<BTreeSet<String>, TaskFailure> {
        self.check_ready().await?;
        self.volume_disks().await
    }

    /// The disks of the target volume; fails when the policy or the volume is unknown.
    async fn volume_disks(&self) -> Result<BTreeSet<String>, TaskFailure> {
        TargetPolicy::read(&self.ch, &self.policy)
            .await?
            .volume_disks(&self.volume)
    }

    async fn parts(&self, partition_id: Option<&str>) -> Result<Vec<PartRow>, ChError> {
        let rows = self
            .ch
            .rows(
                &format!("list the parts of {}", self.s()),
                "part_locations",
                context! {
                    database => &self.database, table => &self.table, partition_id => partition_id,
                },
            )
            .await?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some(PartRow {
                    partition_id: json_str(r, "partition_id")?,
                    name: json_str(r, "name")?,
                    rows: json_u64(r, "rows").unwrap_or(0),
                    hash: json_str(r, "hash").unwrap_or_default(),
                    disk: json_str(r, "disk_name").unwrap_or_default(),
                })
            })
            .collect())
    }

    /// Checks the server, the policy and its volume, takes the lock and puts the table
    /// on the policy.
    pub async fn prepare(&self) -> Result<TierResult, TaskFailure> {
        for feature in [Feature::StoragePolicies, Feature::Unfreeze] {
            self.ch
                .require(feature, "strategy s3-policy with settings.to_volume")
                .await?;
        }
        TargetPolicy::check(&self.ch, &self.policy, Some(&self.volume)).await?;
        self.lock().take().await?;
        let survey = self.survey().await?;
        if !survey.copy_tables.is_empty() {
            // A copy-mode move of this table is unfinished: its rows may be in those
            // tables, which a move in place would leave behind.
            return Err(fail(format!(
                "s3-policy: a copy into a new table of {} is unfinished ({} exist): moving \
                 it in place now would leave the rows already copied behind; finish that move \
                 (resume the plan without `settings.to_volume`), or move their rows back and \
                 drop them",
                self.s(),
                survey
                    .copy_tables
                    .iter()
                    .map(|t| qualified(&self.database, t))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let current = survey.policy;
        if current.as_deref() == Some(self.policy.as_str()) {
            return Ok(TierResult {
                note: format!(
                    "{} is already on storage policy `{}`",
                    self.s(),
                    self.policy
                ),
                ..Default::default()
            });
        }
        let current = current.unwrap_or_default();
        self.ch
            .run(
                &format!("put {} on storage policy {}", self.s(), self.policy),
                "modify_storage_policy",
                context! { table => self.s(), policy => &self.policy },
            )
            .await
            .map_err(|e| {
                fail(format!(
                    "{e}\n  help: the server switches a table's storage policy in place only to \
                     a policy that holds every volume and disk of its current policy `{current}` \
                     under the same names; add them to `{}` (before volume `{}`), or remove \
                     `settings.to_volume` to copy the table into a new one on an S3-only policy",
                    self.policy, self.volume
                ))
            })?;
        self.check_ready().await?;
        Ok(TierResult {
            note: format!(
                "{} switched from storage policy `{current}` to `{}` in place",
                self.s(),
                self.policy
            ),
            ..Default::default()
        })
    }

    /// Freezes the partition under the next backup number of `step`, recorded first;
    /// returns the names of the parts frozen.
    async fn freeze(
        &self,
        step: &str,
        partition_id: &str,
    ) -> Result<BTreeSet<String>, TaskFailure> {
        let markers = self.markers().await?;
        let first = self
            .numbers_in(&markers, step, partition_id)
            .into_iter()
            .max()
            .map_or(0, |n| n + 1);
        for n in first..MAX_BACKUPS {
            let name = self.backup_name(step, partition_id, n);
            self.ch
                .run(
                    &format!("record backup {name} of {}", self.s()),
                    "create_marker",
                    context! {
                        table => qualified(&self.database, &self.marker(step, partition_id, n)),
                        if_not_exists => true,
                        comment => format!("flow backup {name}: step {step}, partition {partition_id}"),
                    },
                )
                .await?;
            let frozen = self
                .ch
                .rows(
                    &format!(
                        "keep the parts of partition {partition_id} of {} as {name}",
                        self.s()
                    ),
                    "freeze_partition",
                    context! { table => self.s(), partition_id => partition_id, name => &name },
                )
                .await;
            match frozen {
                Ok(rows) => {
                    let parts = rows
                        .iter()
                        .filter_map(|r| json_str(r, "part_name"))
                        .collect();
                    return Ok(parts);
                }
                // Made outside flow's record (by hand?): recorded now, and the next one.
                Err(e) if e.code == Some(DIRECTORY_ALREADY_EXISTS) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(fail(format!(
            "s3-policy: partition {partition_id} of {} has {MAX_BACKUPS} backups of step \
             `{step}` already (one per attempt); look at why the step keeps failing",
            self.s()
        )))
    }

    /// Freezes the partition and moves its frozen parts that are off the volume.
    async fn move_frozen(
        &self,
        step: &str,
        partition_id: &str,
        disks: &BTreeSet<String>,
        cancel: &CancellationToken,
    ) -> Result<MovedParts, TaskFailure> {
        let frozen_names = self.freeze(step, partition_id).await?;
        let frozen: Vec<PartRow> = self
            .parts(Some(partition_id))
            .await?
            .into_iter()
            .filter(|p| frozen_names.contains(&p.name))
            .collect();
        let mut rows_moved_now = 0;
        let mut errors: BTreeMap<String, String> = BTreeMap::new();
        for part in frozen.iter().filter(|p| !disks.contains(&p.disk)) {
            rows_moved_now += part.rows;
            if cancel.is_cancelled() {
                return Err(TaskFailure::transient(format!(
                    "s3-policy: interrupted while moving partition {partition_id} of {}",
                    self.s()
                )));
            }
            let moved = self
                .ch
                .run(
                    &format!(
                        "move part {} of {} to volume {}",
                        part.name,
                        self.s(),
                        self.volume
                    ),
                    "move_part_to_volume",
                    context! { table => self.s(), part => &part.name, volume => &self.volume },
                )
                .await;
            if let Err(e) = moved {
                // Merged away or moved meanwhile: the listing below tells.
                errors.insert(part.name.clone(), e.to_string());
            }
        }
        let now: BTreeMap<String, PartRow> = self
            .parts(Some(partition_id))
            .await?
            .into_iter()
            .map(|p| (p.name.clone(), p))
            .collect();
        if let Some(left) = frozen
            .iter()
            .find(|p| now.get(&p.name).is_some_and(|n| !disks.contains(&n.disk)))
        {
            return Err(TaskFailure::transient(format!(
                "s3-policy: part {} of {} is still on disk `{}` after MOVE PART … TO VOLUME '{}'{}",
                left.name,
                self.s(),
                now[&left.name].disk,
                self.volume,
                errors
                    .get(&left.name)
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            )));
        }
        Ok(MovedParts {
            parts: frozen
                .into_iter()
                .map(|p| MovedPart {
                    name: p.name,
                    rows: p.rows,
                    hash: p.hash,
                })
                .collect(),
            rows_moved_now,
        })
    }

    /// Moves one partition's parts to the volume, keeping their local bytes.
    pub async fn load(
        &self,
        partition_id: &str,
        cancel: &CancellationToken,
    ) -> Result<TierResult, TaskFailure> {
        let disks = self.ready_disks().await?;
        let moved = self.move_frozen(LOAD, partition_id, &disks, cancel).await?;
        Ok(TierResult {
            rows: moved.rows(),
            note: format!(
                "{} part(s), {} rows, on volume `{}` ({} rows moved by this attempt); their \
                 local files are kept until the verify",
                moved.parts.len(),
                moved.rows(),
                self.volume,
                moved.rows_moved_now,
            ),
            moved: Some(moved),
        })
    }

    /// The parts moved, as they are now: which ones are still active, all of them on
    /// the volume with the hash they had when frozen; fails naming a part that is not.
    async fn still_as_moved(
        &self,
        step: &str,
        partition_id: &str,
        moved: &MovedParts,
        disks: &BTreeSet<String>,
    ) -> Result<usize, TaskFailure> {
        let now: BTreeMap<String, PartRow> = self
            .parts(Some(partition_id))
            .await?
            .into_iter()
            .map(|p| (p.name.clone(), p))
            .collect();
        let mut active = 0;
        for part in &moved.parts {
            let Some(n) = now.get(&part.name) else {
                continue; // merged away since (a merge reads and checks every block)
            };
            if n.hash != part.hash || n.rows != part.rows {
                return Err(fail(format!(
                    "s3-policy: part {} of {} partition {partition_id} has {} rows and hash {} \
                     now, {} rows and hash {} when it was frozen; its local files are kept \
                     (backups {}…); compare them before you remove anything",
                    part.name,
                    self.s(),
                    n.rows,
                    n.hash,
                    part.rows,
                    part.hash,
                    self.backup_name(step, partition_id, 0)
                )));
            }
            if !disks.contains(&n.disk) {
                return Err(fail(format!(
                    "s3-policy: part {} of {} is on disk `{}`, not on volume `{}`",
                    part.name,
                    self.s(),
                    n.disk,
                    self.volume
                )));
            }
            active += 1;
        }
        Ok(active)
    }

    /// Checks the moved parts: same hashes as when frozen, on the volume, and the
    /// server's own check of every file of the partition.
    async fn check_moved(
        &self,
        step: &str,
        partition_id: &str,
        moved: &MovedParts,
        disks: &BTreeSet<String>,
    ) -> Result<String, TaskFailure> {
        let active = self
            .still_as_moved(step, partition_id, moved, disks)
            .await?;
        if moved.parts.is_empty() {
            return Ok("nothing was moved".into());
        }
        let checked = self
            .ch
            .rows(
                &format!("check partition {partition_id} of {}", self.s()),
                "check_partition",
                context! { table => self.s(), partition_id => partition_id },
            )
            .await;
        let damaged = |what: String| {
            fail(format!(
                "s3-policy: CHECK TABLE {} PARTITION ID '{partition_id}' found files that do \
                 not match their checksums ({what}); the local files of the moved parts are \
                 kept (FREEZE backups {}…, under shadow/ of each disk on the server): restore \
                 the partition from them before anything else",
                self.s(),
                self.backup_name(step, partition_id, 0)
            ))
        };
        let rows = match checked {
            Ok(rows) => rows,
            // A lost connection is tried again; any answer of the server's that is not
            // a passed check (a checksum mismatch is raised as an error) fails for good.
            Err(e) if e.retryable => return Err(e.into()),
            Err(e) => return Err(damaged(e.to_string())),
        };
        // One row per part (`part_path`, `is_passed`, `message`), or one `result` row
        // where the server answers with a single value (check_query_single_value_result).
        let passed = |r: &super::JsonRow| {
            json_u64(r, "is_passed").or_else(|| json_u64(r, "result")) == Some(1)
        };
        if rows.is_empty() || !rows.iter().all(passed) {
            let failed: Vec<String> = rows
                .iter()
                .filter(|r| !passed(r))
                .map(|r| {
                    let part = json_str(r, "part_path").unwrap_or_else(|| "a part".into());
                    match json_str(r, "message").filter(|m| !m.is_empty()) {
                        Some(m) => format!("{part}: {m}"),
                        None => part,
                    }
                })
                .collect();
            return Err(damaged(if failed.is_empty() {
                "no answer".to_string()
            } else {
                failed.join("; ")
            }));
        }
        Ok(format!(
            "{} part(s) moved, {active} still as moved (same hash of all files, on volume `{}`), \
             the others merged since; CHECK TABLE read every file of the partition back and \
             found it matching its checksums",
            moved.parts.len(),
            self.volume
        ))
    }

    /// Checks one partition's moved parts (see the module notes).
    pub async fn verify(
        &self,
        partition_id: &str,
        loaded: Option<&MovedParts>,
    ) -> Result<TierResult, TaskFailure> {
        let loaded = loaded.ok_or_else(|| missing("verify", "load"))?;
        let disks = self.ready_disks().await?;
        let note = self.check_moved(LOAD, partition_id, loaded, &disks).await?;
        Ok(TierResult {
            rows: loaded.rows(),
            note,
            moved: Some(loaded.clone()),
        })
    }

    /// Removes every backup of `step` for a partition, each before its marker; returns
    /// how many backups and part copies were removed.
    async fn unfreeze(
        &self,
        step: &str,
        partition_id: &str,
    ) -> Result<(usize, usize), TaskFailure> {
        let markers = self.markers().await?;
        let numbers = self.numbers_in(&markers, step, partition_id);
        let mut removed = 0;
        for &n in &numbers {
            let name = self.backup_name(step, partition_id, n);
            removed += self
                .ch
                .rows(
                    &format!("remove backup {name} of {}", self.s()),
                    "unfreeze_partition",
                    context! { table => self.s(), partition_id => partition_id, name => &name },
                )
                .await?
                .len();
            self.ch
                .run(
                    &format!("forget backup {name} of {}", self.s()),
                    "drop_table",
                    context! { table => qualified(&self.database, &self.marker(step, partition_id, n)) },
                )
                .await?;
        }
        Ok((numbers.len(), removed))
    }

    /// Removes the local bytes kept of a verified partition.
    pub async fn drop_partition(
        &self,
        partition_id: &str,
        verified: Option<&MovedParts>,
    ) -> Result<TierResult, TaskFailure> {
        let verified = verified.ok_or_else(|| missing("drop", "verify"))?;
        let disks = self.ready_disks().await?;
        // Checked again on what is removed now: the verified parts are as verified.
        self.still_as_moved(LOAD, partition_id, verified, &disks)
            .await?;
        let (backups, removed) = self.unfreeze(LOAD, partition_id).await?;
        Ok(TierResult {
            rows: verified.rows(),
            note: format!(
                "removed the local files kept of {} verified part(s) ({removed} frozen part \
                 copies in {backups} backup(s))",
                verified.parts.len(),
            ),
            moved: None,
        })
    }

    /// Moves, checks and releases every part still off the volume.
    pub async fn catch_up(&self, cancel: &CancellationToken) -> Result<TierResult, TaskFailure> {
        let disks = self.ready_disks().await?;
        let mut moved_rows = 0;
        let mut moved_parts = 0;
        for _ in 0..CATCH_UP_PASSES {
            let parts = self.parts(None).await?;
            // Partitions with parts off the volume, and those a killed catch-up left
            // backups of (moved, maybe not checked yet: done again, then released).
            let markers = self.markers().await?;
            let mut todo: BTreeSet<String> = parts
                .iter()
                .filter(|p| !disks.contains(&p.disk))
                .map(|p| p.partition_id.clone())
                .collect();
            todo.extend(
                parts
                    .iter()
                    .filter(|p| {
                        !self
                            .numbers_in(&markers, CATCH_UP, &p.partition_id)
                            .is_empty()
                    })
                    .map(|p| p.partition_id.clone()),
            );
            if todo.is_empty() {
                break;
            }
            for partition_id in &todo {
                let moved = self
                    .move_frozen(CATCH_UP, partition_id, &disks, cancel)
                    .await?;
                self.check_moved(CATCH_UP, partition_id, &moved, &disks)
                    .await?;
                self.unfreeze(CATCH_UP, partition_id).await?;
                moved_rows += moved.rows_moved_now;
                moved_parts += 1;
            }
        }
        let left: u64 = self
            .parts(None)
            .await?
            .iter()
            .filter(|p| !disks.contains(&p.disk))
            .map(|p| p.rows)
            .sum();
        let mut note = format!(
            "{moved_rows} rows that arrived or were left, in {moved_parts} partition(s), moved, \
             checked and released"
        );
        if left > 0 {
            note.push_str(&format!(
                "; {left} rows still arrive off volume `{}` (inserts land on the policy's first volume)",
                self.volume
            ));
        }
        Ok(TierResult {
            rows: moved_rows,
            note,
            moved: None,
        })
    }

    /// The whole-table check at the end: the table is on the policy, and where its rows
    /// are; then the lock is released.
    pub async fn full_verify(&self) -> Result<TierResult, TaskFailure> {
        let disks = self.ready_disks().await?;
        let parts = self.parts(None).await?;
        let on: u64 = parts
            .iter()
            .filter(|p| disks.contains(&p.disk))
            .map(|p| p.rows)
            .sum();
        let off: u64 = parts
            .iter()
            .filter(|p| !disks.contains(&p.disk))
            .map(|p| p.rows)
            .sum();
        let left = self.markers().await?;
        if !left.is_empty() {
            return Err(fail(format!(
                "verify {}: {} FREEZE backup(s) of moved parts are still kept (marker tables {}); \
                 resume to let their steps check and release them",
                self.s(),
                left.len(),
                left.join(", ")
            )));
        }
        self.lock().release().await?;
        let mut note = format!(
            "{} is on storage policy `{}`: {on} rows on volume `{}`, each part checked when it \
             was moved",
            self.s(),
            self.policy,
            self.volume
        );
        if off > 0 {
            note.push_str(&format!(
                "; {off} rows inserted since the catch-up are on the policy's first volume"
            ));
        }
        Ok(TierResult {
            rows: on,
            note,
            moved: None,
        })
    }
}

fn missing(step: &str, before: &str) -> TaskFailure {
    fail(format!(
        "s3-policy: the {step} step has no record of the parts its {before} step moved (a state \
         written before in-place moves); reset the partition's tasks with `flow state` and resume"
    ))
}
