//! The runner of `[[volumes]]` tasks: quiesce, snapshot, unquiesce, restore, verify,
//! bind and swap, written against the engines' volume roles (a block store, a claim
//! host) that the registry opens for the entry's connections, once per run.
//!
//! Each task hands the next what it needs as a typed artifact (the snapshot and the
//! claim it was taken of travel down the chain), and derives every name it creates
//! from the plan, the task and its inputs ([`EffectKey`]), so a task started again
//! finds what an earlier attempt made. The swap re-checks, right before it deletes the
//! claim, what the verify checked: the new volume as the block store reports it now,
//! and that no pod of the StatefulSet is left.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex as AsyncMutex;

use crate::engines::registry;
use crate::engines::volume::{
    poll_until, BlockStore, BlockVolume, Bound, ClaimBinding, ClaimHost, ClaimedVolume, EffectKey,
    NewVolume, Quiesced, Snapshot, SnapshotState, PV_PREFIX,
};
use crate::exec::runner::{TaskContext, TaskFailure, TaskOutcome, TaskRunner};
use crate::graph::{Task, TaskKind, WorkUnit};
use crate::plan::{Plan, VolumeSpec, VolumeStrategyKind};
use crate::task::Artifact;

/// How long a snapshot may take (a first snapshot of a big volume takes hours), and a
/// new volume.
const SNAPSHOT_DEADLINE: Duration = Duration::from_secs(24 * 3600);
const VOLUME_DEADLINE: Duration = Duration::from_secs(3600);
const MAX_POLL: Duration = Duration::from_secs(15);

/// A quiesce's outcome (and an unquiesce's).
impl Artifact for Quiesced {
    const NAME: &'static str = "quiesced StatefulSet";
}

/// A snapshot task's outcome: the snapshot, the claim and volume it was taken of, and
/// the quiesce before it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Taken {
    snapshot: Snapshot,
    source: ClaimedVolume,
    source_volume: BlockVolume,
    /// The quiesce before the snapshot, when the entry names a StatefulSet.
    #[serde(default)]
    quiesced: Option<Quiesced>,
}

impl Artifact for Taken {
    const NAME: &'static str = "volume snapshot";
}

/// A restore's or a verify's outcome: the new volume and what it was made of.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Restored {
    volume: BlockVolume,
    taken: Taken,
}

impl Artifact for Restored {
    const NAME: &'static str = "restored volume";
}

/// A bind's or a swap's outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Attached {
    bound: Bound,
    /// The replicas the quiesce recorded, for the unquiesce after a swap.
    #[serde(default)]
    replicas: Option<i32>,
}

impl Artifact for Attached {
    const NAME: &'static str = "bound claim";
}

/// Runs the tasks of `[[volumes]]` entries.
pub struct VolumeRunner {
    plan: Arc<Plan>,
    blocks: AsyncMutex<HashMap<String, Arc<dyn BlockStore>>>,
    hosts: AsyncMutex<HashMap<String, Arc<dyn ClaimHost>>>,
}

impl VolumeRunner {
    pub fn new(plan: Arc<Plan>) -> Self {
        VolumeRunner {
            plan,
            blocks: AsyncMutex::new(HashMap::new()),
            hosts: AsyncMutex::new(HashMap::new()),
        }
    }

    async fn block_store(&self, connection: &str) -> Result<Arc<dyn BlockStore>, TaskFailure> {
        opened(&self.blocks, connection, || {
            registry::block_store(self.plan.connection(connection))
        })
        .await
    }

    async fn claim_host(&self, connection: &str) -> Result<Arc<dyn ClaimHost>, TaskFailure> {
        opened(&self.hosts, connection, || {
            registry::claim_host(self.plan.connection(connection))
        })
        .await
    }

    /// The artifact of the entry's `kind` task (a direct dependency of `task`).
    fn one<A: Artifact>(
        &self,
        task: &Task,
        ctx: &TaskContext,
        volume: &VolumeSpec,
        kind: TaskKind,
    ) -> Result<A, TaskFailure> {
        ctx.artifacts::<A>(kind)?.into_iter().next().ok_or_else(|| {
            TaskFailure::permanent(format!(
                "task `{}` found no {} of its `{kind}` task; run that one again: `flow state \
                 reset {} '{}/{kind}'`, then `flow apply --resume`",
                task.id,
                A::NAME,
                self.plan.source.path.display(),
                volume.name
            ))
        })
    }

