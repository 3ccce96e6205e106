"""The FE job engine of the StarRocks stand-in: EXPORT and Broker Load as asynchronous
jobs with their documented states, synchronous INSERT and Stream Load transactions,
the per-database label registry with its retention, FE configuration, and the
injected faults (FE restart, publish timeout, slow queue).

Why: a migration tool's correctness rests on these state machines (when files are
final, when a label may be reused, what a restart does), so each transition here
follows a sentence of the StarRocks documentation, quoted where it is implemented.
Transitions are spaced by `standin_step_delay_ms` so tests can watch every state.
"""

import json
import re
import threading
import time
import uuid

from catalog import IDS, now_text
from grammar import SqlError
from loader import Batch, LoadError, csv_options, read_csv_objects, read_parquet_objects
from storage import S3Path, q, s

# FE configuration (fe.conf items, docs/en/administration/management/FE_configuration.md)
# plus the stand-in's own knobs (standin_*). ADMIN SET FRONTEND CONFIG changes them.
DEFAULT_CONFIG = {
    # "export_running_job_num_limit: the maximum number of running export jobs ... If the
    # number of running export jobs exceeds this limit, excessive export jobs enter a
    # waiting state after snapshot is run. The default maximum number is 5." (Export.md)
    "export_running_job_num_limit": 5,
    # "export_task_default_timeout_second: the timeout period for export jobs. The default
    # timeout period is 2 hours." (Export.md)
    "export_task_default_timeout_second": 7200,
    # label_keep_max_second (259200 s = 3 days) and label_keep_max_num (1000): how long
    # and how many finished load jobs are kept; "The removed labels can be reused"
    # (fe Config.java; shared/ENGINES-NEXT.md §1.4).
    "label_keep_max_second": 259200,
    "label_keep_max_num": 1000,
    # max_broker_load_job_concurrency: "The maximum number of concurrent Broker Load jobs
    # allowed" (FE_configuration.md, default 5); further jobs stay QUEUEING.
    "max_broker_load_job_concurrency": 5,
    "standin_step_delay_ms": 100,
    "standin_version": "3.3.2",
}

FINAL = ("FINISHED", "CANCELLED")


def version_tuple(text):
    out = []
    for part in text.split("-")[0].split("."):
        out.append(int(part) if part.isdigit() else 0)
    return tuple(out)


class Cancelled(Exception):
    pass


class LabelUsed(SqlError):
    """BROKER_LOAD.md: "Each load job has a label that is unique across the entire
    database ... When a load job enters the FINISHED state, its label cannot be reused.
    Only the label of a load job that has entered the CANCELLED state can be reused."
    Text of LabelAlreadyUsedException.java."""

    def __init__(self, label, existing):
        super().__init__(f"Label [{label}] has already been used.", 1105)
        self.existing = existing


class Job:
    def __init__(self, fe):
        self.fe = fe
        self.id = next(IDS)
        self.lock = threading.Lock()
        self.cancel_reason = None
        self.create_time = time.time()
        self.finish_time = None
        self.error = None

    def wait(self, seconds):
        """Sleep in small steps; raise Cancelled when the job was cancelled."""
        end = time.time() + seconds
        while True:
            if self.cancel_reason:
                raise Cancelled()
            self.check_timeout()
            left = end - time.time()
            if left <= 0:
                return
            time.sleep(min(left, 0.02))

    def check_timeout(self):
        pass

    def step(self, n=1):
        self.wait(n * self.fe.step())


# ---------------------------------------------------------------- EXPORT


