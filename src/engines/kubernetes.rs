//! Kubernetes: the [`ClaimHost`] of `[[volumes]]` entries — claims (PVCs), the static
//! PVs flow makes for new EBS volumes, and the StatefulSets using them.
//!
//! The calls follow the documented PV/PVC swap (static provisioning of an EBS CSI
//! volume, pre-bound by `claimRef` and `volumeName`), with its two traps guarded here:
//! the old PV is set to `Retain` and read back before its claim is deleted (with
//! `Delete` the claim's deletion destroys the old volume, the rollback), and the claim
//! exists again before the StatefulSet is scaled up (the caller's graph orders that;
//! a missing claim would be made from the template: an empty volume). A quiesce writes
//! the replicas it found and its key on the StatefulSet in the same patch that scales
//! it to 0, so a killed run never forgets how many replicas to give back.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolume, PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;

use crate::engines::volume::{
    poll_until, BlockVolume, Bound, ClaimBinding, ClaimHost, ClaimedVolume, EffectKey, Quiesced,
    KEY_TAG, PLAN_TAG, PV_PREFIX, TASK_TAG,
};
use crate::plan::Connection;
use crate::task::TaskFailure;

/// The EBS CSI driver's name, in PVs and their handles.
const EBS_CSI_DRIVER: &str = "ebs.csi.aws.com";
/// Node labels a PV's zone may be given by, in the order they are looked for.
const ZONE_KEYS: &[&str] = &[
    "topology.ebs.csi.aws.com/zone",
    "topology.kubernetes.io/zone",
    "failure-domain.beta.kubernetes.io/zone",
];
/// Annotations of a quiesced StatefulSet.
const QUIESCED_REPLICAS: &str = "flow/quiesced-replicas";
const QUIESCED_BY: &str = "flow/quiesced-by";
/// How long a pod may take to stop or be Ready, and a claim to be bound or deleted.
const POD_DEADLINE: Duration = Duration::from_secs(30 * 60);
const CLAIM_DEADLINE: Duration = Duration::from_secs(10 * 60);
const MAX_POLL: Duration = Duration::from_secs(5);

/// One Kubernetes connection of a plan.
#[derive(Clone)]
pub struct Cluster {
    client: kube::Client,
    connection: String,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("connection", &self.connection)
            .finish_non_exhaustive()
    }
}

/// The PV flow makes for the volume of `key`.
pub fn pv_name(key: &EffectKey) -> String {
    format!("{PV_PREFIX}{}", key.key)
}

impl Cluster {
    /// Reads the kubeconfig (the connection's, else the default one) and builds the
    /// client; no request is made.
    pub async fn connect(connection: &Connection) -> Result<Self, TaskFailure> {
        let fail = |e: String| {
            TaskFailure::permanent(format!(
                "connection `{}`: {e}; fix `kubeconfig` / `context` of the connection",
                connection.name
            ))
        };
        let context = connection
            .context
            .as_ref()
            .map(|c| c.resolve().map(|s| s.into_inner()))
            .transpose()
            .map_err(|e| fail(format!("context: {e}")))?;
        let options = KubeConfigOptions {
            context,
            ..Default::default()
        };
        let config = match &connection.kubeconfig {
            Some(path) => {
                let kc = Kubeconfig::read_from(path)
                    .map_err(|e| fail(format!("kubeconfig {}: {e}", path.display())))?;
                kube::Config::from_custom_kubeconfig(kc, &options)
                    .await
                    .map_err(|e| fail(format!("kubeconfig {}: {e}", path.display())))?
            }
            None => kube::Config::from_kubeconfig(&options)
                .await
                .map_err(|e| fail(format!("the default kubeconfig: {e}")))?,
        };
        let client = kube::Client::try_from(config).map_err(|e| fail(e.to_string()))?;
        Ok(Cluster {
            client,
            connection: connection.name.clone(),
        })
    }

    fn claims(&self, namespace: &str) -> Api<PersistentVolumeClaim> {
        Api::namespaced(self.client.clone(), namespace)
    }

    fn pvs(&self) -> Api<PersistentVolume> {
        Api::all(self.client.clone())
    }

