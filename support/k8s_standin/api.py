"""REST semantics of the API server for the served resources.

Why: clients rely on the exact contract of the verbs, from "Kubernetes API Concepts"
(https://kubernetes.io/docs/reference/using-api/api-concepts/):
- create (POST, 201), get, list (`labelSelector`, `fieldSelector`, `limit`/`continue`),
  watch (`?watch=true`, from a `resourceVersion`, `allowWatchBookmarks`,
  `sendInitialEvents`, `timeoutSeconds`; 410 Gone for an expired version);
- update (PUT) with optimistic concurrency: a stale `metadata.resourceVersion` is 409
  Conflict ("Resource versions", and "Concurrency Control and Consistency" in
  https://github.com/kubernetes/community/blob/master/contributors/devel/sig-architecture/api-conventions.md#concurrency-control-and-consistency);
- patch (merge, JSON, strategic as merge: see patch.py);
- delete with `propagationPolicy` Orphan/Background/Foreground and preconditions
  ("Garbage Collection", https://kubernetes.io/docs/concepts/architecture/garbage-collection/),
  finalizers keep an object with a `deletionTimestamp` until they are removed
  (https://kubernetes.io/docs/concepts/overview/working-with-objects/finalizers/);
  202 Accepted when the object is not gone at once;
- the `status` subresource writes only status, the `scale` subresource reads and writes
  `spec.replicas` as an autoscaling/v1 Scale
  (https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/#scale-subresource
  and the StatefulSet API reference); a Scale without `spec.replicas` means 0 (kubectl
  drops the zero by omitempty).
A namespaced object needs its namespace, and a terminating namespace takes no new
objects (https://kubernetes.io/docs/concepts/overview/working-with-objects/namespaces/).
"""

import base64
import copy
import datetime
import json
import time
import uuid

import errors
import patch as patching
import resources
import selector
from errors import ApiError
from resources import KINDS


def now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


FIELDS = {
    "metadata.name": lambda o: o["metadata"].get("name"),
    "metadata.namespace": lambda o: o["metadata"].get("namespace"),
}
EXTRA_FIELDS = {
    "pods": {"spec.nodeName": lambda o: o.get("spec", {}).get("nodeName"),
             "status.phase": lambda o: o.get("status", {}).get("phase")},
    "namespaces": {"status.phase": lambda o: o.get("status", {}).get("phase")},
    "events": {f"involvedObject.{f}": (lambda f: lambda o: o.get("involvedObject", {}).get(f))(f)
               for f in ("kind", "name", "namespace", "uid", "apiVersion")}
              | {"reason": lambda o: o.get("reason"), "type": lambda o: o.get("type")},
}
BOOKMARK_EVERY = 5.0
EVENT_REPEAT = 2.0
MAX_WATCH = 1800


