#!/usr/bin/env python3
"""EC2 stand-in: a front of the stack's moto EC2 that gives EBS snapshots and volumes
the state transitions, idempotency and errors of the real EC2 API, for flow's tests.

Why: moto answers only the happy path (TEST-INFRA.md: snapshots `completed` and
volumes `available` at once, `ClientToken` ignored, any availability zone accepted).
An engine that copies EBS volumes must be tested against `pending`, `creating` and
`error`, against `IdempotentParameterMismatch`, a zone outside the region and
throttling. This front is a proxy: every request goes on to the stack's moto, so S3
and EC2 state stay in one place for every other service of the stack, and the front
only changes what the real API does differently (see README.md beside this file).

What it changes, each with the documentation it follows:
- CreateSnapshot / CopySnapshot: the new snapshot is `pending`, its progress rising
  with time, then `completed` (or `error` when a rule says so). SnapshotState values
  `pending | completed | error | recoverable | recovering` and the waiter
  SnapshotCompleted (success: all `completed`, failure: any `error`) are those of the
  botocore EC2 service model (ENGINES-NEXT.md 2.2); "Snapshots occur asynchronously
  ... the status of the snapshot is pending until the snapshot is complete" (EC2 API
  reference, CreateSnapshot).
- CreateVolume: the new volume is `creating`, then `available` (or `error`).
  VolumeState `creating | available | in-use | deleting | deleted | error`, waiter
  VolumeAvailable (botocore model; ENGINES-NEXT.md 2.2).
- CreateVolume `ClientToken`: same token and same parameters return the same volume;
  the same token with other parameters is `IdempotentParameterMismatch` (HTTP 400)
  (docs.aws.amazon.com/ec2/latest/devguide/ec2-api-idempotency.html; error text from
  the EC2 API reference, errors-overview.html: "The request uses the same client token
  as a previous, but non-identical request").
- CreateVolume `AvailabilityZone` outside the request's region: `InvalidZone.NotFound`,
  HTTP 400, "The zone 'X' does not exist." (the answer real EC2 gives, as reported in
  hashicorp/terraform #6110 and kubernetes-sigs/aws-ebs-csi-driver #368). The zones of
  a region are moto's (DescribeAvailabilityZones).
- DescribeSnapshots / DescribeVolumes filters on `status` are applied by the front to
  the states it reports (moto would filter on its own `completed` / `available`).
- Throttling: a rule answers `RequestLimitExceeded` with HTTP 503 ("If you exceed an
  API throttling limit, you get the RequestLimitExceeded error code", EC2 developer
  guide, ec2-api-throttling.html; 500-series for server-side errors, errors-overview).
  Error bodies have the EC2 form `<Response><Errors><Error><Code/><Message/></Error>
  </Errors><RequestID/></Response>` (errors-overview.html, "Example error response").

Rules (fault injection and timing) are set over HTTP on the same port, scoped by the
access key id of the request's signature so that parallel tests do not see each
other's faults:

  POST   /_standin/rules      {"action": "DescribeVolumes", "access_key": "k1",
                               "params": {"VolumeId.1": "vol-1"}, "times": 2,
                               "error": "RequestLimitExceeded"}
                              {"action": "CreateSnapshot", "access_key": "k1",
                               "outcome": "error", "seconds": 1.5}
  DELETE /_standin/rules?access_key=k1
  GET    /_standin/requests?access_key=k1    -> [{"action":..., "status":...}, ...]
  GET    /_standin/health

A rule matches a request by action (`*` for any), access key (absent: any) and a
subset of the request's parameters; `times` is how often it fires (absent: once;
null: always). `error` answers with that EC2 error code; `outcome` (`completed`,
`available`, `error`) and `seconds` shape the resource the matched Create* call makes.

Usage: ec2_front.py --port P --moto http://127.0.0.1:M [--host 127.0.0.1]
                    [--snapshot-seconds 2] [--volume-seconds 1] [--region us-east-1]
"""

import argparse
import hashlib
import http.client
import json
import re
import signal
import sys
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlencode, urlsplit


