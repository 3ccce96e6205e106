"""The resources the stand-in serves: discovery documents, defaults and validation.

Why: kubectl runs discovery on every invocation (`/api`, `/api/v1`, `/apis`,
`/apis/apps/v1`) and needs `shortNames` to resolve `pv`, `pvc`, `sts`; kube-rs reads
`kind`, `apiVersion` and the `Status` of refusals. Defaults and validation rules are the
ones of the API reference pages:
- PersistentVolume  https://kubernetes.io/docs/reference/kubernetes-api/config-and-storage-resources/persistent-volume-v1/
- PersistentVolumeClaim https://kubernetes.io/docs/reference/kubernetes-api/config-and-storage-resources/persistent-volume-claim-v1/
- StatefulSet       https://kubernetes.io/docs/reference/kubernetes-api/workload-resources/stateful-set-v1/
- Pod               https://kubernetes.io/docs/reference/kubernetes-api/workload-resources/pod-v1/
- Namespace, Event  https://kubernetes.io/docs/reference/kubernetes-api/cluster-resources/
Names: "Object Names and IDs" (https://kubernetes.io/docs/concepts/overview/working-with-objects/names/).
"""

import copy
import re
from dataclasses import dataclass, field

from errors import invalid

ALL_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]
READ_VERBS = ["get", "list", "watch"]
SUB_VERBS = ["get", "patch", "update"]


@dataclass
class Kind:
    resource: str
    kind: str
    singular: str
    group: str
    version: str
    namespaced: bool
    short: list
    verbs: list
    subresources: list = field(default_factory=list)
    categories: list = field(default_factory=list)

    @property
    def api_version(self):
        return f"{self.group}/{self.version}" if self.group else self.version


KINDS = {k.resource: k for k in [
    Kind("namespaces", "Namespace", "namespace", "", "v1", False, ["ns"],
         ["create", "delete", "get", "list", "patch", "update", "watch"], ["status"]),
    Kind("persistentvolumes", "PersistentVolume", "persistentvolume", "", "v1", False, ["pv"],
         ALL_VERBS, ["status"]),
    Kind("persistentvolumeclaims", "PersistentVolumeClaim", "persistentvolumeclaim", "", "v1", True,
         ["pvc"], ALL_VERBS, ["status"]),
    # Pods are made by the StatefulSet controller only: read and delete, no writes.
    Kind("pods", "Pod", "pod", "", "v1", True, ["po"], ["delete", "get", "list", "watch"], ["status"],
         ["all"]),
    Kind("events", "Event", "event", "", "v1", True, ["ev"], READ_VERBS),
    Kind("statefulsets", "StatefulSet", "statefulset", "apps", "v1", True, ["sts"], ALL_VERBS,
         ["status", "scale"], ["all"]),
]}

VERSION = {"major": "1", "minor": "32", "gitVersion": "v1.32.0-flow-standin",
           "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
           "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23.0", "compiler": "gc",
           "platform": "linux/amd64"}


def discovery(group, version):
    """APIResourceList of one group version, or None if it is not served."""
    kinds = [k for k in KINDS.values() if k.group == group and k.version == version]
    if not kinds:
        return None
    resources = []
    for k in kinds:
        entry = {"name": k.resource, "singularName": k.singular, "namespaced": k.namespaced,
                 "kind": k.kind, "verbs": k.verbs, "shortNames": k.short}
        if k.categories:
            entry["categories"] = k.categories
        resources.append(entry)
        for sub in k.subresources:
            if sub == "scale":
                resources.append({"name": f"{k.resource}/scale", "singularName": "",
                                  "namespaced": k.namespaced, "group": "autoscaling", "version": "v1",
                                  "kind": "Scale", "verbs": SUB_VERBS})
            else:
                verbs = ["get"] if "update" not in k.verbs else SUB_VERBS
                resources.append({"name": f"{k.resource}/{sub}", "singularName": "",
                                  "namespaced": k.namespaced, "kind": k.kind, "verbs": verbs})
    gv = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}


def api_versions(address):
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}]}


def api_groups():
    groups = sorted({k.group for k in KINDS.values() if k.group})
    out = []
    for g in groups:
        gv = {"groupVersion": f"{g}/v1", "version": "v1"}
        out.append({"name": g, "versions": [gv], "preferredVersion": gv})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": out}