class ExportJob(Job):
    def __init__(self, fe, stmt, table, partitions):
        super().__init__(fe)
        self.query_id = str(uuid.uuid4())
        self.db, self.table = stmt["db"], table
        self.parts = partitions
        self.part_names = stmt["partitions"]
        self.columns = stmt["columns"] or [c["name"] for c in table.columns]
        for c in self.columns:
            if c not in table.by_name:
                raise SqlError(f"Unknown column '{c}' in table '{table.name}'", 1054)
        props = stmt["properties"]
        self.sep = props.get("column_separator", "\t")
        self.line = props.get("line_delimiter", "\n")
        self.timeout = int(props.get("timeout") or fe.config["export_task_default_timeout_second"])
        self.path = S3Path(stmt["path"], stmt["broker"], fe.s3_endpoint)
        self.final_dir = self.path.key.rsplit("/", 1)[0] + "/" if "/" in self.path.key else ""
        self.file_prefix = self.path.key.rsplit("/", 1)[-1] or "data_"
        self.state = "PENDING"
        self.progress = 0
        self.start_time = None
        self.restarted = False

    def check_timeout(self):
        if time.time() - self.create_time > self.timeout:
            raise LoadError("TIMEOUT", f"export job timeout after {self.timeout} seconds")

    def tmp_dir(self):
        # Export.md: "it first creates a temporary folder named __starrocks_export_tmp_xxx
        # in the specified path ... xxx represents the ID of the export job".
        return f"{self.final_dir}__starrocks_export_tmp_{self.query_id}/"

    def run(self):
        try:
            self.step(1 + self.fe.slow_queue_steps())
            # Export.md: beyond export_running_job_num_limit, "excessive export jobs
            # enter a waiting state": they stay PENDING until a running job ends.
            while True:
                with self.fe.lock:
                    if self.fe.running_exports() < int(self.fe.config["export_running_job_num_limit"]):
                        self.state, self.start_time = "EXPORTING", time.time()
                        break
                self.wait(0.02)
            written = []
            for i, p in enumerate(self.parts):
                key = f"{self.tmp_dir()}{self.file_prefix}{self.query_id}_{i}_0_0.csv"
                self.write(p, self.path.child(key))
                written.append(key)
                # SHOW_EXPORT.md: "The progress is measured in the unit of query plans";
                # the stand-in runs one query plan per partition.
                self.progress = (i + 1) * 100 // max(len(self.parts), 1)
                self.step()
            self.step()
            with self.lock:
                if self.cancel_reason:
                    raise Cancelled()
                # Export.md: "After all data is exported, StarRocks uses the RENAME
                # statement to save the generated temporary files to a specified path."
                for key in written:
                    self.path.rename(key, self.final_dir + key.rsplit("/", 1)[-1])
                self.state, self.progress, self.finish_time = "FINISHED", 100, time.time()
        except Cancelled:
            self.end_cancelled()
        except LoadError as e:
            self.cancel_reason = self.cancel_reason or str(e)
            self.end_cancelled()
        except SqlError as e:
            self.cancel_reason = self.cancel_reason or f"type:RUN_FAIL; msg:{e}"
            self.end_cancelled()
        except Exception as e:  # an S3 or engine failure must end the job, never hang it
            self.cancel_reason = self.cancel_reason or f"type:UNKNOWN; msg:{type(e).__name__}: {e}"
            self.end_cancelled()

    def write(self, p, target):
        t = self.table
        cols = ", ".join(q(c) for c in self.columns)
        self.fe.engine.run(
            f"INSERT INTO FUNCTION {target.chdb_fn('CustomSeparated')} SELECT {cols} FROM {t.view()} "
            f"WHERE {t.partition_cond(p)} SETTINGS format_custom_escaping_rule = 'Raw', "
            f"format_custom_field_delimiter = {s(self.sep)}, format_custom_row_after_delimiter = {s(self.line)}, "
            "output_format_decimal_trailing_zeros = 1, bool_true_representation = '1', "
            "bool_false_representation = '0', s3_truncate_on_insert = 1")

    def end_cancelled(self):
        with self.lock:
            if self.state in FINAL:
                return
            if not self.restarted:
                try:
                    for key in self.path.list(self.tmp_dir()):
                        self.path.delete(key)  # a cancelled job removes its temporary files
                except Exception as e:  # the job still ends CANCELLED
                    self.cancel_reason += f" (temporary files not removed: {e})"
            self.state, self.finish_time = "CANCELLED", time.time()
            self.error = self.cancel_reason

    def show_row(self):
        task = {"partitions": self.part_names or ["*"], "column separator": self.sep, "columns": self.columns,
                "tablet num": len(self.parts) * self.table.buckets, "broker": "", "coord num": len(self.parts),
                "db": self.db, "tbl": self.table.name, "row delimiter": self.line, "mem limit": 2147483648}
        return [self.id, self.query_id, self.state, f"{self.progress}%", json.dumps(task, separators=(",", ":")),
                f"s3://{self.path.bucket}/{self.final_dir}", now_text(self.create_time),
                now_text(self.start_time) if self.start_time else None,
                now_text(self.finish_time) if self.finish_time else None, self.timeout, self.error]


