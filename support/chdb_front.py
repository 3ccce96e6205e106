#!/usr/bin/env python3
"""A small HTTP front that makes chdb (the modern ClickHouse engine as a Python module)
look like a ClickHouse server's HTTP interface, for flow's tests.

Why: chdb is clickhouse-local in a library, not a server. flow talks to ClickHouse over
HTTP with the `clickhouse` crate (with its schema validation on), so the tests need a
real modern engine behind that protocol. This front speaks enough of it:

- POST/GET `/` with the query in `query` (URL) or in the body, or both (concatenated);
  multipart/form-data bodies with `query` and `param_*` parts; `param_*` URL params
  become server-side query parameters.
- `database`, `default_format` (or X-ClickHouse-Database / X-ClickHouse-Format), other
  URL params applied as settings (`SET name = 'value'`) on the request's connection.
- X-ClickHouse-User/X-ClickHouse-Key, `user`/`password` and Basic auth are accepted
  and ignored (chdb has no users).
- `X-ClickHouse-Summary` (written rows) on INSERT answers, `X-ClickHouse-Format`.
- Request bodies with Content-Length or chunked transfer encoding; `decompress=1`
  (ClickHouse block framing: 16-byte CityHash128 checksum, method byte, sizes, LZ4 or
  none); responses with `compress=1` are framed the same way with LZ4.
  `Accept-Encoding: lz4` (what the crate sends for queries) is answered uncompressed,
  which HTTP allows: the crate decompresses only when Content-Encoding says so.
- `INSERT ... FORMAT X` (or `VALUES`) with data in the body: streamed into chdb with
  its streaming inserter, chunk by chunk, never the whole body in memory.
- SELECT results are streamed in chdb's chunks (~1 MB) with chunked transfer encoding
  for formats whose chunks concatenate (TabSeparated, CSV, RowBinary, Native,
  JSONEachRow, ... and their WithNames/WithNamesAndTypes variants: chdb repeats the
  header in every chunk, the front cuts the repeats). Other formats (JSON, Parquet,
  Pretty, XML, ...) and statements chdb cannot stream (DDL, SHOW, DESCRIBE, EXPLAIN)
  are answered whole, from memory.
- Errors: HTTP 500, `X-ClickHouse-Exception-Code`, the ClickHouse error text as body.
  An error after the first bytes of a result were sent is written in ClickHouse 25.11+
  form (`__exception__` block with the `X-ClickHouse-Exception-Tag`) and the connection
  is closed, so a client never mistakes a truncated result for a complete one.
- One chdb connection per request (connections run in parallel; settings and the
  current database are per connection). An anchor connection opened at start keeps
  the engine (and its data directory lock) alive for the life of the process.
- GET /ping and GET / without a query answer `Ok.`.

Not implemented: sessions (`session_id` is ignored: every request is a fresh
connection), external tables, progress headers, readonly semantics of GET, HTTPS.

Usage: chdb_front.py --port P --data DIR [--config FILE] [--host 127.0.0.1]
"""

import argparse
import email.parser
import json
import re
import secrets
import signal
import string
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import chdb
import lz4.block

try:  # verifies checksums of compressed request blocks and writes them for compress=1
    from clickhouse_cityhash.cityhash import CityHash128
except ImportError:  # pragma: no cover - installed by scripts/services
    CityHash128 = None

# URL parameters that are part of the HTTP interface, not settings.
HTTP_PARAMS = {
    "query", "database", "default_format", "user", "password", "quota_key",
    "query_id", "session_id", "session_timeout", "session_check", "compress",
    "decompress", "buffer_size", "wait_end_of_query", "role",
}
BINARY_FORMATS = {"rowbinary", "rowbinarywithnames", "rowbinarywithnamesandtypes", "native",
                  "parquet", "arrow", "arrowstream", "orc", "avro", "protobuf", "msgpack"}
METHOD_NONE, METHOD_LZ4, METHOD_ZSTD = 0x02, 0x82, 0x90
BLOCK = 1 << 20
ENGINE_VERSION = "unknown"