class Api:
    def __init__(self, store):
        self.store = store
        self.event_times = {}  # (uid, reason, message) -> monotonic time last recorded

    # ---------------------------------------------------------------- helpers

    def typed(self, resource, obj):
        k = KINDS[resource]
        out = {"apiVersion": k.api_version, "kind": k.kind}
        out.update({key: v for key, v in obj.items() if key not in ("apiVersion", "kind")})
        return out

    def must_get(self, resource, ns, name):
        obj = self.store.get(resource, ns, name)
        if obj is None:
            raise errors.not_found(resource, name, KINDS[resource].group)
        return obj

    def check_namespace(self, ns, creating=True):
        nso = self.store.get("namespaces", "", ns)
        if nso is None:
            raise errors.not_found("namespaces", ns)
        if creating and nso["metadata"].get("deletionTimestamp"):
            raise ApiError(403, "Forbidden",
                           f"unable to create new content in namespace {ns} because it is being terminated",
                           {"name": ns, "kind": "namespaces"})

    def write(self, resource, obj):
        """Store obj; an object being deleted whose finalizers are all gone is removed."""
        meta = obj["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers") and resource != "namespaces" \
                and not (resource == "pods" and meta.get("deletionGracePeriodSeconds")):
            gone = self.store.remove(resource, meta.get("namespace"), meta["name"])
            return gone if gone is not None else obj
        return self.store.write(resource, obj)

    def record_event(self, obj, resource, etype, reason, message, component):
        """An Event about obj (core/v1), merged with an equal earlier one by count, as
        the event recorder does (https://kubernetes.io/docs/reference/kubernetes-api/cluster-resources/event-v1/).
        Events of cluster-scoped objects go to namespace `default`."""
        k = KINDS[resource]
        meta = obj["metadata"]
        ns = meta.get("namespace") or "default"
        key = (meta.get("uid"), reason, message)
        with self.store.lock:
            # the recorder's spam filter: a controller retrying every tick does not write
            # an event every tick (an equal event is counted at most once per EVENT_REPEAT)
            last = self.event_times.get(key)
            if last is not None and time.monotonic() - last < EVENT_REPEAT:
                return
            self.event_times[key] = time.monotonic()
            for ev in self.store.list("events", ns)[0]:
                if ev["involvedObject"].get("uid") == meta.get("uid") and ev["reason"] == reason \
                        and ev["message"] == message:
                    ev["count"] = ev.get("count", 1) + 1
                    ev["lastTimestamp"] = now()
                    self.store.write("events", ev)
                    return
            ts = now()
            self.store.write("events", {
                "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": ns,
                             "uid": str(uuid.uuid4()), "creationTimestamp": ts},
                "involvedObject": {"kind": k.kind, "namespace": meta.get("namespace"), "name": meta["name"],
                                   "uid": meta.get("uid"), "apiVersion": k.api_version,
                                   "resourceVersion": meta.get("resourceVersion")},
                "reason": reason, "message": message, "type": etype,
                "source": {"component": component}, "reportingComponent": component,
                "firstTimestamp": ts, "lastTimestamp": ts, "count": 1})

    # ---------------------------------------------------------------- create

    def create(self, resource, ns, body, query, internal=False):
        k = KINDS[resource]
        if not internal and "create" not in k.verbs:
            raise errors.method_not_allowed(
                f"{resource} cannot be created through the API of this stand-in: "
                "its StatefulSet controller makes pods; create a StatefulSet instead")
        obj = self._body_object(k, body)
        self._field_validation(resource, obj, query)
        meta = obj.setdefault("metadata", {})
        if k.namespaced:
            if meta.get("namespace") and meta["namespace"] != ns:
                raise errors.bad_request("the namespace of the provided object does not match the namespace sent on the request")
            meta["namespace"] = ns
            self.check_namespace(ns)
        else:
            meta.pop("namespace", None)
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        for f in ("uid", "resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds", "generation"):
            meta.pop(f, None)
        obj.pop("status", None)
        resources.default(resource, obj)
        resources.validate(resource, obj)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now()
        with self.store.lock:
            if self.store.get(resource, ns if k.namespaced else "", meta["name"]) is not None:
                raise errors.already_exists(resource, meta["name"], k.group)
            if _dry_run(query):
                return 201, self.typed(resource, obj)
            return 201, self.typed(resource, self.store.write(resource, obj))

    def _body_object(self, k, body):
        if not isinstance(body, dict):
            raise errors.bad_request(f"the request body must be a JSON {k.kind} object")
        if body.get("apiVersion") not in (None, k.api_version):
            raise errors.bad_request(f"the API version in the data ({body.get('apiVersion')}) does not match "
                                     f"the expected API version ({k.api_version})")
        if body.get("kind") not in (None, k.kind):
            raise errors.bad_request(f"the kind in the data ({body.get('kind')}) does not match the expected kind ({k.kind})")
        obj = copy.deepcopy(body)
        obj.pop("apiVersion", None)
        obj.pop("kind", None)
        _check_types(k.kind, k.version, resources.object_schema(k.resource), obj)
        return obj

    # ---------------------------------------------------------------- read

    def get(self, resource, ns, name):
        return 200, self.typed(resource, self.must_get(resource, ns, name))

    def _selectors(self, resource, query):
        try:
            labels = selector.parse_labels(_one(query, "labelSelector"))
            fields = selector.parse_fields(_one(query, "fieldSelector"),
                                           FIELDS | EXTRA_FIELDS.get(resource, {}))
        except selector.SelectorError as e:
            raise errors.bad_request(str(e))
        return lambda o: selector.labels_match(labels, o["metadata"].get("labels")) and selector.fields_match(fields, o)

    def list(self, resource, ns, query):
        k = KINDS[resource]
        match = self._selectors(resource, query)
        items, rv = self.store.list(resource, ns)
        items = [i for i in items if match(i)]
        meta = {"resourceVersion": rv}
        start = 0
        token = _one(query, "continue")
        if token:
            try:
                state = json.loads(base64.urlsafe_b64decode(token.encode()))
                start, meta["resourceVersion"] = int(state["start"]), state["rv"]
            except (ValueError, KeyError, TypeError):
                raise ApiError(410, "Expired", "The provided continue parameter is too old to display a consistent "
                               "list result. You can start a new list without the continue parameter.")
        limit = _int(query, "limit", 0)
        page = items[start:start + limit] if limit > 0 else items[start:]
        if limit > 0 and start + limit < len(items):
            meta["continue"] = base64.urlsafe_b64encode(json.dumps(
                {"start": start + limit, "rv": meta["resourceVersion"]}).encode()).decode()
            meta["remainingItemCount"] = len(items) - start - limit
        return 200, {"kind": f"{k.kind}List", "apiVersion": k.api_version, "metadata": meta, "items": page}

    def watch(self, resource, ns, query):
        """A generator of watch events; the server writes them as JSON lines."""
        match = self._selectors(resource, query)
        timeout = min(_int(query, "timeoutSeconds", MAX_WATCH) or MAX_WATCH, MAX_WATCH)
        bookmarks = _one(query, "allowWatchBookmarks") in ("true", "1")
        initial_list = _one(query, "sendInitialEvents") in ("true", "1")
        rv_text = _one(query, "resourceVersion") or ""
        if rv_text and not rv_text.isdigit():
            raise errors.bad_request(f'invalid resource version "{rv_text}"')
        k = KINDS[resource]
        in_ns = lambda o: not k.namespaced or not ns or o["metadata"].get("namespace") == ns  # noqa: E731
        store = self.store

        def stream():
            deadline = time.monotonic() + timeout
            with store.lock:
                if rv_text in ("", "0") or initial_list:
                    items, last = store.list(resource, ns)
                    first = [{"type": "ADDED", "object": self.typed(resource, o)} for o in items if match(o)]
                    last = int(last)
                else:
                    last, first = int(rv_text), []
                    if last < store.oldest():
                        first = [{"type": "ERROR", "object": ApiError(
                            410, "Expired", f"too old resource version: {last} ({store.oldest()})").status()}]
            yield from first
            if first and first[0]["type"] == "ERROR":
                return
            if initial_list:
                yield {"type": "BOOKMARK", "object": {
                    "kind": k.kind, "apiVersion": k.api_version,
                    "metadata": {"resourceVersion": str(last), "annotations": {"k8s.io/initial-events-end": "true"}}}}
            next_bookmark = time.monotonic() + BOOKMARK_EVERY
            while not store.stopping:
                entries, current = store.since(last, resource)
                for rv, etype, _, old, new in entries:
                    if not in_ns(new):
                        continue
                    was = old is not None and match(old)
                    now_ = etype != "DELETED" and match(new)
                    if etype == "DELETED":
                        kind = "DELETED" if was else None
                    elif was and now_:
                        kind = "MODIFIED"
                    elif now_:
                        kind = "ADDED"
                    elif was:
                        kind = "DELETED"  # no longer matches the selector
                    else:
                        kind = None
                    if kind:
                        yield {"type": kind, "object": self.typed(resource, new)}
                last = current
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                if bookmarks and time.monotonic() >= next_bookmark:
                    yield {"type": "BOOKMARK", "object": {"kind": k.kind, "apiVersion": k.api_version,
                                                          "metadata": {"resourceVersion": str(last)}}}
                    next_bookmark = time.monotonic() + BOOKMARK_EVERY
                store.wait(last, min(left, BOOKMARK_EVERY, 1.0))
        return stream()

    # ---------------------------------------------------------------- update / patch

    def update(self, resource, ns, name, body, query, sub=None):
        k = KINDS[resource]
        if "update" not in k.verbs:
            raise errors.method_not_allowed(f"{resource} are read-only in this stand-in (made by its controllers)")
        if sub == "scale":
            return self._scale_write(ns, name, body, query)
        new = self._body_object(k, body)
        if (new.get("metadata") or {}).get("name") not in (None, name):
            raise errors.bad_request(f"the name of the object ({new['metadata']['name']}) does not match the name on the URL ({name})")
        return self._replace(resource, ns, name, new, query, sub)

    def patch(self, resource, ns, name, body, content_type, query, sub=None):
        k = KINDS[resource]
        if "patch" not in k.verbs:
            raise errors.method_not_allowed(f"{resource} are read-only in this stand-in (made by its controllers)")
        with self.store.lock:
            if sub == "scale":
                current = self._scale_of(self.must_get(resource, ns, name))
            else:
                current = self.typed(resource, self.must_get(resource, ns, name))
            try:
                patched = patching.apply(content_type, current, body)
            except patching.PatchError as e:
                raise ApiError(e.code, "UnsupportedMediaType" if e.code == 415 else
                               ("BadRequest" if e.code == 400 else "Invalid"), str(e))
            if not isinstance(patched, dict):
                raise errors.bad_request("the patch did not produce an object")
            if sub == "scale":
                return self._scale_write(ns, name, patched, query)
            return self._replace(resource, ns, name, self._body_object(k, patched), query, sub)

    def _field_validation(self, resource, obj, query):
        mode = _one(query, "fieldValidation") or "Warn"
        if mode not in ("Ignore", "Warn", "Strict"):
            raise errors.bad_request(f'fieldValidation: Unsupported value: "{mode}": supported values: '
                                     '"Ignore", "Strict", "Warn"')
        unknown = resources.unknown_fields(resource, obj)
        if unknown and mode == "Strict":
            k = KINDS[resource]
            listed = ", ".join(f'unknown field "{u}"' for u in unknown)
            raise errors.bad_request(f'{k.kind} in version "{k.version}" cannot be handled as a {k.kind}: '
                                     f"strict decoding error: {listed}")

    def _replace(self, resource, ns, name, new, query, sub):
        k = KINDS[resource]
        self._field_validation(resource, new, query)
        with self.store.lock:
            old = self.must_get(resource, ns, name)
            new.setdefault("metadata", {})
            rv = new["metadata"].get("resourceVersion")
            if rv and rv != old["metadata"]["resourceVersion"]:
                raise errors.conflict(resource, name, errors.STALE, k.group)
            keep = ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
                    "generation", "namespace")
            for f in keep:
                if f in old["metadata"]:
                    new["metadata"][f] = old["metadata"][f]
                else:
                    new["metadata"].pop(f, None)
            new["metadata"]["name"] = name
            if sub == "status":
                out = copy.deepcopy(old)
                out["status"] = new.get("status", {})
                new = out
            else:
                new["status"] = old.get("status", {})
                if old["metadata"].get("deletionTimestamp"):
                    added = set(new["metadata"].get("finalizers") or []) - set(old["metadata"].get("finalizers") or [])
                    if added:
                        raise errors.forbidden(resource, name, "no new finalizers can be added if the object is being deleted", k.group)
                resources.validate_update(resource, old, new)
                if "generation" in old["metadata"] and old.get("spec") != new.get("spec"):
                    new["metadata"]["generation"] = old["metadata"]["generation"] + 1
            if _dry_run(query):
                return 200, self.typed(resource, new)
            return 200, self.typed(resource, self.write(resource, new))

    def _scale_of(self, sts):
        meta = sts["metadata"]
        return {"kind": "Scale", "apiVersion": "autoscaling/v1",
                "metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"],
                             "resourceVersion": meta["resourceVersion"],
                             "creationTimestamp": meta["creationTimestamp"]},
                "spec": {"replicas": sts["spec"].get("replicas", 0)},
                "status": {"replicas": sts.get("status", {}).get("replicas", 0),
                           "selector": selector.selector_string(sts["spec"].get("selector"))}}

    def get_scale(self, ns, name):
        return 200, self._scale_of(self.must_get("statefulsets", ns, name))

    def _scale_write(self, ns, name, body, query):
        if not isinstance(body, dict):
            raise errors.bad_request("the request body must be a JSON Scale object")
        _check_types("Scale", "v1", resources.SCALE, body)
        with self.store.lock:
            sts = self.must_get("statefulsets", ns, name)
            rv = (body.get("metadata") or {}).get("resourceVersion")
            if rv and rv != sts["metadata"]["resourceVersion"]:
                raise errors.conflict("statefulsets", name, errors.STALE, "apps")
            replicas = (body.get("spec") or {}).get("replicas", 0)  # omitted zero
            if not isinstance(replicas, int) or replicas < 0:
                raise errors.invalid("Scale", name, [("spec.replicas", "FieldValueInvalid",
                                                      f"Invalid value: {replicas}: must be greater than or equal to 0")],
                                     "autoscaling")
            if sts["spec"].get("replicas") != replicas:
                sts["spec"]["replicas"] = replicas
                sts["metadata"]["generation"] = sts["metadata"].get("generation", 1) + 1
                if not _dry_run(query):
                    sts = self.store.write("statefulsets", sts)
            return 200, self._scale_of(sts)

    # ---------------------------------------------------------------- delete

    def delete_request(self, resource, ns, name, body, query):
        k = KINDS[resource]
        if "delete" not in k.verbs:
            raise errors.method_not_allowed(f"{resource} cannot be deleted through the API of this stand-in")
        if body is not None and not isinstance(body, dict):
            raise errors.bad_request("the request body must be a JSON DeleteOptions object")
        opts = body or {}
        _check_types("DeleteOptions", "v1", resources.DELETE_OPTIONS, opts)
        policy = opts.get("propagationPolicy") or _one(query, "propagationPolicy")
        if policy not in (None, "Orphan", "Background", "Foreground"):
            raise errors.bad_request(f'propagationPolicy: Unsupported value: "{policy}": supported values: '
                                     '"Foreground", "Background", "Orphan"')
        if opts.get("orphanDependents") is True and not policy:
            policy = "Orphan"
        grace = opts.get("gracePeriodSeconds")
        if grace is None and _one(query, "gracePeriodSeconds") is not None:
            grace = _int(query, "gracePeriodSeconds", 0)
        with self.store.lock:
            obj = self.must_get(resource, ns, name)
            pre = opts.get("preconditions") or {}
            for f, label in (("uid", "UID"), ("resourceVersion", "ResourceVersion")):
                if pre.get(f) and pre[f] != obj["metadata"].get(f):
                    raise errors.conflict(resource, name, f"Precondition failed: {label} in precondition: "
                                          f"{pre[f]}, {label} in object meta: {obj['metadata'].get(f)}", k.group)
            if _dry_run(query) or opts.get("dryRun"):
                return 200, self.typed(resource, obj)
            gone, out = self.delete(resource, obj, policy, grace)
            return (200 if gone else 202), self.typed(resource, out)

    def delete(self, resource, obj, policy=None, grace=None):
        """Start deleting obj; returns (removed at once, the object as it is now)."""
        meta = obj["metadata"]
        with self.store.lock:
            if policy == "Orphan":
                self._orphan(meta["uid"])
            if resource == "namespaces":
                if not meta.get("deletionTimestamp"):
                    meta["deletionTimestamp"] = now()
                    obj["status"] = {"phase": "Terminating"}
                    obj = self.store.write(resource, obj)
                return False, obj
            if policy == "Foreground" and "foregroundDeletion" not in (meta.get("finalizers") or []):
                meta.setdefault("finalizers", []).append("foregroundDeletion")
            if resource == "pods" and grace != 0:
                if not meta.get("deletionTimestamp"):
                    g = 30 if grace is None else grace
                    meta["deletionGracePeriodSeconds"] = g
                    meta["deletionTimestamp"] = now()
                    obj = self.store.write(resource, obj)
                return False, obj
            if meta.get("finalizers"):
                if not meta.get("deletionTimestamp"):
                    meta["deletionTimestamp"] = now()
                    meta["deletionGracePeriodSeconds"] = 0
                    obj = self.store.write(resource, obj)
                elif policy == "Foreground":
                    obj = self.store.write(resource, obj)
                return False, obj
            return True, self.store.remove(resource, meta.get("namespace"), meta["name"])

    def _orphan(self, uid):
        for res in ("pods", "persistentvolumeclaims"):
            for o in self.store.list(res)[0]:
                refs = o["metadata"].get("ownerReferences") or []
                if any(r.get("uid") == uid for r in refs):
                    o["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") != uid]
                    if not o["metadata"]["ownerReferences"]:
                        del o["metadata"]["ownerReferences"]
                    self.store.write(res, o)

    def delete_collection(self, resource, ns, body, query):
        k = KINDS[resource]
        if "deletecollection" not in k.verbs:
            raise errors.method_not_allowed(f"{resource} do not support deletecollection in this stand-in")
        match = self._selectors(resource, query)
        out = []
        with self.store.lock:
            for o in self.store.list(resource, ns)[0]:
                if match(o):
                    out.append(self.typed(resource, self.delete(resource, o)[1]))
        return 200, {"kind": f"{k.kind}List", "apiVersion": k.api_version,
                     "metadata": {"resourceVersion": str(self.store.rv)}, "items": out}


def _check_types(kind, version, schema, body):
    wrong = resources.type_error(schema, body)
    if wrong:
        field, expected, got = wrong
        raise errors.bad_request(f'{kind} in version "{version}" cannot be handled as a {kind}: '
                                 f"json: cannot unmarshal {got} into field {field} of type {expected}")


def _one(query, name):
    v = query.get(name)
    return v[-1] if v else None


def _int(query, name, default):
    v = _one(query, name)
    if v is None or v == "":
        return default
    try:
        return int(v)
    except ValueError:
        raise errors.bad_request(f"{name}: invalid value {v!r}: must be an integer")


def _dry_run(query):
    v = query.get("dryRun")
    if v and any(x != "All" for x in v):
        raise errors.bad_request(f'dryRun: Unsupported value: "{v[-1]}": supported values: "All"')
    return bool(v)