    fn statefulsets(&self, namespace: &str) -> Api<StatefulSet> {
        Api::namespaced(self.client.clone(), namespace)
    }

    fn failure(&self, action: &str, e: kube::Error) -> TaskFailure {
        let retryable = match &e {
            kube::Error::Api(s) => matches!(s.code, 409 | 429 | 500 | 502 | 503 | 504),
            kube::Error::HyperError(_) | kube::Error::Service(_) => true,
            _ => false,
        };
        let text = match &e {
            kube::Error::Api(s) => format!("{} ({}, HTTP {})", s.message, s.reason, s.code),
            other => other.to_string(),
        };
        TaskFailure {
            message: format!("connection `{}`: {action}: {text}", self.connection),
            retryable,
        }
    }

    async fn statefulset(&self, namespace: &str, name: &str) -> Result<StatefulSet, TaskFailure> {
        self.statefulsets(namespace)
            .get_opt(name)
            .await
            .map_err(|e| self.failure(&format!("get StatefulSet {namespace}/{name}"), e))?
            .ok_or_else(|| {
                TaskFailure::permanent(format!(
                    "connection `{}`: StatefulSet {namespace}/{name} does not exist; fix \
                     `statefulset` (or `namespace`) of the volume",
                    self.connection
                ))
            })
    }

    /// Merge-patches a StatefulSet, on the version it was read at.
    async fn patch_statefulset(
        &self,
        namespace: &str,
        name: &str,
        patch: serde_json::Value,
    ) -> Result<(), TaskFailure> {
        self.statefulsets(namespace)
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map(|_| ())
            .map_err(|e| self.failure(&format!("patch StatefulSet {namespace}/{name}"), e))
    }

    /// The pods of a StatefulSet now (owned by it).
    async fn pods_of(&self, namespace: &str, sts: &StatefulSet) -> Result<Vec<Pod>, TaskFailure> {
        let name = sts.metadata.name.clone().unwrap_or_default();
        let labels = sts
            .spec
            .as_ref()
            .and_then(|s| s.selector.match_labels.clone())
            .unwrap_or_default();
        let selector = labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let list = pods
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(|e| self.failure(&format!("list the pods of {namespace}/{name}"), e))?;
        Ok(list
            .items
            .into_iter()
            .filter(|p| {
                p.metadata
                    .owner_references
                    .as_ref()
                    .is_some_and(|o| o.iter().any(|r| r.kind == "StatefulSet" && r.name == name))
            })
            .collect())
    }

    /// Creates the PV of `binding` unless it exists (then it must hold the same volume).
    async fn ensure_pv(&self, binding: &ClaimBinding<'_>) -> Result<String, TaskFailure> {
        let name = pv_name(binding.key);
        if let Some(pv) = self
            .pvs()
            .get_opt(&name)
            .await
            .map_err(|e| self.failure(&format!("get PV {name}"), e))?
        {
            let handle = pv
                .spec
                .as_ref()
                .and_then(|s| s.csi.as_ref())
                .map(|c| c.volume_handle.clone());
            if handle.as_deref() != Some(binding.volume.id.as_str()) {
                return Err(TaskFailure::permanent(format!(
                    "connection `{}`: PV {name} exists for volume {}, not {}: it was made by \
                     an earlier attempt for another volume; delete PV {name} and resume",
                    self.connection,
                    handle.unwrap_or_default(),
                    binding.volume.id
                )));
            }
            return Ok(name);
        }
        let doc = pv_doc(&name, binding);
        let pv: PersistentVolume = serde_json::from_value(doc)
            .map_err(|e| TaskFailure::permanent(format!("PV {name} is not a valid object: {e}")))?;
        match self.pvs().create(&PostParams::default(), &pv).await {
            Ok(_) => Ok(name),
            // Made by a racing attempt: checked on the next read.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(name),
            Err(e) => Err(self.failure(&format!("create PV {name}"), e)),
        }
    }