    /// What `flow plan` says of a volume entry, read-only: the EBS volume its claim is
    /// on, and for a copy whether the target claim is free.
    pub async fn preflight(&self, volume: &VolumeSpec) -> Result<String, TaskFailure> {
        let host = self.claim_host(&volume.source.connection).await?;
        let blocks = self.block_store(&volume.ec2).await?;
        let claimed = host
            .claimed_volume(&volume.source.namespace, &volume.source.claim)
            .await?;
        let ebs = blocks.volume(&claimed.volume_id).await?.ok_or_else(|| {
            TaskFailure::permanent(format!(
                "EBS volume {} of PV {} does not exist on connection `{}`",
                claimed.volume_id, claimed.pv, volume.ec2
            ))
        })?;
        let mut line = format!(
            "{} is on PV {} (EBS {}, {} GiB, {}, zone {}, reclaim policy {})",
            volume.source,
            claimed.pv,
            ebs.id,
            ebs.size_gib,
            ebs.volume_type.as_deref().unwrap_or("?"),
            ebs.zone,
            claimed.reclaim_policy.as_deref().unwrap_or("?")
        );
        if volume.strategy == VolumeStrategyKind::EbsCopy {
            let target = self.claim_host(&volume.target.connection).await?;
            let on = target
                .claim_volume_name(&volume.target.namespace, &volume.target.claim)
                .await?;
            match on {
                None => line.push_str(&format!("; {} is free", volume.target)),
                Some(pv) if pv.starts_with(PV_PREFIX) => line.push_str(&format!(
                    "; {} is on flow's PV {pv} (an earlier run's bind)",
                    volume.target
                )),
                Some(pv) => {
                    return Err(TaskFailure::permanent(format!(
                        "{line}; but {} exists already (on PV {pv}): the bind makes it and \
                         replaces none",
                        volume.target
                    )))
                }
            }
        }
        Ok(line)
    }

    /// The key of `task`'s effects: the plan, the task, its inputs (and `more`).
    fn key(&self, task: &Task, more: &[&str]) -> EffectKey {
        let mut inputs = vec![task.fingerprint.0.as_str()];
        inputs.extend_from_slice(more);
        EffectKey::new(&self.plan.name, task.id.as_str(), &inputs)
    }

    /// The quiesce's key: the plan and the StatefulSet, so the unquiesce finds it.
    fn quiesce_key(&self, volume: &VolumeSpec, statefulset: &str) -> EffectKey {
        EffectKey::new(
            &self.plan.name,
            &format!("{}/quiesce", volume.name),
            &[&volume.source.namespace, statefulset],
        )
    }

    /// The key of the PV a bind or swap makes for `volume_id`.
    fn claim_key(&self, volume: &VolumeSpec, task: &str, volume_id: &str) -> EffectKey {
        EffectKey::new(
            &self.plan.name,
            &format!("{}/{task}", volume.name),
            &[&volume.target.namespace, &volume.target.claim, volume_id],
        )
    }
}

/// The client of `connection` in `cache`, opened by `open` the first time.
async fn opened<T: ?Sized, F, Fut>(
    cache: &AsyncMutex<HashMap<String, Arc<T>>>,
    connection: &str,
    open: F,
) -> Result<Arc<T>, TaskFailure>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = Result<Arc<T>, TaskFailure>>,
{
    let mut cache = cache.lock().await;
    if let Some(c) = cache.get(connection) {
        return Ok(c.clone());
    }
    let c = open().await?;
    cache.insert(connection.to_string(), c.clone());
    Ok(c)
}

fn outcome<A: Artifact>(note: String, outputs: Vec<String>, artifact: &A) -> TaskOutcome {
    TaskOutcome {
        note: Some(note),
        outputs,
        ..Default::default()
    }
    .with_artifact(artifact)
}

