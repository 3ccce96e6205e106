"""Rows into a stand-in table: CSV splitting with StarRocks' options, column mapping
(column list, SET, `__op`), type conversion, partition routing, the filter-ratio check,
and the publish step that makes a transaction's rows visible at once.

Why one module: Broker Load, INSERT (VALUES / SELECT / FILES()) and Stream Load all end
in the same transaction; converting and filtering in one place keeps them consistent.
"""

import base64
import time

from grammar import SqlError
from storage import q


class LoadError(Exception):
    """A load that fails as a whole; `kind` is the ErrorMsg type of SHOW_LOAD.md."""

    def __init__(self, kind, msg):
        super().__init__(f"type:{kind}; msg:{msg}")
        self.kind = kind
        self.msg = msg


def split_csv(data, sep="\t", row_delim="\n", enclose=None, escape=None, skip_header=0, trim_space=False):
    """Records of a CSV text. BROKER_LOAD.md / STREAM_LOAD.md: `column_separator` and
    `row_delimiter` may be several characters; `enclose` "wraps field values";
    `escape` escapes "row separators, column separators, escape characters, and
    enclose characters"; `skip_header` skips the first lines; `\\N` is NULL."""
    for what, v in (("column separator", sep), ("row delimiter", row_delim)):
        if not v:
            raise LoadError("LOAD-RUN-FAIL", f"the {what} must not be empty")
    if sep == row_delim:
        raise LoadError("LOAD-RUN-FAIL", "the column separator and the row delimiter must differ")
    for what, v in (("enclose", enclose), ("escape", escape)):
        if v is not None and len(v) != 1:
            raise LoadError("LOAD-RUN-FAIL", f"{what} must be one character, not {v!r}")
    records, rec, field = [], [], []
    quoted = in_quotes = False
    i, n = 0, len(data)

    def end_field():
        nonlocal field, quoted
        text = "".join(field)
        if trim_space and not quoted:
            text = text.strip(" ")
        rec.append(None if (text == "\\N" and not quoted) else text)
        field, quoted = [], False

    while i < n:
        c = data[i]
        if in_quotes:
            if escape and c == escape and i + 1 < n:
                field.append(data[i + 1])
                i += 2
            elif c == enclose:
                if data.startswith(enclose, i + 1) and enclose != escape:
                    field.append(enclose)
                    i += 2
                else:
                    in_quotes = False
                    i += 1
            else:
                field.append(c)
                i += 1
        elif data.startswith(sep, i):
            end_field()
            i += len(sep)
        elif data.startswith(row_delim, i):
            end_field()
            if rec != [""]:
                records.append(rec)
            rec = []
            i += len(row_delim)
        elif not field and data.startswith("\\N", i):
            field.append("\\N")
            i += 2
        elif escape and c == escape and i + 1 < n:
            field.append(data[i + 1])
            i += 2
        elif enclose and c == enclose and not field:
            in_quotes = quoted = True
            i += 1
        else:
            field.append(c)
            i += 1
    if field or rec or quoted:
        end_field()
        if rec != [""]:
            records.append(rec)
    return records[skip_header:]


def read_csv_objects(engine, path, options):
    """The records of every object matching an s3:// glob, read through chdb's s3()."""
    try:
        out = engine.run(f"SELECT _path, base64Encode(raw_blob) FROM {path.chdb_fn('RawBLOB', 'raw_blob String')} ORDER BY _path")
    except SqlError as e:
        raise LoadError("ETL_RUN_FAIL", f"No source file in path {path.url()}: {e}") from None
    files = [line.split("\t") for line in out.splitlines() if line]
    if not files:
        raise LoadError("ETL_RUN_FAIL", f"No source file in path {path.url()}")
    records = []
    for _, b64 in files:
        text = base64.b64decode(b64).decode("utf-8", errors="replace")
        records += split_csv(text, **options)
    return records, len(files)


def read_parquet_objects(engine, path):
    """(column names, records) of Parquet objects; values as text."""
    try:
        names, _, rows = engine.select(f"SELECT * FROM {path.chdb_fn('Parquet')}")
    except SqlError as e:
        raise LoadError("ETL_RUN_FAIL", f"No source file in path {path.url()}: {e}") from None
    return names, rows


def csv_options(props, prefix=""):
    """CSV options from Broker Load format options, FILES() properties (`csv.` prefix)
    or Stream Load headers."""
    def get(k):
        return props.get(prefix + k)
    opts = {}
    if get("column_separator") is not None:
        opts["sep"] = get("column_separator")
    if get("row_delimiter") is not None:
        opts["row_delim"] = get("row_delimiter")
    if get("enclose"):
        opts["enclose"] = get("enclose")
    if get("escape"):
        opts["escape"] = get("escape")
    if get("skip_header"):
        opts["skip_header"] = int(get("skip_header"))
    if str(get("trim_space") or "").lower() == "true":
        opts["trim_space"] = True
    return opts