# HTTP status and message of the error codes a rule may inject (errors-overview.html:
# client errors are 400-series, server errors 500-series).
KNOWN_ERRORS = {
    "RequestLimitExceeded": (503, "Request limit exceeded."),
    "InternalError": (500, "An internal error has occurred."),
    "Unavailable": (503, "The server is overloaded and can't handle the request."),
    "InsufficientVolumeCapacity": (400, "There is not enough capacity to fulfill your EBS volume provision request."),
    "SnapshotCreationPerVolumeRateExceeded": (400, "The rate limit for creating concurrent snapshots from an EBS volume has been exceeded."),
}

SIGV4_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/\d{8}/([^/,\s]+)/")


def parse_xml(data):
    """(root, namespace): the tree with the default namespace taken off every tag."""
    root = ET.fromstring(data)
    ns = ""
    if root.tag.startswith("{"):
        ns = root.tag[1:].split("}", 1)[0]
    for e in root.iter():
        if e.tag.startswith("{"):
            e.tag = e.tag.split("}", 1)[1]
    return root, ns


class Tracked:
    """A snapshot or volume created through the front, with its scripted life."""

    def __init__(self, kind, seconds, outcome):
        self.kind = kind  # "snapshot" | "volume"
        self.created = time.monotonic()
        self.seconds = max(0.0, float(seconds))
        self.outcome = outcome

    def state(self):
        """(state, progress percent) now."""
        elapsed = time.monotonic() - self.created
        transient = "pending" if self.kind == "snapshot" else "creating"
        if elapsed < self.seconds:
            # Progress rises with time and stays below 100 until the end.
            return transient, min(99, int(100 * elapsed / self.seconds)) if self.seconds else 0
        if self.outcome == "error":
            # fails at the end of its transient time, with the progress it had reached
            return "error", 0 if self.kind == "volume" else 99
        return self.outcome, 100