    /// Creates the claim of `binding` on PV `pv` unless it exists already.
    async fn ensure_claim(&self, binding: &ClaimBinding<'_>, pv: &str) -> Result<(), TaskFailure> {
        let (ns, claim) = (binding.namespace, binding.claim);
        let mut doc = json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {
                "name": claim,
                "labels": {KEY_TAG: binding.key.key},
                "annotations": {PLAN_TAG: binding.key.plan, TASK_TAG: binding.key.task},
            },
            "spec": {
                "accessModes": binding.like.access_modes,
                "storageClassName": "",
                "volumeName": pv,
                "resources": {"requests": {"storage": binding.like.request}},
            }
        });
        if let Some(mode) = &binding.like.volume_mode {
            doc["spec"]["volumeMode"] = json!(mode);
        }
        let pvc: PersistentVolumeClaim = serde_json::from_value(doc).map_err(|e| {
            TaskFailure::permanent(format!("claim {ns}/{claim} is not a valid object: {e}"))
        })?;
        match self.claims(ns).create(&PostParams::default(), &pvc).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
            Err(e) => Err(self.failure(&format!("create claim {ns}/{claim}"), e)),
        }
    }

    /// Waits until the claim is Bound to `pv`.
    async fn wait_bound(&self, ns: &str, claim: &str, pv: &str) -> Result<(), TaskFailure> {
        let what = format!(
            "connection `{}`: claim {ns}/{claim} on PV {pv}",
            self.connection
        );
        poll_until(&what, CLAIM_DEADLINE, MAX_POLL, || async {
            let c = self
                .claims(ns)
                .get_opt(claim)
                .await
                .map_err(|e| self.failure(&format!("get claim {ns}/{claim}"), e))?;
            let phase = c
                .as_ref()
                .and_then(|c| c.status.as_ref())
                .and_then(|s| s.phase.clone())
                .unwrap_or_else(|| "missing".into());
            let on = c
                .as_ref()
                .and_then(|c| c.spec.as_ref())
                .and_then(|s| s.volume_name.clone());
            match (phase.as_str(), on.as_deref()) {
                ("Bound", Some(v)) if v == pv => Ok(Ok(())),
                (_, Some(v)) if v != pv => Err(TaskFailure::permanent(format!(
                    "{what}: the claim is bound to PV {v} instead; something else made it — \
                     delete claim {ns}/{claim} if it is not in use, then resume"
                ))),
                _ => Ok(Err(phase)),
            }
        })
        .await
    }

    /// The claim's spec.volumeName and whether it is being deleted; None: no claim.
    async fn claim_state(
        &self,
        ns: &str,
        claim: &str,
    ) -> Result<Option<(Option<String>, bool)>, TaskFailure> {
        let c = self
            .claims(ns)
            .get_opt(claim)
            .await
            .map_err(|e| self.failure(&format!("get claim {ns}/{claim}"), e))?;
        Ok(c.map(|c| {
            (
                c.spec.and_then(|s| s.volume_name),
                c.metadata.deletion_timestamp.is_some(),
            )
        }))
    }

    /// Sets a PV's reclaim policy to Retain and reads it back.
    async fn retain(&self, pv: &str) -> Result<(), TaskFailure> {
        let policy = |p: &PersistentVolume| {
            p.spec
                .as_ref()
                .and_then(|s| s.persistent_volume_reclaim_policy.clone())
        };
        let current = self
            .pvs()
            .get_opt(pv)
            .await
            .map_err(|e| self.failure(&format!("get PV {pv}"), e))?
            .ok_or_else(|| {
                TaskFailure::permanent(format!(
                    "connection `{}`: PV {pv}, which the claim is bound to, does not exist",
                    self.connection
                ))
            })?;
        if policy(&current).as_deref() == Some("Retain") {
            return Ok(());
        }
        let patched = self
            .pvs()
            .patch(
                pv,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"persistentVolumeReclaimPolicy": "Retain"}})),
            )
            .await
            .map_err(|e| self.failure(&format!("set PV {pv} to Retain"), e))?;
        let read_back = self
            .pvs()
            .get_opt(pv)
            .await
            .map_err(|e| self.failure(&format!("get PV {pv}"), e))?;
        if policy(&patched).as_deref() != Some("Retain")
            || read_back.as_ref().and_then(policy).as_deref() != Some("Retain")
        {
            return Err(TaskFailure::permanent(format!(
                "connection `{}`: PV {pv} does not keep reclaim policy Retain; its claim is \
                 not deleted (that could delete the old volume)",
                self.connection
            )));
        }
        Ok(())
    }
}

