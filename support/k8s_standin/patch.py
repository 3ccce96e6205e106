"""PATCH bodies: JSON merge patch, JSON patch, and strategic merge patch as merge patch.

Why: kubectl and kube-rs change objects with PATCH (`kubectl patch --type=merge|json`,
`kubectl scale`, kube's `Patch::Merge`). Content types follow "Update API Objects in
Place Using kubectl patch"
(https://kubernetes.io/docs/tasks/manage-kubernetes-objects/update-api-object-kubectl-patch/)
and the API concepts page (https://kubernetes.io/docs/reference/using-api/api-concepts/#patch-and-apply):
- application/merge-patch+json: RFC 7386 (null deletes a key, lists are replaced);
- application/json-patch+json: RFC 6902 (add, remove, replace, move, copy, test);
- application/strategic-merge-patch+json: applied as a merge patch here; the stand-in
  does not merge lists by their patchMergeKey (see README, "not modelled").
Server-side apply (application/apply-patch+yaml) is refused with 415.
"""

import copy

MERGE = "application/merge-patch+json"
JSON = "application/json-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"


class PatchError(ValueError):
    """A patch that cannot be applied; `code` is the HTTP status the API server uses."""

    def __init__(self, message, code=422):
        super().__init__(message)
        self.code = code


def merge_patch(target, patch):
    """RFC 7386 section 2."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _pointer(path):
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchError(f"invalid JSON pointer {path!r}: must start with '/'", 400)
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _index(container, token, path, allow_end=False):
    if token == "-" and allow_end:
        return len(container)
    if not token.isdigit():
        raise PatchError(f"unable to apply JSON patch: invalid array index {token!r} in {path}")
    i = int(token)
    if i > len(container) or (i == len(container) and not allow_end):
        raise PatchError(f"unable to apply JSON patch: index {i} out of range in {path}")
    return i


def _parent(doc, parts, path):
    cur = doc
    for token in parts[:-1]:
        if isinstance(cur, dict) and token in cur:
            cur = cur[token]
        elif isinstance(cur, list):
            cur = cur[_index(cur, token, path)]
        else:
            raise PatchError(f"unable to apply JSON patch: path {path} does not exist (missing {token!r})")
    return cur


def _get(doc, path):
    parts = _pointer(path)
    if not parts:
        return doc
    parent = _parent(doc, parts, path)
    last = parts[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchError(f"unable to apply JSON patch: path {path} does not exist")
        return parent[last]
    if isinstance(parent, list):
        return parent[_index(parent, last, path)]
    raise PatchError(f"unable to apply JSON patch: path {path} does not exist")


def _remove(doc, path):
    parts = _pointer(path)
    parent = _parent(doc, parts, path)
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent.pop(last)
    if isinstance(parent, list):
        return parent.pop(_index(parent, last, path))
    raise PatchError(f"unable to apply JSON patch: remove of {path}: the path does not exist")


def _add(doc, path, value):
    parts = _pointer(path)
    if not parts:
        return value
    parent = _parent(doc, parts, path)
    last = parts[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, path, allow_end=True), value)
    else:
        raise PatchError(f"unable to apply JSON patch: add at {path}: the parent is not an object or array")
    return doc


def json_patch(target, ops):
    """RFC 6902 section 4; any failing operation fails the whole patch."""
    if not isinstance(ops, list):
        raise PatchError("a JSON patch must be an array of operations", 400)
    doc = copy.deepcopy(target)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise PatchError(f"invalid JSON patch operation {op!r}: needs 'op' and 'path'", 400)
        kind, path = op["op"], op["path"]
        if kind in ("add", "replace", "test") and "value" not in op:
            raise PatchError(f"JSON patch '{kind}' at {path} needs a 'value'", 400)
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind == "remove":
            _remove(doc, path)
        elif kind == "replace":
            _get(doc, path)
            if _pointer(path):
                _remove(doc, path)
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind in ("move", "copy"):
            if "from" not in op:
                raise PatchError(f"JSON patch '{kind}' at {path} needs a 'from'", 400)
            value = _remove(doc, op["from"]) if kind == "move" else copy.deepcopy(_get(doc, op["from"]))
            doc = _add(doc, path, value)
        elif kind == "test":
            if _get(doc, path) != op["value"]:
                raise PatchError(f"the test operation at {path} failed: the value differs")
        else:
            raise PatchError(f"unknown JSON patch operation {kind!r} (add, remove, replace, move, copy, test)", 400)
    return doc


def apply(content_type, target, body):
    """The patched object; PatchError for bodies or types the stand-in refuses."""
    ctype = (content_type or "").split(";")[0].strip().lower()
    if ctype == JSON:
        return json_patch(target, body)
    if ctype in (MERGE, STRATEGIC):
        if not isinstance(body, dict):
            raise PatchError("a merge patch must be a JSON object", 400)
        return merge_patch(target, body)
    raise PatchError(
        f"the body of the request was in an unknown format ({ctype or 'no Content-Type'}) - "
        f"accepted media types include: {JSON}, {MERGE}, {STRATEGIC} "
        "(server-side apply is not modelled by the stand-in)",
        415,
    )