class Front:
    def __init__(self, moto_url, snapshot_seconds, volume_seconds, default_region):
        parts = urlsplit(moto_url)
        self.moto_host, self.moto_port = parts.hostname, parts.port or 80
        self.snapshot_seconds = snapshot_seconds
        self.volume_seconds = volume_seconds
        self.default_region = default_region
        self.lock = threading.Lock()
        self.token_lock = threading.Lock()  # serialises CreateVolume calls that carry a token
        self.rules = []  # dicts, in the order they were added
        self.next_rule = 1
        self.tracked = {}  # resource id -> Tracked
        self.tokens = {}  # (region, token) -> (fingerprint, response body bytes, volume id)
        self.zones = {}  # region -> set of zone names
        self.requests = []  # (access key, action, HTTP status) per EC2 request, oldest first

    # ------------------------------------------------------------------ rules

    def add_rule(self, rule):
        if not isinstance(rule, dict) or not isinstance(rule.get("action"), str):
            raise ValueError('a rule is a JSON object with "action" (an EC2 action name or "*")')
        unknown = set(rule) - {"action", "access_key", "params", "times", "error", "outcome", "seconds"}
        if unknown:
            raise ValueError("unknown rule keys %s; known: action, access_key, params, times, error, outcome, seconds" % sorted(unknown))
        if "error" not in rule and "outcome" not in rule and "seconds" not in rule:
            raise ValueError('a rule needs "error", "outcome" or "seconds"')
        if "outcome" in rule and rule["outcome"] not in ("completed", "available", "error"):
            raise ValueError('"outcome" is one of completed, available, error')
        if "error" in rule and not (isinstance(rule["error"], str) and re.fullmatch(r"[A-Za-z][A-Za-z0-9.]*", rule["error"])):
            raise ValueError('"error" is an EC2 error code such as "RequestLimitExceeded"')
        if "seconds" in rule and (isinstance(rule["seconds"], bool) or not isinstance(rule["seconds"], (int, float))
                                  or not 0 <= rule["seconds"] <= 86400):
            raise ValueError('"seconds" is a number of seconds between 0 and 86400')
        if "params" in rule and not isinstance(rule["params"], dict):
            raise ValueError('"params" is an object of request parameter names to values')
        times = rule.get("times", 1)
        if times is not None and (isinstance(times, bool) or not isinstance(times, int) or times < 1):
            raise ValueError('"times" is a positive integer, or null for always')
        with self.lock:
            rule = dict(rule, id=self.next_rule, times=times)
            self.next_rule += 1
            self.rules.append(rule)
        return rule["id"]

    def clear_rules(self, access_key):
        with self.lock:
            self.rules = [r for r in self.rules if access_key is not None and r.get("access_key") != access_key]

    def take_rules(self, action, access_key, params):
        """The rules that fire for this request; counts each firing."""
        fired = []
        with self.lock:
            for rule in list(self.rules):
                if rule["action"] not in ("*", action):
                    continue
                if rule.get("access_key") not in (None, access_key):
                    continue
                if any(params.get(k) != str(v) for k, v in rule.get("params", {}).items()):
                    continue
                fired.append(rule)
                if rule["times"] is not None:
                    rule["times"] -= 1
                    if rule["times"] == 0:
                        self.rules.remove(rule)
        return fired

    # ------------------------------------------------------------------ moto

    def forward(self, method, path, headers, body):
        conn = http.client.HTTPConnection(self.moto_host, self.moto_port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.getheader("Content-Type", "text/xml"), resp.read()
        finally:
            conn.close()

    def zones_of(self, region):
        with self.lock:
            if region in self.zones:
                return self.zones[region]
        body = urlencode({"Action": "DescribeAvailabilityZones", "Version": "2016-11-15"})
        headers = {
            "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
            # moto reads the region from the credential scope; it checks no signature
            "Authorization": "AWS4-HMAC-SHA256 Credential=standin/20260101/%s/ec2/aws4_request, "
            "SignedHeaders=host, Signature=0" % region,
        }
        status, _, data = self.forward("POST", "/", headers, body)
        if status != 200:
            raise RuntimeError("moto DescribeAvailabilityZones for %s: HTTP %s" % (region, status))
        zones = {e.text for e in parse_xml(data)[0].iter("zoneName")}
        with self.lock:
            self.zones[region] = zones
        return zones

    # ------------------------------------------------------------------ state rewriting

    def rewrite_items(self, root, set_tag, id_tag):
        """Rewrites status/progress of tracked items under <set_tag>; returns (item, state)."""
        out = []
        for item_set in root.iter(set_tag):
            for item in item_set.findall("item"):
                rid = item.findtext(id_tag)
                with self.lock:
                    tracked = self.tracked.get(rid)
                status = item.find("status")
                if tracked is not None:
                    state, progress = tracked.state()
                    if status is not None:
                        status.text = state
                    prog = item.find("progress")
                    if prog is not None:
                        prog.text = "%d%%" % progress
                    if state == "error" and tracked.kind == "snapshot":
                        msg = item.find("statusMessage")
                        if msg is None:
                            msg = ET.SubElement(item, "statusMessage")
                        msg.text = "Snapshot creation failed (injected by the EC2 stand-in)."
                out.append((item_set, item, status.text if status is not None else None))
        return out

    def rewrite_single(self, root, rid):
        """A Create* response whose root carries the new resource's fields."""
        with self.lock:
            tracked = self.tracked.get(rid)
        if tracked is None:
            return
        state, progress = tracked.state()
        status = root.find("status")
        if status is not None:
            status.text = state
        prog = root.find("progress")
        if prog is not None:
            prog.text = "%d%%" % progress

    def track(self, rid, kind, rules):
        seconds = self.snapshot_seconds if kind == "snapshot" else self.volume_seconds
        outcome = "completed" if kind == "snapshot" else "available"
        for rule in rules:
            if "seconds" in rule:
                seconds = float(rule["seconds"])
            if "outcome" in rule:
                outcome = rule["outcome"]
        if outcome != "error":
            outcome = "completed" if kind == "snapshot" else "available"
        with self.lock:
            self.tracked[rid] = Tracked(kind, seconds, outcome)


def strip_filters(params, name):
    """Removes `Filter.N` entries named `name` from params (renumbering the rest);
    returns the set of their values, or None if there was none."""
    filters = {}
    for key, value in params.items():
        m = re.fullmatch(r"Filter\.(\d+)\.(Name|Value\.(\d+))", key)
        if m:
            filters.setdefault(int(m.group(1)), {})[key.split(".", 2)[2]] = value
    if not any(f.get("Name") == name for f in filters.values()):
        return None, params
    kept = {k: v for k, v in params.items() if not k.startswith("Filter.")}
    wanted = set()
    n = 0
    for idx in sorted(filters):
        f = filters[idx]
        values = [v for k, v in f.items() if k != "Name"]
        if f.get("Name") == name:
            wanted.update(values)
            continue
        n += 1
        kept["Filter.%d.Name" % n] = f.get("Name", "")
        for j, v in enumerate(values, 1):
            kept["Filter.%d.Value.%d" % (n, j)] = v
    return wanted, kept


def error_body(code, message):
    root = ET.Element("Response")
    err = ET.SubElement(ET.SubElement(root, "Errors"), "Error")
    ET.SubElement(err, "Code").text = code
    ET.SubElement(err, "Message").text = message
    ET.SubElement(root, "RequestID").text = str(uuid.uuid4())
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root)


