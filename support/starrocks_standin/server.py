#!/usr/bin/env python3
"""StarRocks stand-in (mysql-mimic + chdb + moto S3): one instance of an emulated
StarRocks cluster for flow's tests. Not StarRocks: a test double that follows the
StarRocks documentation where a migration tool's correctness depends on it (see
README.md beside this file for what is modelled and what is not).

One process is one instance: a MySQL-protocol FE query port (mysql-mimic), an FE HTTP
port (Stream Load answers 307 to the BE port; fault injection under /api/_standin/),
a BE HTTP port (Stream Load itself), and a chdb data directory.

Usage: server.py --instance source:QP:HP:BP:DIR [--instance target:QP:HP:BP:DIR]
                 --s3-endpoint http://127.0.0.1:S|@PORTFILE [--step-delay-ms 100] [--version 3.3.2]
                 [--config key=value ...]
With two --instance options it starts one child process per instance and supervises
them (scripts/services records this process's pid).
"""

import argparse
import asyncio
import datetime
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mysql_mimic import MysqlServer, ResultColumn, Session, packets  # noqa: E402
from mysql_mimic.connection import Connection  # noqa: E402
from mysql_mimic.constants import KillKind  # noqa: E402
from mysql_mimic.errors import ErrorCode, MysqlError  # noqa: E402
from mysql_mimic.types import ColumnType  # noqa: E402

sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from chdb_front import BodyReader, read_all  # noqa: E402  (the test stack's HTTP body reader)

import grammar  # noqa: E402
from catalog import Catalog  # noqa: E402
from grammar import SqlError  # noqa: E402
from jobs import (EXPORT_COLUMNS, LOADS_COLUMNS, LOADS_INT, SHOW_LOAD_COLUMNS, Frontend,  # noqa: E402
                  LabelUsed, LoadJob)
from loader import Batch, LoadError, csv_options, read_csv_objects, read_parquet_objects, split_csv  # noqa: E402
from storage import Engine, S3Path, q, s  # noqa: E402

log = logging.getLogger("starrocks-standin")


def com_stmt_prepare_response(self, statement):
    """COM_STMT_PREPARE answer without the EOF after the parameter definitions when
    CLIENT_DEPRECATE_EOF is negotiated (MySQL protocol: "if not
    capabilities & CLIENT_DEPRECATE_EOF: EOF"). mysql-mimic 3.0.5 always sends it, and
    mysql_async then fails every prepared statement with "packet out of order"."""
    yield packets.make_com_stmt_prepare_ok(statement)
    if statement.num_params:
        for _ in range(statement.num_params):
            yield packets.make_column_definition_41(server_charset=self.server_charset, name="?")
        if not self.deprecate_eof():
            yield self.eof()


Connection.com_stmt_prepare_response = com_stmt_prepare_response
FE = None  # the Frontend of this instance
RESERVED_DBS = {"information_schema", "system", "default", "_statistics_", "sys", "_standin"}


# Values travel as text; the binary protocol (prepared statements) needs them typed.
TO_PY = {
    ColumnType.LONGLONG: int,
    ColumnType.DOUBLE: float,
    ColumnType.DATE: datetime.date.fromisoformat,
    ColumnType.DATETIME: lambda v: datetime.datetime.fromisoformat(v),
}


def column(name, ct):
    """A result column whose binary encoding converts the text value first."""
    base = ResultColumn(name, ct)
    convert = TO_PY.get(ct)
    if convert is None:
        return base
    encode = base.binary_encoder
    return ResultColumn(name, ct, binary_encoder=lambda col, v: encode(col, convert(v) if isinstance(v, str) else v))