class ClickHouseError(Exception):
    """An error with a ClickHouse code and text, answered as HTTP 500."""

    def __init__(self, message, code=None):
        message = extract_ch_message(str(message))
        if code is None:
            m = re.search(r"Code: (\d+)\.", message)
            code = int(m.group(1)) if m else 1001
        if not message.startswith("Code:"):
            message = f"Code: {code}. DB::Exception: {message}"
        super().__init__(message)
        self.code = code
        self.message = message


def extract_ch_message(text):
    """chdb wraps engine errors ("Streaming insert append failed: Code: 27. ..."): keep
    the ClickHouse part."""
    i = text.find("Code: ")
    return text[i:] if i > 0 else text


# ---------------------------------------------------------------- request bodies


class BodyReader:
    """Reads a request body with Content-Length or chunked transfer encoding."""

    def __init__(self, rfile, headers):
        self.rfile = rfile
        self.chunked = "chunked" in headers.get("Transfer-Encoding", "").lower()
        self.remaining = int(headers.get("Content-Length") or 0) if not self.chunked else 0
        self.chunk_left = 0
        self.done = not self.chunked and self.remaining == 0

    def read(self, n=BLOCK):
        """Up to n bytes; b"" at the end of the body."""
        if self.done:
            return b""
        if not self.chunked:
            data = self.rfile.read(min(n, self.remaining))
            if not data:
                raise ClickHouseError("unexpected end of request body", 33)
            self.remaining -= len(data)
            self.done = self.remaining == 0
            return data
        if self.chunk_left == 0:
            line = self.rfile.readline(1024)
            if not line:
                raise ClickHouseError("unexpected end of chunked request body", 33)
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                self.done = True
                return b""
            self.chunk_left = size
        data = self.rfile.read(min(n, self.chunk_left))
        if not data:
            raise ClickHouseError("unexpected end of chunked request body", 33)
        self.chunk_left -= len(data)
        if self.chunk_left == 0:
            self.rfile.readline(16)  # CRLF after the chunk
        return data

    def read_exact(self, n):
        out = bytearray()
        while len(out) < n:
            data = self.read(n - len(out))
            if not data:
                break
            out += data
        return bytes(out)

    def drain(self):
        while self.read():
            pass


def read_all(reader):
    return b"".join(iter(reader.read, b""))


def checksum(data):
    """ClickHouse's block checksum: CityHash128 (v1.0.2) as two little-endian u64; in
    the int clickhouse_cityhash returns, the first of them is the high half (checked
    against ClickHouse 18.16's own compress=1 output)."""
    h = CityHash128(data)
    return (h >> 64).to_bytes(8, "little") + (h & ((1 << 64) - 1)).to_bytes(8, "little")


class FrameReader:
    """Decodes ClickHouse compressed block framing (decompress=1) from a BodyReader."""

    def __init__(self, body):
        self.body = body

    def read(self, n=None):
        head = self.body.read_exact(25)
        if not head:
            return b""
        if len(head) < 25:
            raise ClickHouseError("truncated compressed block header", 432)
        method = head[16]
        size = int.from_bytes(head[17:21], "little")
        raw_size = int.from_bytes(head[21:25], "little")
        payload = self.body.read_exact(size - 9)
        if len(payload) != size - 9:
            raise ClickHouseError("truncated compressed block", 432)
        if CityHash128 is not None and checksum(head[16:] + payload) != head[:16]:
            raise ClickHouseError("Checksum doesn't match: corrupted data", 40)
        if method == METHOD_LZ4:
            return lz4.block.decompress(payload, uncompressed_size=raw_size)
        if method == METHOD_NONE:
            return payload
        raise ClickHouseError(f"Unknown compression method: {method:#x} (only LZ4 and NONE)", 432)


def frame(data):
    """One compressed block in ClickHouse framing (LZ4)."""
    packed = lz4.block.compress(data, store_size=False)
    head = bytes([METHOD_LZ4]) + (len(packed) + 9).to_bytes(4, "little") + len(data).to_bytes(4, "little")
    return checksum(head + packed) + head + packed


# ---------------------------------------------------------------- streaming formats

