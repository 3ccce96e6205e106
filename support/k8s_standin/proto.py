"""Just enough of Kubernetes' protobuf encoding to read a Namespace that kubectl creates.

Why: `kubectl create namespace NAME` sends its body as `application/vnd.kubernetes.protobuf`
(typed client) and does not fall back to JSON; every other call the stand-in serves
comes as JSON. The wire format is "Protobuf encoding" in
https://kubernetes.io/docs/reference/using-api/api-concepts/#protobuf-encoding:
the magic `k8s\\x00`, then a `runtime.Unknown` (1 typeMeta {1 apiVersion, 2 kind},
2 raw); `raw` is the object, whose field 1 is ObjectMeta (1 name, 2 generateName,
3 namespace, 11 labels, 12 annotations). Only Namespace is accepted: any other kind in
protobuf is refused with 415 naming the fix (send JSON).
"""

MAGIC = b"k8s\x00"


class ProtoError(ValueError):
    pass


def _varint(buf, i):
    shift = value = 0
    while True:
        if i >= len(buf):
            raise ProtoError("truncated varint")
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i
        shift += 7


def fields(buf):
    """(field number, bytes or int) of each field of a message."""
    i, out = 0, []
    while i < len(buf):
        key, i = _varint(buf, i)
        num, wire = key >> 3, key & 7
        if wire == 0:
            v, i = _varint(buf, i)
        elif wire == 2:
            n, i = _varint(buf, i)
            v, i = buf[i:i + n], i + n
        elif wire == 1:
            v, i = buf[i:i + 8], i + 8
        elif wire == 5:
            v, i = buf[i:i + 4], i + 4
        else:
            raise ProtoError(f"unsupported wire type {wire}")
        out.append((num, v))
    return out


def _map(entries):
    out = {}
    for e in entries:
        f = dict(fields(e))
        out[f.get(1, b"").decode()] = f.get(2, b"").decode()
    return out


def decode(body):
    """The JSON form (apiVersion, kind, metadata) of a protobuf Namespace."""
    if not body.startswith(MAGIC):
        raise ProtoError("the body does not start with the Kubernetes protobuf magic k8s\\x00")
    unknown = fields(body[len(MAGIC):])
    type_meta = dict(fields(next((v for n, v in unknown if n == 1), b"")))
    api_version = type_meta.get(1, b"").decode()
    kind = type_meta.get(2, b"").decode()
    if (api_version, kind) != ("v1", "Namespace"):
        raise ProtoError(f"{kind or 'this object'} in protobuf is not supported; send it as JSON")
    raw = next((v for n, v in unknown if n == 2), b"")
    meta_bytes = next((v for n, v in fields(raw) if n == 1), b"")
    meta = {}
    labels, annotations = [], []
    for n, v in fields(meta_bytes):
        if n in (1, 2, 3) and v:
            meta[{1: "name", 2: "generateName", 3: "namespace"}[n]] = v.decode()
        elif n == 11:
            labels.append(v)
        elif n == 12:
            annotations.append(v)
    if labels:
        meta["labels"] = _map(labels)
    if annotations:
        meta["annotations"] = _map(annotations)
    return {"apiVersion": api_version, "kind": kind, "metadata": meta}