def api_group(group):
    if group not in {k.group for k in KINDS.values() if k.group}:
        return None
    gv = {"groupVersion": f"{group}/v1", "version": "v1"}
    return {"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": [gv], "preferredVersion": gv}


# ------------------------------------------------------------------ names, quantities

DNS1123_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"


def name_errors(kind, name, label_only=False):
    if not name:
        return [("metadata.name", "FieldValueRequired", "Required value: name or generateName is required")]
    if label_only:
        if len(name) > 63 or not re.fullmatch(DNS1123_LABEL, name):
            return [("metadata.name", "FieldValueInvalid",
                     f'Invalid value: "{name}": a lowercase RFC 1123 label must consist of lower case '
                     "alphanumeric characters or '-', and must start and end with an alphanumeric "
                     f"character (e.g. 'my-name',  or '123-abc', regex used for validation is '{DNS1123_LABEL}')")]
        return []
    if len(name) > 253 or not re.fullmatch(DNS1123_SUBDOMAIN, name):
        return [("metadata.name", "FieldValueInvalid",
                 f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower case '
                 "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric "
                 f"character (e.g. 'example.com', regex used for validation is '{DNS1123_SUBDOMAIN}')")]
    return []


_QUANTITY = re.compile(r"^([+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))(Ki|Mi|Gi|Ti|Pi|Ei|m|k|M|G|T|P|E|[eE][+-]?[0-9]+)?$")
_SUFFIX = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def quantity(text):
    """Bytes of a resource quantity ("10Gi", "1e9", "500M"), or None if it does not parse
    (https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/quantity/)."""
    m = _QUANTITY.match(str(text).strip()) if text is not None else None
    if not m:
        return None
    suffix = m.group(2)
    if suffix and suffix[0] in "eE" and suffix not in _SUFFIX:
        return float(m.group(1)) * 10 ** int(suffix[1:])
    return float(m.group(1)) * _SUFFIX[suffix]


def _quantity_errors(path, value):
    if value is None:
        return [(path, "FieldValueRequired", "Required value")]
    if quantity(value) is None:
        return [(path, "FieldValueInvalid",
                 f"Invalid value: \"{value}\": quantities must match the regular expression "
                 "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")]
    return []


ACCESS_MODES = ["ReadOnlyMany", "ReadWriteMany", "ReadWriteOnce", "ReadWriteOncePod"]
RECLAIM = ["Delete", "Recycle", "Retain"]
PV_SOURCES = ["awsElasticBlockStore", "azureDisk", "azureFile", "cephfs", "cinder", "csi", "fc",
              "flexVolume", "flocker", "gcePersistentDisk", "glusterfs", "hostPath", "iscsi", "local",
              "nfs", "photonPersistentDisk", "portworxVolume", "quobyte", "rbd", "scaleIO",
              "storageos", "vsphereVolume"]


def _unsupported(path, value, allowed):
    listed = ", ".join(f'"{a}"' for a in allowed)
    return (path, "FieldValueNotSupported", f'Unsupported value: "{value}": supported values: {listed}')


def _access_mode_errors(path, modes, required_text):
    if not modes:
        return [(path, "FieldValueRequired", required_text)]
    return [_unsupported(path, m, ACCESS_MODES) for m in modes if m not in ACCESS_MODES]


# ------------------------------------------------------------------ defaults

def default(resource, obj):
    """Defaulting and the admission plugins that add finalizers (StorageObjectInUseProtection,
    https://kubernetes.io/docs/concepts/storage/persistent-volumes/#storage-object-in-use-protection)."""
    spec = obj.setdefault("spec", {})
    meta = obj["metadata"]
    if resource == "persistentvolumes":
        spec.setdefault("persistentVolumeReclaimPolicy", "Retain")
        spec.setdefault("volumeMode", "Filesystem")
        _add_finalizer(meta, "kubernetes.io/pv-protection")
        obj["status"] = {"phase": "Pending"}
    elif resource == "persistentvolumeclaims":
        spec.setdefault("volumeMode", "Filesystem")
        _add_finalizer(meta, "kubernetes.io/pvc-protection")
        obj["status"] = {"phase": "Pending"}
    elif resource == "statefulsets":
        spec.setdefault("replicas", 1)
        spec.setdefault("podManagementPolicy", "OrderedReady")
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("updateStrategy", {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}})
        spec.setdefault("persistentVolumeClaimRetentionPolicy", {"whenDeleted": "Retain", "whenScaled": "Retain"})
        for t in spec.get("volumeClaimTemplates") or []:
            t.setdefault("apiVersion", "v1")
            t.setdefault("kind", "PersistentVolumeClaim")
            t.setdefault("spec", {}).setdefault("volumeMode", "Filesystem")
            t.setdefault("status", {"phase": "Pending"})
        obj["status"] = {"replicas": 0, "availableReplicas": 0}
        meta["generation"] = 1
    elif resource == "namespaces":
        spec.setdefault("finalizers", ["kubernetes"])
        obj["status"] = {"phase": "Active"}
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]