/// The static PV of a binding: the EBS CSI volume in its zone, pre-bound to the claim.
fn pv_doc(name: &str, binding: &ClaimBinding<'_>) -> serde_json::Value {
    let volume: &BlockVolume = binding.volume;
    let mut csi = json!({"driver": EBS_CSI_DRIVER, "volumeHandle": volume.id});
    if let Some(fs) = &binding.like.fs_type {
        csi["fsType"] = json!(fs);
    }
    let mut doc = json!({
        "apiVersion": "v1", "kind": "PersistentVolume",
        "metadata": {
            "name": name,
            "labels": {KEY_TAG: binding.key.key},
            "annotations": {PLAN_TAG: binding.key.plan, TASK_TAG: binding.key.task},
        },
        "spec": {
            "capacity": {"storage": binding.like.capacity},
            "accessModes": binding.like.access_modes,
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": "",
            "csi": csi,
            "claimRef": {"namespace": binding.namespace, "name": binding.claim},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": ZONE_KEYS[0], "operator": "In", "values": [volume.zone]}]}]}},
        }
    });
    if let Some(mode) = &binding.like.volume_mode {
        doc["spec"]["volumeMode"] = json!(mode);
    }
    doc
}

/// The EBS volume id and zone of a PV: its CSI handle (driver `ebs.csi.aws.com`) or
/// its in-tree `awsElasticBlockStore` id (`aws://<zone>/vol-…`).
fn ebs_of(pv: &PersistentVolume) -> Option<(String, Option<String>)> {
    let spec = pv.spec.as_ref()?;
    let affinity_zone = spec
        .node_affinity
        .as_ref()
        .and_then(|a| a.required.as_ref())
        .and_then(|r| {
            r.node_selector_terms.iter().find_map(|t| {
                t.match_expressions.as_ref()?.iter().find_map(|e| {
                    (ZONE_KEYS.contains(&e.key.as_str()) && e.operator == "In")
                        .then(|| e.values.as_ref()?.first().cloned())
                        .flatten()
                })
            })
        });
    if let Some(csi) = spec.csi.as_ref().filter(|c| c.driver == EBS_CSI_DRIVER) {
        return Some((csi.volume_handle.clone(), affinity_zone));
    }
    let aws = spec.aws_elastic_block_store.as_ref()?;
    let mut parts = aws.volume_id.trim_start_matches("aws://").rsplitn(2, '/');
    let id = parts.next()?.to_string();
    let zone = parts
        .next()
        .map(|z| z.trim_matches('/').to_string())
        .filter(|z| !z.is_empty());
    Some((id, affinity_zone.or(zone)))
}

fn replicas_of(sts: &StatefulSet) -> i32 {
    sts.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1)
}

fn annotation<'a>(sts: &'a StatefulSet, key: &str) -> Option<&'a str> {
    sts.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

#[async_trait::async_trait]
impl ClaimHost for Cluster {
    fn pv_name(&self, key: &EffectKey) -> String {
        pv_name(key)
    }

