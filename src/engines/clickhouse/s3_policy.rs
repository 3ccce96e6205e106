//! Strategy `s3-policy`: move a table from a local storage policy to an S3
//! one, inside a modern server, partition by partition, without losing or duplicating
//! a row whatever instant flow is killed at.
//!
//! Tables (in the source database, `S` = the table):
//! - `new_table` (default `S__flow_new`): same structure, `storage_policy = <policy>`;
//!   after the swap it holds the *old* data until cleanup.
//! - `S__flow_quarantine`: same structure and policy as the old table; partitions
//!   leave the old table by an atomic `MOVE PARTITION … TO TABLE` into it, are compared
//!   there, and dropped only if they equal the copy — rows that arrive in the old table
//!   after the move land in a new part of the old table, never in what is dropped.
//! - `S__flow_load_<id>`, `S__flow_append_<id>`: per-partition staging tables.
//! - `S__flow_lock`: a marker whose comment names the plan that moves `S`; a second
//!   plan refuses to touch the table (drop the marker if its run is dead).
//!
//! Which table is old and which new is read from their storage policies every time, so
//! a task that runs again after the swap sees the right roles.
//!
//! Per partition (rows compared as count + the checksum of [`super::checksum`], each
//! reading tied to the part set it was read from, see [`super::part_sets`]):
//! - load: source empty → done; target non-empty → done if it equals the source (killed
//!   after the insert), else a permanent failure (the target is never cleared); target
//!   empty → `INSERT … SELECT` into a fresh staging table, compared with the source
//!   (the one decisive comparison of the load), then `REPLACE PARTITION` into the new
//!   table. When the source's parts changed during the copy (rows arriving), the
//!   partition is frozen in quarantine and copied from there instead; a copy that
//!   differs from an unchanged source (a broken template, a server fault) fails the
//!   run with the partition where it was. A kill mid-insert leaves only a staging table.
//! - verify: target equals source (or the source is gone and the target has rows: the
//!   drop ran after a passed verify and re-checked). Figures the load recorded are
//!   reused while the parts they were read from are unchanged: a partition nobody
//!   touched since its load is verified from `system.parts` alone.
//! - drop: move the source partition into quarantine, compare it with the copy (by its
//!   parts when they are the verified ones, moved byte for byte; by reading otherwise),
//!   drop it there if equal, re-load the copy from it if rows arrived since the verify.
//!
//! Catch-up, and rows that arrive during the swap, use one additive procedure per
//! partition: move the old partition into quarantine; copy it into an append staging
//! table (same policy as the new table) and check it equals the quarantined rows;
//! drop the quarantined partition (commit: the rows now live in the staging table);
//! `MOVE PARTITION` the staging rows into the new table (atomic, so "already moved" is
//! simply "staging is empty"); drop the staging table. Every step can be repeated
//! after a kill and decides from what the tables hold.
//!
//! The whole-table check before the swap reads no rows: every row in the new table
//! came through one of the comparisons above; it checks that nothing waits in
//! quarantine or staging and that every part is on the policy's disks.

use std::collections::{BTreeMap, BTreeSet};

use minijinja::context;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use super::checksum::{checksum_expr_for, Compared};
use super::helper_names;
use super::part_sets::{part_sets, PartSet, Signed};
use super::table_lock::TableLock;
use super::target_policy::TargetPolicy;
use super::{partition_id_filter, qualified, Ch, ChError, Column, Feature, Stats};
use crate::task::Artifact;
use crate::task::TaskFailure;

/// Passes of the catch-up before it reports what is still arriving.
const CATCH_UP_PASSES: usize = 3;

/// One table's move.
#[derive(Clone, Debug)]
pub struct PolicyMove {
    pub ch: Ch,
    pub database: String,
    pub table: String,
    pub new_table: String,
    pub policy: String,
    /// Who holds the lock (the plan name).
    pub holder: String,
    /// The table's ordinary columns (every table of the move has them), asked once
    /// per step.
    columns: OnceCell<Vec<Column>>,
}

/// Which physical table plays which role right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Roles {
    /// Before the swap (or while preparing): old = `S`, new = `new_table`.
    Moving { new_exists: bool },
    /// After the swap: old = `new_table`, new = `S`.
    Swapped,
    /// `S` is on the policy and no other table is left: nothing to move.
    Done,
}

/// The move's tables that exist: name → (storage policy, comment).
struct Survey {
    tables: BTreeMap<String, (Option<String>, String)>,
}

/// What load and verify hand on of a partition (the outcome of their task): the
/// source rows and the copy, each with the part set it was read from, so that the
/// next step reads neither again while their parts are unchanged.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionSignatures {
    /// The source partition: in the old table, or frozen in the quarantine (the same
    /// parts, moved byte for byte).
    pub source: Signed,
    /// The copy in the new table.
    pub copy: Signed,
}

impl Artifact for PartitionSignatures {
    const NAME: &'static str = "s3-policy partition signature";
}

/// What a step knows of one partition just before [`PolicyMove::reload_frozen`] (only
/// flow writes into the quarantine and, before the swap, the new table, so the
/// figures still hold when it runs).
#[derive(Clone, Debug)]
struct Seen {
    /// The partition in the quarantine (empty: not frozen yet).
    quarantined: Signed,
    /// The partition in the new table.
    copy: Signed,
}

/// What a step did.
#[derive(Clone, Debug, Default)]
pub struct StepResult {
    pub rows: u64,
    pub checksum: Option<String>,
    pub note: String,
    /// What a load or a verify found of its partition, for the steps after it.
    pub signatures: Option<PartitionSignatures>,
}

impl StepResult {
    /// A step that ends with the rows and checksum of `stats`.
    fn of(stats: Stats, note: impl Into<String>) -> Self {
        StepResult {
            rows: stats.rows,
            checksum: Some(stats.checksum_text()),
            note: note.into(),
            signatures: None,
        }
    }

    /// A step that ends with a partition's copy equal to its source.
    fn signed(signatures: PartitionSignatures, note: impl Into<String>) -> Self {
        let stats = signatures.copy.stats;
        StepResult {
            signatures: Some(signatures),
            ..Self::of(stats, note)
        }
    }
}

fn fail(msg: String) -> TaskFailure {
    TaskFailure::permanent(msg)
}

/// " (… unchanged since …)" when figures were known from their parts, not read.
fn reuse_note(what: &[(&str, bool)]) -> String {
    let known: Vec<&str> = what.iter().filter(|(_, k)| *k).map(|(n, _)| *n).collect();
    if known.is_empty() {
        String::new()
    } else {
        format!(
            "; {} not read again: same parts as when last checked",
            known.join(" and ")
        )
    }
}