def ch_column(name, ch_type):
    t = ch_type.replace("Nullable(", "").rstrip(")")
    if t.startswith(("Int", "UInt")) and not t.startswith(("Int128", "Int256", "UInt64", "UInt128", "UInt256")):
        ct = ColumnType.LONGLONG
    elif t.startswith("Float"):
        ct = ColumnType.DOUBLE
    elif t.startswith("Decimal"):
        ct = ColumnType.NEWDECIMAL
    elif t.startswith("Date32") or t == "Date":
        ct = ColumnType.DATE
    elif t.startswith("DateTime"):
        ct = ColumnType.DATETIME
    else:
        ct = ColumnType.VARCHAR
    return column(name, ct)


def text_columns(names, int_cols=()):
    return [column(n, ColumnType.LONGLONG if n in int_cols else ColumnType.VARCHAR) for n in names]


def redact(sql):
    """Statement text for logs: secret keys and passwords removed."""
    return re.sub(r"""(?i)(["'][^"']*(secret|password|access_key)[^"']*["']\s*=\s*)(["'])(?:[^"'\\]|\\.)*\3""",
                  r"\1\3***\3", sql)


class StandinSession(Session):
    """One client connection: the StarRocks statements are handled here; SET, USE and
    SELECT @@variable go to mysql-mimic; other SELECTs run in chdb."""

    def __init__(self):
        super().__init__()
        self.last_query_id = None
        self.variables.set("version_comment", f"StarRocks stand-in (mysql-mimic + chdb), as StarRocks version {FE.config['standin_version']}", force=True)
        # version(): "Returns the current version of the MySQL database" (5.1.0 on
        # StarRocks); current_version() returns the StarRocks version.
        self.variables.set("version", "5.1.0", force=True)

    async def init(self, connection):
        await super().init(connection)
        SESSIONS.add(self)

    async def close(self):
        SESSIONS.discard(self)
        await super().close()

    async def handle_query(self, sql, attrs):
        try:
            stmt = grammar.parse(sql)
        except SqlError as e:
            raise MysqlError(str(e), code=e.code) from None
        if stmt is None:
            if self.is_engine_select(sql):
                return await self.run(self.engine_select, sql)
            try:
                return await super().handle_query(sql, attrs)
            except MysqlError:
                raise
            except Exception as e:
                raise MysqlError(f"Getting syntax error: the StarRocks stand-in does not model this statement ({e})",
                                 code=ErrorCode.PARSE_ERROR) from None
        log.info("%s: %s", stmt["kind"], redact(sql)[:300])
        return await self.run(getattr(self, "do_" + stmt["kind"]), stmt)

    async def run(self, fn, arg):
        try:
            return await asyncio.to_thread(fn, arg)
        except SqlError as e:
            raise MysqlError(str(e), code=e.code) from None
        except LoadError as e:
            raise MysqlError(str(e)) from None
        except Exception as e:  # a defect of the stand-in: say so, keep the connection
            log.exception("statement failed")
            raise MysqlError(f"StarRocks stand-in internal error: {type(e).__name__}: {e}") from None

    async def query(self, expression, sql, attrs):
        """What reaches mysql-mimic's final handler is not modelled: say so, never
        answer OK for a statement that did nothing (DELETE, UPDATE, TRUNCATE, ...)."""
        raise MysqlError(f"Getting syntax error: {expression.key.upper()} is not modelled by the StarRocks "
                         "stand-in", code=ErrorCode.NOT_SUPPORTED_YET)

    async def schema(self):
        """The catalog for mysql-mimic's information_schema, SHOW COLUMNS and DESCRIBE."""
        with FE.catalog.lock:
            return {db: {t.name: {c["name"]: c["type"].sr_text().upper() for c in t.columns}
                         for t in tables.values()} for db, tables in FE.catalog.dbs.items()}

    # -- plain SELECTs in chdb
    @staticmethod
    def is_engine_select(sql):
        text = sql.strip()
        if re.search(r"(?i)\binformation_schema\s*\.\s*(?!loads\b)", text):
            return False  # mysql-mimic answers information_schema from the catalog
        return re.match(r"(?i)(SELECT|WITH)\b", text) is not None and re.search(r"(?i)\bFROM\b", text) is not None \
            and "@@" not in text

    def engine_select(self, sql):
        sql = sql.strip().rstrip(";")
        sql = FE.catalog.rewrite_select(sql, self.database)
        tmp = None
        if re.search(r"(?i)\binformation_schema\s*\.\s*loads\b", sql):
            tmp = self.loads_table()
            sql = re.sub(r"(?i)\binformation_schema\s*\.\s*loads\b", tmp, sql)
        try:
            names, types, rows = FE.engine.select(sql, self.engine_db())
        finally:
            if tmp:
                FE.engine.run(f"DROP TABLE IF EXISTS {tmp}")
        return rows, [ch_column(n, t) for n, t in zip(names, types)]

    def engine_db(self):
        """The chdb database unqualified names resolve in: the session's, if it exists."""
        return self.database if self.database in FE.catalog.dbs else "default"

    def loads_table(self):
        """information_schema.loads (v3.1+, loads.md) as a chdb table for this query."""
        with FE.lock:
            FE.expire_labels()
            rows = [j.loads_row() for j in FE.loads]
        name = f"`_standin`.`loads_{uuid.uuid4().hex}`"
        FE.engine.run("CREATE DATABASE IF NOT EXISTS `_standin`")
        cols = ", ".join(f"{c} {'Int64' if c in LOADS_INT else 'Nullable(String)'}" for c in LOADS_COLUMNS)
        FE.engine.run(f"CREATE TABLE {name} ({cols}) ENGINE = Memory")
        if rows:
            def lit(c, v):
                if v is None:
                    return "NULL"
                if c in LOADS_INT:
                    return str(int(v))
                return "'" + str(v).replace("\\", "\\\\").replace("'", "\\'") + "'"
            values = ", ".join("(" + ", ".join(lit(c, v) for c, v in zip(LOADS_COLUMNS, r)) + ")" for r in rows)
            FE.engine.run(f"INSERT INTO {name} VALUES {values}")
        return name

    # -- functions
    def do_select_fn(self, stmt):
        fn = stmt["fn"]
        if fn == "last_query_id":
            # last_query_id.md: "Obtains the ID of the most recently executed query in
            # the current session."
            return [[self.last_query_id]], [ResultColumn("last_query_id()", ColumnType.VARCHAR)]
        if fn == "version":
            return [["5.1.0"]], [ResultColumn("version()", ColumnType.VARCHAR)]
        return [[f"{FE.config['standin_version']}-standin"]], [ResultColumn("current_version()", ColumnType.VARCHAR)]

    # -- catalog
    def db_of(self, db):
        return db or self.database

    def do_create_database(self, st):
        if st["name"].lower() in RESERVED_DBS:
            raise SqlError(f"Can't create database '{st['name']}'; the name is reserved", 1007)
        FE.catalog.create_database(st["name"], st["if_not_exists"])
        return [], []

    def do_drop_database(self, st):
        FE.catalog.drop_database(st["name"], st["if_exists"])
        return [], []

    def do_create_table(self, st):
        FE.catalog.create_table(self.db_of(st["db"]), st)
        return [], []

    def do_drop_table(self, st):
        FE.catalog.drop_table(self.db_of(st["db"]), st["name"], st["if_exists"])
        return [], []

    def do_show_databases(self, st):
        return [[d] for d in ["information_schema", *sorted(FE.catalog.dbs)]], ["Database"]

    def do_show_tables(self, st):
        db = self.db_of(st["db"])
        return [[t] for t in sorted(FE.catalog.db(db))], [f"Tables_in_{db}"]

    def do_show_partitions(self, st):
        t = FE.catalog.table(self.db_of(st["db"]), st["name"])
        cols, rows = FE.catalog.show_partitions(t)
        if st["temporary"]:
            return [], text_columns(cols)  # temporary partitions are not modelled
        idx = {c.lower(): i for i, c in enumerate(cols)}
        for col, op, val in st["where"]:
            if col not in idx:
                raise SqlError(f"SHOW PARTITIONS: unknown column '{col}'", 1105)
            rows = [r for r in rows if (str(r[idx[col]]) == str(val) if op == "=" else re.fullmatch(
                str(val).replace("%", ".*").replace("_", "."), str(r[idx[col]])))]
        rows = order_limit(rows, cols, st["order"], st["limit"])
        ints = {"PartitionId", "VisibleVersion", "VisibleVersionHash", "Buckets", "ReplicationNum", "RowCount"}
        return rows, text_columns(cols, ints)

    def do_show_create_table(self, st):
        t = FE.catalog.table(self.db_of(st["db"]), st["name"])
        return [[t.name, t.create_text()]], ["Table", "Create Table"]

    def do_swap(self, st):
        FE.catalog.swap(self.db_of(st["db"]), st["name"], st["other"])
        return [], []

    # -- EXPORT
    def do_export(self, st):
        job = FE.submit_export(st, self.database)
        self.last_query_id = job.query_id
        return [], []

    def do_show_export(self, st):
        db = self.db_of(st["db"])
        FE.catalog.db(db)
        rows = [e.show_row() for e in FE.find_exports(db, st["where"])]
        rows = order_limit(rows, EXPORT_COLUMNS, st["order"], st["limit"])
        return rows, text_columns(EXPORT_COLUMNS, {"JobId", "Timeout"})

    def do_cancel_export(self, st):
        FE.cancel_export(self.db_of(st["db"]), st["where"])
        return [], []

    # -- loads
    def do_broker_load(self, st):
        FE.submit_broker_load(st, self.database)
        return [], []

    def do_show_load(self, st):
        db = self.db_of(st["db"])
        FE.catalog.db(db)
        rows = [j.show_row() for j in FE.find_loads(db, st["where"])]
        rows = order_limit(rows, SHOW_LOAD_COLUMNS, st["order"], st["limit"])
        return rows, text_columns(SHOW_LOAD_COLUMNS, {"JobId"})

    def do_cancel_load(self, st):
        FE.cancel_load(self.db_of(st["db"]), st["where"])
        return [], []

    def do_insert(self, st):
        db = self.db_of(st["db"])
        table = FE.catalog.table(db, st["table"])

        def fill():
            batch = Batch(table, st["partitions"])
            if "values" in st:
                batch.add(st["values"], st["columns"])
            elif "files" in st:
                FE.require_version((3, 1), "INSERT ... SELECT ... FROM FILES()")
                batch.add(*files_records(st["files"], st["select_list"], st["columns"], table))
            else:
                names, _, rows = FE.engine.select(FE.catalog.rewrite_select(st["select"], self.database),
                                                  self.engine_db())
                batch.add(rows, st["columns"])
            return batch

        job = FE.run_insert(db, st["label"], table, fill)
        self.last_query_id = str(uuid.uuid4())
        return [], []

    def do_insert_files(self, st):
        # unload_using_insert_into_files.md: INSERT INTO FILES() is supported from v3.2.
        FE.require_version((3, 2), "INSERT INTO FILES()")
        props = st["props"]
        if "path" not in props:
            raise SqlError("INSERT INTO FILES(): the property \"path\" is required", 1105)
        fmt = (props.get("format") or "").lower()
        if fmt not in ("parquet", "csv"):
            raise SqlError("INSERT INTO FILES(): \"format\" must be \"parquet\" or \"csv\" in the StarRocks stand-in", 1105)
        path = S3Path(props["path"], props, FE.s3_endpoint)
        select = FE.catalog.rewrite_select(st["select"], self.database)
        qid = str(uuid.uuid4())
        key = f"{path.key}{qid}_0_0_0.{fmt}"
        settings = "s3_truncate_on_insert = 1"
        chfmt = "Parquet"
        if fmt == "csv":
            chfmt = "CustomSeparated"
            sep = props.get("csv.column_separator", ",")
            settings += (", format_custom_escaping_rule = 'Raw', format_custom_field_delimiter = "
                         f"{s(sep)}, output_format_decimal_trailing_zeros = 1")
        FE.engine.run(f"INSERT INTO FUNCTION {path.child(key).chdb_fn(chfmt)} {select} SETTINGS {settings}",
                      db=self.engine_db())
        self.last_query_id = qid
        return [], []

    # -- configuration
    def do_admin_set_config(self, st):
        FE.set_config(st["config"])
        return [], []

    def do_admin_show_config(self, st):
        rows = [[k, "[]", str(v), type(v).__name__, "true", ""] for k, v in sorted(FE.config.items())
                if st["like"] is None or re.fullmatch(st["like"].replace("%", ".*"), k)]
        return rows, ["Key", "AliasNames", "Value", "Type", "IsMutable", "Comment"]