# chdb's streaming results come in chunks that are each a complete output of the format
# (header and all). Formats whose outputs concatenate are streamed; for formats with a
# header the repeated header is cut from later chunks; other formats (JSON, Parquet,
# Pretty, ...) are answered whole.
STREAM_MODES = {f.lower(): "plain" for f in (
    "TabSeparated", "TSV", "TabSeparatedRaw", "TSVRaw", "Raw", "CSV", "RowBinary", "Native",
    "JSONEachRow", "JSONLines", "NDJSON", "JSONStringsEachRow", "JSONCompactEachRow",
    "JSONCompactStringsEachRow", "TSKV", "LineAsString", "RawBLOB")}
for _f in ("TabSeparated", "TSV", "TabSeparatedRaw", "TSVRaw", "CSV", "JSONCompactEachRow",
           "JSONCompactStringsEachRow"):
    STREAM_MODES[(_f + "WithNames").lower()] = 1
    STREAM_MODES[(_f + "WithNamesAndTypes").lower()] = 2
STREAM_MODES["rowbinarywithnames"] = "rowbinary1"
STREAM_MODES["rowbinarywithnamesandtypes"] = "rowbinary2"


def header_length(mode, data):
    """Length of the format header at the start of a chunk (0 for plain formats)."""
    if mode == "plain":
        return 0
    if isinstance(mode, int):  # text formats: that many lines
        at = 0
        for _ in range(mode):
            at = data.index(b"\n", at) + 1
        return at
    pos = 0

    def varint():
        nonlocal pos
        shift = value = 0
        while True:
            b = data[pos]
            pos += 1
            value |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return value

    columns = varint()
    for _ in range(columns * (2 if mode == "rowbinary2" else 1)):
        length = varint()  # (not `pos += varint()`: that reads pos before the call)
        pos += length
    return pos


# ---------------------------------------------------------------- SQL helpers


def find_keyword(sql, words):
    """Position and text of the first top-level keyword in `words` (outside quotes,
    comments and brackets), as (start, end, word) or None."""
    i, n, depth = 0, len(sql), 0
    while i < n:
        c = sql[i]
        if c in "'\"`":
            j = i + 1
            while j < n and sql[j] != c:
                j += 2 if sql[j] == "\\" else 1
            i = j + 1
        elif sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
        elif sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif c in "([":
            depth += 1
            i += 1
        elif c in ")]":
            depth -= 1
            i += 1
        elif c.isalpha() or c == "_":
            j = i
            while j < n and (sql[j].isalnum() or sql[j] == "_"):
                j += 1
            if depth == 0 and sql[i:j].upper() in words:
                return i, j, sql[i:j].upper()
            i = j
        else:
            i += 1
    return None


def split_insert(sql):
    """For `INSERT ... FORMAT X <data>` / `INSERT ... VALUES <data>`: (head, format,
    inline data start index) or None if the statement is not an INSERT with data."""
    if not re.match(r"\s*INSERT\b", sql, re.I):
        return None
    hit = find_keyword(sql, {"FORMAT", "VALUES", "SELECT", "WITH"})
    if hit is None or hit[2] in ("SELECT", "WITH"):
        return None
    start, end, word = hit
    if word == "VALUES":
        return sql[:start], "Values", end
    m = re.compile(r"\s+([A-Za-z][A-Za-z0-9_]*)").match(sql, end)
    if not m:
        raise ClickHouseError("Syntax error: expected a format name after FORMAT", 62)
    return sql[:start], m.group(1), m.end()


def quote(value):
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


# ---------------------------------------------------------------- the handler