    async fn claimed_volume(
        &self,
        namespace: &str,
        claim: &str,
    ) -> Result<ClaimedVolume, TaskFailure> {
        let conn = &self.connection;
        let pvc = self
            .claims(namespace)
            .get_opt(claim)
            .await
            .map_err(|e| self.failure(&format!("get claim {namespace}/{claim}"), e))?
            .ok_or_else(|| {
                TaskFailure::permanent(format!(
                    "connection `{conn}`: claim {namespace}/{claim} does not exist; fix \
                     `claim` (or `namespace`) of the volume"
                ))
            })?;
        let phase = pvc.status.as_ref().and_then(|s| s.phase.clone());
        let spec = pvc.spec.clone().unwrap_or_default();
        let Some(pv_name) = spec
            .volume_name
            .clone()
            .filter(|_| phase.as_deref() == Some("Bound"))
        else {
            return Err(TaskFailure::permanent(format!(
                "connection `{conn}`: claim {namespace}/{claim} is not bound to a volume \
                 (phase {}); only a Bound claim has a volume to snapshot",
                phase.unwrap_or_else(|| "unknown".into())
            )));
        };
        let pv = self
            .pvs()
            .get_opt(&pv_name)
            .await
            .map_err(|e| self.failure(&format!("get PV {pv_name}"), e))?
            .ok_or_else(|| {
                TaskFailure::permanent(format!(
                    "connection `{conn}`: PV {pv_name} of claim {namespace}/{claim} does not exist"
                ))
            })?;
        let Some((volume_id, zone)) = ebs_of(&pv) else {
            return Err(TaskFailure::permanent(format!(
                "connection `{conn}`: PV {pv_name} of claim {namespace}/{claim} is not an EBS \
                 volume (no `csi` of driver {EBS_CSI_DRIVER}, no `awsElasticBlockStore`); \
                 strategy ebs-* snapshots EBS volumes only"
            )));
        };
        let pv_spec = pv.spec.clone().unwrap_or_default();
        let storage = |m: Option<
            &BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
        >| { m.and_then(|m| m.get("storage")).map(|q| q.0.clone()) };
        let capacity = storage(pv_spec.capacity.as_ref()).unwrap_or_default();
        let request = storage(spec.resources.as_ref().and_then(|r| r.requests.as_ref()))
            .unwrap_or_else(|| capacity.clone());
        let fs_type = pv_spec
            .csi
            .as_ref()
            .and_then(|c| c.fs_type.clone())
            .or_else(|| {
                pv_spec
                    .aws_elastic_block_store
                    .as_ref()
                    .and_then(|a| a.fs_type.clone())
            });
        Ok(ClaimedVolume {
            pv: pv_name,
            volume_id,
            zone,
            capacity,
            request,
            access_modes: pv_spec
                .access_modes
                .clone()
                .or(spec.access_modes.clone())
                .unwrap_or_else(|| vec!["ReadWriteOnce".into()]),
            fs_type,
            volume_mode: pv_spec.volume_mode.clone(),
            reclaim_policy: pv_spec.persistent_volume_reclaim_policy.clone(),
        })
    }

    async fn claim_volume_name(
        &self,
        namespace: &str,
        claim: &str,
    ) -> Result<Option<String>, TaskFailure> {
        Ok(self
            .claim_state(namespace, claim)
            .await?
            .and_then(|(volume, _)| volume))
    }

    async fn quiesce(
        &self,
        namespace: &str,
        statefulset: &str,
        key: &EffectKey,
    ) -> Result<Quiesced, TaskFailure> {
        let sts = self.statefulset(namespace, statefulset).await?;
        let (replicas, changed) = match annotation(&sts, QUIESCED_BY) {
            Some(by) if by != key.key => {
                return Err(TaskFailure::permanent(format!(
                    "connection `{}`: StatefulSet {namespace}/{statefulset} was scaled down by \
                     another flow task (annotation {QUIESCED_BY} = {by}); finish that run, or \
                     scale it back and remove the annotations {QUIESCED_BY} and \
                     {QUIESCED_REPLICAS}, then resume",
                    self.connection
                )))
            }
            Some(_) => {
                let recorded = annotation(&sts, QUIESCED_REPLICAS)
                    .and_then(|r| r.parse::<i32>().ok())
                    .ok_or_else(|| {
                        TaskFailure::permanent(format!(
                            "connection `{}`: StatefulSet {namespace}/{statefulset}: annotation \
                             {QUIESCED_REPLICAS} is not a number; set it to the replicas it \
                             had, then resume",
                            self.connection
                        ))
                    })?;
                if replicas_of(&sts) != 0 {
                    self.patch_statefulset(
                        namespace,
                        statefulset,
                        json!({"spec": {"replicas": 0}}),
                    )
                    .await?;
                }
                (recorded, false)
            }
            None => {
                let replicas = replicas_of(&sts);
                // One patch, on the version read: the replicas to give back are on the
                // object the moment it is scaled down.
                self.patch_statefulset(
                    namespace,
                    statefulset,
                    json!({
                        "metadata": {
                            "resourceVersion": sts.metadata.resource_version,
                            "annotations": {
                                QUIESCED_REPLICAS: replicas.to_string(),
                                QUIESCED_BY: key.key,
                                TASK_TAG: key.task,
                            }
                        },
                        "spec": {"replicas": 0}
                    }),
                )
                .await?;
                (replicas, true)
            }
        };
        let what = format!(
            "connection `{}`: the pods of StatefulSet {namespace}/{statefulset} stopping",
            self.connection
        );
        poll_until(&what, POD_DEADLINE, MAX_POLL, || async {
            let sts = self.statefulset(namespace, statefulset).await?;
            let left = self.pods_of(namespace, &sts).await?.len();
            Ok(if left == 0 {
                Ok(())
            } else {
                Err(format!("{left} pod(s) running"))
            })
        })
        .await?;
        Ok(Quiesced {
            statefulset: statefulset.to_string(),
            replicas,
            changed,
        })
    }

