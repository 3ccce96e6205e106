"""Label and field selectors of list and watch requests.

Why: kubectl and kube-rs find a StatefulSet's pods with `labelSelector` and wait for one
object with `fieldSelector=metadata.name=...` (what `kubectl wait` and `kubectl delete`
send). The grammar follows "Labels and Selectors"
(https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors):
equality (`=`, `==`, `!=`), set (`in`, `notin`), existence (`key`, `!key`), comma = AND.
Field selectors follow
https://kubernetes.io/docs/concepts/overview/working-with-objects/field-selectors/:
`=`, `==`, `!=` on the fields a resource supports; an unknown field is a 400.
"""

import re

class SelectorError(ValueError):
    """A selector that does not parse; the message is the API server's wording."""

_KEY = r"[A-Za-z0-9](?:[-A-Za-z0-9_./]*[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?"


def _split_top(text):
    """Split at commas outside parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def parse_labels(text):
    """A label selector as a list of (key, op, values); op in =, !=, in, notin, exists, !."""
    reqs = []
    for part in _split_top(text or ""):
        m = re.fullmatch(rf"({_KEY})\s+(in|notin)\s*\(([^)]*)\)", part)
        if m:
            values = [v.strip() for v in m.group(3).split(",") if v.strip()]
            for v in values:
                if not re.fullmatch(_VALUE, v):
                    raise SelectorError(f"unable to parse requirement: invalid label value: {v!r}")
            reqs.append((m.group(1), m.group(2), set(values)))
            continue
        m = re.fullmatch(rf"({_KEY})\s*(==|=|!=)\s*(\S*)", part)
        if m:
            value = m.group(3)
            if not re.fullmatch(_VALUE, value):
                raise SelectorError(f"unable to parse requirement: invalid label value: {value!r}")
            op = "!=" if m.group(2) == "!=" else "="
            reqs.append((m.group(1), op, {value}))
            continue
        m = re.fullmatch(rf"!\s*({_KEY})", part)
        if m:
            reqs.append((m.group(1), "!", set()))
            continue
        if re.fullmatch(_KEY, part):
            reqs.append((part, "exists", set()))
            continue
        raise SelectorError(f"unable to parse requirement: found {part!r}, expected: key, !key, key=value, key!=value, key in (...), key notin (...)")
    return reqs


def labels_match(reqs, labels):
    labels = labels or {}
    for key, op, values in reqs:
        has = key in labels
        if op == "=" and not (has and labels[key] in values):
            return False
        if op == "!=" and has and labels[key] in values:
            return False
        if op == "in" and not (has and labels[key] in values):
            return False
        if op == "notin" and has and labels[key] in values:
            return False
        if op == "exists" and not has:
            return False
        if op == "!" and has:
            return False
    return True


def selector_from_match(selector):
    """A LabelSelector object (matchLabels + matchExpressions) as requirements."""
    reqs = [(k, "=", {v}) for k, v in (selector or {}).get("matchLabels", {}).items()]
    for e in (selector or {}).get("matchExpressions", []) or []:
        op = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}.get(e.get("operator"))
        if op is None:
            raise SelectorError(f"{e.get('operator')!r} is not a valid label selector operator")
        reqs.append((e.get("key", ""), op, set(e.get("values") or [])))
    return reqs


def selector_string(selector):
    """The text form of a LabelSelector (Scale.status.selector)."""
    out = [f"{k}={v}" for k, v in sorted((selector or {}).get("matchLabels", {}).items())]
    for e in (selector or {}).get("matchExpressions", []) or []:
        op = e.get("operator")
        vals = ",".join(sorted(e.get("values") or []))
        out.append({"In": f"{e['key']} in ({vals})", "NotIn": f"{e['key']} notin ({vals})",
                    "Exists": e["key"], "DoesNotExist": f"!{e['key']}"}[op])
    return ",".join(out)


def parse_fields(text, supported):
    """A field selector as (path, op, value) triples; `supported` maps field → getter."""
    reqs = []
    for part in _split_top(text or ""):
        m = re.fullmatch(r"([A-Za-z0-9_.]+)\s*(==|=|!=)\s*(.*)", part)
        if not m:
            raise SelectorError(f"invalid selector: '{part}'; can't understand '{part}'")
        field, op, value = m.group(1), m.group(2), m.group(3)
        if field not in supported:
            known = ", ".join(f'"{f}"' for f in sorted(supported))
            raise SelectorError(f'field label not supported: {field} (supported: {known})')
        reqs.append((supported[field], "!=" if op == "!=" else "=", value))
    return reqs


def fields_match(reqs, obj):
    for getter, op, value in reqs:
        actual = getter(obj) or ""
        if (actual == value) != (op == "="):
            return False
    return True