OPS = {"0": 0, "upsert": 0, "1": 1, "delete": 1}


class Batch:
    """Converted rows of one load transaction, not yet visible."""

    def __init__(self, table, allowed_partitions=None):
        self.table = table
        self.allowed = None
        if allowed_partitions:
            self.allowed = {table.partition(p).name for p in allowed_partitions}
        self.rows = []  # (values in table column order, op)
        self.errors = []  # (reason, record)
        self.unselected = 0
        self.total = 0

    def add(self, records, file_cols=None, sets=None):
        """Convert records (lists of text or None) mapped by `file_cols` (default: the
        table's columns in order) plus `sets` {column: ("col", name) | ("lit", text)}."""
        t = self.table
        file_cols = file_cols or [c["name"] for c in t.columns]
        sets = sets or {}
        for rec in records:
            self.total += 1
            if len(rec) != len(file_cols):
                self.errors.append((f"Value count does not match column count. Expect {len(file_cols)}, but got {len(rec)}.", rec))
                continue
            src = dict(zip(file_cols, rec))
            for col, (kind, v) in sets.items():
                src[col] = src.get(v) if kind == "col" else v
            op = 0
            if "__op" in src:
                op = OPS.get(str(src["__op"]).strip().lower())
                if op is None:
                    self.errors.append((f"Invalid __op value '{src['__op']}' (0/upsert or 1/delete)", rec))
                    continue
            if op == 1 and t.key_type != "PRIMARY":
                self.errors.append(("__op = delete needs a Primary Key table", rec))
                continue
            values, parsed, bad = [], {}, None
            for c in t.columns:
                raw = src.get(c["name"])
                try:
                    v = c["type"].parse(raw)
                except (ValueError, ArithmeticError):
                    # STREAM_LOAD.md strict_mode: off by default, "fields that fail
                    # conversion are converted to NULL values"; a NOT NULL column
                    # then filters the row.
                    v = None
                if v is None and not c["nullable"] and not (op == 1 and c["name"] not in t.key):
                    bad = f"NULL value in non-nullable column '{c['name']}'" if raw is None \
                        else f"Value '{raw}' cannot be converted to column '{c['name']}' ({c['type'].sr_text()})"
                    break
                values.append(v)
                parsed[c["name"]] = v
            if bad:
                self.errors.append((bad, rec))
                continue
            p = t.route(parsed)
            if p is None:
                self.errors.append(("The row is out of partition ranges. Please add a new partition.", rec))
                continue
            if self.allowed is not None and p.name not in self.allowed:
                self.errors.append((f"The row is in partition '{p.name}', not in the partitions of the load", rec))
                continue
            self.rows.append((values, op, p))

    def check_ratio(self, max_filter_ratio):
        """BROKER_LOAD.md max_filter_ratio: "the maximum error tolerance of the load
        job"; above it the job fails with ETL-QUALITY-UNSATISFIED (SHOW_LOAD.md)."""
        if self.errors and len(self.errors) / max(self.total, 1) > float(max_filter_ratio or 0):
            raise LoadError("ETL-QUALITY-UNSATISFIED", "quality not good enough to cancel")

    def publish(self, catalog):
        """Make every row visible in one go and bump VisibleVersion of each partition
        that received rows (SHOW_PARTITIONS.md)."""
        t = self.table
        with catalog.lock:
            touched = {}
            if self.rows:
                names = ", ".join(q(c["name"]) for c in t.columns)
                extra = ""
                if t.key_type == "PRIMARY":
                    t.version_seq += 1
                    extra = ", _sr_version, _sr_deleted"
                for start in range(0, len(self.rows), 5000):
                    chunk = self.rows[start:start + 5000]
                    tuples = []
                    for values, op, p in chunk:
                        lits = [c["type"].literal(v) if v is not None or c["nullable"] else c["type"].literal(c["type"].zero())
                                for c, v in zip(t.columns, values)]
                        if t.key_type == "PRIMARY":
                            lits += [str(t.version_seq), str(op)]
                        tuples.append("(" + ", ".join(lits) + ")")
                        touched[p.name] = p
                    catalog.engine.run(f"INSERT INTO {t.physical()} ({names}{extra}) VALUES {', '.join(tuples)}")
            for p in touched.values():
                p.visible_version += 1
                p.visible_time = time.time()
        return len(self.rows)