def files_records(props, select_list, columns, table):
    """Records of FILES(...) (FILES.md: "path", "format", csv.* options, aws.s3.*)."""
    if "path" not in props or "format" not in props:
        raise SqlError("FILES(): the properties \"path\" and \"format\" are required", 1105)
    path = S3Path(props["path"], props, FE.s3_endpoint)
    fmt = props["format"].lower()
    try:
        if fmt == "csv":
            opts = {"sep": props.get("csv.column_separator", ","), "row_delim": props.get("csv.row_delimiter", "\n"),
                    **csv_options(props, "csv.")}
            records, _ = read_csv_objects(FE.engine, path, opts)
            names = [f"${i + 1}" for i in range(max((len(r) for r in records), default=0))]
        elif fmt == "parquet":
            names, records = read_parquet_objects(FE.engine, path)
        else:
            raise SqlError(f"FILES(): format '{fmt}' is not modelled by the StarRocks stand-in (csv, parquet)", 1105)
    except LoadError as e:
        raise SqlError(str(e), 1105) from None
    if select_list != ["*"]:
        idx = []
        for c in select_list:
            if c not in names:
                raise SqlError(f"FILES(): unknown column '{c}' (columns: {', '.join(names)})", 1054)
            idx.append(names.index(c))
        records = [[r[i] if i < len(r) else None for i in idx] for r in records]
    elif fmt == "parquet" and not columns:
        columns = names  # Parquet columns are matched by name
    return records, columns