def xml_bytes(root, ns):
    if ns:
        root.set("xmlns", ns)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    front = None  # set in main

    def log_message(self, fmt, *args):
        sys.stderr.write("%s %s\n" % (self.log_date_time_string(), fmt % args))

    # ---------------------------------------------------------------- plumbing

    def reply(self, status, body, content_type="text/xml;charset=UTF-8"):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def reply_json(self, status, value):
        self.reply(status, json.dumps(value).encode(), "application/json")

    def read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def do_GET(self):
        self.handle_any("GET")

    def do_POST(self):
        self.handle_any("POST")

    def do_DELETE(self):
        self.handle_any("DELETE")

    def handle_any(self, method):
        url = urlsplit(self.path)
        body = self.read_body()
        try:
            if url.path.startswith("/_standin/"):
                return self.control(method, url, body)
            return self.ec2(method, url, body)
        except Exception as ex:  # answer, never hang the client
            import traceback

            traceback.print_exc()
            self.reply(500, error_body("InternalError", "EC2 stand-in: %s" % ex))

    # ---------------------------------------------------------------- control API

    def control(self, method, url, body):
        query = dict(parse_qsl(url.query))
        front = self.front
        if url.path == "/_standin/health":
            return self.reply_json(200, {"ok": True})
        if url.path == "/_standin/rules" and method == "POST":
            try:
                rule = json.loads(body or b"null")
                return self.reply_json(200, {"id": front.add_rule(rule)})
            except (ValueError, TypeError) as ex:
                return self.reply_json(400, {"error": "bad rule: %s" % ex})
        if url.path == "/_standin/rules" and method == "DELETE":
            front.clear_rules(query.get("access_key"))
            return self.reply_json(200, {"ok": True})
        if url.path == "/_standin/rules" and method == "GET":
            with front.lock:
                return self.reply_json(200, list(front.rules))
        if url.path == "/_standin/requests" and method == "GET":
            key = query.get("access_key")
            with front.lock:
                rows = [{"action": a, "status": s} for k, a, s in front.requests if key in (None, k)]
            return self.reply_json(200, rows)
        return self.reply_json(404, {"error": "unknown control path %s %s; see ec2_front.py's docstring" % (method, url.path)})

    # ---------------------------------------------------------------- EC2 API

    def ec2(self, method, url, body):
        front = self.front
        params = dict(parse_qsl(url.query, keep_blank_values=True))
        if method == "POST":
            params.update(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        action = params.get("Action", "")
        m = SIGV4_CREDENTIAL.search(self.headers.get("Authorization", ""))
        access_key, region = (m.group(1), m.group(2)) if m else ("", front.default_region)

        status, ctype, data = self.ec2_action(action, access_key, region, params, method, url)
        with front.lock:
            front.requests.append((access_key, action, status))
            if len(front.requests) > 200_000:  # a long-lived stack: keep the recent log
                del front.requests[:100_000]
        self.reply(status, data, ctype)

    def ec2_action(self, action, access_key, region, params, method, url):
        front = self.front
        rules = front.take_rules(action, access_key, params)
        for rule in rules:
            if "error" in rule:
                code = rule["error"]
                status, message = KNOWN_ERRORS.get(code, (400, "Injected %s." % code))
                return status, "text/xml;charset=UTF-8", error_body(code, message)

        if action == "CreateVolume":
            zone = params.get("AvailabilityZone")
            if zone is not None and zone not in front.zones_of(region):
                return 400, "text/xml;charset=UTF-8", error_body(
                    "InvalidZone.NotFound", "The zone '%s' does not exist." % zone)
            token = params.get("ClientToken")
            if token:
                with front.token_lock:
                    return self.create_volume_idempotent(region, token, params, rules, method, url)

        wanted = None
        if action in ("DescribeSnapshots", "DescribeVolumes"):
            wanted, params = strip_filters(params, "status")

        status, ctype, data = self.forward(params, method, url)
        if status != 200:
            return status, ctype, data
        root, ns = parse_xml(data)
        if action in ("CreateSnapshot", "CopySnapshot"):
            rid = root.findtext("snapshotId")
            front.track(rid, "snapshot", rules)
            front.rewrite_single(root, rid)
        elif action == "CreateVolume":
            rid = root.findtext("volumeId")
            front.track(rid, "volume", rules)
            front.rewrite_single(root, rid)
        elif action == "DescribeSnapshots":
            self.keep_wanted(front.rewrite_items(root, "snapshotSet", "snapshotId"), wanted)
        elif action == "DescribeVolumes":
            self.keep_wanted(front.rewrite_items(root, "volumeSet", "volumeId"), wanted)
        else:
            return status, ctype, data
        return status, ctype, xml_bytes(root, ns)

    @staticmethod
    def keep_wanted(items, wanted):
        if wanted is None:
            return
        for item_set, item, state in items:
            if state not in wanted:
                item_set.remove(item)

    def create_volume_idempotent(self, region, token, params, rules, method, url):
        """CreateVolume with a ClientToken (ec2-api-idempotency.html): the first call
        creates; a repeat with the same parameters answers the same volume; a repeat
        with other parameters is IdempotentParameterMismatch."""
        front = self.front
        fingerprint = hashlib.sha256(
            json.dumps(sorted((k, v) for k, v in params.items() if k != "ClientToken")).encode()
        ).hexdigest()
        with front.lock:
            known = front.tokens.get((region, token))
        if known is not None:
            if known[0] != fingerprint:
                return 400, "text/xml;charset=UTF-8", error_body(
                    "IdempotentParameterMismatch",
                    "The request uses the same client token as a previous, but non-identical request. "
                    "Do not reuse a client token with different requests, unless the requests are identical.")
            root, ns = parse_xml(known[1])
            front.rewrite_single(root, known[2])
            return 200, "text/xml;charset=UTF-8", xml_bytes(root, ns)
        status, ctype, data = self.forward(params, method, url)
        if status != 200:
            return status, ctype, data
        root, ns = parse_xml(data)
        rid = root.findtext("volumeId")
        front.track(rid, "volume", rules)
        with front.lock:
            front.tokens[(region, token)] = (fingerprint, data, rid)
        front.rewrite_single(root, rid)
        return status, ctype, xml_bytes(root, ns)

    def forward(self, params, method, url):
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("content-length", "host", "connection", "transfer-encoding", "expect")}
        if method == "POST":
            body = urlencode(params).encode()
            path = url.path or "/"
        else:
            body = None
            path = (url.path or "/") + "?" + urlencode(params)
        return self.front.forward(method, path, headers, body)


def main():
    ap = argparse.ArgumentParser(description="EC2 stand-in: moto EC2 with real state transitions")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--moto", required=True, help="URL of the stack's moto server")
    ap.add_argument("--snapshot-seconds", type=float, default=2.0,
                    help="how long a new snapshot stays pending (default 2)")
    ap.add_argument("--volume-seconds", type=float, default=1.0,
                    help="how long a new volume stays creating (default 1)")
    ap.add_argument("--region", default="us-east-1", help="region of unsigned requests")
    args = ap.parse_args()

    Handler.front = Front(args.moto, args.snapshot_seconds, args.volume_seconds, args.region)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    print("EC2 stand-in on http://%s:%d in front of %s" % (args.host, args.port, args.moto), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
