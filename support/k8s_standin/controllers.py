"""The controllers whose behaviour a PV/PVC volume swap depends on.

Why: a swap is correct only if it survives what the cluster does on its own: the PV
binder, the protection finalizers, the StatefulSet controller re-creating claims, the
reclaim policy deleting volumes. One thread runs every controller in a loop, woken by
each write and at least every TICK seconds; each step writes one state at a time, so
clients observe the documented order. The rules and where they come from:

PV binder ("Persistent Volumes", https://kubernetes.io/docs/concepts/storage/persistent-volumes/,
sections Binding, Reserving a PersistentVolume, Phase, Reclaiming):
- a claim with `spec.volumeName` binds to that PV if the PV is free or its `claimRef`
  names the claim; a PV whose `claimRef` names a claim binds that claim; otherwise an
  unbound claim takes the smallest Available PV that satisfies it (storage class,
  access modes, volume mode, size, selector). Order of writes, as the controller binds:
  PV `claimRef` (uid filled), PV `Bound`, claim `volumeName` + `bind-completed`, claim `Bound`.
- a PV whose claim is gone (or has another uid) is `Released`; `Retain` keeps it;
  `Delete` deletes the storage asset and then the PV. Only a PV provisioned by the EBS
  CSI driver (annotation `pv.kubernetes.io/provisioned-by: ebs.csi.aws.com`) has a
  deleter; any other PV with `Delete` goes `Failed` ("no deletable volume plugin matched").
- a bound claim whose PV vanished is `Lost`.
Storage object in use protection (same page, "Storage Object in Use Protection"):
`kubernetes.io/pvc-protection` is removed only when no pod that is not Succeeded/Failed
uses the claim; `kubernetes.io/pv-protection` only when the PV is no longer Bound.
StatefulSet controller ("StatefulSets", https://kubernetes.io/docs/concepts/workloads/controllers/statefulset/,
sections Stable Storage, Deployment and Scaling Guarantees, PersistentVolumeClaim retention):
pods `<sts>-<ordinal>`; before a pod is created each claim `<template>-<sts>-<ordinal>` is
created from the volumeClaimTemplates if it does not exist (also for a Pending pod whose
claim is missing) — a fresh, empty claim; OrderedReady creates one pod at a time after its
predecessors are Running and Ready and removes the highest ordinal first; Parallel does
all at once; `whenScaled`/`whenDeleted: Delete` delete the claims.
Scheduler + kubelet (no nodes, no containers): a pod is scheduled when all its claims
are Bound and the PVs' node affinity zones intersect ("Node affinity" of PVs on the
Persistent Volumes page; "0/1 nodes are available: 1 node(s) had volume node affinity
conflict" otherwise), onto node `standin-node-<zone>`; its EBS volumes are attached:
a missing volume or one in another AZ than the node fails with FailedAttachVolume
(EC2 InvalidVolume.ZoneMismatch), and the pod stays Pending; otherwise it is Running and
Ready. A pod being deleted is gone one tick later (the kubelet's graceful stop).
Garbage collector (https://kubernetes.io/docs/concepts/architecture/garbage-collection/):
dependents of a deleted owner are deleted (Background), deleted before the owner
(Foreground, `foregroundDeletion` finalizer), or kept (Orphan, done by the API).
Namespace controller: a terminating namespace's objects are deleted, then the namespace.
"""

import copy
import hashlib
import threading
import time
import traceback
import uuid

from api import now
from ec2 import EBS_CSI_DRIVER, Ec2Error, volume_id
from resources import quantity
from selector import SelectorError, labels_match, selector_from_match

TICK = 0.05
ATTACH_RETRY = 0.5
POD_STOP = 0.2
ZONE_KEYS = ("topology.ebs.csi.aws.com/zone", "topology.kubernetes.io/zone",
             "failure-domain.beta.kubernetes.io/zone")
PROVISIONED_BY = "pv.kubernetes.io/provisioned-by"