#[async_trait::async_trait]
impl TaskRunner for VolumeRunner {
    async fn run(&self, task: &Task, ctx: TaskContext) -> Result<TaskOutcome, TaskFailure> {
        // Every call is found again by the next attempt: dropping one midway is safe.
        let cancel = ctx.cancel.clone();
        tokio::select! {
            result = self.run_task(task, &ctx) => result,
            _ = cancel.cancelled() => Err(TaskFailure::permanent("cancelled")),
        }
    }
}

impl VolumeRunner {
    async fn run_task(&self, task: &Task, ctx: &TaskContext) -> Result<TaskOutcome, TaskFailure> {
        let WorkUnit::Volume { volume } = task.unit else {
            return Err(TaskFailure::permanent(format!(
                "task `{}` is not a volume task",
                task.id
            )));
        };
        let volume = self.plan.volumes.get(volume).ok_or_else(|| {
            TaskFailure::permanent(format!("task `{}`: volume index out of range", task.id))
        })?;
        let swap = volume.strategy == VolumeStrategyKind::EbsSwap;
        match task.kind {
            TaskKind::Quiesce => self.quiesce(volume).await,
            TaskKind::Snapshot => self.snapshot(task, ctx, volume).await,
            TaskKind::Unquiesce => self.unquiesce(task, ctx, volume, swap).await,
            TaskKind::Restore => self.restore(task, ctx, volume).await,
            TaskKind::Verify => self.verify(task, ctx, volume).await,
            TaskKind::Bind if !swap => self.bind(task, ctx, volume).await,
            TaskKind::Swap if swap => self.swap(task, ctx, volume).await,
            TaskKind::Bind
            | TaskKind::Swap
            | TaskKind::Split
            | TaskKind::Prepare
            | TaskKind::Export
            | TaskKind::Load
            | TaskKind::Manifest
            | TaskKind::CatchUp
            | TaskKind::Drop
            | TaskKind::Cleanup
            | TaskKind::Sql
            | TaskKind::Exec => Err(TaskFailure::permanent(format!(
                "task `{}`: strategy {} has no `{}` task",
                task.id,
                volume.strategy.name(),
                task.kind
            ))),
        }
    }