class Front:
    """Process-wide state: the data directory and the anchor connection."""

    def __init__(self, data, config):
        global ENGINE_VERSION
        self.url = f"file:{data}"
        anchor_url = self.url + (f"?config-file={config}" if config else "")
        self.anchor = chdb.connect(anchor_url)
        ENGINE_VERSION = self.anchor.query("SELECT version()", "TSVRaw").bytes().decode().strip()

    def connect(self):
        return chdb.connect(self.url)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # or every small response waits ~40 ms for a delayed ACK
    server_version = "chdb-front"
    front = None  # set in main()

    def log_message(self, fmt, *args):  # one line per request on stderr (the log file)
        sys.stderr.write("%s %s\n" % (time.strftime("%H:%M:%S"), fmt % args))

    def do_GET(self):
        self.handle_request()

    def do_POST(self):
        self.handle_request()

    # -- plumbing

    def send_simple(self, status, body, extra=()):
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def send_error_response(self, err):
        sys.stderr.write(f"{time.strftime('%H:%M:%S')} error: {err.message}\n")
        text = f"{err.message} (version {ENGINE_VERSION} (chdb))\n".encode()
        if self.compress_response:
            text = frame(text)
        self.close_connection = True  # the request body may not have been read
        self.send_simple(500, text, [("X-ClickHouse-Exception-Code", str(err.code)), ("Connection", "close")])

    def write_chunk(self, data):
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def start_stream(self, fmt, extra=()):
        self.send_response(200)
        ctype = "application/octet-stream" if fmt.lower() in BINARY_FORMATS or self.compress_response else "text/plain; charset=UTF-8"
        self.send_header("Content-Type", ctype)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("X-ClickHouse-Format", fmt)
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()

    def out(self, data):
        if not self.compress_response:
            self.write_chunk(data)
            return
        for i in range(0, len(data), BLOCK):
            self.write_chunk(frame(data[i:i + BLOCK]))

    # -- request

    def handle_request(self):
        url = urlsplit(self.path)
        if url.path.rstrip("/") == "/ping" or (url.path == "/" and self.command == "GET" and "query=" not in (url.query or "")):
            self.send_simple(200, b"Ok.\n")
            return
        params = parse_qsl(url.query, keep_blank_values=True)
        args = dict(params)
        self.compress_response = args.get("compress") == "1"
        if self.compress_response and CityHash128 is None:
            self.compress_response = False
        conn = None
        try:
            if url.path not in ("/", ""):
                raise ClickHouseError(f"There is no handle {url.path}", 1001)
            body = BodyReader(self.rfile, self.headers)
            if args.get("decompress") == "1":
                body = FrameReader(body)
            query = args.get("query", "")
            qparams = {k[6:]: v for k, v in params if k.startswith("param_")}
            ctype = self.headers.get("Content-Type", "")
            if ctype.startswith("multipart/form-data"):
                raw = read_all(body)
                msg = email.parser.BytesParser().parsebytes(
                    b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + raw)
                for part in msg.get_payload():
                    name = part.get_param("name", header="content-disposition")
                    value = part.get_payload(decode=True).decode()
                    if name == "query":
                        query = (query + "\n" + value) if query else value
                    elif name and name.startswith("param_"):
                        qparams[name[6:]] = value
                body = BodyReader(self.rfile, {})  # consumed

            conn = self.front.connect()
            database = args.get("database") or self.headers.get("X-ClickHouse-Database")
            if database:
                conn.query(f"USE `{database.replace('`', '``')}`")
            for name, value in params:
                if name in HTTP_PARAMS or name.startswith("param_") or name.startswith("http_"):
                    continue
                if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                    raise ClickHouseError(f"Unknown setting '{name}'", 115)
                conn.query(f"SET {name} = {quote(value)}")
            fmt = args.get("default_format") or self.headers.get("X-ClickHouse-Format") or "TabSeparated"

            if query and split_insert(query):
                self.run_insert(conn, query, body)
                return
            if not query:
                # The whole body is the statement (and maybe the data of an INSERT).
                raw = read_all(body)
                text = raw.decode("latin-1")  # byte offsets == char offsets
                ins = split_insert(text)
                if ins:
                    head, ifmt, data_at = ins
                    self.run_insert_bytes(conn, head.encode("latin-1").decode(), ifmt,
                                          raw[data_at:].lstrip(b" \t\r\n") if ifmt != "Values" else raw[data_at:])
                    return
                query = raw.decode()
            else:
                rest = read_all(body)
                if rest.strip():
                    query = query + "\n" + rest.decode()
            if not query.strip():
                raise ClickHouseError("Empty query", 62)
            self.run_query(conn, query, fmt, qparams)
        except ClickHouseError as e:
            self.send_error_response(e)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:  # chdb raises RuntimeError/ChdbError with the CH text
            if not isinstance(e, RuntimeError) and "Code:" not in str(e):
                traceback.print_exc()
            self.send_error_response(ClickHouseError(str(e)))
        finally:
            if conn is not None:
                conn.close()

    def run_query(self, conn, query, fmt, qparams):
        hit = find_keyword(query, {"FORMAT"})
        if hit:
            m = re.compile(r"\s+([A-Za-z][A-Za-z0-9_]*)").match(query, hit[1])
            fmt = m.group(1) if m else fmt
        mode = STREAM_MODES.get(fmt.lower())
        raw = conn._conn  # low level: keeps a zero-row chunk that carries the header
        stream = None
        if mode is not None:
            try:
                stream = raw.send_query(query, fmt, params=qparams)
            except RuntimeError as e:
                if "Streaming query is not supported" not in str(e):
                    raise
        if stream is None:
            # Not a streamable statement (DDL, SHOW, ...) or a format whose chunks do
            # not concatenate (JSON, Parquet, ...): the whole result at once.
            res = conn.query(query, fmt, params=qparams)
            data = res.bytes()
            summary = {"read_rows": str(res.rows_read()), "read_bytes": str(res.bytes_read()),
                       "written_rows": "0", "written_bytes": "0", "result_rows": str(res.rows_read())}
            self.start_stream(fmt, [("X-ClickHouse-Summary", json.dumps(summary))])
            self.out(data)
            self.wfile.write(b"0\r\n\r\n")
            return
        first = raw.streaming_fetch_result(stream)  # raises here if the query fails
        tag = "".join(secrets.choice(string.ascii_lowercase) for _ in range(16))
        self.start_stream(fmt, [("X-ClickHouse-Exception-Tag", tag)])
        # chdb formats every chunk as a whole output: repeat headers are cut.
        header = b""
        chunk, n = first, 0
        try:
            while chunk is not None:
                data = chunk.bytes()
                if not data:
                    break
                if n == 0:
                    header = data[:header_length(mode, data)]
                elif header and data.startswith(header):
                    data = data[len(header):]
                self.out(data)
                n += 1
                chunk = raw.streaming_fetch_result(stream)
        except (BrokenPipeError, ConnectionResetError):
            try:
                raw.streaming_cancel_query(stream)
            except Exception:
                pass
            raise
        except Exception as e:
            err = ClickHouseError(str(e))
            sys.stderr.write(f"{time.strftime('%H:%M:%S')} error after {n} chunks: {err.message}\n")
            msg = f"{err.message} (version {ENGINE_VERSION} (chdb))\n".encode()
            block = b"\r\n__exception__\r\n" + tag.encode() + b"\r\n" + msg + b"%d " % len(msg) + tag.encode() + b"\r\n__exception__\r\n"
            self.write_chunk(block)
            self.wfile.flush()
            self.close_connection = True  # no terminating chunk: the response is incomplete
            return
        self.wfile.write(b"0\r\n\r\n")

    def run_insert(self, conn, query, body):
        head, ifmt, data_at = split_insert(query)
        inline = query[data_at:]
        inline = inline.lstrip(" \t\r\n").encode() if ifmt != "Values" else inline.encode()
        ins = conn.send_insert(head, ifmt)
        try:
            if inline.strip():
                ins.append(inline)
            while True:
                data = body.read()
                if not data:
                    break
                ins.append(data)
            res = ins.finish()
        except BaseException:
            ins.cancel()
            raise
        self.insert_done(res)

    def run_insert_bytes(self, conn, head, ifmt, data):
        ins = conn.send_insert(head, ifmt)
        try:
            if data.strip():
                ins.append(data)
            res = ins.finish()
        except BaseException:
            ins.cancel()
            raise
        self.insert_done(res)

    def insert_done(self, res):
        summary = {"read_rows": "0", "read_bytes": "0", "written_rows": str(res.rows_written),
                   "written_bytes": str(res.bytes_written), "result_rows": str(res.rows_written)}
        self.send_simple(200, b"", [("X-ClickHouse-Summary", json.dumps(summary))])


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    allow_reuse_address = True


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--data", required=True, help="chdb data directory")
    ap.add_argument("--config", help="ClickHouse config XML (storage policies, ...)")
    a = ap.parse_args()

    Handler.front = Front(a.data, a.config)
    server = Server((a.host, a.port), Handler)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    sys.stderr.write(f"chdb front (engine {ENGINE_VERSION}) on http://{a.host}:{a.port}/ data {a.data}\n")
    while not stop.wait(1):
        pass
    server.shutdown()
    server.server_close()
    Handler.front.anchor.close()
    sys.stderr.write("chdb front stopped\n")


if __name__ == "__main__":
    main()
