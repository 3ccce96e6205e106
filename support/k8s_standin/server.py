#!/usr/bin/env python3
"""HTTP stand-in of the Kubernetes API server for flow's tests (no kubelet, no CSI, no etcd).

Why: no Kubernetes API server can run on the test machines, and the PV/PVC volume swap
of flow must be tested against something both the real `kubectl` and a Rust client talk
to. This server speaks the REST API for the resources a swap touches (PersistentVolume,
PersistentVolumeClaim, Pod read-only, StatefulSet with `scale`, Namespace, Event) and
runs the controllers whose behaviour decides whether a swap is safe. What it models and
what it does not: README.md beside this file.

Modules: server (HTTP, routing, watch streaming, kubeconfig), api (verbs), store
(resourceVersions, change log), resources (discovery, defaults, validation), patch,
selector, controllers, ec2, errors, proto (Namespace
bodies from kubectl), tables (kubectl get columns).

Usage: server.py --port P [--host 127.0.0.1] [--kubeconfig FILE]
                 [--ec2-endpoint URL] [--region us-east-1]
"""

import argparse
import json
import signal
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

import proto
import resources
import tables
from api import Api
from controllers import Controllers
from ec2 import Ec2
from errors import ApiError, bad_request
from resources import KINDS
from store import Store

PROTOBUF_TYPES = ("application/vnd.kubernetes.protobuf", "application/cbor", "application/yaml")
NOT_FOUND = ApiError(404, "NotFound", "the server could not find the requested resource")


def log(msg):
    sys.stderr.write(f"{time.strftime('%H:%M:%S')} {msg}\n")
    sys.stderr.flush()


