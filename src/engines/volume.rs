//! What a `[[volumes]]` entry needs of the engines, as two roles: a **block store**
//! (snapshots of a disk volume and new volumes made from them: EBS through EC2) and a
//! **claim host** (the orchestrator that mounts volumes through claims and runs the
//! workload using them: Kubernetes PVs, PVCs and StatefulSets). The strategy's tasks
//! (`runtime::volume_tasks`) are written against these traits only.
//!
//! Every effect is found again rather than repeated: snapshots and volumes carry the
//! task's identity key as a tag (and a new volume the key as its idempotency token),
//! the PV flow makes is named from the key, and a quiesced StatefulSet carries the
//! replicas it had and the key that scaled it down as annotations.

use serde::{Deserialize, Serialize};

use crate::task::TaskFailure;

/// The identity of one task's effect: a hash of the plan, the task and its inputs.
/// Tagged on what the task creates, so a retry after a crash finds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EffectKey {
    /// 32 hex digits.
    pub key: String,
    /// For humans reading the tags: the plan and the task id.
    pub plan: String,
    pub task: String,
}

impl EffectKey {
    pub fn new(plan: &str, task: &str, inputs: &[&str]) -> Self {
        let mut h = blake3::Hasher::new();
        for part in [plan, task].iter().chain(inputs) {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part.as_bytes());
        }
        EffectKey {
            key: h.finalize().to_hex()[..32].to_string(),
            plan: plan.to_string(),
            task: task.to_string(),
        }
    }
}

/// Tag and label names flow puts on what it creates.
pub const KEY_TAG: &str = "flow/key";
pub const PLAN_TAG: &str = "flow/plan";
pub const TASK_TAG: &str = "flow/task";
/// The start of the name of every PV flow makes (`flow-<key>`).
pub const PV_PREFIX: &str = "flow-";

/// A snapshot's state, as the block store reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SnapshotState {
    Pending {
        progress: Option<String>,
    },
    Completed,
    /// Failed for good; the store's message.
    Error {
        message: String,
    },
}

/// A snapshot of a volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub id: String,
    pub volume_id: String,
    pub size_gib: i32,
    pub state: SnapshotState,
}

/// A block volume, as the block store reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockVolume {
    pub id: String,
    pub zone: String,
    pub size_gib: i32,
    /// `creating`, `available`, `in-use`, `error`, …
    pub state: String,
    pub snapshot_id: Option<String>,
    pub volume_type: Option<String>,
}

/// A volume to make from a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewVolume {
    pub snapshot_id: String,
    pub zone: String,
    pub volume_type: Option<String>,
    pub iops: Option<i32>,
    pub throughput: Option<i32>,
    pub kms_key_id: Option<String>,
}

/// Snapshots and volumes (EBS).
#[async_trait::async_trait]
pub trait BlockStore: Send + Sync {
    async fn volume(&self, id: &str) -> Result<Option<BlockVolume>, TaskFailure>;
    async fn snapshot(&self, id: &str) -> Result<Option<Snapshot>, TaskFailure>;
    /// The snapshot of `volume_id` tagged with `key`, or a new one so tagged.
    async fn find_or_create_snapshot(
        &self,
        volume_id: &str,
        key: &EffectKey,
    ) -> Result<Snapshot, TaskFailure>;
    /// The volume tagged with `key`, or a new one so tagged (made at most once per key
    /// and request, also when two attempts race).
    async fn find_or_create_volume(
        &self,
        request: &NewVolume,
        key: &EffectKey,
    ) -> Result<BlockVolume, TaskFailure>;
}

/// A claim's volume, as the claim host describes it: enough to make the same kind of
/// claim for another volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimedVolume {
    /// The PV bound to the claim.
    pub pv: String,
    /// The block volume behind it (`vol-…`).
    pub volume_id: String,
    /// Its zone, as the PV's node affinity (or the handle) says; None when it says none.
    pub zone: Option<String>,
    /// The PV's capacity (`10Gi`) and the claim's request.
    pub capacity: String,
    pub request: String,
    pub access_modes: Vec<String>,
    pub fs_type: Option<String>,
    pub volume_mode: Option<String>,
    pub reclaim_policy: Option<String>,
}

