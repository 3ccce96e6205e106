"""Server-side printing: `meta.k8s.io/v1` Table answers for kubectl's `get`.

Why: kubectl asks for `application/json;as=Table;v=v1;g=meta.k8s.io` and prints the
columns the server sends ("Receiving resources as Tables",
https://kubernetes.io/docs/reference/using-api/api-concepts/#receiving-resources-as-tables).
The columns are those of the API server's printers for these kinds (kubectl get pv shows
CAPACITY, ACCESS MODES, RECLAIM POLICY, STATUS, CLAIM, ...). Watches are answered with
objects, not Tables (kubectl prints them with its own default columns).
"""

import datetime

MODES = {"ReadWriteOnce": "RWO", "ReadOnlyMany": "ROX", "ReadWriteMany": "RWX", "ReadWriteOncePod": "RWOP"}


def age(ts):
    if not ts:
        return "<unknown>"
    then = datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
    s = int((datetime.datetime.now(datetime.timezone.utc) - then).total_seconds())
    if s < 120:
        return f"{max(s, 0)}s"
    if s < 3600:
        return f"{s // 60}m"
    if s < 48 * 3600:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def _modes(modes):
    return ",".join(MODES.get(m, m) for m in modes or [])


def _pv(o):
    s, st = o.get("spec") or {}, o.get("status") or {}
    ref = s.get("claimRef") or {}
    claim = f"{ref.get('namespace')}/{ref.get('name')}" if ref else ""
    return [(s.get("capacity") or {}).get("storage", ""), _modes(s.get("accessModes")),
            s.get("persistentVolumeReclaimPolicy", ""), st.get("phase", ""), claim,
            s.get("storageClassName", ""), s.get("volumeAttributesClassName") or "<unset>", st.get("reason", "")]


def _pvc(o):
    s, st = o.get("spec") or {}, o.get("status") or {}
    phase = "Terminating" if o["metadata"].get("deletionTimestamp") else st.get("phase", "")
    return [phase, s.get("volumeName", ""), (st.get("capacity") or {}).get("storage", ""),
            _modes(st.get("accessModes")), s.get("storageClassName", ""),
            s.get("volumeAttributesClassName") or "<unset>"]


def _pod(o):
    st = o.get("status") or {}
    cs = st.get("containerStatuses") or []
    total = len((o.get("spec") or {}).get("containers") or [])
    ready = sum(1 for c in cs if c.get("ready"))
    status = st.get("phase", "")
    for c in cs:
        waiting = (c.get("state") or {}).get("waiting")
        if waiting:
            status = waiting.get("reason", status)
    if o["metadata"].get("deletionTimestamp"):
        status = "Terminating"
    return [f"{ready}/{total}", status, 0, st.get("podIP") or "<none>", (o.get("spec") or {}).get("nodeName") or "<none>"]


def _sts(o):
    st = o.get("status") or {}
    return [f"{st.get('readyReplicas', 0)}/{(o.get('spec') or {}).get('replicas', 0)}"]


def _ns(o):
    return [(o.get("status") or {}).get("phase", "")]


def _event(o):
    inv = o.get("involvedObject") or {}
    return [o.get("type", ""), o.get("reason", ""), f"{inv.get('kind', '').lower()}/{inv.get('name', '')}",
            o.get("message", "")]


# resource -> (columns after Name, before Age; cells; wide-only column names)
PRINTERS = {
    "persistentvolumes": (["Capacity", "Access Modes", "Reclaim Policy", "Status", "Claim", "StorageClass",
                           "VolumeAttributesClass", "Reason"], _pv, set()),
    "persistentvolumeclaims": (["Status", "Volume", "Capacity", "Access Modes", "StorageClass",
                                "VolumeAttributesClass"], _pvc, set()),
    "pods": (["Ready", "Status", "Restarts", "IP", "Node"], _pod, {"IP", "Node"}),
    "statefulsets": (["Ready"], _sts, set()),
    "namespaces": (["Status"], _ns, set()),
    "events": (["Type", "Reason", "Object", "Message"], _event, set()),
}


def wants_table(accept):
    return "as=Table" in (accept or "")


def table(resource, items, list_meta, include):
    cols, cells, wide = PRINTERS[resource]
    defs = [{"name": "Name", "type": "string", "format": "name", "description": "", "priority": 0}]
    defs += [{"name": c, "type": "string", "format": "", "description": "", "priority": 1 if c in wide else 0}
             for c in cols]
    defs.append({"name": "Age", "type": "string", "format": "", "description": "", "priority": 0})
    rows = []
    for o in items:
        row = {"cells": [o["metadata"]["name"], *cells(o), age(o["metadata"].get("creationTimestamp"))]}
        if include == "Object":
            row["object"] = o
        elif include != "None":
            row["object"] = {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}
        rows.append(row)
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": list_meta,
            "columnDefinitions": defs, "rows": rows}