def _phase(o):
    return (o.get("status") or {}).get("phase")


def _deleting(o):
    return bool(o["metadata"].get("deletionTimestamp"))


def pv_zones(pv):
    """Zones a PV's required node affinity allows, or None if it does not restrict zones."""
    terms = (((pv.get("spec") or {}).get("nodeAffinity") or {}).get("required") or {}).get("nodeSelectorTerms") or []
    zones = None
    for term in terms:
        for e in term.get("matchExpressions") or []:
            if e.get("key") in ZONE_KEYS and e.get("operator") == "In":
                zones = (zones or set()) | set(e.get("values") or [])
    return zones


def claims_of(pod):
    return [v["persistentVolumeClaim"]["claimName"] for v in (pod.get("spec") or {}).get("volumes") or []
            if (v.get("persistentVolumeClaim") or {}).get("claimName")]


class Controllers:
    def __init__(self, api, ec2, log):
        self.api, self.store, self.ec2, self.log = api, api.store, ec2, log
        self.attach_tried = {}  # pod uid -> monotonic time of the last attach try
        self.stopping = {}  # pod uid -> monotonic time its deletion was seen
        self.thread = threading.Thread(target=self.run, name="controllers", daemon=True)

    def start(self):
        self.thread.start()

    def run(self):
        seen = -1
        while not self.store.stopping:
            try:
                self.step()
            except Exception:  # a controller bug must not stop the others; it is logged
                self.log("controller pass failed:\n" + traceback.format_exc())
            seen = self.store.wait(self.store.rv if seen == self.store.rv else seen, TICK)

    def step(self):
        with self.store.lock:
            self.namespaces()
            self.garbage_collector()
            self.statefulsets()
            self.kubelet_stop()
            self.scheduler()
            self.pvc_protection()
            self.binder()
            self.pv_protection()
            attach = self.attach_work()
            reclaim = self.reclaim_work()
        # EC2 calls without the store lock: the API keeps answering meanwhile.
        for pod, checks in attach:
            self.attach(pod, checks)
        for pv in reclaim:
            self.reclaim(pv)

    def event(self, obj, resource, etype, reason, message, component):
        self.api.record_event(obj, resource, etype, reason, message, component)

    # ---------------------------------------------------------------- namespace, GC

    def namespaces(self):
        for ns in self.store.list("namespaces")[0]:
            if not _deleting(ns):
                continue
            name = ns["metadata"]["name"]
            left = 0
            for res in ("statefulsets", "pods", "persistentvolumeclaims", "events"):
                for o in self.store.list(res, name)[0]:
                    left += 1
                    if not _deleting(o):
                        self.api.delete(res, o, "Background", 0 if res == "pods" else None)
            if left == 0:
                self.store.remove("namespaces", "", name)

    def garbage_collector(self):
        owners = {o["metadata"]["uid"]: o for o in self.store.list("statefulsets")[0]}
        dependents = {uid: [] for uid in owners}
        for res in ("pods", "persistentvolumeclaims"):
            for o in self.store.list(res)[0]:
                for ref in o["metadata"].get("ownerReferences") or []:
                    owner = owners.get(ref.get("uid"))
                    if owner is None:
                        if not _deleting(o):
                            self.api.delete(res, o, "Background")
                        break
                    dependents[ref["uid"]].append((res, o, ref))
        for uid, owner in owners.items():
            fins = owner["metadata"].get("finalizers") or []
            if not _deleting(owner) or "foregroundDeletion" not in fins:
                continue
            blocking = [d for d in dependents[uid] if d[2].get("blockOwnerDeletion")]
            for res, o, _ in blocking:
                if not _deleting(o):
                    self.api.delete(res, o, "Foreground")
            if not blocking:
                owner["metadata"]["finalizers"] = [f for f in fins if f != "foregroundDeletion"]
                self.api.write("statefulsets", owner)

    # ---------------------------------------------------------------- StatefulSet

    def statefulsets(self):
        for sts in self.store.list("statefulsets")[0]:
            if _deleting(sts):
                continue
            try:
                self.statefulset(sts)
            except SelectorError:
                continue

    def statefulset(self, sts):
        meta, spec = sts["metadata"], sts["spec"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        pods = {}
        for p in self.store.list("pods", ns)[0]:
            if any(r.get("uid") == uid and r.get("controller") for r in p["metadata"].get("ownerReferences") or []):
                pods[p["metadata"]["name"]] = p
        start = ((spec.get("ordinals") or {}).get("start")) or 0
        replicas = spec.get("replicas", 1)
        wanted = [f"{name}-{i}" for i in range(start, start + replicas)]
        ordered = spec.get("podManagementPolicy", "OrderedReady") == "OrderedReady"
        revision = f"{name}-{hashlib.sha256(repr(spec.get('template')).encode()).hexdigest()[:10]}"

        for i, pod_name in zip(range(start, start + replicas), wanted):
            pod = pods.get(pod_name)
            if pod is None:
                self.create_claims(sts, i)
                self.create_pod(sts, i, revision)
                if ordered:
                    break
                continue
            if _phase(pod) == "Pending" and not _deleting(pod):
                self.create_claims(sts, i)  # a Pending pod whose claim is missing gets one
            if ordered and not (self.ready(pod) and not _deleting(pod)):
                break
        # scale down: pods beyond the wanted ordinals, highest first
        extra = sorted((p for n, p in pods.items() if n not in wanted),
                       key=lambda p: int(p["metadata"]["name"].rsplit("-", 1)[1]), reverse=True)
        for pod in extra:
            if not _deleting(pod):
                self.api.delete("pods", pod)
                self.event(sts, "statefulsets", "Normal", "SuccessfulDelete",
                           f"delete Pod {pod['metadata']['name']} in StatefulSet {name} successful", "statefulset-controller")
            if ordered:
                break
        policy = spec.get("persistentVolumeClaimRetentionPolicy") or {}
        if policy.get("whenScaled") == "Delete":
            for i in range(start + replicas, start + replicas + 1000):
                if f"{name}-{i}" in pods:
                    continue
                for t in spec.get("volumeClaimTemplates") or []:
                    claim = self.store.get("persistentvolumeclaims", ns, f"{t['metadata']['name']}-{name}-{i}")
                    if claim is not None and not _deleting(claim):
                        self.api.delete("persistentvolumeclaims", claim)
                if not any(self.store.get("persistentvolumeclaims", ns, f"{t['metadata']['name']}-{name}-{j}")
                           for t in spec.get("volumeClaimTemplates") or [] for j in range(i, i + 5)):
                    break
        live = [p for p in self.store.list("pods", ns)[0]
                if any(r.get("uid") == uid for r in p["metadata"].get("ownerReferences") or [])]
        ready = sum(1 for p in live if self.ready(p))
        status = {"observedGeneration": meta.get("generation", 1), "replicas": len(live),
                  "readyReplicas": ready, "currentReplicas": len(live), "updatedReplicas": len(live),
                  "availableReplicas": ready, "currentRevision": revision, "updateRevision": revision,
                  "collisionCount": 0}
        current = self.store.get("statefulsets", ns, name)
        if current is not None and current.get("status") != status:
            current["status"] = status
            self.store.write("statefulsets", current)

    @staticmethod
    def ready(pod):
        return any(c.get("type") == "Ready" and c.get("status") == "True"
                   for c in (pod.get("status") or {}).get("conditions") or [])

    def create_claims(self, sts, i):
        meta, spec = sts["metadata"], sts["spec"]
        ns, name = meta["namespace"], meta["name"]
        policy = spec.get("persistentVolumeClaimRetentionPolicy") or {}
        for t in spec.get("volumeClaimTemplates") or []:
            claim_name = f"{t['metadata']['name']}-{name}-{i}"
            if self.store.get("persistentvolumeclaims", ns, claim_name) is not None:
                continue
            labels = dict((t.get("metadata") or {}).get("labels") or {})
            labels.update((spec.get("selector") or {}).get("matchLabels") or {})
            claim = {"metadata": {"name": claim_name, "namespace": ns, "labels": labels,
                                  "annotations": dict((t.get("metadata") or {}).get("annotations") or {})},
                     "spec": copy.deepcopy(t.get("spec") or {})}
            if policy.get("whenDeleted") == "Delete":
                claim["metadata"]["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "StatefulSet",
                                                         "name": name, "uid": meta["uid"],
                                                         "controller": True, "blockOwnerDeletion": True}]
            self.api.create("persistentvolumeclaims", ns, claim, {}, internal=True)
            self.event(sts, "statefulsets", "Normal", "SuccessfulCreate",
                       f"create Claim {claim_name} Pod {name}-{i} in StatefulSet {name} success",
                       "statefulset-controller")

    def create_pod(self, sts, i, revision):
        meta, spec = sts["metadata"], sts["spec"]
        ns, name = meta["namespace"], meta["name"]
        template = copy.deepcopy(spec.get("template") or {})
        pod_name = f"{name}-{i}"
        labels = dict((template.get("metadata") or {}).get("labels") or {})
        labels.update({"statefulset.kubernetes.io/pod-name": pod_name, "apps.kubernetes.io/pod-index": str(i),
                       "controller-revision-hash": revision})
        pspec = template.get("spec") or {}
        volumes = [v for v in pspec.get("volumes") or []]
        names = {v.get("name") for v in volumes}
        for t in spec.get("volumeClaimTemplates") or []:
            if t["metadata"]["name"] not in names:
                volumes.append({"name": t["metadata"]["name"],
                                "persistentVolumeClaim": {"claimName": f"{t['metadata']['name']}-{name}-{i}"}})
        pspec["volumes"] = volumes
        pspec["hostname"] = pod_name
        if spec.get("serviceName"):
            pspec["subdomain"] = spec["serviceName"]
        pod = {"metadata": {"name": pod_name, "namespace": ns, "labels": labels,
                            "annotations": dict((template.get("metadata") or {}).get("annotations") or {}),
                            "uid": str(uuid.uuid4()), "creationTimestamp": now(),
                            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": name,
                                                 "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}]},
               "spec": pspec,
               "status": {"phase": "Pending", "qosClass": "BestEffort",
                          "conditions": [{"type": "PodScheduled", "status": "False"}]}}
        self.store.write("pods", pod)
        self.event(sts, "statefulsets", "Normal", "SuccessfulCreate",
                   f"create Pod {pod_name} in StatefulSet {name} successful", "statefulset-controller")

    # ---------------------------------------------------------------- scheduler, kubelet

    def kubelet_stop(self):
        """A pod being deleted stays (Terminating) for POD_STOP seconds while its
        containers stop, then the kubelet removes it."""
        t = time.monotonic()
        for pod in self.store.list("pods")[0]:
            if _deleting(pod):
                since = self.stopping.setdefault(pod["metadata"]["uid"], t)
                if t - since >= POD_STOP:
                    self.stopping.pop(pod["metadata"]["uid"], None)
                    self.store.remove("pods", pod["metadata"]["namespace"], pod["metadata"]["name"])

    def _set_condition(self, pod, ctype, status, reason=None, message=None):
        conds = [c for c in pod["status"].get("conditions") or [] if c.get("type") != ctype]
        c = {"type": ctype, "status": status, "lastTransitionTime": now()}
        if reason:
            c["reason"] = reason
        if message:
            c["message"] = message
        conds.append(c)
        pod["status"]["conditions"] = conds

    def scheduler(self):
        for pod in self.store.list("pods")[0]:
            if _deleting(pod) or pod["spec"].get("nodeName"):
                continue
            ns = pod["metadata"]["namespace"]
            problem, zones = None, None
            for claim_name in claims_of(pod):
                claim = self.store.get("persistentvolumeclaims", ns, claim_name)
                if claim is None:
                    problem = f'persistentvolumeclaim "{claim_name}" not found'
                elif _deleting(claim):
                    problem = f'persistentvolumeclaim "{claim_name}" is being deleted'
                elif _phase(claim) != "Bound":
                    problem = "0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims."
                else:
                    pv = self.store.get("persistentvolumes", "", claim["spec"].get("volumeName", ""))
                    z = pv_zones(pv) if pv else None
                    if z is not None:
                        zones = z if zones is None else zones & z
                        if not zones:
                            problem = "0/1 nodes are available: 1 node(s) had volume node affinity conflict."
                if problem:
                    break
            if problem:
                cond = next((c for c in pod["status"].get("conditions") or [] if c.get("type") == "PodScheduled"), {})
                if cond.get("message") != problem:
                    self._set_condition(pod, "PodScheduled", "False", "Unschedulable", problem)
                    self.store.write("pods", pod)
                self.event(pod, "pods", "Warning", "FailedScheduling", problem, "default-scheduler")
                continue
            zone = sorted(zones)[0] if zones else None
            node = f"standin-node-{zone}" if zone else "standin-node"
            pod["spec"]["nodeName"] = node
            self._set_condition(pod, "PodScheduled", "True")
            self._set_condition(pod, "Initialized", "True")
            self._set_condition(pod, "Ready", "False", "ContainersNotReady", "containers with unready status")
            pod["status"]["containerStatuses"] = [
                {"name": c.get("name"), "image": c.get("image", ""), "ready": False, "restartCount": 0, "started": False,
                 "state": {"waiting": {"reason": "ContainerCreating"}}}
                for c in pod["spec"].get("containers") or []]
            self.store.write("pods", pod)
            self.event(pod, "pods", "Normal", "Scheduled",
                       f"Successfully assigned {ns}/{pod['metadata']['name']} to {node}", "default-scheduler")

    def attach_work(self):
        """Scheduled pods not yet running, with the EBS volume of each claim to attach."""
        work, t = [], time.monotonic()
        for pod in self.store.list("pods")[0]:
            if _deleting(pod) or not pod["spec"].get("nodeName") or _phase(pod) != "Pending":
                continue
            if t - self.attach_tried.get(pod["metadata"]["uid"], -1e9) < ATTACH_RETRY:
                continue
            self.attach_tried[pod["metadata"]["uid"]] = t
            checks = []
            for claim_name in claims_of(pod):
                claim = self.store.get("persistentvolumeclaims", pod["metadata"]["namespace"], claim_name)
                pv = self.store.get("persistentvolumes", "", (claim or {}).get("spec", {}).get("volumeName", ""))
                if pv is not None:
                    checks.append((pv["metadata"]["name"], volume_id(pv)))
            work.append((pod, checks))
        return work

    def attach(self, pod, checks):
        node = pod["spec"]["nodeName"]
        node_zone = node[len("standin-node-"):] if node.startswith("standin-node-") else None
        failure = None
        for pv_name, vid in checks:
            if vid is None:
                continue  # not an EBS volume: nothing to check
            try:
                vol = self.ec2.describe(vid)
            except Ec2Error as e:
                failure = (pv_name, f"rpc error: code = Internal desc = {e}")
                break
            if vol is None:
                failure = (pv_name, f"rpc error: code = NotFound desc = Volume not found, ID: {vid}")
                break
            if vol["state"] not in ("available", "in-use"):
                failure = (pv_name, f"rpc error: code = Internal desc = Could not attach volume \"{vid}\" to node "
                                    f"\"{node}\": IncorrectState: volume {vid} is in state '{vol['state']}'")
                break
            node_zone = node_zone or vol["zone"]
            if vol["zone"] != node_zone:
                failure = (pv_name, f"rpc error: code = Internal desc = Could not attach volume \"{vid}\" to node "
                                    f"\"{node}\": InvalidVolume.ZoneMismatch: The volume '{vid}' is not in the same "
                                    f"availability zone as instance '{node}' ({node_zone}); the volume is in {vol['zone']}")
                break
        with self.store.lock:
            current = self.store.get("pods", pod["metadata"]["namespace"], pod["metadata"]["name"])
            if current is None or current["metadata"]["uid"] != pod["metadata"]["uid"] or _deleting(current) \
                    or _phase(current) != "Pending":
                return
            if failure:
                self.event(current, "pods", "Warning", "FailedAttachVolume",
                           f'AttachVolume.Attach failed for volume "{failure[0]}" : {failure[1]}', "attachdetach-controller")
                return
            for pv_name, vid in checks:
                if vid is not None:
                    self.event(current, "pods", "Normal", "SuccessfulAttachVolume",
                               f'AttachVolume.Attach succeeded for volume "{pv_name}"', "attachdetach-controller")
            ts = now()
            current["status"].update({"phase": "Running", "startTime": ts, "hostIP": "127.0.0.1", "podIP": "127.0.0.1"})
            for c in ("Initialized", "ContainersReady", "Ready"):
                self._set_condition(current, c, "True")
            current["status"]["containerStatuses"] = [
                {"name": c.get("name"), "image": c.get("image", ""), "ready": True, "restartCount": 0, "started": True,
                 "state": {"running": {"startedAt": ts}}} for c in current["spec"].get("containers") or []]
            self.store.write("pods", current)
            self.event(current, "pods", "Normal", "Started", "Started container (stand-in: no container runs)", "kubelet")

    # ---------------------------------------------------------------- protection

    def pvc_protection(self):
        for claim in self.store.list("persistentvolumeclaims")[0]:
            fins = claim["metadata"].get("finalizers") or []
            if not _deleting(claim) or "kubernetes.io/pvc-protection" not in fins:
                continue
            ns, name = claim["metadata"]["namespace"], claim["metadata"]["name"]
            in_use = any(name in claims_of(p) and _phase(p) not in ("Succeeded", "Failed")
                         for p in self.store.list("pods", ns)[0])
            if not in_use:
                claim["metadata"]["finalizers"] = [f for f in fins if f != "kubernetes.io/pvc-protection"]
                self.api.write("persistentvolumeclaims", claim)

    def pv_protection(self):
        for pv in self.store.list("persistentvolumes")[0]:
            fins = pv["metadata"].get("finalizers") or []
            if _deleting(pv) and "kubernetes.io/pv-protection" in fins and _phase(pv) != "Bound":
                pv["metadata"]["finalizers"] = [f for f in fins if f != "kubernetes.io/pv-protection"]
                self.api.write("persistentvolumes", pv)

    # ---------------------------------------------------------------- binder

    def satisfies(self, pv, claim):
        """Why pv cannot serve claim, or None (the checks of the binder's checkVolumeSatisfyClaim)."""
        cs, ps = claim["spec"], pv["spec"]
        if (cs.get("storageClassName") or "") != (ps.get("storageClassName") or ""):
            return "storageClassName does not match"
        if cs.get("volumeMode", "Filesystem") != ps.get("volumeMode", "Filesystem"):
            return "incompatible volumeMode"
        if not set(cs.get("accessModes") or []) <= set(ps.get("accessModes") or []):
            return "incompatible accessMode"
        want = quantity(((cs.get("resources") or {}).get("requests") or {}).get("storage")) or 0
        have = quantity((ps.get("capacity") or {}).get("storage")) or 0
        if have < want:
            return "requested PV is too small"
        if cs.get("selector"):
            try:
                if not labels_match(selector_from_match(cs["selector"]), pv["metadata"].get("labels")):
                    return "volume labels do not match the claim's selector"
            except SelectorError as e:
                return str(e)
        return None

    def binder(self):
        for claim in self.store.list("persistentvolumeclaims")[0]:
            self.sync_claim(claim)
        for pv in self.store.list("persistentvolumes")[0]:
            self.sync_volume(pv)

    def sync_claim(self, claim):
        meta, spec = claim["metadata"], claim["spec"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        vname = spec.get("volumeName")
        if not vname:
            pvs = self.store.list("persistentvolumes")[0]
            pre = [p for p in pvs if (p["spec"].get("claimRef") or {}).get("name") == name
                   and p["spec"]["claimRef"].get("namespace") == ns
                   and p["spec"]["claimRef"].get("uid") in (None, "", uid) and not _deleting(p)]
            if pre:
                self.bind(pre[0], claim)
                return
            free = [p for p in pvs if not p["spec"].get("claimRef") and _phase(p) == "Available"
                    and not _deleting(p) and self.satisfies(p, claim) is None]
            if free:
                free.sort(key=lambda p: quantity(p["spec"]["capacity"]["storage"]))
                self.bind(free[0], claim)
                return
            if spec.get("storageClassName"):
                self.event(claim, "persistentvolumeclaims", "Warning", "ProvisioningFailed",
                           f'storageclass.storage.k8s.io "{spec["storageClassName"]}" not found '
                           "(the stand-in has no dynamic provisioning)", "persistentvolume-controller")
            else:
                self.event(claim, "persistentvolumeclaims", "Normal", "FailedBinding",
                           "no persistent volumes available for this claim and no storage class is set",
                           "persistentvolume-controller")
            return
        pv = self.store.get("persistentvolumes", "", vname)
        if pv is None:
            if _phase(claim) == "Bound":
                claim["status"]["phase"] = "Lost"
                self.store.write("persistentvolumeclaims", claim)
                self.event(claim, "persistentvolumeclaims", "Warning", "ClaimLost",
                           "Bound claim has lost its PersistentVolume. Data on the volume is lost!",
                           "persistentvolume-controller")
            elif _phase(claim) != "Lost":
                self.event(claim, "persistentvolumeclaims", "Warning", "FailedBinding",
                           f'volume "{vname}" not found', "persistentvolume-controller")
            return
        ref = pv["spec"].get("claimRef") or {}
        if ref and (ref.get("name") != name or ref.get("namespace") != ns or ref.get("uid") not in (None, "", uid)):
            if _phase(claim) != "Bound":
                self.event(claim, "persistentvolumeclaims", "Warning", "FailedBinding",
                           f'volume "{vname}" already bound to a different claim.', "persistentvolume-controller")
            return
        if ref.get("uid") == uid and _phase(pv) == "Bound" and _phase(claim) == "Bound":
            return
        why = self.satisfies(pv, claim)
        if why and not ref:
            self.event(claim, "persistentvolumeclaims", "Warning", "FailedBinding",
                       f'Cannot bind to requested volume "{vname}": {why}', "persistentvolume-controller")
            return
        self.bind(pv, claim)

    def bind(self, pv, claim):
        cmeta = claim["metadata"]
        ref = pv["spec"].get("claimRef") or {}
        if ref.get("uid") != cmeta["uid"] or ref.get("name") != cmeta["name"]:
            pv["spec"]["claimRef"] = {"kind": "PersistentVolumeClaim", "namespace": cmeta["namespace"],
                                      "name": cmeta["name"], "uid": cmeta["uid"], "apiVersion": "v1",
                                      "resourceVersion": cmeta["resourceVersion"]}
            pv["metadata"].setdefault("annotations", {})["pv.kubernetes.io/bound-by-controller"] = "yes"
            pv = self.store.write("persistentvolumes", pv)
        if _phase(pv) != "Bound":
            pv["status"] = {"phase": "Bound"}
            pv = self.store.write("persistentvolumes", pv)
        claim = self.store.get("persistentvolumeclaims", cmeta["namespace"], cmeta["name"])
        ann = claim["metadata"].setdefault("annotations", {})
        if claim["spec"].get("volumeName") != pv["metadata"]["name"] or ann.get("pv.kubernetes.io/bind-completed") != "yes":
            if not claim["spec"].get("volumeName"):
                claim["spec"]["volumeName"] = pv["metadata"]["name"]
                ann["pv.kubernetes.io/bound-by-controller"] = "yes"
            ann["pv.kubernetes.io/bind-completed"] = "yes"
            claim = self.store.write("persistentvolumeclaims", claim)
        if _phase(claim) != "Bound":
            claim["status"] = {"phase": "Bound", "accessModes": pv["spec"].get("accessModes"),
                               "capacity": pv["spec"].get("capacity")}
            self.store.write("persistentvolumeclaims", claim)

    def sync_volume(self, pv):
        ref = pv["spec"].get("claimRef")
        phase = _phase(pv)
        if phase in ("Failed",):
            return
        if not ref or not ref.get("uid"):
            claim = self.store.get("persistentvolumeclaims", (ref or {}).get("namespace", ""), (ref or {}).get("name", "")) if ref else None
            if claim is None and phase != "Available":
                pv["status"] = {"phase": "Available"}
                self.store.write("persistentvolumes", pv)
            return
        claim = self.store.get("persistentvolumeclaims", ref.get("namespace", ""), ref.get("name", ""))
        if claim is None or claim["metadata"]["uid"] != ref["uid"]:
            if phase != "Released":
                pv["status"] = {"phase": "Released"}
                self.store.write("persistentvolumes", pv)
            return
        if claim["spec"].get("volumeName") not in (None, "", pv["metadata"]["name"]):
            if pv["metadata"].get("annotations", {}).get("pv.kubernetes.io/bound-by-controller") == "yes":
                del pv["spec"]["claimRef"]
                pv["status"] = {"phase": "Available"}
                self.store.write("persistentvolumes", pv)
            return

    def reclaim_work(self):
        """Released PVs whose reclaim policy acts; PVs with no deleter are failed here."""
        work = []
        for pv in self.store.list("persistentvolumes")[0]:
            if _phase(pv) != "Released":
                continue
            policy = pv["spec"].get("persistentVolumeReclaimPolicy")
            name = pv["metadata"]["name"]
            if policy == "Delete":
                if (pv["metadata"].get("annotations") or {}).get(PROVISIONED_BY) == EBS_CSI_DRIVER and volume_id(pv):
                    work.append(pv)
                else:
                    self.fail(pv, "VolumeFailedDelete",
                              f'error getting deleter volume plugin for volume "{name}": no deletable volume plugin matched')
            elif policy == "Recycle":
                self.fail(pv, "VolumeFailedRecycle", f'No recycler plugin found for the volume "{name}" '
                          "(Recycle is deprecated and not modelled by the stand-in)")
        return work

    def fail(self, pv, reason, message):
        pv["status"] = {"phase": "Failed", "message": message}
        self.store.write("persistentvolumes", pv)
        self.event(pv, "persistentvolumes", "Warning", reason, message, "persistentvolume-controller")

    def reclaim(self, pv):
        vid = volume_id(pv)
        try:
            self.ec2.delete(vid)
            error = None
        except Ec2Error as e:
            error = str(e)
        with self.store.lock:
            current = self.store.get("persistentvolumes", "", pv["metadata"]["name"])
            if current is None or current["metadata"]["uid"] != pv["metadata"]["uid"]:
                return
            if error:
                self.event(current, "persistentvolumes", "Warning", "VolumeFailedDelete", error, "ebs.csi.aws.com")
                return
            self.api.delete("persistentvolumes", current)
            current = self.store.get("persistentvolumes", "", pv["metadata"]["name"])
            if current is not None:  # pv-protection: the PV is no longer Bound, lift it
                current["metadata"]["finalizers"] = [f for f in current["metadata"].get("finalizers") or []
                                                     if f != "kubernetes.io/pv-protection"]
                self.api.write("persistentvolumes", current)
