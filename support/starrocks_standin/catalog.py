"""The FE catalog of the StarRocks stand-in: databases, Duplicate and Primary Key
tables, named RANGE and LIST partitions with their visible versions, and how a table's
rows are stored in chdb.

Storage: table `db.t` is a chdb view over a physical table `db.__sr_<id>`. A Duplicate
Key table is a MergeTree; a Primary Key table is ReplacingMergeTree(_sr_version,
_sr_deleted) read with FINAL, so an upsert replaces the row with the same key and
`__op` = 1 deletes it (Load_to_Primary_Key_tables.md: "0 indicates an UPSERT
operation, and 1 indicates a DELETE operation"). Plain SELECTs on `db.t` therefore run
in chdb as they are; `FROM t PARTITION (p)` is rewritten to the partition's range.
"""

import itertools
import re
import threading
import time

from grammar import SqlError
from sqltypes import ColType
from storage import q

IDS = itertools.count(10001)

# Names the stand-in accepts (StarRocks' FeNameFormat is close: a letter first, then
# letters, digits and '_'). Checked here, once, for every object the catalog creates.
NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,1023}")
COLUMN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,1023}")


def check_name(kind, name, rx=NAME):
    if not rx.fullmatch(name or ""):
        raise SqlError(f"Incorrect {kind} name '{name}': use a letter first, then letters, digits and '_'", 1103)


def now_text(t=None):
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t if t is not None else time.time()))


class Partition:
    def __init__(self, name, lower=None, upper=None, values=None):
        self.id = next(IDS)
        self.name = name
        self.lower, self.upper, self.values = lower, upper, values  # parsed values; None = MIN/MAX
        self.lower_text = self.upper_text = None
        # SHOW_PARTITIONS.md: VisibleVersion "increases by 1 with each successful load
        # transaction"; a new partition starts at version 1.
        self.visible_version = 1
        self.visible_time = time.time()

    def contains(self, v):
        if self.values is not None:
            return v in self.values
        return (self.lower is None or v >= self.lower) and (self.upper is None or v < self.upper)