/// What a StatefulSet quiesce or unquiesce found and did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quiesced {
    pub statefulset: String,
    /// The replicas it had before flow scaled it down (and gets back).
    pub replicas: i32,
    /// Whether this attempt changed it, or found it already so.
    pub changed: bool,
}

/// A new volume to put under a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimBinding<'a> {
    pub namespace: &'a str,
    pub claim: &'a str,
    /// The volume, its zone, and the claim it copies (capacity, modes, fs type).
    pub volume: &'a BlockVolume,
    pub like: &'a ClaimedVolume,
    /// Names and labels the PV.
    pub key: &'a EffectKey,
}

/// How a claim ended up bound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bound {
    pub namespace: String,
    pub claim: String,
    pub pv: String,
    pub volume_id: String,
    /// The PV the claim had before (a swap), retained for a rollback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_pv: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced_volume_id: Option<String>,
    pub changed: bool,
}

/// Claims, volumes and the StatefulSets using them (Kubernetes).
#[async_trait::async_trait]
pub trait ClaimHost: Send + Sync {
    /// The name of the PV a binding under `key` makes.
    fn pv_name(&self, key: &EffectKey) -> String;
    /// The volume bound to a claim; fails when the claim is missing or unbound.
    async fn claimed_volume(
        &self,
        namespace: &str,
        claim: &str,
    ) -> Result<ClaimedVolume, TaskFailure>;
    /// The PV a claim is bound to now (None: no such claim).
    async fn claim_volume_name(
        &self,
        namespace: &str,
        claim: &str,
    ) -> Result<Option<String>, TaskFailure>;
    /// Scales a StatefulSet to 0 (remembering its replicas on it, under `key`) and
    /// waits until none of its pods is left.
    async fn quiesce(
        &self,
        namespace: &str,
        statefulset: &str,
        key: &EffectKey,
    ) -> Result<Quiesced, TaskFailure>;
    /// Scales a StatefulSet quiesced under `quiesce_key` back to its replicas and waits
    /// until they are Ready. `fallback` is the replicas the
    /// quiesce recorded, for a StatefulSet whose annotation is gone.
    async fn unquiesce(
        &self,
        namespace: &str,
        statefulset: &str,
        quiesce_key: &EffectKey,
        fallback: Option<i32>,
    ) -> Result<Quiesced, TaskFailure>;
    /// Whether any pod of `statefulset` is left (a swap refuses while one is).
    async fn pods_left(&self, namespace: &str, statefulset: &str) -> Result<usize, TaskFailure>;
    /// Binds a new claim (which must not exist, or be bound to this binding's PV
    /// already) to a new static PV of the volume; waits until both are Bound.
    async fn bind_new_claim(&self, binding: &ClaimBinding<'_>) -> Result<Bound, TaskFailure>;
    /// Puts the volume under an existing claim now bound to `old_pv`: a new static PV of
    /// the volume is made first, the old PV is set to Retain (and that is read back)
    /// before the claim is deleted, then the claim is made again on the new PV. A claim
    /// already on that PV is done.
    async fn replace_claim_volume(
        &self,
        binding: &ClaimBinding<'_>,
        old_pv: &str,
    ) -> Result<Bound, TaskFailure>;
}

/// Polls `check` until it gives a value: first after 200 ms, then 1.5 times longer
/// each time, at most `max_interval` apart; after `deadline`, fails permanently with
/// `what` and the last state `check` described. A killed run loses nothing by it: the
/// next attempt finds the same object again and polls on.
pub async fn poll_until<T, F, Fut>(
    what: &str,
    deadline: std::time::Duration,
    max_interval: std::time::Duration,
    mut check: F,
) -> Result<T, TaskFailure>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Result<T, String>, TaskFailure>>,
{
    let started = tokio::time::Instant::now();
    let mut interval = std::time::Duration::from_millis(200);
    loop {
        let last = match check().await? {
            Ok(value) => return Ok(value),
            Err(state) => state,
        };
        if started.elapsed() >= deadline {
            return Err(TaskFailure::permanent(format!(
                "{what}: still {last} after {}; once it is done, run `flow apply --resume`",
                humantime::format_duration(std::time::Duration::from_secs(deadline.as_secs()))
            )));
        }
        tokio::time::sleep(interval).await;
        interval = (interval.mul_f32(1.5)).min(max_interval);
    }
}