    fn statefulset<'a>(&self, volume: &'a VolumeSpec) -> Result<&'a str, TaskFailure> {
        volume.statefulset.as_deref().ok_or_else(|| {
            TaskFailure::permanent(format!("volume {}: no `statefulset` to scale", volume.name))
        })
    }

    async fn quiesce(&self, volume: &VolumeSpec) -> Result<TaskOutcome, TaskFailure> {
        let sts = self.statefulset(volume)?;
        let host = self.claim_host(&volume.source.connection).await?;
        let q = host
            .quiesce(
                &volume.source.namespace,
                sts,
                &self.quiesce_key(volume, sts),
            )
            .await?;
        let note = if q.changed {
            format!("StatefulSet {sts} scaled from {} to 0", q.replicas)
        } else {
            format!("StatefulSet {sts} already at 0 (had {})", q.replicas)
        };
        Ok(outcome(note, vec![], &q))
    }

    async fn snapshot(
        &self,
        task: &Task,
        ctx: &TaskContext,
        volume: &VolumeSpec,
    ) -> Result<TaskOutcome, TaskFailure> {
        let quiesced = ctx
            .artifacts::<Quiesced>(TaskKind::Quiesce)?
            .into_iter()
            .next();
        let host = self.claim_host(&volume.source.connection).await?;
        let blocks = self.block_store(&volume.ec2).await?;
        let source = host
            .claimed_volume(&volume.source.namespace, &volume.source.claim)
            .await?;
        if let Some(sts) = &volume.statefulset {
            let left = host.pods_left(&volume.source.namespace, sts).await?;
            if left > 0 {
                return Err(TaskFailure::transient(format!(
                    "volume {}: {left} pod(s) of StatefulSet {sts} still run; the snapshot \
                     waits until the quiesce has stopped them",
                    volume.name
                )));
            }
        }
        let source_volume = blocks.volume(&source.volume_id).await?.ok_or_else(|| {
            TaskFailure::permanent(format!(
                "volume {}: EBS volume {} of PV {} does not exist on connection `{}`; check \
                 that `ec2` is the account and region of the cluster",
                volume.name, source.volume_id, source.pv, volume.ec2
            ))
        })?;
        let key = self.key(task, &[&source.volume_id]);
        let snapshot = blocks
            .find_or_create_snapshot(&source.volume_id, &key)
            .await?;
        let note = format!(
            "snapshot {} of {} (PV {}), {}",
            snapshot.id,
            source.volume_id,
            source.pv,
            match &snapshot.state {
                SnapshotState::Completed => "completed".to_string(),
                SnapshotState::Pending { .. } => "pending".to_string(),
                SnapshotState::Error { message } => format!("error: {message}"),
            }
        );
        let outputs = vec![snapshot.id.clone()];
        Ok(outcome(
            note,
            outputs,
            &Taken {
                snapshot,
                source,
                source_volume,
                quiesced,
            },
        ))
    }

    async fn unquiesce(
        &self,
        task: &Task,
        ctx: &TaskContext,
        volume: &VolumeSpec,
        swap: bool,
    ) -> Result<TaskOutcome, TaskFailure> {
        let sts = self.statefulset(volume)?;
        // A swap's unquiesce follows the swap (which carries the replicas); a copy's
        // follows the snapshot.
        let fallback = if swap {
            self.one::<Attached>(task, ctx, volume, TaskKind::Swap)?
                .replicas
        } else {
            self.one::<Taken>(task, ctx, volume, TaskKind::Snapshot)?
                .quiesced
                .map(|q| q.replicas)
        };
        let host = self.claim_host(&volume.source.connection).await?;
        let q = host
            .unquiesce(
                &volume.source.namespace,
                sts,
                &self.quiesce_key(volume, sts),
                fallback,
            )
            .await?;
        let note = if q.changed {
            format!("StatefulSet {sts} scaled back to {} and Ready", q.replicas)
        } else {
            format!("StatefulSet {sts} already at {}", q.replicas)
        };
        Ok(outcome(note, vec![], &q))
    }

    async fn restore(
        &self,
        task: &Task,
        ctx: &TaskContext,
        volume: &VolumeSpec,
    ) -> Result<TaskOutcome, TaskFailure> {
        let taken: Taken = self.one(task, ctx, volume, TaskKind::Snapshot)?;
        let blocks = self.block_store(&volume.ec2).await?;
        let snap_id = taken.snapshot.id.clone();
        let what = format!("volume {}: snapshot {snap_id}", volume.name);
        let snapshot_task = format!("{}/snapshot", volume.name);
        poll_until(&what, SNAPSHOT_DEADLINE, MAX_POLL, || async {
            match blocks.snapshot(&snap_id).await? {
                None => Err(TaskFailure::permanent(format!(
                    "{what} is gone; take another: `flow state reset {} '{snapshot_task}'`, \
                     then `flow apply --resume`",
                    self.plan.source.path.display()
                ))),
                Some(s) => match s.state {
                    SnapshotState::Completed => Ok(Ok(())),
                    SnapshotState::Pending { progress } => Ok(Err(format!(
                        "pending{}",
                        progress.map(|p| format!(" ({p})")).unwrap_or_default()
                    ))),
                    SnapshotState::Error { message } => Err(TaskFailure::permanent(format!(
                        "{what} failed: {message}; take another: `flow state reset {} \
                         '{snapshot_task}'`, then `flow apply --resume`",
                        self.plan.source.path.display()
                    ))),
                },
            }
        })
        .await?;
        let request = NewVolume {
            snapshot_id: snap_id.clone(),
            zone: target_zone(volume, &taken),
            volume_type: volume
                .text_setting("volume_type")
                .map(str::to_string)
                .or(taken.source_volume.volume_type.clone()),
            iops: volume.integer_setting("iops").map(|n| n as i32),
            throughput: volume.integer_setting("throughput").map(|n| n as i32),
            kms_key_id: volume.text_setting("kms_key_id").map(str::to_string),
        };
        let key = self.key(task, &[]);
        let made = blocks.find_or_create_volume(&request, &key).await?;
        let what = format!("volume {}: new EBS volume {}", volume.name, made.id);
        let id = made.id.clone();
        let ready = poll_until(&what, VOLUME_DEADLINE, MAX_POLL, || async {
            match blocks.volume(&id).await? {
                Some(v) if v.state == "available" => Ok(Ok(v)),
                Some(v) if v.state == "error" => Err(TaskFailure::permanent(format!(
                    "{what} ended in state error; delete it and resume (a new one is made)"
                ))),
                Some(v) => Ok(Err(v.state)),
                // Describe is eventually consistent just after a create.
                None => Ok(Err("not listed yet".to_string())),
            }
        })
        .await?;
        let note = format!(
            "volume {} from {snap_id} in {} ({} GiB, {})",
            ready.id,
            ready.zone,
            ready.size_gib,
            ready.volume_type.as_deref().unwrap_or("default type")
        );
        let outputs = vec![ready.id.clone()];
        Ok(outcome(
            note,
            outputs,
            &Restored {
                volume: ready,
                taken,
            },
        ))
    }

    /// Checks the new volume against what it was made of, and that its claim is free;
    /// read-only. Returns the volume as it is now.
    async fn check_new_volume(
        &self,
        volume: &VolumeSpec,
        restored: &Restored,
    ) -> Result<BlockVolume, TaskFailure> {
        let blocks = self.block_store(&volume.ec2).await?;
        let name = &volume.name;
        let new = &restored.volume;
        let snap = &restored.taken.snapshot;
        let fail = |problem: String| {
            TaskFailure::permanent(format!(
                "volume {name}: the new EBS volume {} {problem}; nothing is bound",
                new.id
            ))
        };
        let now = blocks
            .volume(&new.id)
            .await?
            .ok_or_else(|| fail("does not exist any more".into()))?;
        if now.state != "available" {
            return Err(fail(format!("is {}, not available", now.state)));
        }
        if now.snapshot_id.as_deref() != Some(snap.id.as_str()) {
            return Err(fail(format!(
                "was made from {}, not from snapshot {}",
                now.snapshot_id.as_deref().unwrap_or("no snapshot"),
                snap.id
            )));
        }
        let expected_zone = target_zone(volume, &restored.taken);
        if now.zone != expected_zone {
            return Err(fail(format!(
                "is in zone {}, not {expected_zone}",
                now.zone
            )));
        }
        let old_size = restored.taken.source_volume.size_gib.max(snap.size_gib);
        if now.size_gib < old_size {
            return Err(fail(format!(
                "has {} GiB, less than the {old_size} GiB of the volume it copies",
                now.size_gib
            )));
        }
        match blocks.snapshot(&snap.id).await? {
            Some(s)
                if s.state == SnapshotState::Completed
                    && s.volume_id == restored.taken.source.volume_id => {}
            Some(s) => {
                return Err(fail(format!(
                    "comes from snapshot {} which is {:?} of {}, not a completed snapshot of {}",
                    snap.id, s.state, s.volume_id, restored.taken.source.volume_id
                )))
            }
            None => {
                return Err(fail(format!(
                    "comes from snapshot {}, which is gone",
                    snap.id
                )))
            }
        }
        Ok(now)
    }

    async fn verify(
        &self,
        task: &Task,
        ctx: &TaskContext,
        volume: &VolumeSpec,
    ) -> Result<TaskOutcome, TaskFailure> {
        let restored: Restored = self.one(task, ctx, volume, TaskKind::Restore)?;
        let now = self.check_new_volume(volume, &restored).await?;
        let host = self.claim_host(&volume.target.connection).await?;
        let target = &volume.target;
        let on = host
            .claim_volume_name(&target.namespace, &target.claim)
            .await?;
        let swap = volume.strategy == VolumeStrategyKind::EbsSwap;
        let ours =
            host.pv_name(&self.claim_key(volume, if swap { "swap" } else { "bind" }, &now.id));
        let free = match on.as_deref() {
            None => !swap,
            Some(pv) if pv == ours => true,
            Some(pv) => swap && pv == restored.taken.source.pv,
        };
        if !free {
            return Err(TaskFailure::permanent(format!(
                "volume {}: {target} {}; {}",
                volume.name,
                match &on {
                    Some(pv) => format!("is on PV {pv}"),
                    None => "does not exist".into(),
                },
                if swap {
                    format!(
                        "the swap replaces the volume of the claim the snapshot was taken of \
                         (PV {}) only",
                        restored.taken.source.pv
                    )
                } else {
                    "flow makes the target claim itself: delete it, or choose another \
                     `target_claim`"
                        .to_string()
                }
            )));
        }
        let note = format!(
            "volume {} available in {}, {} GiB, from completed snapshot {}; {target} is {}",
            now.id,
            now.zone,
            now.size_gib,
            restored.taken.snapshot.id,
            if on.is_some() { "ready" } else { "free" }
        );
        Ok(outcome(
            note,
            vec![],
            &Restored {
                volume: now,
                taken: restored.taken,
            },
        ))
    }

    async fn bind(
        &self,
        task: &Task,
        ctx: &TaskContext,
        volume: &VolumeSpec,
    ) -> Result<TaskOutcome, TaskFailure> {
        let checked: Restored = self.one(task, ctx, volume, TaskKind::Verify)?;
        let host = self.claim_host(&volume.target.connection).await?;
        let key = self.claim_key(volume, "bind", &checked.volume.id);
        let bound = host
            .bind_new_claim(&ClaimBinding {
                namespace: &volume.target.namespace,
                claim: &volume.target.claim,
                volume: &checked.volume,
                like: &checked.taken.source,
                key: &key,
            })
            .await?;
        let note = format!(
            "{} bound to PV {} (volume {}){}",
            volume.target,
            bound.pv,
            bound.volume_id,
            if bound.changed { "" } else { ", already" }
        );
        Ok(outcome(
            note,
            vec![bound.pv.clone()],
            &Attached {
                bound,
                replicas: None,
            },
        ))
    }

    async fn swap(
        &self,
        task: &Task,
        ctx: &TaskContext,
        volume: &VolumeSpec,
    ) -> Result<TaskOutcome, TaskFailure> {
        let verified: Restored = self.one(task, ctx, volume, TaskKind::Verify)?;
        // Verify, then destroy: what the verify checked, checked again now.
        let now = self.check_new_volume(volume, &verified).await?;
        let sts = self.statefulset(volume)?;
        let host = self.claim_host(&volume.source.connection).await?;
        let left = host.pods_left(&volume.source.namespace, sts).await?;
        if left > 0 {
            return Err(TaskFailure::permanent(format!(
                "volume {}: {left} pod(s) of StatefulSet {sts} run again; the claim is not \
                 replaced under a running pod: scale it to 0 (`kubectl scale statefulset {sts} \
                 --replicas=0`), then resume",
                volume.name
            )));
        }
        let key = self.claim_key(volume, "swap", &now.id);
        let bound = host
            .replace_claim_volume(
                &ClaimBinding {
                    namespace: &volume.source.namespace,
                    claim: &volume.source.claim,
                    volume: &now,
                    like: &verified.taken.source,
                    key: &key,
                },
                &verified.taken.source.pv,
            )
            .await?;
        let replicas = verified.taken.quiesced.as_ref().map(|q| q.replicas);
        let note = format!(
            "{} moved from PV {} (volume {}, kept with reclaim policy Retain) to PV {} \
             (volume {}){}",
            volume.source,
            verified.taken.source.pv,
            verified.taken.source.volume_id,
            bound.pv,
            bound.volume_id,
            if bound.changed { "" } else { ", already" }
        );
        Ok(outcome(
            note,
            vec![bound.pv.clone()],
            &Attached { bound, replicas },
        ))
    }
}

/// The zone of the new volume: the setting, else the old volume's.
fn target_zone(volume: &VolumeSpec, taken: &Taken) -> String {
    volume
        .text_setting("availability_zone")
        .map(str::to_string)
        .or(taken.source.zone.clone())
        .unwrap_or_else(|| taken.source_volume.zone.clone())
}