class Table:
    def __init__(self, db, spec):
        self.id = next(IDS)
        self.db = db
        self.name = spec["name"]
        check_name("table", self.name)
        for c in spec["columns"]:
            check_name("column", c["name"], COLUMN)
        if spec["partition"]:
            for p in spec["partition"]["partitions"]:
                check_name("partition", p["name"])
        self.key_type = spec["key_type"]
        self.key = spec["key"] or [spec["columns"][0]["name"]]
        self.columns = []
        for c in spec["columns"]:
            try:
                self.columns.append({"name": c["name"], "type": ColType(*c["type"]), "nullable": c["nullable"],
                                     "comment": c.get("comment", "")})
            except ValueError as e:
                raise SqlError(f"Column '{c['name']}': {e}", 1105) from None
        if self.key_type == "PRIMARY":
            for c in self.columns:
                if c["name"] in self.key:
                    c["nullable"] = False  # Primary Key columns are NOT NULL
        self.by_name = {c["name"]: c for c in self.columns}
        self.distribution = spec["distribution"] if spec["distribution"] is not None else [self.key[0]]
        self.buckets = spec["buckets"] or 1
        self.properties = spec["properties"]
        self.partitioning = None
        self.partitions = []
        self.version_seq = 0  # PK tables: the _sr_version of the next load
        if spec["partition"]:
            self.set_partitions(spec["partition"])
        else:
            # An unpartitioned table has one partition named after the table.
            self.partitions = [Partition(self.name)]

    def set_partitions(self, pd):
        col = self.by_name[pd["column"]]
        ctype = col["type"]
        self.partitioning = {"kind": pd["kind"], "column": pd["column"]}
        prev_upper = None
        try:
            for spec in pd["partitions"]:
                if pd["kind"] == "LIST":
                    vals = [ctype.parse(v) for v in spec["values"]]
                    p = Partition(spec["name"], values=vals)
                    p.values_text = [ctype.key_text(v) for v in vals]
                else:
                    lower_t = spec.get("lower", prev_upper)
                    upper_t = spec["upper"]
                    p = Partition(spec["name"])
                    p.lower_text = str(ctype.min_value()) if lower_t is None else lower_t
                    p.upper_text = str(ctype.max_value()) if upper_t == "MAXVALUE" else upper_t
                    p.lower = None if lower_t is None else ctype.parse(lower_t)
                    p.upper = None if upper_t == "MAXVALUE" else ctype.parse(upper_t)
                    if p.lower is not None and p.upper is not None and not p.lower < p.upper:
                        raise SqlError(f"Partition '{p.name}': the lower bound must be below the upper bound", 1105)
                    prev_upper = upper_t
                self.partitions.append(p)
        except ValueError as e:
            raise SqlError(f"Partition value of column '{pd['column']}': {e}", 1105) from None
        names = [p.name for p in self.partitions]
        if len(set(names)) != len(names):
            raise SqlError(f"Duplicate partition name in table '{self.name}'", 1105)

    # -- storage
    def physical(self):
        return f"{q(self.db)}.{q('__sr_' + str(self.id))}"

    def view(self):
        return f"{q(self.db)}.{q(self.name)}"

    def ddl(self):
        cols = ", ".join(f"{q(c['name'])} {('Nullable(' + c['type'].ch() + ')') if c['nullable'] else c['type'].ch()}"
                         for c in self.columns)
        order = ", ".join(q(k) for k in self.key)
        if self.key_type == "PRIMARY":
            return (f"CREATE TABLE {self.physical()} ({cols}, _sr_version UInt64, _sr_deleted UInt8) "
                    f"ENGINE = ReplacingMergeTree(_sr_version, _sr_deleted) ORDER BY ({order})")
        return (f"CREATE TABLE {self.physical()} ({cols}) ENGINE = MergeTree ORDER BY ({order}) "
                "SETTINGS allow_nullable_key = 1")

    def view_ddl(self):
        cols = ", ".join(q(c["name"]) for c in self.columns)
        src = f"{self.physical()} FINAL WHERE _sr_deleted = 0" if self.key_type == "PRIMARY" else self.physical()
        return f"CREATE OR REPLACE VIEW {self.view()} AS SELECT {cols} FROM {src}"

    def partition_cond(self, p):
        if self.partitioning is None:
            return "1"
        col = self.by_name[self.partitioning["column"]]
        name, t = q(col["name"]), col["type"]
        if p.values is not None:
            return f"{name} IN ({', '.join(t.literal(v) for v in p.values)})"
        conds = []
        if p.lower is not None:
            conds.append(f"{name} >= {t.literal(p.lower)}")
        if p.upper is not None:
            conds.append(f"{name} < {t.literal(p.upper)}")
        return " AND ".join(conds) or "1"

    def partition(self, name):
        for p in self.partitions:
            if p.name == name:
                return p
        raise SqlError(f"Unknown partition '{name}' in table '{self.name}'", 1105)

    def route(self, row):
        """The partition of a row (dict column → value), or None."""
        if self.partitioning is None:
            return self.partitions[0]
        v = row.get(self.partitioning["column"])
        if v is None:
            return None
        for p in self.partitions:
            if p.contains(v):
                return p
        return None

    # -- SHOW output
    def range_text(self, p):
        """SHOW PARTITIONS' Range text, e.g.
        [types: [DATE]; keys: [2024-01-01]; ..types: [DATE]; keys: [2024-02-01]; )"""
        t = self.by_name[self.partitioning["column"]]["type"].range_type()
        if p.values is not None:
            return "(" + ", ".join(f"('{v}')" for v in p.values_text) + ")"
        return f"[types: [{t}]; keys: [{p.lower_text}]; ..types: [{t}]; keys: [{p.upper_text}]; )"

    def create_text(self):
        lines = [f"CREATE TABLE {q(self.name)} ("]
        cols = [f"  {q(c['name'])} {c['type'].sr_text()} {'NULL' if c['nullable'] else 'NOT NULL'} COMMENT \"{c['comment']}\""
                for c in self.columns]
        lines.append(",\n".join(cols))
        lines.append(") ENGINE=OLAP ")
        lines.append(f"{'PRIMARY' if self.key_type == 'PRIMARY' else 'DUPLICATE'} KEY({', '.join(q(k) for k in self.key)})")
        if self.partitioning:
            kind, col = self.partitioning["kind"], self.partitioning["column"]
            lines.append(f"PARTITION BY {kind}({q(col)})")
            parts = []
            for p in self.partitions:
                if p.values is not None:
                    parts.append(f"PARTITION {p.name} VALUES IN ({', '.join(repr_sr(v) for v in p.values_text)})")
                else:
                    parts.append(f"PARTITION {p.name} VALUES [(\"{p.lower_text}\"), (\"{p.upper_text}\"))")
            lines.append("(" + ",\n".join(parts) + ")")
        dist = f"HASH({', '.join(q(k) for k in self.distribution)})" if self.distribution else "RANDOM"
        lines.append(f"DISTRIBUTED BY {dist} BUCKETS {self.buckets} ")
        props = {"replication_num": "1", **{k: v for k, v in self.properties.items() if v is not None}}
        lines.append("PROPERTIES (\n" + ",\n".join(f"\"{k}\" = \"{v}\"" for k, v in props.items()) + "\n);")
        return "\n".join(lines)


def repr_sr(v):
    return '"' + v.replace('"', '\\"') + '"'