EXPORT_COLUMNS = ["JobId", "QueryId", "State", "Progress", "TaskInfo", "Path", "CreateTime", "StartTime",
                  "FinishTime", "Timeout", "ErrorMsg"]

# ---------------------------------------------------------------- loads


class LoadJob(Job):
    def __init__(self, fe, db, label, kind, props=None):
        super().__init__(fe)
        self.db, self.label, self.type = db, label, kind
        props = props or {}
        self.timeout = int(props.get("timeout") or (14400 if kind == "BROKER" else 600))
        self.max_filter_ratio = float(props.get("max_filter_ratio") or 0)
        self.state = "PENDING"
        self.load_progress = 0
        self.load_start = self.commit_time = None
        self.tables = []
        self.batches = []
        self.files = 0
        self.txn_id = next(IDS)
        self.error_url = None

    def check_timeout(self):
        if time.time() - self.create_time > self.timeout:
            raise LoadError("TIMEOUT", f"Load timeout. Increase the timeout and try again. timeout: {self.timeout}s")

    def existing_status(self):
        # LabelAlreadyUsedException.java: the existing job reads RUNNING until its
        # transaction is COMMITTED/VISIBLE, then FINISHED.
        return "FINISHED" if self.state in ("FINISHED", "PREPARED", "COMMITTED") else "RUNNING"

    def counts(self):
        total = sum(b.total for b in self.batches)
        filtered = sum(len(b.errors) for b in self.batches)
        return total, filtered, sum(b.unselected for b in self.batches), total - filtered

    def fail(self, err):
        self.state, self.finish_time = "CANCELLED", time.time()
        self.error = str(err)
        self.batches_errors_url()

    def batches_errors_url(self):
        rows = [f"Error: {reason}. Row: {rec}" for b in self.batches for reason, rec in b.errors]
        if rows:
            self.error_url = self.fe.store_error_log(rows)

    # -- Broker Load (BROKER_LOAD.md; states of SHOW_LOAD.md)
    def run_broker(self, stmt):
        try:
            # "PENDING: The load job is created."
            self.step(1 + self.fe.slow_queue_steps())
            # "QUEUEING: The load job is in the queue waiting to be scheduled."
            self.state = "QUEUEING"
            self.step()
            while True:
                with self.fe.lock:
                    if self.fe.running_loads() < int(self.fe.config["max_broker_load_job_concurrency"]):
                        self.state, self.load_start = "LOADING", time.time()
                        break
                self.wait(0.02)
            # "LOADING: The load job is running."
            for n, d in enumerate(stmt["data"]):
                table = self.fe.catalog.table(self.db, d["table"])
                batch = Batch(table, d["partitions"])
                for url in d["paths"]:
                    path = S3Path(url, stmt["broker"], self.fe.s3_endpoint)
                    if d["format"] in ("CSV", "CSV_WITH_NAMES"):
                        opts = {"sep": d["column_separator"], "row_delim": d["row_delimiter"],
                                **csv_options(d["format_options"])}
                        records, files = read_csv_objects(self.fe.engine, path, opts)
                        batch.add(records, d["columns"], d["set"])
                    elif d["format"] == "PARQUET":
                        names, records = read_parquet_objects(self.fe.engine, path)
                        files = 1
                        batch.add(records, d["columns"] or names, d["set"])
                    else:
                        raise LoadError("LOAD-RUN-FAIL", f"format {d['format']} is not modelled by the StarRocks stand-in (CSV, Parquet)")
                    self.files += files
                self.batches.append(batch)
                self.tables.append(table.name)
                # "When all data is loaded into StarRocks, 99% is returned for the LOAD
                # parameter. Then, loaded data starts taking effect" (SHOW_LOAD.md)
                self.load_progress = min(99, (n + 1) * 100 // len(stmt["data"]))
                self.step()
            for b in self.batches:
                b.check_ratio(self.max_filter_ratio)
            # "PREPARED: The transaction has been committed."
            with self.lock:
                if self.cancel_reason:
                    raise Cancelled()
                self.state, self.commit_time, self.load_progress = "PREPARED", time.time(), 99
            hold = 1 + (4 if self.fe.take_publish_timeout() else 0)
            time.sleep(hold * self.fe.step())  # a PREPARED job cannot be cancelled
            self.publish()
        except Cancelled:
            self.fail(self.cancel_reason)
        except (LoadError, SqlError) as e:
            self.fail(e if isinstance(e, LoadError) else LoadError("LOAD-RUN-FAIL", str(e)))
        except Exception as e:  # an S3 or engine failure must end the job, never hang it
            self.fail(LoadError("UNKNOWN", f"{type(e).__name__}: {e}"))

    def publish(self):
        # One job is one transaction over all its files: every batch becomes visible
        # together, or none does (BROKER_LOAD.md: "a load job ... either succeeds or
        # fails as a whole"; the stand-in's atomicity).
        with self.fe.catalog.lock:
            for b in self.batches:
                b.publish(self.fe.catalog)
            self.state, self.load_progress, self.finish_time = "FINISHED", 100, time.time()
        self.batches_errors_url()

    def show_row(self):
        total, filtered, unselected, loaded = self.counts()
        etl = f"unselected.rows={unselected}; dpp.abnorm.ALL={filtered}; dpp.norm.ALL={loaded}" if self.load_start else None
        details = {"Unfinished backends": {}, "ScannedRows": total, "TaskNumber": 1, "LoadBytes": 0,
                   "All backends": {}, "FileNumber": self.files, "FileSize": 0}
        progress = f"ETL:100%; LOAD:{self.load_progress}%" if self.type == "BROKER" else ("ETL:100%; LOAD:100%" if self.state == "FINISHED" else "ETL:0%; LOAD:0%")
        return [self.id, self.label, self.state, progress, self.type, "NORMAL", etl,
                f"resource:N/A; timeout(s):{self.timeout}; max_filter_ratio:{self.max_filter_ratio}", self.error,
                now_text(self.create_time), now_text(self.load_start) if self.load_start else None,
                now_text(self.load_start) if self.load_start else None,
                now_text(self.load_start) if self.load_start else None,
                now_text(self.finish_time) if self.finish_time else None, self.error_url, json.dumps(details)]

    def loads_row(self):
        total, filtered, unselected, loaded = self.counts()
        props = json.dumps({"timeout": self.timeout, "max_filter_ratio": self.max_filter_ratio})
        runtime = json.dumps({"txn_id": self.txn_id, "file_num": self.files})
        return [self.id, self.label, "", self.db, ",".join(self.tables), "root", "default_warehouse", self.state,
                f"ETL:100%; LOAD:{self.load_progress}%", self.type, "NORMAL", total, 0, filtered, unselected,
                loaded, runtime, now_text(self.create_time),
                now_text(self.load_start) if self.load_start else None,
                now_text(self.commit_time) if self.commit_time else None,
                now_text(self.finish_time) if self.finish_time else None, props, self.error, None, None]


SHOW_LOAD_COLUMNS = ["JobId", "Label", "State", "Progress", "Type", "Priority", "EtlInfo", "TaskInfo", "ErrorMsg",
                     "CreateTime", "EtlStartTime", "EtlFinishTime", "LoadStartTime", "LoadFinishTime", "URL",
                     "JobDetails"]
# information_schema/loads.md fields
LOADS_COLUMNS = ["ID", "LABEL", "PROFILE_ID", "DB_NAME", "TABLE_NAME", "USER", "WAREHOUSE", "STATE", "PROGRESS",
                 "TYPE", "PRIORITY", "SCAN_ROWS", "SCAN_BYTES", "FILTERED_ROWS", "UNSELECTED_ROWS", "SINK_ROWS",
                 "RUNTIME_DETAILS", "CREATE_TIME", "LOAD_START_TIME", "LOAD_COMMIT_TIME", "LOAD_FINISH_TIME",
                 "PROPERTIES", "ERROR_MSG", "TRACKING_SQL", "REJECTED_RECORD_PATH"]
LOADS_INT = {"ID", "SCAN_ROWS", "SCAN_BYTES", "FILTERED_ROWS", "UNSELECTED_ROWS", "SINK_ROWS"}


# ---------------------------------------------------------------- the frontend


class Frontend:
    def __init__(self, engine, catalog, config, s3_endpoint):
        self.engine, self.catalog = engine, catalog
        self.config = dict(DEFAULT_CONFIG)
        self.config.update(config)
        self._s3_endpoint = s3_endpoint
        self.lock = threading.RLock()
        self.exports = []
        self.loads = []
        self.publish_timeouts = 0
        self.slow_queue_s = 0.0
        self.error_logs = {}
        self.on_restart = []  # callbacks (close client sessions)
        self.be_port = None  # for ErrorURL

    @property
    def s3_endpoint(self):
        """The default S3 endpoint (statements may name their own with aws.s3.endpoint):
        a URL, or `@FILE` for a file holding the port of the local S3 server, read at
        each use so a restarted S3 server on a new port is found."""
        if self._s3_endpoint.startswith("@"):
            with open(self._s3_endpoint[1:]) as f:
                return f"http://127.0.0.1:{f.read().strip()}"
        return self._s3_endpoint

    def step(self):
        return int(self.config["standin_step_delay_ms"]) / 1000.0

    def version(self):
        return version_tuple(str(self.config["standin_version"]))

    def require_version(self, at_least, what):
        if self.version() < at_least:
            need = ".".join(map(str, at_least))
            raise SqlError(f"Getting syntax error: {what} is supported from v{need} on; this StarRocks "
                           f"stand-in answers as v{self.config['standin_version']}", 1064)

    def slow_queue_steps(self):
        return self.slow_queue_s / self.step() if self.step() else 0

    def take_publish_timeout(self):
        with self.lock:
            if self.publish_timeouts > 0:
                self.publish_timeouts -= 1
                return True
            return False

    def running_exports(self):
        return sum(1 for e in self.exports if e.state == "EXPORTING")

    def running_loads(self):
        return sum(1 for j in self.loads if j.type == "BROKER" and j.state == "LOADING")

    def store_error_log(self, rows):
        key = uuid.uuid4().hex
        with self.lock:
            self.error_logs[key] = "\n".join(rows) + "\n"
        return f"http://127.0.0.1:{self.be_port}/api/_load_error_log?file={key}"

    # -- configuration
    def set_config(self, items):
        with self.lock:
            for k, v in items.items():
                if k not in self.config:
                    raise SqlError(f"Config '{k}' does not exist or is not mutable", 1105)
                if k != "standin_version":
                    try:
                        v = int(v)
                    except (TypeError, ValueError):
                        raise SqlError(f"Config '{k}': '{v}' is not an integer", 1105) from None
                self.config[k] = v

    # -- labels
    def expire_labels(self):
        """Drop finished jobs older than label_keep_max_second, and the oldest beyond
        label_keep_max_num; their labels can be reused."""
        now = time.time()
        keep_s, keep_n = int(self.config["label_keep_max_second"]), int(self.config["label_keep_max_num"])
        done = [j for j in self.loads if j.state in FINAL]
        drop = {j.id for j in done if now - j.finish_time > keep_s}
        rest = sorted((j for j in done if j.id not in drop), key=lambda j: j.finish_time)
        drop |= {j.id for j in rest[:max(0, len(rest) - keep_n)]}
        if drop:
            self.loads = [j for j in self.loads if j.id not in drop]

    def claim_label(self, job):
        # FeNameFormat.checkLabel: a label matches ^[-_A-Za-z0-9:]{1,128}$.
        if not re.fullmatch(r"[-_A-Za-z0-9:]{1,128}", job.label or ""):
            raise SqlError(f"Label format error. regex: ^[-_A-Za-z0-9:]{{1,128}}$, label: {job.label}", 1105)
        with self.lock:
            self.catalog.db(job.db)
            self.expire_labels()
            for j in self.loads:
                if j.db == job.db and j.label == job.label and j.state != "CANCELLED":
                    raise LabelUsed(job.label, j.existing_status())
            self.loads.append(job)

    def find_loads(self, db, where):
        with self.lock:
            self.expire_labels()
            out = [j for j in self.loads if j.db == db and j.type in ("BROKER", "INSERT")]
        for col, op, val in where:
            if col == "label":
                # SHOW_LOAD.md: LABEL LIKE returns jobs "whose labels contain label_matcher"
                out = [j for j in out if (j.label == val if op == "=" else str(val).strip("%") in j.label)]
            elif col == "state":
                out = [j for j in out if j.state == str(val).upper()]
            else:
                raise SqlError(f"SHOW LOAD: filter by '{col}' is not supported (LABEL, STATE)", 1105)
        return out

    # -- statements
    def submit_export(self, stmt, db):
        stmt["db"] = stmt["db"] or db
        table = self.catalog.table(stmt["db"], stmt["table"])
        parts = [table.partition(n) for n in stmt["partitions"]] if stmt["partitions"] else list(table.partitions)
        job = ExportJob(self, stmt, table, parts)
        with self.lock:
            self.exports.append(job)
        threading.Thread(target=job.run, daemon=True, name=f"export-{job.id}").start()
        return job

    def find_exports(self, db, where):
        with self.lock:
            out = [e for e in self.exports if e.db == db]
        for col, _, val in where:
            if col == "queryid":
                out = [e for e in out if e.query_id == val]
            elif col == "state":
                out = [e for e in out if e.state == str(val).upper()]
            else:
                raise SqlError(f"SHOW EXPORT: filter by '{col}' is not supported (QUERYID, STATE)", 1105)
        return out

    def cancel_export(self, db, where):
        jobs = self.find_exports(db, where)
        if not jobs:
            raise SqlError("Export job not found", 1105)
        for e in jobs:
            with e.lock:
                # CANCEL_EXPORT.md: "Unloading jobs with the state CANCELLED or FINISHED
                # cannot be canceled. Canceling an unloading job is an asynchronous process."
                if e.state in FINAL:
                    raise SqlError(f"Export job [{e.query_id}] is already {e.state.lower()}", 1105)
                e.cancel_reason = "type:USER_CANCEL; msg:user cancel"

    def submit_broker_load(self, stmt, db):
        stmt["db"] = stmt["db"] or db
        for d in stmt["data"]:
            self.catalog.table(stmt["db"], d["table"])
        job = LoadJob(self, stmt["db"], stmt["label"], "BROKER", stmt["properties"])
        self.claim_label(job)
        threading.Thread(target=job.run_broker, args=(stmt,), daemon=True, name=f"load-{job.id}").start()
        return job

    def cancel_load(self, db, where):
        jobs = self.find_loads(db, where)
        if not jobs:
            raise SqlError("Load job does not exist", 1105)
        for j in jobs[-1:]:
            with j.lock:
                # CANCEL_LOAD.md: "A load job in the PREPARED, CANCELLED or FINISHED state
                # cannot be canceled." ... "the value of type ... is USER_CANCEL".
                if j.state in ("PREPARED", "CANCELLED", "FINISHED"):
                    raise SqlError(f"Load job [{j.label}] is in state {j.state} and cannot be cancelled", 1105)
                j.cancel_reason = "type:USER_CANCEL; msg:user cancel"

    def run_insert(self, db, label, table, fill):
        """A synchronous INSERT transaction (INSERT.md): the job shows FINISHED or
        CANCELLED only; `fill(batch)` adds the rows."""
        job = LoadJob(self, db, label or f"insert_{uuid.uuid4().hex}", "INSERT")
        self.claim_label(job)
        job.load_start = time.time()
        job.tables = [table.name]
        try:
            batch = fill()
            job.batches = [batch]
            if batch.errors:
                # INSERT is strict by default: a filtered row fails the statement.
                raise LoadError("ETL_QUALITY_UNSATISFIED", f"Insert has filtered data in strict mode. "
                                f"First error: {batch.errors[0][0]}")
            job.commit_time = time.time()
            job.publish()
            return job
        except (LoadError, SqlError) as e:
            job.fail(e)
            raise SqlError(str(e) if isinstance(e, LoadError) else e.args[0], 1105) from None

    # -- faults
    def fault(self, name, params):
        if name == "fe_restart":
            # Export.md: "If the FEs ... restart ... when an export job is running, the
            # export job fails" and "after an export job finishes, some of the job
            # information returned by the SHOW EXPORT statement may be lost."
            with self.lock:
                kept = []
                for e in self.exports:
                    with e.lock:
                        if e.state not in FINAL:
                            e.restarted = True
                            e.cancel_reason = "type:RUN_FAIL; msg:FE restarted: the export job failed, submit it again"
                            e.state, e.finish_time, e.error = "CANCELLED", time.time(), e.cancel_reason
                            kept.append(e)
                self.exports = kept
            for cb in self.on_restart:
                cb()
            return {"fault": name, "cancelled_exports": [e.query_id for e in kept]}
        if name == "publish_timeout":
            with self.lock:
                self.publish_timeouts += int(params.get("count", 1))
            return {"fault": name, "pending": self.publish_timeouts}
        if name == "slow_queue":
            self.slow_queue_s = float(params.get("seconds", 2))
            return {"fault": name, "seconds": self.slow_queue_s}
        if name == "clear":
            self.publish_timeouts, self.slow_queue_s = 0, 0.0
            return {"fault": name}
        raise KeyError(name)