def _add_finalizer(meta, name):
    fins = meta.setdefault("finalizers", [])
    if name not in fins:
        fins.append(name)


# ------------------------------------------------------------------ validation

def validate(resource, obj):
    """Raise ApiError 422 for an object the API server would refuse at create."""
    k = KINDS[resource]
    meta, spec = obj["metadata"], obj.get("spec") or {}
    name = meta.get("name", "")
    errs = name_errors(k.kind, name, label_only=resource == "namespaces")
    errs += _label_errors(meta.get("labels"))
    if resource == "persistentvolumes":
        errs += _pv_errors(spec)
    elif resource == "persistentvolumeclaims":
        errs += _pvc_errors("spec", spec)
    elif resource == "statefulsets":
        errs += _sts_errors(spec)
    if errs:
        raise invalid(k.kind, name, errs, k.group)


def _label_errors(labels):
    errs = []
    for key in labels or {}:
        prefix, _, name = key.rpartition("/")
        if not re.fullmatch(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]", name) or len(name) > 63 \
                or (prefix and (len(prefix) > 253 or not re.fullmatch(DNS1123_SUBDOMAIN, prefix))):
            errs.append(("metadata.labels", "FieldValueInvalid",
                         f'Invalid value: "{key}": name part must consist of alphanumeric characters, '
                         "'-', '_' or '.', and must start and end with an alphanumeric character, with an "
                         "optional DNS subdomain prefix and '/'"))
    for key, value in (labels or {}).items():
        if not isinstance(value, str) or len(value) > 63 or not re.fullmatch(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?", value):
            errs.append(("metadata.labels", "FieldValueInvalid",
                         f'Invalid value: "{value}": a valid label must be an empty string or consist of '
                         "alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"))
    return errs


def _pv_errors(spec):
    errs = []
    cap = spec.get("capacity")
    if not cap:
        errs.append(("spec.capacity", "FieldValueRequired", "Required value"))
    else:
        errs += _quantity_errors("spec.capacity[storage]", cap.get("storage"))
    errs += _access_mode_errors("spec.accessModes", spec.get("accessModes"), "Required value")
    sources = [s for s in PV_SOURCES if s in spec]
    if not sources:
        errs.append(("spec", "FieldValueRequired", "Required value: must specify a volume type"))
    elif len(sources) > 1:
        errs.append(("spec", "FieldValueForbidden", "Forbidden: may not specify more than 1 volume type"))
    if "csi" in spec:
        for f in ("driver", "volumeHandle"):
            if not spec["csi"].get(f):
                errs.append((f"spec.csi.{f}", "FieldValueRequired", "Required value"))
    policy = spec.get("persistentVolumeReclaimPolicy")
    if policy not in RECLAIM:
        errs.append(_unsupported("spec.persistentVolumeReclaimPolicy", policy, RECLAIM))
    if "local" in spec and not spec.get("nodeAffinity"):
        errs.append(("spec.nodeAffinity", "FieldValueRequired", "Required value: Local volume requires node affinity"))
    ref = spec.get("claimRef")
    if ref is not None and (not ref.get("name") or not ref.get("namespace")):
        errs.append(("spec.claimRef", "FieldValueRequired", "Required value: claimRef needs name and namespace"))
    return errs


def _pvc_errors(path, spec):
    errs = _access_mode_errors(f"{path}.accessModes", spec.get("accessModes"),
                               "Required value: at least 1 access mode is required")
    requests = ((spec.get("resources") or {}).get("requests") or {})
    if "storage" not in requests:
        errs.append((f"{path}.resources[storage]", "FieldValueRequired", "Required value"))
    else:
        errs += _quantity_errors(f"{path}.resources.requests[storage]", requests["storage"])
    return errs


def _sts_errors(spec):
    from selector import SelectorError, labels_match, selector_from_match
    errs = []
    replicas = spec.get("replicas")
    if not isinstance(replicas, int) or replicas < 0:
        errs.append(("spec.replicas", "FieldValueInvalid", f"Invalid value: {replicas}: must be greater than or equal to 0"))
    sel = spec.get("selector")
    labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    if not sel or not (sel.get("matchLabels") or sel.get("matchExpressions")):
        errs.append(("spec.selector", "FieldValueRequired", "Required value"))
    else:
        try:
            if not labels_match(selector_from_match(sel), labels):
                errs.append(("spec.template.metadata.labels", "FieldValueInvalid",
                             f"Invalid value: {labels}: `selector` does not match template `labels`"))
        except SelectorError as e:
            errs.append(("spec.selector", "FieldValueInvalid", f"Invalid value: {e}"))
    if not ((spec.get("template") or {}).get("spec") or {}).get("containers"):
        errs.append(("spec.template.spec.containers", "FieldValueRequired", "Required value"))
    for i, t in enumerate(spec.get("volumeClaimTemplates") or []):
        tname = (t.get("metadata") or {}).get("name", "")
        errs += [(f"spec.volumeClaimTemplates[{i}].{f}", r, m) for f, r, m in name_errors("", tname)]
        errs += _pvc_errors(f"spec.volumeClaimTemplates[{i}].spec", t.get("spec") or {})
    return errs


STS_MUTABLE = {"replicas", "ordinals", "template", "updateStrategy",
               "persistentVolumeClaimRetentionPolicy", "minReadySeconds"}


def validate_update(resource, old, new):
    """Raise ApiError 422 for a change the API server forbids (immutable fields)."""
    k = KINDS[resource]
    name = old["metadata"]["name"]
    if new["metadata"].get("name") != name:
        raise invalid(k.kind, new["metadata"].get("name", ""), [
            ("metadata.name", "FieldValueInvalid",
             f'Invalid value: "{new["metadata"].get("name", "")}": field is immutable')], k.group)
    validate(resource, new)
    os_, ns_ = old.get("spec") or {}, new.get("spec") or {}
    errs = []
    if resource == "persistentvolumes":
        src_old = {s: os_[s] for s in PV_SOURCES if s in os_}
        src_new = {s: ns_[s] for s in PV_SOURCES if s in ns_}
        if src_old != src_new:
            errs.append(("spec.persistentvolumesource", "FieldValueForbidden",
                         "Forbidden: spec.persistentvolumesource is immutable after creation"))
        if os_.get("nodeAffinity") is not None and os_.get("nodeAffinity") != ns_.get("nodeAffinity"):
            errs.append(("spec.nodeAffinity", "FieldValueInvalid", "Invalid value: field is immutable"))
    elif resource == "persistentvolumeclaims":
        a, b = copy.deepcopy(os_), copy.deepcopy(ns_)
        if not a.get("volumeName"):
            a.pop("volumeName", None)
            b.pop("volumeName", None)
        for s in (a, b):
            s.pop("volumeAttributesClassName", None)
        ra = quantity(((a.get("resources") or {}).get("requests") or {}).get("storage"))
        rb = quantity(((b.get("resources") or {}).get("requests") or {}).get("storage"))
        a.pop("resources", None)
        b.pop("resources", None)
        if a != b:
            errs.append(("spec", "FieldValueForbidden",
                         "Forbidden: spec is immutable after creation except resources.requests and "
                         "volumeAttributesClassName for bound claims"))
        elif rb is not None and ra is not None and rb < ra:
            errs.append(("spec.resources.requests.storage", "FieldValueForbidden",
                         "Forbidden: field can not be less than status.capacity"))
        elif rb != ra:
            errs.append(("spec.resources.requests.storage", "FieldValueForbidden",
                         "Forbidden: only dynamically provisioned pvc can be resized and the storageclass "
                         "that provisions the pvc must support resize (volume expansion is not modelled by the stand-in)"))
    elif resource == "statefulsets":
        a = {f: v for f, v in os_.items() if f not in STS_MUTABLE}
        b = {f: v for f, v in ns_.items() if f not in STS_MUTABLE}
        if a != b:
            errs.append(("spec", "FieldValueForbidden",
                         "Forbidden: updates to statefulset spec for fields other than 'replicas', 'ordinals', "
                         "'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and "
                         "'minReadySeconds' are forbidden"))
    if errs:
        raise invalid(k.kind, name, errs, k.group)


# ------------------------------------------------------------------ field validation

META_FIELDS = {"name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation",
               "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "labels",
               "annotations", "ownerReferences", "finalizers", "managedFields"}
SPEC_FIELDS = {
    "persistentvolumes": set(PV_SOURCES) | {"accessModes", "capacity", "claimRef", "mountOptions", "nodeAffinity",
                                            "persistentVolumeReclaimPolicy", "storageClassName",
                                            "volumeAttributesClassName", "volumeMode"},
    "persistentvolumeclaims": {"accessModes", "dataSource", "dataSourceRef", "resources", "selector",
                               "storageClassName", "volumeAttributesClassName", "volumeMode", "volumeName"},
    "statefulsets": {"minReadySeconds", "ordinals", "persistentVolumeClaimRetentionPolicy", "podManagementPolicy",
                     "replicas", "revisionHistoryLimit", "selector", "serviceName", "template", "updateStrategy",
                     "volumeClaimTemplates"},
    "namespaces": {"finalizers"},
}


def unknown_fields(resource, obj):
    """Unknown fields of the top level, metadata and spec ("Field validation",
    https://kubernetes.io/docs/reference/using-api/api-concepts/#field-validation); the
    stand-in does not check deeper levels."""
    out = [k for k in obj if k not in ("apiVersion", "kind", "metadata", "spec", "status")]
    out += [f"metadata.{k}" for k in (obj.get("metadata") or {}) if k not in META_FIELDS]
    known = SPEC_FIELDS.get(resource)
    if known is not None and isinstance(obj.get("spec"), dict):
        out += [f"spec.{k}" for k in obj["spec"] if k not in known]
    return out


def openapi_root():
    """/openapi/v3: one document per group version, as the API server lists them."""
    gvs = sorted({("api/v1" if not k.group else f"apis/{k.group}/{k.version}") for k in KINDS.values()})
    return {"paths": {gv: {"serverRelativeURL": f"/openapi/v3/{gv}?hash=flow-standin-1"} for gv in gvs}}


def openapi_doc(gv_path):
    """A minimal OpenAPI v3 document of a group version: the object paths with their
    verbs and query parameters, so kubectl sees that the server does field validation
    (it then sends `fieldValidation=Strict` instead of validating with schemas)."""
    kinds = [k for k in KINDS.values() if ("api/v1" if not k.group else f"apis/{k.group}/{k.version}") == gv_path]
    if not kinds:
        return None
    paths = {}
    for k in kinds:
        base = f"/{gv_path}/namespaces/{{namespace}}/{k.resource}" if k.namespaced else f"/{gv_path}/{k.resource}"
        gvk = {"group": k.group, "version": k.version, "kind": k.kind}
        params = [{"name": p, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
                  for p in ("dryRun", "fieldManager", "fieldValidation")]
        ops = {}
        for verb, method in (("get", "get"), ("update", "put"), ("patch", "patch"), ("delete", "delete")):
            if verb in k.verbs:
                ops[method] = {"operationId": f"{verb}{k.kind}", "x-kubernetes-action": verb,
                               "x-kubernetes-group-version-kind": gvk,
                               "parameters": params if verb in ("update", "patch") else [], "responses": {}}
        paths[f"{base}/{{name}}"] = ops
        if "create" in k.verbs:
            paths[base] = {"post": {"operationId": f"create{k.kind}", "x-kubernetes-action": "post",
                                    "x-kubernetes-group-version-kind": gvk, "parameters": params, "responses": {}}}
    return {"openapi": "3.0.0", "info": {"title": "Kubernetes (flow stand-in)", "version": "v1.32.0"},
            "paths": paths, "components": {"schemas": {}}}


# ------------------------------------------------------------------ JSON types

STR, INT, BOOL, MAP, QTY, ANY = "string", "integer", "boolean", "map of strings", "quantity", "any"
LABEL_SELECTOR = {"matchLabels": MAP, "matchExpressions": [{"key": STR, "operator": STR, "values": [STR]}]}
OBJECT_META = {"name": STR, "generateName": STR, "namespace": STR, "uid": STR, "resourceVersion": STR,
               "labels": MAP, "annotations": MAP, "finalizers": [STR], "generation": INT,
               "ownerReferences": [{"apiVersion": STR, "kind": STR, "name": STR, "uid": STR,
                                    "controller": BOOL, "blockOwnerDeletion": BOOL}]}
NODE_AFFINITY = {"required": {"nodeSelectorTerms": [{"matchExpressions": [{"key": STR, "operator": STR,
                                                                          "values": [STR]}]}]}}
PVC_SPEC = {"accessModes": [STR], "resources": {"requests": {"storage": QTY}, "limits": {"storage": QTY}},
            "selector": LABEL_SELECTOR, "storageClassName": STR, "volumeMode": STR, "volumeName": STR,
            "volumeAttributesClassName": STR}
SCHEMAS = {
    "persistentvolumes": {
        "capacity": {"storage": QTY}, "accessModes": [STR], "persistentVolumeReclaimPolicy": STR,
        "storageClassName": STR, "volumeMode": STR, "mountOptions": [STR], "nodeAffinity": NODE_AFFINITY,
        "claimRef": {"kind": STR, "namespace": STR, "name": STR, "uid": STR, "apiVersion": STR, "resourceVersion": STR},
        "csi": {"driver": STR, "volumeHandle": STR, "fsType": STR, "readOnly": BOOL, "volumeAttributes": MAP},
        "awsElasticBlockStore": {"volumeID": STR, "fsType": STR, "partition": INT, "readOnly": BOOL},
    },
    "persistentvolumeclaims": PVC_SPEC,
    "statefulsets": {
        "replicas": INT, "serviceName": STR, "podManagementPolicy": STR, "revisionHistoryLimit": INT,
        "minReadySeconds": INT, "ordinals": {"start": INT}, "selector": LABEL_SELECTOR,
        "persistentVolumeClaimRetentionPolicy": {"whenDeleted": STR, "whenScaled": STR},
        "template": {"metadata": OBJECT_META,
                     "spec": {"containers": [{"name": STR, "image": STR}], "volumes": [ANY]}},
        "volumeClaimTemplates": [{"metadata": OBJECT_META, "spec": PVC_SPEC}],
        "updateStrategy": {"type": STR},
    },
    "namespaces": {"finalizers": [STR]},
}


STATUS_SCHEMAS = {
    "persistentvolumes": {"phase": STR, "message": STR, "reason": STR},
    "persistentvolumeclaims": {"phase": STR, "accessModes": [STR], "capacity": {"storage": QTY}, "conditions": [ANY]},
    "statefulsets": {f: INT for f in ("replicas", "readyReplicas", "currentReplicas", "updatedReplicas",
                                      "availableReplicas", "observedGeneration", "collisionCount")}
                    | {"currentRevision": STR, "updateRevision": STR},
    "namespaces": {"phase": STR},
}
SCALE = {"metadata": OBJECT_META, "spec": {"replicas": INT}}
DELETE_OPTIONS = {"propagationPolicy": STR, "gracePeriodSeconds": INT, "orphanDependents": BOOL, "dryRun": [STR],
                  "preconditions": {"uid": STR, "resourceVersion": STR}}


def object_schema(resource):
    return {"metadata": OBJECT_META, "spec": SCHEMAS.get(resource, {}), "status": STATUS_SCHEMAS.get(resource, {})}


def _json_type(v):
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(v), type(v).__name__)


def _type_error(path, schema, value):
    """(path, expected type, value) of the first field of value not of its schema's type."""
    if value is None or schema == ANY:
        return None  # null is "unset" for every optional field
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return path, "object", value
        for k, sub in schema.items():
            if k in value:
                err = _type_error(f"{path}.{k}" if path else k, sub, value[k])
                if err:
                    return err
        return None
    if isinstance(schema, list):
        if not isinstance(value, list):
            return path, "array", value
        for i, item in enumerate(value):
            err = _type_error(f"{path}[{i}]", schema[0], item)
            if err:
                return err
        return None
    ok = {STR: lambda v: isinstance(v, str),
          INT: lambda v: isinstance(v, int) and not isinstance(v, bool),
          BOOL: lambda v: isinstance(v, bool),
          MAP: lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
          QTY: lambda v: isinstance(v, (str, int, float)) and not isinstance(v, bool)}[schema](value)
    return None if ok else (path, schema, value)


def type_error(schema, body):
    """(field, expected type, JSON type found) for the first field of body of a wrong JSON
    type, or None: the API server's decoder refuses those with 400 before any validation."""
    err = _type_error("", schema, body)
    if err is None:
        return None
    path, expected, value = err
    return path or "(the body)", expected, _json_type(value)