class Catalog:
    def __init__(self, engine):
        self.engine = engine
        self.lock = threading.RLock()
        self.dbs = {}  # name → {table name → Table}

    def create_database(self, name, if_not_exists):
        with self.lock:
            if name in self.dbs:
                if if_not_exists:
                    return
                raise SqlError(f"Can't create database '{name}'; database exists", 1007)
            check_name("database", name)
            self.engine.run(f"DROP DATABASE IF EXISTS {q(name)}")
            self.engine.run(f"CREATE DATABASE {q(name)}")
            self.dbs[name] = {}

    def drop_database(self, name, if_exists):
        with self.lock:
            if name not in self.dbs:
                if if_exists:
                    return
                raise SqlError(f"Can't drop database '{name}'; database doesn't exist", 1008)
            self.engine.run(f"DROP DATABASE IF EXISTS {q(name)}")
            del self.dbs[name]

    def db(self, name):
        if name is None:
            raise SqlError("No database selected", 1046)
        if name not in self.dbs:
            raise SqlError(f"Unknown database '{name}'", 1049)
        return self.dbs[name]

    def table(self, db, name):
        tables = self.db(db)
        if name not in tables:
            raise SqlError(f"Unknown table '{db}.{name}'", 1051)
        return tables[name]

    def create_table(self, db, spec):
        with self.lock:
            tables = self.db(db)
            if spec["name"] in tables:
                if spec["if_not_exists"]:
                    return
                raise SqlError(f"Table '{spec['name']}' already exists", 1050)
            t = Table(db, spec)
            self.engine.run(t.ddl())
            self.engine.run(t.view_ddl())
            tables[t.name] = t

    def drop_table(self, db, name, if_exists):
        with self.lock:
            tables = self.db(db)
            if name not in tables:
                if if_exists:
                    return
                raise SqlError(f"Unknown table '{db}.{name}'", 1051)
            t = tables.pop(name)
            self.engine.run(f"DROP VIEW IF EXISTS {t.view()}")
            self.engine.run(f"DROP TABLE IF EXISTS {t.physical()}")

    def swap(self, db, a, b):
        # ALTER_TABLE.md: "SWAP WITH" is "atomic swap"; both tables keep their own
        # schema, partitions and data, only the names change places.
        with self.lock:
            ta, tb = self.table(db, a), self.table(db, b)
            tables = self.dbs[db]
            ta.name, tb.name = b, a
            tables[a], tables[b] = tb, ta
            for t in (ta, tb):
                if t.partitioning is None:
                    t.partitions[0].name = t.name
                self.engine.run(t.view_ddl())

    def row_count(self, t, p):
        return int(self.engine.scalar(f"SELECT count() FROM {t.view()} WHERE {t.partition_cond(p)}"))

    def show_partitions(self, t):
        """SHOW_PARTITIONS.md return fields, one row per partition."""
        range_col = "List" if t.partitioning and t.partitioning["kind"] == "LIST" else "Range"
        cols = ["PartitionId", "PartitionName", "VisibleVersion", "VisibleVersionTime", "VisibleVersionHash",
                "State", "PartitionKey", range_col, "DistributionKey", "Buckets", "ReplicationNum",
                "StorageMedium", "CooldownTime", "LastConsistencyCheckTime", "DataSize", "IsInMemory", "RowCount"]
        rows = []
        for p in t.partitions:
            count = self.row_count(t, p)
            rows.append([p.id, p.name, p.visible_version, now_text(p.visible_time), 0, "NORMAL",
                         t.partitioning["column"] if t.partitioning else "",
                         t.range_text(p) if t.partitioning else "",
                         ", ".join(t.distribution), t.buckets, 1, "HDD", "9999-12-31 23:59:59", None,
                         f"{count * 16}B", "false", count])
        return cols, rows

    def rewrite_select(self, sql, current_db):
        """FROM [db.]t PARTITION (p1, p2) → FROM (SELECT * FROM db.t WHERE <ranges>) AS t."""
        pat = re.compile(r"(?i)\bFROM\s+((?:`[^`]+`|\w+)(?:\s*\.\s*(?:`[^`]+`|\w+))?)\s+(?:TEMPORARY\s+)?PARTITION\s*\(([^)]*)\)")

        def repl(m):
            parts = [x.strip().strip("`") for x in re.split(r"\s*\.\s*", m.group(1))]
            db, name = (parts[0], parts[1]) if len(parts) == 2 else (current_db, parts[0])
            t = self.table(db, name)
            ps = [t.partition(n.strip().strip("`")) for n in m.group(2).split(",")]
            cond = " OR ".join(f"({t.partition_cond(p)})" for p in ps)
            return f"FROM (SELECT * FROM {t.view()} WHERE {cond}) AS {q(name)}"

        return pat.sub(repl, sql)