def order_limit(rows, cols, order, limit):
    idx = {c.lower(): i for i, c in enumerate(cols)}
    for col, desc in reversed(order or []):
        if col.lower() not in idx:
            raise SqlError(f"Unknown column '{col}' in ORDER BY", 1054)
        i = idx[col.lower()]
        rows = sorted(rows, key=lambda r: (r[i] is None, r[i] if not isinstance(r[i], str) or not r[i].isdigit() else int(r[i])), reverse=desc)
    return rows[:limit] if limit is not None else rows


SESSIONS = set()
QUERY_READY = threading.Event()  # set once the MySQL query port listens


# ---------------------------------------------------------------- Stream Load HTTP


class FeHttp(BaseHTTPRequestHandler):
    """FE HTTP port: STREAM_LOAD.md "the FE ... redirects the request to a BE" (HTTP
    307), and the stand-in's fault injection endpoints."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    be_port = None

    def log_message(self, fmt, *args):
        log.info("fe-http %s", fmt % args)

    def handle_expect_100(self):
        return True  # answer the 307 before the body is sent (no 100 Continue here)

    def reply(self, code, body, headers=()):
        data = json.dumps(body, indent=4).encode() if not isinstance(body, bytes) else body
        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_PUT(self):
        path = urlsplit(self.path).path
        if re.fullmatch(r"/api/[^/]+/[^/]+/_stream_load", path):
            self.close_connection = True  # the body (if any was sent) is not read
            self.reply(307, b"", [("Location", f"http://127.0.0.1:{self.be_port}{self.path}")])
            return
        self.reply(404, {"status": "FAILED", "msg": f"no handler for PUT {path}"})

    def do_POST(self):
        url = urlsplit(self.path)
        m = re.fullmatch(r"/api/_standin/fault/([a-z_]+)", url.path)
        BodyReader(self.rfile, self.headers).drain()
        if not m:
            self.reply(404, {"status": "FAILED", "msg": f"no handler for POST {url.path}; faults: "
                             "/api/_standin/fault/{fe_restart,publish_timeout,slow_queue,clear}"})
            return
        try:
            self.reply(200, {"status": "OK", **FE.fault(m.group(1), dict(parse_qsl(url.query)))})
        except KeyError:
            self.reply(400, {"status": "FAILED", "msg": f"unknown fault '{m.group(1)}' "
                             "(fe_restart, publish_timeout, slow_queue, clear)"})
        except ValueError as e:
            self.reply(400, {"status": "FAILED", "msg": f"bad fault parameter: {e}"})

    def do_GET(self):
        if urlsplit(self.path).path == "/api/health":
            if QUERY_READY.is_set():
                self.reply(200, {"status": "OK", "msg": "StarRocks stand-in FE"})
            else:
                self.reply(503, {"status": "FAILED", "msg": "query port not listening yet"})
            return
        self.reply(404, {"status": "FAILED", "msg": "not found"})


class BeHttp(FeHttp):
    """BE HTTP port: Stream Load (STREAM_LOAD.md), and ErrorURL pages."""

    def handle_expect_100(self):
        self.send_response_only(100)
        self.end_headers()
        return True

    def do_GET(self):
        url = urlsplit(self.path)
        if url.path == "/api/_load_error_log":
            key = dict(parse_qsl(url.query)).get("file", "")
            text = FE.error_logs.get(key)
            if text is None:
                self.reply(404, {"status": "FAILED", "msg": "no such error log"})
            else:
                self.reply(200, text.encode())
            return
        super().do_GET()

    def do_PUT(self):
        m = re.fullmatch(r"/api/([^/]+)/([^/]+)/_stream_load", urlsplit(self.path).path)
        # Content-Length or chunked (curl -T - from a pipe): every byte of the body
        body = read_all(BodyReader(self.rfile, self.headers))
        if not m:
            self.reply(404, {"Status": "Fail", "Message": "not found"})
            return
        if not (self.headers.get("Authorization") or "").startswith("Basic "):
            self.reply(200, {"Status": "Fail", "Message": "no valid Basic authorization"})
            return
        try:
            result = stream_load(m.group(1), m.group(2), self.headers, body)
        except Exception as e:  # any failure is a Fail answer, never a dropped request
            log.exception("stream load")
            result = {"Status": "Fail", "Message": f"{type(e).__name__}: {e}"}
        self.reply(200, result)


def stream_load(db, table_name, headers, body):
    start = time.time()
    label = headers.get("label") or str(uuid.uuid4())
    base = {"TxnId": None, "Label": label}
    try:
        table = FE.catalog.table(db, table_name)
    except SqlError as e:
        return {**base, "Status": "Fail", "Message": str(e)}
    job = LoadJob(FE, db, label, "STREAM", {"timeout": headers.get("timeout"),
                                            "max_filter_ratio": headers.get("max_filter_ratio")})
    try:
        FE.claim_label(job)
    except LabelUsed as e:
        # STREAM_LOAD.md: "Label Already Exists": the label "may have been successfully
        # loaded or is being loaded"; ExistingJobStatus tells which.
        return {**base, "Status": "Label Already Exists", "ExistingJobStatus": e.existing, "Message": str(e)}
    except SqlError as e:
        return {**base, "Status": "Fail", "Message": str(e)}
    base["TxnId"] = job.txn_id
    job.tables = [table.name]
    job.state, job.load_start = "LOADING", time.time()
    fmt = (headers.get("format") or "csv").lower()
    try:
        if fmt != "csv":
            raise LoadError("LOAD-RUN-FAIL", f"format '{fmt}' is not modelled by the StarRocks stand-in's Stream Load (csv)")
        opts = {"sep": decode_sep(headers.get("column_separator") or "\t"),
                "row_delim": decode_sep(headers.get("row_delimiter") or "\n"),
                **csv_options({k: headers.get(k) for k in ("enclose", "escape", "skip_header", "trim_space")})}
        records = split_csv(body.decode("utf-8", errors="replace"), **opts)
        file_cols, sets = parse_columns_header(headers.get("columns"))
        parts = [p.strip() for p in headers["partitions"].split(",")] if headers.get("partitions") else None
        batch = Batch(table, parts)
        batch.add(records, file_cols, sets)
        job.batches = [batch]
        batch.check_ratio(job.max_filter_ratio)
    except (LoadError, SqlError) as e:
        job.fail(e)
        total, filtered, _, loaded = job.counts()
        out = {**base, "Status": "Fail", "Message": "too many filtered rows" if getattr(e, "kind", "") == "ETL-QUALITY-UNSATISFIED" else str(e),
               "NumberTotalRows": total, "NumberLoadedRows": 0, "NumberFilteredRows": filtered}
        if job.error_url:
            out["ErrorURL"] = job.error_url
        return out
    job.state, job.commit_time = "PREPARED", time.time()
    status, message = "Success", "OK"
    if FE.take_publish_timeout():
        # STREAM_LOAD.md: "Publish Timeout": the load transaction "has been successfully
        # committed" but the data is not yet visible; "You do not need to retry".
        status, message = "Publish Timeout", "transaction commit successfully, BUT data will be visible later"
        threading.Timer(3 * FE.step(), job.publish).start()
    else:
        job.publish()
    total, filtered, unselected, loaded = job.counts()
    out = {**base, "Status": status, "Message": message, "NumberTotalRows": total, "NumberLoadedRows": loaded,
           "NumberFilteredRows": filtered, "NumberUnselectedRows": unselected, "LoadBytes": len(body),
           "LoadTimeMs": int((time.time() - start) * 1000), "BeginTxnTimeMs": 0, "StreamLoadPlanTimeMs": 0,
           "ReadDataTimeMs": 0, "WriteDataTimeMs": 0, "CommitAndPublishTimeMs": 0}
    if job.error_url:
        out["ErrorURL"] = f"http://127.0.0.1:{BeHttp.be_port}/api/_load_error_log?file={job.error_url}"
    return out


def decode_sep(v):
    """Separators given as \\x01 hex (STREAM_LOAD.md) or as plain text."""
    if re.fullmatch(r"\\x[0-9a-fA-F]{2}", v):
        return chr(int(v[2:], 16))
    return v.replace("\\t", "\t").replace("\\n", "\n")


def parse_columns_header(text):
    """`columns: c1, c2, temp, __op = temp` or `__op = 'delete'` → (file columns, SET)."""
    if not text:
        return None, {}
    file_cols, sets = [], {}
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        if "=" in part:
            col, expr = [x.strip() for x in part.split("=", 1)]
            if re.fullmatch(r"'[^']*'|\"[^\"]*\"|-?\d+", expr):
                sets[col.strip("`")] = ("lit", expr.strip("'\""))
            elif re.fullmatch(r"`?\w+`?", expr):
                sets[col.strip("`")] = ("col", expr.strip("`"))
            else:
                raise LoadError("LOAD-RUN-FAIL", f"columns: the StarRocks stand-in maps only columns and literals, not '{expr}'")
        else:
            file_cols.append(part.strip("`"))
    return file_cols, sets


# ---------------------------------------------------------------- main


def serve_http(handler, port):
    srv = ThreadingHTTPServer(("127.0.0.1", port), handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def parse_args():
    ap = argparse.ArgumentParser(description="StarRocks stand-in (test double; not StarRocks)")
    ap.add_argument("--instance", action="append", required=True, metavar="NAME:QUERY_PORT:HTTP_PORT:BE_PORT:DATA_DIR",
                    help="one emulated cluster; give it twice for a source and a target")
    ap.add_argument("--s3-endpoint", required=True,
                    help="default S3 endpoint URL, or @FILE: a file with the local S3 server's port")
    ap.add_argument("--step-delay-ms", type=int, default=100)
    ap.add_argument("--version", default="3.3.2")
    ap.add_argument("--config", action="append", default=[], help="FE config key=value")
    a = ap.parse_args()
    instances = []
    for spec in a.instance:
        parts = spec.split(":", 4)
        if len(parts) != 5 or not all(x.isdigit() for x in parts[1:4]):
            ap.error(f"--instance {spec!r}: expected NAME:QUERY_PORT:HTTP_PORT:BE_PORT:DATA_DIR")
        instances.append((parts[0], int(parts[1]), int(parts[2]), int(parts[3]), parts[4]))
    return a, instances


def supervise(argv, instances):
    """Several instances: one child process each (chdb holds one data directory per
    process); this process stops them all on TERM, and exits when one of them dies."""
    base = [a for i, a in enumerate(argv) if a != "--instance" and (i == 0 or argv[i - 1] != "--instance")]
    children = []
    for inst in instances:
        children.append(subprocess.Popen([sys.executable, *base, "--instance", ":".join(map(str, inst))]))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    code = 0
    while not stop.wait(0.2):
        dead = [c for c in children if c.poll() is not None]
        if dead:
            code = 1
            log.error("an instance exited (code %s); stopping the others", dead[0].returncode)
            break
    for c in children:
        if c.poll() is None:
            c.terminate()
    for c in children:
        try:
            c.wait(10)
        except subprocess.TimeoutExpired:
            c.kill()
    sys.exit(code)


def main():
    global FE
    a, instances = parse_args()
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {instances[0][0] if len(instances) == 1 else 'starrocks'} %(message)s")
    if len(instances) > 1:
        supervise(sys.argv, instances)
    name, query_port, http_port, be_port, data = instances[0]

    # The catalog lives in memory: every start is a fresh cluster.
    shutil.rmtree(data, ignore_errors=True)
    os.makedirs(data)
    engine = Engine(data)
    config = {"standin_step_delay_ms": a.step_delay_ms, "standin_version": a.version}
    for item in a.config:
        k, _, v = item.partition("=")
        config[k] = v
    FE = Frontend(engine, Catalog(engine), {}, a.s3_endpoint)
    FE.set_config(config)

    FeHttp.be_port = BeHttp.be_port = FE.be_port = be_port
    fe_http = serve_http(FeHttp, http_port)
    be_http = serve_http(BeHttp, be_port)

    async def run():
        server = MysqlServer(session_factory=StandinSession)
        loop = asyncio.get_running_loop()

        def close_sessions():
            # An FE restart drops every client connection.
            for sess in list(SESSIONS):
                sess.last_query_id = None
                loop.call_soon_threadsafe(sess.connection.kill, KillKind.CONNECTION)
        FE.on_restart.append(close_sessions)
        await server.start_server(host="127.0.0.1", port=query_port)
        QUERY_READY.set()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("StarRocks stand-in '%s' (as v%s): query port %d, FE http %d, BE http %d, data %s",
                 name, a.version, query_port, http_port, be_port, data)
        await stop.wait()
        server.close()
        fe_http.shutdown()
        be_http.shutdown()
        log.info("stopped")

    asyncio.run(run())
    logging.shutdown()
    os._exit(0)  # job threads hold no state worth waiting for: the catalog is in memory


if __name__ == "__main__":
    main()