impl PolicyMove {
    pub fn new(
        ch: Ch,
        database: impl Into<String>,
        table: impl Into<String>,
        new_table: impl Into<String>,
        policy: impl Into<String>,
        holder: impl Into<String>,
    ) -> Self {
        PolicyMove {
            ch,
            database: database.into(),
            table: table.into(),
            new_table: new_table.into(),
            policy: policy.into(),
            holder: holder.into(),
            columns: OnceCell::new(),
        }
    }

    pub fn default_new_table(table: &str) -> String {
        helper_names::new_table(table)
    }

    fn q(&self, name: &str) -> String {
        qualified(&self.database, name)
    }

    fn s(&self) -> String {
        self.q(&self.table)
    }

    fn quarantine_name(&self) -> String {
        helper_names::quarantine(&self.table)
    }

    fn lock_name(&self) -> String {
        TableLock::marker_name(&self.table)
    }

    fn load_prefix(&self) -> String {
        format!("{}__flow_load_", self.table)
    }

    fn append_prefix(&self) -> String {
        format!("{}__flow_append_", self.table)
    }

    /// (old, new) qualified names for the current roles.
    fn names(&self, roles: &Roles) -> (String, String) {
        let (old, new) = self.bare_names(roles);
        (self.q(old), self.q(new))
    }

    /// (old, new) names inside the database for the current roles.
    fn bare_names(&self, roles: &Roles) -> (&str, &str) {
        match roles {
            Roles::Swapped => (&self.new_table, &self.table),
            _ => (&self.table, &self.new_table),
        }
    }

    /// The tables of this move among `also` plus the table, the new table and the lock
    /// marker, as `system.tables` lists them now: one query per step.
    async fn survey(&self, also: &[&str]) -> Result<Survey, ChError> {
        let lock = self.lock_name();
        let mut names = vec![self.table.as_str(), self.new_table.as_str(), lock.as_str()];
        names.extend_from_slice(also);
        let rows = self
            .ch
            .rows(
                &format!("look up the tables of the move of {}", self.s()),
                "policy_tables",
                context! { database => &self.database, tables => names },
            )
            .await?;
        Ok(Survey {
            tables: rows
                .iter()
                .filter_map(|r| {
                    let name = super::json_str(r, "name")?;
                    let policy = super::json_str(r, "storage_policy").filter(|p| !p.is_empty());
                    let comment = super::json_str(r, "comment").unwrap_or_default();
                    Some((name, (policy, comment)))
                })
                .collect(),
        })
    }

    pub async fn roles(&self) -> Result<Roles, TaskFailure> {
        self.roles_in(&self.survey(&[]).await?)
    }

    /// Which table plays which role, from a survey.
    fn roles_in(&self, survey: &Survey) -> Result<Roles, TaskFailure> {
        let policy_of = |name: &str| survey.tables.get(name).map(|(p, _)| p.clone());
        let s = policy_of(&self.table).ok_or_else(|| {
            fail(format!(
                "s3-policy: table {} does not exist; check `database` and `table`",
                self.s()
            ))
        })?;
        let new = policy_of(&self.new_table);
        let on_policy = |p: &Option<String>| p.as_deref() == Some(self.policy.as_str());
        Ok(match (on_policy(&s), new.as_ref()) {
            (false, n) => {
                if let Some(n) = n {
                    if !on_policy(n) {
                        return Err(fail(format!(
                            "s3-policy: {} exists but uses storage policy `{}`, not `{}`; it is \
                             not flow's copy — drop or rename it, or set settings.new_table",
                            self.q(&self.new_table),
                            n.clone().unwrap_or_default(),
                            self.policy
                        )));
                    }
                }
                Roles::Moving {
                    new_exists: n.is_some(),
                }
            }
            (true, Some(n)) if !on_policy(n) => Roles::Swapped,
            (true, Some(_)) => {
                return Err(fail(format!(
                    "s3-policy: both {} and {} use storage policy `{}`; flow cannot tell which \
                     holds the original — inspect them and drop the one that is not needed",
                    self.s(),
                    self.q(&self.new_table),
                    self.policy
                )))
            }
            (true, None) => Roles::Done,
        })
    }