    async fn unquiesce(
        &self,
        namespace: &str,
        statefulset: &str,
        quiesce_key: &EffectKey,
        fallback: Option<i32>,
    ) -> Result<Quiesced, TaskFailure> {
        let sts = self.statefulset(namespace, statefulset).await?;
        let (replicas, changed) = match annotation(&sts, QUIESCED_BY) {
            Some(by) if by != quiesce_key.key => {
                return Err(TaskFailure::permanent(format!(
                    "connection `{}`: StatefulSet {namespace}/{statefulset} is held down by \
                     another flow task (annotation {QUIESCED_BY} = {by}); it is left as it is",
                    self.connection
                )))
            }
            Some(_) => {
                let replicas = annotation(&sts, QUIESCED_REPLICAS)
                    .and_then(|r| r.parse::<i32>().ok())
                    .or(fallback)
                    .unwrap_or(1);
                self.patch_statefulset(
                    namespace,
                    statefulset,
                    json!({
                        "metadata": {
                            "resourceVersion": sts.metadata.resource_version,
                            "annotations": {QUIESCED_REPLICAS: null, QUIESCED_BY: null, TASK_TAG: null}
                        },
                        "spec": {"replicas": replicas}
                    }),
                )
                .await?;
                (replicas, true)
            }
            None if replicas_of(&sts) == 0 && fallback.unwrap_or(0) > 0 => {
                let replicas = fallback.unwrap_or(0);
                self.patch_statefulset(
                    namespace,
                    statefulset,
                    json!({"spec": {"replicas": replicas}}),
                )
                .await?;
                (replicas, true)
            }
            None => (replicas_of(&sts), false),
        };
        if replicas > 0 {
            let what = format!(
                "connection `{}`: StatefulSet {namespace}/{statefulset} back to {replicas} Ready \
                 replica(s) (look at its pods' events: `kubectl describe pod`)",
                self.connection
            );
            poll_until(&what, POD_DEADLINE, MAX_POLL, || async {
                let sts = self.statefulset(namespace, statefulset).await?;
                let ready = sts
                    .status
                    .as_ref()
                    .and_then(|s| s.ready_replicas)
                    .unwrap_or(0);
                Ok(if ready >= replicas {
                    Ok(())
                } else {
                    Err(format!("{ready} of {replicas} Ready"))
                })
            })
            .await?;
        }
        Ok(Quiesced {
            statefulset: statefulset.to_string(),
            replicas,
            changed,
        })
    }

    async fn pods_left(&self, namespace: &str, statefulset: &str) -> Result<usize, TaskFailure> {
        let sts = self.statefulset(namespace, statefulset).await?;
        Ok(self.pods_of(namespace, &sts).await?.len())
    }