def route(path):
    """(group, version, namespace, resource, name, subresource) of an API path, or None."""
    parts = [unquote(p) for p in path.strip("/").split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group, version, rest = "", "v1", parts[2:]
    elif len(parts) >= 3 and parts[0] == "apis":
        group, version, rest = parts[1], parts[2], parts[3:]
    else:
        return None
    ns = None
    if len(rest) == 3 and rest[0] == "namespaces" and rest[2] in KINDS["namespaces"].subresources:
        pass  # /api/v1/namespaces/NAME/status
    elif len(rest) >= 3 and rest[0] == "namespaces":
        ns, rest = rest[1], rest[2:]
    if not rest or len(rest) > 3:
        return None
    resource = rest[0]
    k = KINDS.get(resource)
    if k is None or k.group != group or k.version != version:
        return None
    if ns is not None and not k.namespaced:
        return None
    name = rest[1] if len(rest) > 1 else None
    sub = rest[2] if len(rest) > 2 else None
    if sub is not None and sub not in k.subresources:
        return None
    return group, version, ns, resource, name, sub


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "flow-k8s-standin"
    api = None  # set at start

    def log_message(self, fmt, *args):  # one line per request is written by handle_one
        pass

    def do_GET(self):
        self.handle_one("GET")

    def do_POST(self):
        self.handle_one("POST")

    def do_PUT(self):
        self.handle_one("PUT")

    def do_PATCH(self):
        self.handle_one("PATCH")

    def do_DELETE(self):
        self.handle_one("DELETE")

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def handle_one(self, method):
        start = time.monotonic()
        url = urlsplit(self.path)
        query = parse_qs(url.query, keep_blank_values=True)
        code = 500
        try:
            raw = self.read_body()
            body = None
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if raw and ctype == "application/vnd.kubernetes.protobuf":
                try:
                    body = proto.decode(raw)
                except proto.ProtoError as e:
                    raise ApiError(415, "UnsupportedMediaType", f"the stand-in reads protobuf only for Namespace: {e}")
                raw = b""
            elif raw and ctype in PROTOBUF_TYPES:
                # client-go switches to JSON after a 415 for protobuf (KEP-4222 fallback)
                raise ApiError(415, "UnsupportedMediaType",
                               f'the body of the request was in an unknown format - accepted media types include: '
                               'application/json, application/json-patch+json, application/merge-patch+json, '
                               'application/strategic-merge-patch+json (the stand-in has no protobuf)')
            if raw.strip():
                try:
                    body = json.loads(raw)
                except ValueError as e:
                    raise bad_request(f"error decoding the request body as JSON: {e} "
                                      "(the stand-in accepts JSON only, not YAML or protobuf)")
            result = self.dispatch(method, url.path, query, body)
            if hasattr(result, "__next__"):
                code = 200
                self.stream(result)
            else:
                code, obj = result
                obj = self.as_table(method, url.path, query, obj)
                self.send_json(code, obj)
        except ApiError as e:
            code = e.code
            self.send_json(e.code, e.status())
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception:
            log(f"internal error on {method} {self.path}:\n{traceback.format_exc()}")
            code = 500
            self.send_json(500, ApiError(500, "InternalError", "internal error of the stand-in; see its log").status())
        log(f"{method} {self.path} {code} {int((time.monotonic() - start) * 1000)}ms")

    def dispatch(self, method, path, query, body):
        api = self.api
        addr = f"{self.server.server_address[0]}:{self.server.server_address[1]}"
        if method == "GET":
            fixed = {"/version": resources.VERSION, "/api": resources.api_versions(addr),
                     "/apis": resources.api_groups()}
            if path.rstrip("/") in fixed:
                return 200, fixed[path.rstrip("/")]
            if path == "/openapi/v3":
                return 200, resources.openapi_root()
            if path.startswith("/openapi/v3/"):
                doc = resources.openapi_doc(path[len("/openapi/v3/"):].strip("/"))
                if doc:
                    return 200, doc
            if path in ("/healthz", "/readyz", "/livez"):
                return 200, "ok"
            parts = [p for p in path.strip("/").split("/") if p]
            if parts == ["api", "v1"]:
                return 200, resources.discovery("", "v1")
            if len(parts) == 2 and parts[0] == "apis":
                g = resources.api_group(parts[1])
                if g:
                    return 200, g
            if len(parts) == 3 and parts[0] == "apis":
                d = resources.discovery(parts[1], parts[2])
                if d:
                    return 200, d
        r = route(path)
        if r is None:
            raise NOT_FOUND
        _, _, ns, resource, name, sub = r
        k = KINDS[resource]
        if k.namespaced and name is not None and ns is None:
            raise NOT_FOUND
        if resource == "namespaces" and name is not None:
            ns = None
        if method == "GET":
            if name is None:
                if query.get("watch", [""])[-1] in ("true", "1"):
                    return api.watch(resource, ns, query)
                return api.list(resource, ns, query)
            if sub == "scale":
                return api.get_scale(ns, name)
            return api.get(resource, ns, name)
        if method == "POST" and name is None:
            if ns is None and k.namespaced:
                raise NOT_FOUND
            return api.create(resource, ns, body, query)
        if method == "PUT" and name is not None:
            return api.update(resource, ns, name, body, query, sub)
        if method == "PATCH" and name is not None:
            return api.patch(resource, ns, name, body, self.headers.get("Content-Type"), query, sub)
        if method == "DELETE" and sub is None:
            if name is None:
                return api.delete_collection(resource, ns, body, query)
            return api.delete_request(resource, ns, name, body, query)
        raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method on the requested resource")

    def as_table(self, method, path, query, obj):
        """The answer as a Table if the client asked for one (kubectl get)."""
        if method != "GET" or not tables.wants_table(self.headers.get("Accept")) or not isinstance(obj, dict):
            return obj
        r = route(path)
        if r is None or r[5] is not None or r[3] not in tables.PRINTERS:
            return obj
        include = query.get("includeObject", ["Metadata"])[-1]
        if obj.get("kind", "").endswith("List"):
            return tables.table(r[3], obj["items"], obj["metadata"], include)
        return tables.table(r[3], [obj], {"resourceVersion": obj["metadata"].get("resourceVersion")}, include)

    def send_json(self, code, obj):
        data = (json.dumps(obj) if not isinstance(obj, str) else obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json" if not isinstance(obj, str) else "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        self.wfile.write(data)

    def stream(self, events):
        """A watch: one JSON object per line, chunked, until the watch ends."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        self.wfile.flush()
        for ev in events:
            line = (json.dumps(ev) + "\n").encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def write_kubeconfig(path, url):
    text = f"""# Written by the Kubernetes API stand-in of flow's test stack (support/k8s_standin).
# It points at a stand-in, not a cluster: no kubelet, no CSI driver, no authentication.
apiVersion: v1
kind: Config
clusters:
- name: flow-standin
  cluster:
    server: {url}
contexts:
- name: flow-standin
  context:
    cluster: flow-standin
    user: flow-standin
    namespace: default
current-context: flow-standin
users:
- name: flow-standin
  user: {{}}
"""
    with open(path + ".tmp", "w") as f:
        f.write(text)
    import os
    os.replace(path + ".tmp", path)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--kubeconfig", help="write a kubeconfig pointing at this server here")
    ap.add_argument("--ec2-endpoint", required=True, help="EC2 API endpoint (moto or an EC2 front)")
    ap.add_argument("--region", default="us-east-1")
    args = ap.parse_args()

    store = Store()
    api = Api(store)
    for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
        api.create("namespaces", None, {"metadata": {"name": ns}}, {})
    Handler.api = api
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    Controllers(api, Ec2(args.ec2_endpoint, args.region), log).start()
    url = f"http://{args.host}:{args.port}"
    if args.kubeconfig:
        write_kubeconfig(args.kubeconfig, url)

    def stop(*_):
        store.stopping = True
        with store.lock:
            store.changed.notify_all()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log(f"Kubernetes API stand-in listening on {url}, EC2 at {args.ec2_endpoint} ({args.region})")
    server.serve_forever()


if __name__ == "__main__":
    main()