    fn table_lock(&self) -> TableLock<'_> {
        TableLock {
            ch: &self.ch,
            database: &self.database,
            table: &self.table,
            holder: &self.holder,
        }
    }

    /// Takes the table lock for this plan, or fails naming its holder.
    pub async fn lock(&self) -> Result<(), TaskFailure> {
        self.table_lock().take().await
    }

    /// Fails when another plan holds the lock.
    fn check_lock_in(&self, survey: &Survey) -> Result<(), TaskFailure> {
        let marker = survey.tables.get(&self.lock_name());
        self.table_lock()
            .check(marker.map(|(_, comment)| comment.as_str()))
    }

    pub async fn unlock(&self) -> Result<(), TaskFailure> {
        self.table_lock().release().await
    }

    async fn columns(&self) -> Result<&[Column], ChError> {
        self.columns
            .get_or_try_init(|| async { self.ch.columns(&self.s()).await })
            .await
            .map(Vec::as_slice)
    }

    async fn stats(&self, table: &str, partition_id: &str) -> Result<Stats, ChError> {
        // Both sides of every comparison are on this one server.
        let checksum = checksum_expr_for(self.columns().await?, Compared::SameTypes);
        self.ch
            .stats(
                &format!("checksum partition {partition_id} of {table}"),
                table,
                Some(&partition_id_filter(partition_id)),
                Some(&checksum),
            )
            .await
    }

    /// The part sets of one partition in some tables of the database, by name.
    async fn parts(
        &self,
        tables: &[&str],
        partition_id: &str,
    ) -> Result<BTreeMap<String, PartSet>, ChError> {
        part_sets(&self.ch, &self.database, tables, partition_id).await
    }

    async fn parts_of(&self, table: &str, partition_id: &str) -> Result<PartSet, ChError> {
        Ok(self
            .parts(&[table], partition_id)
            .await?
            .remove(table)
            .unwrap_or_default())
    }

    /// Reads the rows and checksum of `table`'s partition, signed with its parts when
    /// they were the same before and after the reading.
    async fn read_signed(&self, table: &str, partition_id: &str) -> Result<Signed, ChError> {
        let before = self.parts_of(table, partition_id).await?;
        if before.is_empty() {
            return Ok(Signed::empty());
        }
        let stats = self.stats(&self.q(table), partition_id).await?;
        let after = self.parts_of(table, partition_id).await?;
        Ok(Signed {
            stats,
            parts: (after == before).then_some(after),
        })
    }

    /// The figures of `table`'s partition, whose parts are `now`: nothing to read when
    /// it is empty or its parts are those `recorded` was read from; read otherwise.
    async fn signed(
        &self,
        table: &str,
        partition_id: &str,
        now: &PartSet,
        recorded: Option<&Signed>,
    ) -> Result<Signed, ChError> {
        if now.is_empty() {
            return Ok(Signed::empty());
        }
        if let Some(stats) = recorded.and_then(|r| r.if_of(now)) {
            return Ok(Signed {
                stats,
                parts: Some(now.clone()),
            });
        }
        self.read_signed(table, partition_id).await
    }

    /// The new table's copy right after `REPLACE PARTITION` from a staging table whose
    /// rows were `staged`: the same figures, proven when the new parts are the staged
    /// ones (a replace links the files; a merge in the staging table in between would
    /// show as other parts, and then the copy is read again when it is next needed).
    async fn copy_after_replace(
        &self,
        new: &str,
        partition_id: &str,
        staged: &Signed,
    ) -> Result<Signed, ChError> {
        let now = self.parts_of(new, partition_id).await?;
        Ok(Signed {
            stats: staged.stats,
            parts: (staged.parts.as_ref() == Some(&now)).then_some(now),
        })
    }

    async fn exists(&self, name: &str) -> Result<bool, ChError> {
        Ok(self
            .ch
            .tables(&self.database, &[name])
            .await?
            .contains_key(name))
    }

    async fn list_prefixed(&self, prefix: &str) -> Result<Vec<String>, ChError> {
        self.ch
            .strings(
                "list staging tables",
                "list_tables",
                context! { database => &self.database, prefix => prefix },
                "name",
            )
            .await
    }

    /// Partition ids of a table that hold rows.
    async fn partitions_with_rows(&self, name: &str) -> Result<BTreeSet<String>, ChError> {
        Ok(super::split::size_report(&self.ch, &self.database, name)
            .await?
            .into_iter()
            .filter(|p| p.rows > 0)
            .map(|p| p.partition_id)
            .collect())
    }

    /// Checks the server and policy, takes the lock, creates the new and quarantine tables.
    pub async fn prepare(&self) -> Result<StepResult, TaskFailure> {
        self.ch
            .require(Feature::StoragePolicies, "strategy s3-policy")
            .await?;
        self.ch
            .require(Feature::MovePartitionToTable, "strategy s3-policy")
            .await?;
        TargetPolicy::check(&self.ch, &self.policy, None).await?;
        let frozen = self
            .list_prefixed(&helper_names::frozen_markers_prefix(&self.table))
            .await?;
        if !frozen.is_empty() {
            return Err(fail(format!(
                "s3-policy: a move in place of {} is unfinished: {} FREEZE backup(s) of moved \
                 parts are not checked and released yet (marker tables {}); finish that move \
                 (resume the plan with its `settings.to_volume`) before copying the table",
                self.s(),
                frozen.len(),
                frozen.join(", ")
            )));
        }
        self.lock().await?;
        let roles = self.roles().await?;
        match roles {
            Roles::Done => {
                return Ok(StepResult {
                    note: format!(
                        "{} is already on storage policy `{}`",
                        self.s(),
                        self.policy
                    ),
                    ..Default::default()
                })
            }
            Roles::Swapped => {
                return Ok(StepResult {
                    note: "already swapped".into(),
                    ..Default::default()
                })
            }
            Roles::Moving { .. } => {}
        }
        let new = self.q(&self.new_table);
        self.ch
            .run(
                &format!("create {new}"),
                "create_like",
                context! { table => &new, like => self.s(), storage_policy => &self.policy },
            )
            .await?;
        let quarantine = self.q(&self.quarantine_name());
        self.ch
            .run(
                &format!("create {quarantine}"),
                "create_like",
                context! { table => &quarantine, like => self.s(), storage_policy => None::<String> },
            )
            .await?;
        // The server must have applied the policy.
        let roles = self.roles().await?;
        if roles != (Roles::Moving { new_exists: true }) {
            return Err(fail(format!(
                "s3-policy: {new} was created but is not on storage policy `{}`",
                self.policy
            )));
        }
        Ok(StepResult {
            note: format!("{new} created on storage policy `{}`", self.policy),
            ..Default::default()
        })
    }

    /// Checks this plan holds the table's lock and reads which table plays which role;
    /// None when the move is already complete (nothing left for a step to do).
    /// Also returns the survey, which says which of `also` exist.
    async fn roles_to_work_on(
        &self,
        also: &[&str],
    ) -> Result<Option<(Roles, Survey)>, TaskFailure> {
        let (roles, survey) = self.locked_roles(also).await?;
        Ok((roles != Roles::Done).then_some((roles, survey)))
    }

    /// Checks this plan holds the table's lock and reads the roles, from one survey
    /// (which also says which of `also` exist).
    async fn locked_roles(&self, also: &[&str]) -> Result<(Roles, Survey), TaskFailure> {
        let survey = self.survey(also).await?;
        self.check_lock_in(&survey)?;
        let roles = self.roles_in(&survey)?;
        Ok((roles, survey))
    }

    /// Copies one partition into the new table (see the module notes for each case).
    pub async fn load(
        &self,
        partition_id: &str,
        cancel: &CancellationToken,
    ) -> Result<StepResult, TaskFailure> {
        let staging_name = format!("{}{partition_id}", self.load_prefix());
        let Some((roles, survey)) = self.roles_to_work_on(&[&staging_name]).await? else {
            return Ok(already_on_policy());
        };
        let (old, new) = self.bare_names(&roles);
        let mut parts = self.parts(&[old, new], partition_id).await?;
        let src_parts = parts.remove(old).unwrap_or_default();
        let dst_parts = parts.remove(new).unwrap_or_default();
        let (old_q, new_q) = (self.q(old), self.q(new));
        if src_parts.is_empty() {
            return Ok(StepResult {
                rows: dst_parts.rows(),
                note: format!(
                    "source partition {partition_id} is empty (already moved); target holds {} rows",
                    dst_parts.rows()
                ),
                ..Default::default()
            });
        }
        if !dst_parts.is_empty() {
            let source = self.read_signed(old, partition_id).await?;
            let copy = self.read_signed(new, partition_id).await?;
            if source.stats == copy.stats {
                let note = format!(
                    "already loaded: target = source ({})",
                    copy.stats.describe()
                );
                return Ok(StepResult::signed(
                    PartitionSignatures { source, copy },
                    note,
                ));
            }
            return Err(fail(format!(
                "load partition {partition_id} into {new_q}: the target partition holds {} but the \
                 source {}. Rows may still be arriving in this partition (bound the table with \
                 `upper` so that hot partitions are moved by the catch-up), or something else \
                 wrote into {new_q}. flow never clears a target partition: inspect it, drop it by \
                 hand (ALTER TABLE {new_q} DROP PARTITION ID '{partition_id}') and resume",
                copy.stats.describe(),
                source.stats.describe()
            )));
        }
        let staging = self.q(&staging_name);
        let action = format!("load partition {partition_id} into {new_q}");
        if survey.tables.contains_key(&staging_name) {
            // Left by a load killed mid-insert.
            self.ch
                .run(&action, "drop_table", context! { table => &staging })
                .await?;
        }
        let from_source = Staging {
            staging: &staging,
            like: &new_q,
            from: &old_q,
            partition_id,
        };
        self.stage(&action, from_source, cancel).await?;
        // Both readings between two listings of the parts (`src_parts` is the source's
        // first one, taken before the INSERT began).
        let staged_parts = self.parts_of(&staging_name, partition_id).await?;
        let staged_stats = self.stats(&staging, partition_id).await?;
        let source_stats = self.stats(&old_q, partition_id).await?;
        let mut after = self.parts(&[old, &staging_name], partition_id).await?;
        let proven = |before: PartSet, after: Option<PartSet>| after.filter(|a| *a == before);
        let staged = Signed {
            stats: staged_stats,
            parts: proven(staged_parts, after.remove(staging_name.as_str())),
        };
        let source = Signed {
            stats: source_stats,
            parts: proven(src_parts.clone(), after.remove(old)),
        };
        // The INSERT began after `src_parts` was listed and the source still has exactly
        // those parts: the copy and the reading of the source saw the same rows.
        let source_still = source.parts.as_ref() == Some(&src_parts);
        if source_still && staged.stats != source.stats {
            self.ch
                .run(&action, "drop_table", context! { table => &staging })
                .await?;
            return Err(fail(format!(
                "{action}: the copy holds {} but the source partition, unchanged during the \
                 copy, {}: the INSERT … SELECT does not copy every row (check a `templates_dir` \
                 override of insert_select.sql.j2) or the server lost rows; nothing was \
                 replaced or dropped, the source is untouched",
                staged.stats.describe(),
                source.stats.describe()
            )));
        }
        let (source, staged, note) = if source_still {
            let note = format!(
                "INSERT … SELECT into staging = source ({}), REPLACE PARTITION ID '{partition_id}'",
                staged.stats.describe()
            );
            (source, staged, note)
        } else {
            // Rows arrived (or parts merged) during the copy: freeze the partition and
            // copy what is frozen, which nothing else can change.
            self.ch
                .run(&action, "drop_table", context! { table => &staging })
                .await?;
            let frozen = self.freeze(old, partition_id, &action, None).await?;
            if frozen.stats.is_empty() {
                return Ok(StepResult {
                    note: format!("source partition {partition_id} was emptied during the load"),
                    ..Default::default()
                });
            }
            let staged = match self
                .stage_quarantined(
                    &action,
                    &staging_name,
                    &new_q,
                    partition_id,
                    &frozen,
                    cancel,
                )
                .await
            {
                Ok(staged) => staged,
                Err(e) => {
                    // Put the partition back where readers of the table see it.
                    let quarantine = self.q(&self.quarantine_name());
                    self.move_back(&quarantine, &old_q, partition_id, &action)
                        .await?;
                    return Err(TaskFailure {
                        message: format!(
                            "{}; the partition is back in {old_q}, nothing was dropped",
                            e.message
                        ),
                        retryable: e.retryable,
                    });
                }
            };
            let note = format!(
                "rows arrived during the copy: frozen in {} and loaded from there = frozen \
                 rows ({}), REPLACE PARTITION ID '{partition_id}'",
                self.q(&self.quarantine_name()),
                staged.stats.describe()
            );
            (frozen, staged, note)
        };
        if staged.stats.is_empty() {
            return Err(TaskFailure::transient(format!(
                "{action}: the staging copy is empty although the source had {} rows",
                source.stats.rows
            )));
        }
        // The target partition was empty a moment ago and only flow writes into the new
        // table before the swap: REPLACE adds the staged rows atomically.
        self.ch
            .run(
                &action,
                "replace_partition",
                context! { target => &new_q, source => &staging, partition_id => partition_id },
            )
            .await?;
        self.ch
            .run(&action, "drop_table", context! { table => &staging })
            .await?;
        // REPLACE links the staged parts into the new table under new names with the same
        // hashes: while the copy has exactly these parts it holds the staged rows (a
        // merge of the staging table just before the replace shows as other parts, and
        // the verify then reads the copy).
        let copy = staged;
        Ok(StepResult::signed(
            PartitionSignatures { source, copy },
            note,
        ))
    }

    /// Compares the partition in both tables, reusing the figures `recorded` (by the
    /// load) where the parts are still those they were read from. Before the swap, a
    /// partition that took rows after its load is frozen and re-loaded
    /// ([`Self::reload_frozen`]) instead of failing on every resume.
    pub async fn verify(
        &self,
        partition_id: &str,
        recorded: Option<&PartitionSignatures>,
        cancel: &CancellationToken,
    ) -> Result<StepResult, TaskFailure> {
        let Some((roles, _)) = self.roles_to_work_on(&[]).await? else {
            return Ok(already_on_policy());
        };
        let (old, new) = self.bare_names(&roles);
        let quarantine = self.quarantine_name();
        let moving = matches!(roles, Roles::Moving { .. });
        let mut tables = vec![old, new];
        if moving {
            tables.push(&quarantine);
        }
        let mut parts = self.parts(&tables, partition_id).await?;
        let mut take = |t: &str| parts.remove(t).unwrap_or_default();
        let (src_parts, dst_parts, q_parts) = (take(old), take(new), take(&quarantine));
        let rec_source = recorded.map(|r| &r.source);
        let rec_copy = recorded.map(|r| &r.copy);
        let known = |rec: Option<&Signed>, now: &PartSet| {
            !now.is_empty() && rec.and_then(|r| r.if_of(now)).is_some()
        };
        let copy = self.signed(new, partition_id, &dst_parts, rec_copy).await?;
        let action = format!("verify partition {partition_id}");
        if moving && !q_parts.is_empty() {
            // Frozen by an earlier attempt: the copy must equal the frozen rows.
            let reused = reuse_note(&[
                ("the frozen rows", known(rec_source, &q_parts)),
                ("the copy", known(rec_copy, &dst_parts)),
            ]);
            let quarantined = self
                .signed(&quarantine, partition_id, &q_parts, rec_source)
                .await?;
            let seen = Seen { quarantined, copy };
            let frozen = self
                .reload_frozen((old, new), partition_id, &action, seen, recorded, cancel)
                .await?;
            let note = format!(
                "target = the partition frozen in {} ({}){reused}",
                self.q(&quarantine),
                frozen.copy.stats.describe()
            );
            return Ok(StepResult::signed(frozen, note));
        }
        let source = self
            .signed(old, partition_id, &src_parts, rec_source)
            .await?;
        if source.stats == copy.stats && !source.stats.is_empty() {
            let reused = reuse_note(&[
                ("the source", known(rec_source, &src_parts)),
                ("the copy", known(rec_copy, &dst_parts)),
            ]);
            let note = format!("target = source ({}){reused}", copy.stats.describe());
            return Ok(StepResult::signed(
                PartitionSignatures { source, copy },
                note,
            ));
        }
        if source.stats.is_empty() {
            return Ok(StepResult::of(
                copy.stats,
                format!(
                    "source partition already dropped after a passed check; target holds {}",
                    copy.stats.describe()
                ),
            ));
        }
        if moving {
            let seen = Seen {
                quarantined: Signed::empty(),
                copy: copy.clone(),
            };
            let frozen = self
                .reload_frozen((old, new), partition_id, &action, seen, None, cancel)
                .await?;
            let note = format!(
                "rows arrived after the load (copy {}): the partition was frozen in \
                 quarantine and re-loaded from it ({}); later rows are the catch-up's",
                copy.stats.describe(),
                frozen.copy.stats.describe()
            );
            return Ok(StepResult::signed(frozen, note));
        }
        Err(fail(format!(
            "verify partition {partition_id}: source {} but {} {}; after the swap flow does \
             not re-load a partition of the live table; nothing was dropped. Compare the two \
             and move the missing rows by hand, then resume",
            source.stats.describe(),
            self.q(new),
            copy.stats.describe()
        )))
    }

    /// Before the swap: freezes the partition and makes the new table's copy equal the
    /// frozen rows. The source partition moves whole into quarantine (atomic: rows that
    /// arrive later land in a new part of the old table, which the catch-up moves),
    /// unless an earlier attempt froze it already; a staging copy of the quarantined
    /// rows must equal them, then `REPLACE PARTITION` puts it in the new table. Only
    /// flow writes into the new table before the swap, so what is replaced there is
    /// flow's own stale copy. Returns what is frozen and the copy (equal; both empty
    /// when there was nothing to freeze).
    async fn reload_frozen(
        &self,
        (old, new): (&str, &str),
        partition_id: &str,
        action: &str,
        seen: Seen,
        recorded: Option<&PartitionSignatures>,
        cancel: &CancellationToken,
    ) -> Result<PartitionSignatures, TaskFailure> {
        let Seen {
            quarantined: mut frozen,
            copy,
        } = seen;
        if frozen.stats.is_empty() {
            frozen = self
                .freeze(old, partition_id, action, recorded.map(|r| &r.source))
                .await?;
        }
        if frozen.stats == copy.stats || frozen.stats.is_empty() {
            return Ok(PartitionSignatures {
                source: frozen,
                copy,
            });
        }
        let new_q = self.q(new);
        let staging_name = format!("{}{partition_id}", self.load_prefix());
        let staging = self.q(&staging_name);
        self.ch
            .run(action, "drop_table", context! { table => &staging })
            .await?;
        let staged = self
            .stage_quarantined(action, &staging_name, &new_q, partition_id, &frozen, cancel)
            .await?;
        self.ch
            .run(
                action,
                "replace_partition",
                context! { target => &new_q, source => &staging, partition_id => partition_id },
            )
            .await?;
        self.ch
            .run(action, "drop_table", context! { table => &staging })
            .await?;
        let mut copy = self.copy_after_replace(new, partition_id, &staged).await?;
        if copy.parts.is_none() {
            copy = self.read_signed(new, partition_id).await?;
        }
        if copy.stats != frozen.stats {
            return Err(fail(format!(
                "{action}: after REPLACE PARTITION {new_q} holds {} but the frozen rows are {}; \
                 something else writes into {new_q}; nothing was dropped",
                copy.stats.describe(),
                frozen.stats.describe()
            )));
        }
        Ok(PartitionSignatures {
            source: frozen,
            copy,
        })
    }

    /// Drops the source partition after re-checking it against the copy, reusing the
    /// figures `recorded` (by the verify) where the parts are those they were read from.
    pub async fn drop_partition(
        &self,
        partition_id: &str,
        recorded: Option<&PartitionSignatures>,
        cancel: &CancellationToken,
    ) -> Result<StepResult, TaskFailure> {
        let Some((roles, _)) = self.roles_to_work_on(&[]).await? else {
            return Ok(already_on_policy());
        };
        let action = format!("drop partition {partition_id} of {}", self.names(&roles).0);
        if matches!(roles, Roles::Moving { .. }) {
            return self
                .drop_frozen(&roles, partition_id, &action, recorded, cancel)
                .await;
        }
        let (old, new) = self.names(&roles);
        let quarantine = self.q(&self.quarantine_name());
        let dst = self.stats(&new, partition_id).await?;
        let mut dropped_before = false;
        // A previous attempt may have moved the partition into quarantine and died.
        let q = self.stats(&quarantine, partition_id).await?;
        if !q.is_empty() {
            if q == dst {
                self.drop_quarantined(&quarantine, partition_id, &action)
                    .await?;
                dropped_before = true;
            } else {
                self.move_back(&quarantine, &old, partition_id, &action)
                    .await?;
            }
        }
        let src = self.stats(&old, partition_id).await?;
        if src.is_empty() {
            return Ok(StepResult::of(
                dst,
                if dropped_before {
                    format!("dropped after a re-check ({})", dst.describe())
                } else {
                    "source partition already dropped".into()
                },
            ));
        }
        if dropped_before {
            // What is left arrived after the verified rows were moved: catch-up's job.
            return Ok(StepResult::of(
                dst,
                format!(
                    "dropped the verified rows; {} rows arrived since and are left for the catch-up",
                    src.rows
                ),
            ));
        }
        if src != dst {
            return Err(fail(format!(
                "{action}: the source {} but {new} {}; rows changed after the verify (still \
                 arriving? bound the table with `upper`); nothing was dropped",
                src.describe(),
                dst.describe()
            )));
        }
        self.ch
            .run(
                &action,
                "move_partition",
                context! { source => &old, target => &quarantine, partition_id => partition_id },
            )
            .await?;
        let moved = self.stats(&quarantine, partition_id).await?;
        if moved == dst {
            self.drop_quarantined(&quarantine, partition_id, &action)
                .await?;
            let left = self.stats(&old, partition_id).await?;
            let mut note = format!("re-checked and dropped ({})", dst.describe());
            if !left.is_empty() {
                note.push_str(&format!(
                    "; {} rows arrived meanwhile and are left for the catch-up",
                    left.rows
                ));
            }
            return Ok(StepResult::of(dst, note));
        }
        self.move_back(&quarantine, &old, partition_id, &action)
            .await?;
        Err(fail(format!(
            "{action}: rows arrived between the check and the move ({} moved, copy {}); they \
             are back in {old} and nothing was dropped; bound the table with `upper`",
            moved.describe(),
            dst.describe()
        )))
    }

    /// The drop before the swap: freeze the partition, make the copy equal the frozen
    /// rows (re-loading it if rows arrived since the verify), then drop the frozen rows.
    /// Rows that arrive after the freeze stay in the old table for the catch-up.
    async fn drop_frozen(
        &self,
        roles: &Roles,
        partition_id: &str,
        action: &str,
        recorded: Option<&PartitionSignatures>,
        cancel: &CancellationToken,
    ) -> Result<StepResult, TaskFailure> {
        let (old, new) = self.bare_names(roles);
        let quarantine = self.quarantine_name();
        let mut parts = self.parts(&[new, &quarantine], partition_id).await?;
        let dst_parts = parts.remove(new).unwrap_or_default();
        let q_parts = parts.remove(&quarantine).unwrap_or_default();
        let copy = self
            .signed(new, partition_id, &dst_parts, recorded.map(|r| &r.copy))
            .await?;
        let earlier = self
            .signed(
                &quarantine,
                partition_id,
                &q_parts,
                recorded.map(|r| &r.source),
            )
            .await?;
        let finishing = !earlier.stats.is_empty();
        let seen = Seen {
            quarantined: earlier,
            copy: copy.clone(),
        };
        let frozen = self
            .reload_frozen((old, new), partition_id, action, seen, recorded, cancel)
            .await?;
        if frozen.source.stats.is_empty() {
            return Ok(StepResult::of(
                copy.stats,
                "source partition already dropped",
            ));
        }
        // reload_frozen returned only once the copy equals the frozen rows.
        self.drop_quarantined(&self.q(&quarantine), partition_id, action)
            .await?;
        let how = match &frozen.source.parts {
            Some(p) if recorded.and_then(|r| r.source.if_of(p)).is_some() => {
                " (the frozen parts are the verified ones, moved byte for byte: not read again)"
            }
            _ => "",
        };
        let mut note = if frozen.source.stats == copy.stats {
            format!(
                "re-checked and dropped ({}){how}",
                frozen.source.stats.describe()
            )
        } else {
            format!(
                "rows arrived after the verify (copy {}): re-loaded from the frozen partition, \
                 re-checked and dropped ({})",
                copy.stats.describe(),
                frozen.source.stats.describe()
            )
        };
        if finishing {
            note.push_str("; finished an earlier attempt's drop");
        }
        let left = self.parts_of(old, partition_id).await?;
        if !left.is_empty() {
            note.push_str(&format!(
                "; {} rows arrived meanwhile and are left for the catch-up",
                left.rows()
            ));
        }
        Ok(StepResult::of(frozen.source.stats, note))
    }

    /// Moves the old table's partition whole into quarantine (atomic: rows that arrive
    /// later land in a new part of the old table); returns what quarantine holds of it,
    /// known without reading when its parts are those `recorded` was read from.
    async fn freeze(
        &self,
        old: &str,
        partition_id: &str,
        action: &str,
        recorded: Option<&Signed>,
    ) -> Result<Signed, TaskFailure> {
        let quarantine = self.quarantine_name();
        self.ch
            .run(
                action,
                "move_partition",
                context! { source => self.q(old), target => self.q(&quarantine), partition_id => partition_id },
            )
            .await?;
        let now = self.parts_of(&quarantine, partition_id).await?;
        Ok(self
            .signed(&quarantine, partition_id, &now, recorded)
            .await?)
    }

    /// Copies the quarantined partition into a fresh `staging` table (like the new
    /// table) and checks the copy equals `quarantined`; otherwise drops the staging
    /// table and fails, to be retried. Returns the staged rows.
    async fn stage_quarantined(
        &self,
        action: &str,
        staging_name: &str,
        new: &str,
        partition_id: &str,
        quarantined: &Signed,
        cancel: &CancellationToken,
    ) -> Result<Signed, TaskFailure> {
        let quarantine = self.q(&self.quarantine_name());
        let staging = &self.q(staging_name);
        self.stage(
            action,
            Staging {
                staging,
                like: new,
                from: &quarantine,
                partition_id,
            },
            cancel,
        )
        .await?;
        let staged = self.read_signed(staging_name, partition_id).await?;
        if staged.stats != quarantined.stats {
            self.ch
                .run(action, "drop_table", context! { table => staging })
                .await?;
            return Err(TaskFailure::transient(format!(
                "{action}: the staging copy ({}) differs from the quarantined rows ({}); retrying",
                staged.stats.describe(),
                quarantined.stats.describe()
            )));
        }
        Ok(staged)
    }

    async fn drop_quarantined(
        &self,
        quarantine: &str,
        partition_id: &str,
        action: &str,
    ) -> Result<(), ChError> {
        self.ch
            .run(
                action,
                "drop_partition",
                context! { table => quarantine, partition_id => partition_id },
            )
            .await
    }

    async fn move_back(
        &self,
        quarantine: &str,
        old: &str,
        partition_id: &str,
        action: &str,
    ) -> Result<(), ChError> {
        self.ch
            .run(
                action,
                "move_partition",
                context! { source => quarantine, target => old, partition_id => partition_id },
            )
            .await
    }

    /// Moves whatever the old table (and quarantine, and unfinished staging tables)
    /// still hold into the new table, partition by partition, additively.
    /// Returns (rows moved, partitions moved).
    pub async fn move_leftovers(
        &self,
        roles: &Roles,
        cancel: &CancellationToken,
    ) -> Result<(u64, usize), TaskFailure> {
        let (old, new) = self.bare_names(roles);
        // Load staging tables left by killed loads are garbage now (every load is done).
        for name in self.list_prefixed(&self.load_prefix()).await? {
            self.ch
                .run(
                    "drop a stale staging table",
                    "drop_table",
                    context! { table => self.q(&name) },
                )
                .await?;
        }
        let mut ids = self.partitions_with_rows(old).await?;
        ids.extend(self.partitions_with_rows(&self.quarantine_name()).await?);
        let prefix = self.append_prefix();
        let staged: BTreeSet<String> = self
            .list_prefixed(&prefix)
            .await?
            .into_iter()
            .map(|name| name[prefix.len()..].to_string())
            .collect();
        ids.extend(staged.iter().cloned());
        let mut rows = 0;
        let mut partitions = 0;
        for id in ids {
            let moved = self
                .append_partition((old, new), &id, staged.contains(&id), cancel)
                .await?;
            if moved > 0 {
                rows += moved;
                partitions += 1;
            }
        }
        Ok((rows, partitions))
    }

    /// The additive, restartable move of one partition (module notes).
    async fn append_partition(
        &self,
        (old, new): (&str, &str),
        partition_id: &str,
        mut staging_exists: bool,
        cancel: &CancellationToken,
    ) -> Result<u64, TaskFailure> {
        let new_q = self.q(new);
        let action = format!("move arriving rows of partition {partition_id} into {new_q}");
        let quarantine = self.quarantine_name();
        let staging_name = format!("{}{partition_id}", self.append_prefix());
        let staging = self.q(&staging_name);
        let mut parts = self.parts(&[old, &quarantine], partition_id).await?;
        let src_parts = parts.remove(old).unwrap_or_default();
        let q_parts = parts.remove(&quarantine).unwrap_or_default();
        if staging_exists && !q_parts.is_empty() {
            // Killed while filling the staging table: start over from the quarantine.
            self.ch
                .run(&action, "drop_table", context! { table => &staging })
                .await?;
            staging_exists = false;
        }
        if !staging_exists {
            let frozen = if q_parts.is_empty() {
                if src_parts.is_empty() {
                    return Ok(0);
                }
                self.freeze(old, partition_id, &action, None).await?
            } else {
                self.read_signed(&quarantine, partition_id).await?
            };
            if frozen.stats.is_empty() {
                return Ok(0);
            }
            self.stage_quarantined(
                &action,
                &staging_name,
                &new_q,
                partition_id,
                &frozen,
                cancel,
            )
            .await?;
            // Commit: from here the rows live in the staging table only.
            self.drop_quarantined(&self.q(&quarantine), partition_id, &action)
                .await?;
        }
        let staged = self.parts_of(&staging_name, partition_id).await?;
        if !staged.is_empty() {
            self.ch
                .run(
                    &action,
                    "move_partition",
                    context! { source => &staging, target => &new_q, partition_id => partition_id },
                )
                .await?;
        }
        self.ch
            .run(&action, "drop_table", context! { table => &staging })
            .await?;
        Ok(staged.rows())
    }

    /// Moves rows that arrived since their partition was copied, in a few passes.
    pub async fn catch_up(&self, cancel: &CancellationToken) -> Result<StepResult, TaskFailure> {
        let Some((roles, _)) = self.roles_to_work_on(&[]).await? else {
            return Ok(already_on_policy());
        };
        let mut total = 0;
        let mut parts = 0;
        let mut passes = 0;
        for _ in 0..CATCH_UP_PASSES {
            passes += 1;
            let (rows, partitions) = self.move_leftovers(&roles, cancel).await?;
            total += rows;
            parts += partitions;
            if rows == 0 {
                break;
            }
        }
        let (old, _) = self.names(&roles);
        let still = self.ch.stats("count rows left", &old, None, None).await?;
        let mut note = format!("{total} rows in {parts} partition(s) moved in {passes} pass(es)");
        if !still.is_empty() {
            note.push_str(&format!(
                "; {} rows are still arriving in {old}: the swap moves what is left",
                still.rows
            ));
        }
        Ok(StepResult {
            rows: total,
            note,
            ..Default::default()
        })
    }

    /// The whole-table check before the swap (module notes: it reads no rows).
    pub async fn full_verify(&self) -> Result<StepResult, TaskFailure> {
        let Some((roles, _)) = self.roles_to_work_on(&[]).await? else {
            return Ok(already_on_policy());
        };
        let (old, new) = self.names(&roles);
        let mut problems = Vec::new();
        let quarantine = self.q(&self.quarantine_name());
        let q = self
            .ch
            .stats("count quarantined rows", &quarantine, None, None)
            .await?;
        if !q.is_empty() {
            problems.push(format!("{} rows wait in {quarantine}", q.rows));
        }
        let pending = self.list_prefixed(&self.append_prefix()).await?;
        if !pending.is_empty() {
            problems.push(format!("unfinished moves in {}", pending.join(", ")));
        }
        let (_, new_name) = self.bare_names(&roles);
        let disks = self.disks_of(new_name).await?;
        let policy_disks = self.policy_disks().await?;
        let off_policy: Vec<&String> = disks
            .iter()
            .filter(|d| !policy_disks.contains(*d))
            .collect();
        if !off_policy.is_empty() {
            problems.push(format!(
                "{new} has parts on disks outside policy `{}`: {:?}",
                self.policy, off_policy
            ));
        }
        if !problems.is_empty() {
            return Err(fail(format!(
                "verify {}: {}; resume to let the catch-up finish them",
                self.s(),
                problems.join("; ")
            )));
        }
        let moved = self
            .ch
            .stats("count the new table", &new, None, None)
            .await?;
        let left = self.ch.stats("count rows left", &old, None, None).await?;
        let mut note = format!(
            "{new}: {} rows on disks {:?}, each checked when it was copied; {} holds {} rows",
            moved.rows, disks, old, left.rows
        );
        if !left.is_empty() {
            note.push_str(" (arrived after the catch-up; the swap moves them)");
        }
        Ok(StepResult {
            rows: moved.rows,
            note,
            ..Default::default()
        })
    }

    /// Creates `staging` like the new table (default policy) and copies one partition
    /// into it inside the server.
    async fn stage(
        &self,
        action: &str,
        s: Staging<'_>,
        cancel: &CancellationToken,
    ) -> Result<(), TaskFailure> {
        self.ch
            .run(
                action,
                "create_like",
                context! { table => s.staging, like => s.like, storage_policy => None::<String> },
            )
            .await?;
        let cols = self
            .columns()
            .await?
            .iter()
            .map(|c| crate::templates::quote_identifier(&c.name))
            .collect::<Vec<_>>()
            .join(", ");
        self.ch
            .run_cancellable(
                action,
                "insert_select",
                context! {
                    target => s.staging, columns => &cols, from => s.from,
                    filter => partition_id_filter(s.partition_id),
                    settings => super::keep_rows_as_stored(&self.ch).await?,
                },
                cancel,
            )
            .await?;
        Ok(())
    }

    async fn disks_of(&self, table: &str) -> Result<Vec<String>, ChError> {
        self.ch
            .strings(
                &format!("list disks of {table}"),
                "part_disks",
                context! { database => &self.database, table => table },
                "disk_name",
            )
            .await
    }

    /// Every disk of the policy.
    async fn policy_disks(&self) -> Result<Vec<String>, TaskFailure> {
        Ok(TargetPolicy::read(&self.ch, &self.policy)
            .await?
            .volumes
            .into_iter()
            .flat_map(|v| v.disks)
            .collect())
    }

    /// Cuts over: the table's name then holds the S3 copy.
    pub async fn swap(
        &self,
        release_lock: bool,
        cancel: &CancellationToken,
    ) -> Result<StepResult, TaskFailure> {
        let (roles, _) = self.locked_roles(&[]).await?;
        let mut note = match roles {
            Roles::Done => "table already on the policy".to_string(),
            Roles::Swapped => "already swapped".to_string(),
            Roles::Moving { new_exists: false } => {
                return Err(fail(format!(
                    "swap {}: {} does not exist (prepare has not run)",
                    self.s(),
                    self.q(&self.new_table)
                )))
            }
            Roles::Moving { new_exists: true } => {
                // More passes for rows that arrived since the catch-up. What arrives
                // during the last pass and the exchange itself stays in the old table
                // and is moved right after the exchange, by the same additive procedure
                // (and again by cleanup): never swapped away.
                let mut moved = 0;
                for _ in 0..CATCH_UP_PASSES {
                    let (rows, _) = self.move_leftovers(&roles, cancel).await?;
                    moved += rows;
                    if rows == 0 {
                        break;
                    }
                }
                let caps = self.ch.caps().await?;
                let engine = super::copy::database_engine(&self.ch, &self.database).await?;
                let (a, b) = (self.s(), self.q(&self.new_table));
                if caps.has(Feature::ExchangeTables)
                    && matches!(engine.as_str(), "Atomic" | "Replicated")
                {
                    self.ch
                        .run(
                            "swap tables",
                            "exchange_tables",
                            context! { a => &a, b => &b },
                        )
                        .await?;
                    format!("{moved} late rows moved, then EXCHANGE TABLES {a} AND {b}")
                } else {
                    let tmp = self.q(&format!("{}__flow_swap_tmp", self.table));
                    self.ch
                        .run(
                            "swap tables",
                            "rename_swap",
                            context! { a => &a, b => &b, tmp => &tmp, markers => Vec::<minijinja::Value>::new() },
                        )
                        .await?;
                    format!("{moved} late rows moved, then RENAME chain {a} ⇄ {b}")
                }
            }
        };
        if roles != Roles::Done {
            // Rows written into the old table in the instant before the exchange.
            let swapped = self.roles().await?;
            if swapped == Roles::Swapped {
                let (rows, _) = self.move_leftovers(&swapped, cancel).await?;
                if rows > 0 {
                    note.push_str(&format!("; {rows} rows written during the swap moved over"));
                }
            }
        }
        if release_lock {
            // The last task of a move that keeps the old table: drop the (empty)
            // quarantine, then the lock.
            self.drop_empty_quarantine().await?;
            self.unlock().await?;
        }
        Ok(StepResult {
            note,
            ..Default::default()
        })
    }

    /// Drops the quarantine table; refuses when it still holds rows.
    async fn drop_empty_quarantine(&self) -> Result<(), TaskFailure> {
        let quarantine = self.q(&self.quarantine_name());
        if !self.exists(&self.quarantine_name()).await? {
            return Ok(());
        }
        let q = self
            .ch
            .stats("count quarantined rows", &quarantine, None, None)
            .await?;
        if !q.is_empty() {
            return Err(fail(format!(
                "{quarantine} holds {} rows; resume so that they are moved first",
                q.rows
            )));
        }
        self.ch
            .run(
                "drop the quarantine table",
                "drop_table",
                context! { table => &quarantine },
            )
            .await?;
        Ok(())
    }

    /// Drops the old table (and flow's helper tables) once it is empty.
    pub async fn cleanup(&self, cancel: &CancellationToken) -> Result<StepResult, TaskFailure> {
        let (roles, _) = self.locked_roles(&[]).await?;
        if roles == (Roles::Moving { new_exists: true }) {
            return Err(fail(format!(
                "cleanup {}: the swap has not happened; refusing to drop anything",
                self.s()
            )));
        }
        let mut note = String::new();
        if roles == Roles::Swapped {
            let (rows, _) = self.move_leftovers(&roles, cancel).await?;
            let (old, _) = self.names(&roles);
            let left = self.ch.stats("count rows left", &old, None, None).await?;
            if !left.is_empty() {
                return Err(TaskFailure::transient(format!(
                    "cleanup: {old} still holds {} rows; not dropping it",
                    left.rows
                )));
            }
            self.ch
                .run(
                    "drop the old table",
                    "drop_table",
                    context! { table => &old },
                )
                .await?;
            note = format!("{rows} late rows moved; dropped {old}");
        }
        self.drop_empty_quarantine().await?;
        self.unlock().await?;
        if note.is_empty() {
            note = "nothing left to drop".into();
        }
        Ok(StepResult {
            note,
            ..Default::default()
        })
    }
}

/// The tables a whole-database move (`table = "*"`) covers: MergeTree tables of
/// `database` not yet on `policy`, plus those whose move is unfinished (swapped but
/// not cleaned up: the lock marker is still there), without flow's own helper tables.
pub async fn tables_to_move(ch: &Ch, database: &str, policy: &str) -> Result<Vec<String>, ChError> {
    ch.require(Feature::StoragePolicies, "strategy s3-policy")
        .await?;
    ch.strings(
        &format!("list tables of {database}"),
        "policy_candidates",
        context! { database => database, policy => policy },
        "name",
    )
    .await
}

/// One partition copied into a staging table: where from, shaped like what.
struct Staging<'a> {
    staging: &'a str,
    /// The new table, whose structure the staging table takes (default policy).
    like: &'a str,
    from: &'a str,
    partition_id: &'a str,
}

/// What a per-partition or catch-up step reports when the whole move is already done.
fn already_on_policy() -> StepResult {
    StepResult {
        note: "table already on the policy".into(),
        ..Default::default()
    }
}