    async fn bind_new_claim(&self, binding: &ClaimBinding<'_>) -> Result<Bound, TaskFailure> {
        let (ns, claim) = (binding.namespace, binding.claim);
        let pv = pv_name(binding.key);
        let existing = self.claim_state(ns, claim).await?;
        let changed = match existing {
            Some((Some(on), _)) if on == pv => false,
            Some((on, _)) => {
                return Err(TaskFailure::permanent(format!(
                    "connection `{}`: claim {ns}/{claim} exists already{}; flow makes the \
                     target claim itself and replaces none: delete it, or choose another \
                     `target_claim`",
                    self.connection,
                    on.map(|v| format!(" (on PV {v})")).unwrap_or_default()
                )))
            }
            None => true,
        };
        self.ensure_pv(binding).await?;
        if changed {
            self.ensure_claim(binding, &pv).await?;
        }
        self.wait_bound(ns, claim, &pv).await?;
        Ok(Bound {
            namespace: ns.to_string(),
            claim: claim.to_string(),
            pv,
            volume_id: binding.volume.id.clone(),
            replaced_pv: None,
            replaced_volume_id: None,
            changed,
        })
    }

    async fn replace_claim_volume(
        &self,
        binding: &ClaimBinding<'_>,
        old_pv: &str,
    ) -> Result<Bound, TaskFailure> {
        let (ns, claim) = (binding.namespace, binding.claim);
        let pv = pv_name(binding.key);
        let mut changed = false;
        // The new PV first (pre-bound by name only, it waits while the claim is on the
        // old one): a PV that cannot be made stops the swap before anything is deleted.
        self.ensure_pv(binding).await?;
        match self.claim_state(ns, claim).await? {
            Some((Some(on), _)) if on == pv => {}
            Some((Some(on), deleting)) if on == old_pv => {
                // Retain first: deleting a claim of a `Delete` PV deletes its volume.
                self.retain(old_pv).await?;
                if !deleting {
                    self.claims(ns)
                        .delete(claim, &DeleteParams::background())
                        .await
                        .map_err(|e| self.failure(&format!("delete claim {ns}/{claim}"), e))?;
                }
                let what = format!(
                    "connection `{}`: claim {ns}/{claim} being deleted (a pod still using it \
                     holds it)",
                    self.connection
                );
                poll_until(&what, CLAIM_DEADLINE, MAX_POLL, || async {
                    Ok(match self.claim_state(ns, claim).await? {
                        None => Ok(()),
                        Some(_) => Err("Terminating".to_string()),
                    })
                })
                .await?;
                changed = true;
            }
            Some((on, _)) => {
                return Err(TaskFailure::permanent(format!(
                    "connection `{}`: claim {ns}/{claim} is on PV {}, neither the PV its \
                     snapshot was taken of ({old_pv}) nor flow's new one ({pv}): it changed \
                     since the snapshot; nothing is replaced",
                    self.connection,
                    on.unwrap_or_else(|| "none".into())
                )))
            }
            None => changed = true,
        }
        self.ensure_claim(binding, &pv).await?;
        self.wait_bound(ns, claim, &pv).await?;
        Ok(Bound {
            namespace: ns.to_string(),
            claim: claim.to_string(),
            pv,
            volume_id: binding.volume.id.clone(),
            replaced_pv: Some(old_pv.to_string()),
            replaced_volume_id: Some(binding.like.volume_id.clone()),
            changed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pv(spec: serde_json::Value) -> PersistentVolume {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap()
    }

    #[test]
    fn the_ebs_volume_of_a_pv_is_read_from_its_csi_handle_or_in_tree_id() {
        let csi = pv(json!({
            "csi": {"driver": "ebs.csi.aws.com", "volumeHandle": "vol-1"},
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "topology.kubernetes.io/zone", "operator": "In", "values": ["us-east-1c"]}]}]}}
        }));
        assert_eq!(
            ebs_of(&csi),
            Some(("vol-1".into(), Some("us-east-1c".into())))
        );
        let in_tree = pv(json!({"awsElasticBlockStore": {"volumeID": "aws://us-east-1b/vol-2"}}));
        assert_eq!(
            ebs_of(&in_tree),
            Some(("vol-2".into(), Some("us-east-1b".into())))
        );
        let bare = pv(json!({"awsElasticBlockStore": {"volumeID": "vol-3"}}));
        assert_eq!(ebs_of(&bare), Some(("vol-3".into(), None)));
        let other = pv(json!({"csi": {"driver": "pd.csi.storage.gke.io", "volumeHandle": "x"}}));
        assert_eq!(ebs_of(&other), None);
    }
}
