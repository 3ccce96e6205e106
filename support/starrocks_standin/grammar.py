"""The StarRocks stand-in's own small SQL grammar: a tokenizer and a recursive-descent
parser for exactly the statement forms a migration client sends to StarRocks.

Why its own grammar: sqlglot (mysql-mimic's parser) turns EXPORT, LOAD LABEL, SHOW
LOAD/EXPORT/PARTITIONS into unparsed commands and fails on StarRocks' partitioned
CREATE TABLE and on FILES() (shared/ENGINES-NEXT.md §1.12). Each parse function returns
a plain dict with a "kind"; statements this grammar does not know return None and go
to mysql-mimic (SET, USE, SELECT @@var) or to the storage engine (plain SELECT).
"""

import re

# Statement syntax followed here (StarRocks docs, docs/en/sql-reference/sql-statements/):
#   table_design CREATE_TABLE.md, loading_unloading/unloading/EXPORT.md,
#   loading_unloading/BROKER_LOAD.md, loading_unloading/INSERT.md, SHOW_LOAD.md,
#   unloading/SHOW_EXPORT.md, CANCEL_EXPORT.md, CANCEL_LOAD.md, SHOW_PARTITIONS.md,
#   ALTER_TABLE.md ("SWAP WITH"), cluster-management ADMIN_SET_CONFIG.md.


class SqlError(Exception):
    """A statement the grammar cannot accept; the text names where and what."""

    def __init__(self, message, code=1064):
        super().__init__(message)
        self.code = code


TOKEN = re.compile(
    r"""\s+|--[^\n]*|/\*.*?\*/
    |(?P<bq>`(?:[^`]|``)*`)
    |(?P<str>'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.|"")*")
    |(?P<num>-?\d+(?:\.\d+)?)
    |(?P<word>[A-Za-z_$][A-Za-z0-9_$]*)
    |(?P<punct>[^\s\w`'"])""",
    re.S | re.X,
)
ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", "\\": "\\", "'": "'", '"': '"', "b": "\b", "Z": "\x1a"}


def unquote(text):
    q = text[0]
    body = text[1:-1].replace(q + q, q)
    return re.sub(r"\\(.)", lambda m: ESCAPES.get(m.group(1), m.group(1)), body, flags=re.S)


def tokenize(sql):
    out, pos = [], 0
    while pos < len(sql):
        m = TOKEN.match(sql, pos)
        if not m:
            raise SqlError(f"Getting syntax error at position {pos}: unexpected character {sql[pos]!r}")
        pos = m.end()
        kind = m.lastgroup
        if kind is None:
            continue
        text = m.group(kind)
        if kind == "bq":
            out.append(("ident", text[1:-1].replace("``", "`"), m.start()))
        elif kind == "str":
            out.append(("str", unquote(text), m.start()))
        elif kind == "word":
            out.append(("word", text, m.start()))
        else:
            out.append((kind, text, m.start()))
    return out


class Parser:
    def __init__(self, sql):
        self.sql = sql
        self.toks = tokenize(sql)
        self.i = 0

    # -- primitives
    def peek(self, k=0):
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else ("eof", "", len(self.sql))

    def is_word(self, *words, k=0):
        t = self.peek(k)
        return t[0] == "word" and t[1].upper() in words

    def accept(self, *words):
        if all(self.is_word(w, k=n) for n, w in enumerate(words)):
            self.i += len(words)
            return True
        return False

    def expect(self, *words):
        if not self.accept(*words):
            self.fail(f"expected {' '.join(words)}")

    def accept_p(self, p):
        t = self.peek()
        if t[0] == "punct" and t[1] == p:
            self.i += 1
            return True
        return False

    def expect_p(self, p):
        if not self.accept_p(p):
            self.fail(f"expected '{p}'")

    def fail(self, what):
        t = self.peek()
        near = self.sql[t[2]:t[2] + 30] or "end of statement"
        raise SqlError(f"Getting syntax error at position {t[2]}: {what}, found {near!r}")

    def ident(self):
        t = self.peek()
        if t[0] in ("word", "ident"):
            self.i += 1
            return t[1]
        self.fail("expected a name")

    def qname(self):
        first = self.ident()
        if self.accept_p("."):
            return first, self.ident()
        return None, first

    def string(self):
        t = self.peek()
        if t[0] == "str":
            self.i += 1
            return t[1]
        self.fail("expected a quoted string")

    def literal(self):
        """A string, number or NULL; returned as text (None for NULL)."""
        t = self.peek()
        if t[0] in ("str", "num"):
            self.i += 1
            return t[1]
        if self.accept("NULL"):
            return None
        if t[0] == "word" and t[1].upper() in ("TRUE", "FALSE"):
            self.i += 1
            return t[1].lower()
        self.fail("expected a value")

    def int_(self):
        t = self.peek()
        if t[0] == "num":
            self.i += 1
            return int(t[1])
        self.fail("expected a number")

    def props(self):
        """( "k" = "v", ... ) → dict; keys lower-cased."""
        out = {}
        self.expect_p("(")
        while not self.accept_p(")"):
            k = self.string() if self.peek()[0] == "str" else self.ident()
            self.expect_p("=")
            out[k.lower()] = self.literal()
            self.accept_p(",")
        return out

    def name_list(self):
        self.expect_p("(")
        names = [self.ident()]
        while self.accept_p(","):
            names.append(self.ident())
        self.expect_p(")")
        return names

    def rest(self):
        """The remaining statement text (without a trailing ';')."""
        t = self.peek()
        return self.sql[t[2]:].strip().rstrip(";").strip()

    def end(self):
        self.accept_p(";")
        if self.peek()[0] != "eof":
            self.fail("expected the end of the statement")


# ---------------------------------------------------------------- statements


def parse(sql):
    """The statement as a dict, or None when it is not one of the StarRocks forms."""
    p = Parser(sql)
    if p.peek()[0] == "eof":
        return None
    w = p.peek()[1].upper()
    w2 = p.peek(1)[1].upper()
    if w == "CREATE" and w2 == "DATABASE":
        return create_database(p)
    if w == "CREATE" and w2 == "TABLE":
        return create_table(p)
    if w == "DROP" and w2 in ("DATABASE", "TABLE"):
        p.i += 2
        ife = p.accept("IF", "EXISTS")
        db, name = p.qname()
        p.accept("FORCE")
        p.end()
        return {"kind": "drop_" + w2.lower(), "db": db, "name": name, "if_exists": ife}
    if w == "SHOW":
        return show(p)
    if w == "ALTER" and w2 == "TABLE":
        return alter_table(p)
    if w == "EXPORT":
        return export(p)
    if w == "CANCEL" and w2 in ("EXPORT", "LOAD"):
        p.i += 2
        db = p.ident() if p.accept("FROM") else None
        where = where_clause(p)
        p.end()
        return {"kind": "cancel_" + w2.lower(), "db": db, "where": where}
    if w == "LOAD" and w2 == "LABEL":
        return broker_load(p)
    if w == "INSERT":
        return insert(p)
    if w == "ADMIN":
        return admin(p)
    if w == "SELECT":
        m = re.fullmatch(r"\s*SELECT\s+(LAST_QUERY_ID|VERSION|CURRENT_VERSION)\s*\(\s*\)\s*;?\s*", sql, re.I)
        if m:
            return {"kind": "select_fn", "fn": m.group(1).lower()}
    return None


def create_database(p):
    p.i += 2
    ine = p.accept("IF", "NOT", "EXISTS")
    name = p.ident()
    p.end()
    return {"kind": "create_database", "name": name, "if_not_exists": ine}


def column_type(p):
    name = p.ident().lower()
    args = []
    if p.accept_p("("):
        args.append(p.int_())
        while p.accept_p(","):
            args.append(p.int_())
        p.expect_p(")")
    return name, tuple(args)


def partition_value(p):
    """One bound: ("2024-01-01") or MAXVALUE; returns text or "MAXVALUE"."""
    if p.accept("MAXVALUE"):
        return "MAXVALUE"
    p.expect_p("(")
    v = p.literal()
    p.expect_p(")")
    return v


def create_table(p):
    p.i += 2
    t = {"kind": "create_table", "if_not_exists": p.accept("IF", "NOT", "EXISTS"),
         "columns": [], "key_type": "DUPLICATE", "key": [], "partition": None,
         "distribution": None, "buckets": None, "properties": {}, "order_by": []}
    t["db"], t["name"] = p.qname()
    p.expect_p("(")
    while True:
        col = {"name": p.ident()}
        col["type"] = column_type(p)
        col["nullable"] = True
        while True:
            if p.accept("NOT", "NULL"):
                col["nullable"] = False
            elif p.accept("NULL"):
                col["nullable"] = True
            elif p.accept("DEFAULT"):
                col["default"] = p.literal()
            elif p.accept("COMMENT"):
                col["comment"] = p.string()
            else:
                break
        t["columns"].append(col)
        if p.accept_p(")"):
            break
        p.expect_p(",")
    if p.accept("ENGINE"):
        p.expect_p("=")
        engine = p.ident()
        if engine.upper() != "OLAP":
            raise SqlError(f"Unknown engine '{engine}': the StarRocks stand-in models OLAP tables only")
    for kind in ("DUPLICATE", "PRIMARY", "UNIQUE", "AGGREGATE"):
        if p.accept(kind, "KEY"):
            if kind in ("UNIQUE", "AGGREGATE"):
                raise SqlError(f"{kind} KEY tables are not modelled by the StarRocks stand-in (Duplicate and Primary Key only)", 1105)
            t["key_type"] = kind
            t["key"] = p.name_list()
    if p.accept("COMMENT"):
        t["comment"] = p.string()
    if p.accept("PARTITION", "BY"):
        t["partition"] = partition_desc(p)
    if p.accept("DISTRIBUTED", "BY"):
        if p.accept("HASH"):
            t["distribution"] = p.name_list()
        else:
            p.expect("RANDOM")
            t["distribution"] = []
        if p.accept("BUCKETS"):
            t["buckets"] = p.int_()
    if p.accept("ORDER", "BY"):
        t["order_by"] = p.name_list()
    if p.accept("PROPERTIES"):
        t["properties"] = p.props()
    p.end()
    names = {c["name"] for c in t["columns"]}
    for k in t["key"] + (t["distribution"] or []) + ([t["partition"]["column"]] if t["partition"] else []):
        if k not in names:
            raise SqlError(f"Key column '{k}' is not a column of table '{t['name']}'", 1105)
    return t


def partition_desc(p):
    kind = "RANGE" if p.accept("RANGE") else None
    if kind is None:
        p.expect("LIST")
        kind = "LIST"
    cols = p.name_list()
    if len(cols) != 1:
        raise SqlError("The StarRocks stand-in models partitioning by one column only", 1105)
    parts = []
    p.expect_p("(")
    while not p.accept_p(")"):
        p.expect("PARTITION")
        name = p.ident()
        p.expect("VALUES")
        if kind == "RANGE":
            if p.accept("LESS", "THAN"):
                parts.append({"name": name, "upper": partition_value(p)})
            else:
                p.expect_p("[")
                lower = partition_value(p)
                p.expect_p(",")
                upper = partition_value(p)
                p.expect_p(")")
                parts.append({"name": name, "lower": lower, "upper": upper})
        else:
            p.expect("IN")
            p.expect_p("(")
            values = [p.literal()]
            while p.accept_p(","):
                values.append(p.literal())
            p.expect_p(")")
            parts.append({"name": name, "values": values})
        p.accept_p(",")
    return {"kind": kind, "column": cols[0], "partitions": parts}


def where_clause(p):
    """WHERE a = "x" [AND b LIKE "y"] → list of (column lower, op, value)."""
    conds = []
    if not p.accept("WHERE"):
        return conds
    while True:
        col = p.ident().lower()
        if p.accept("LIKE"):
            op = "like"
        else:
            p.expect_p("=")
            op = "="
        conds.append((col, op, p.literal()))
        if not p.accept("AND"):
            return conds


def order_limit(p):
    order, limit = [], None
    if p.accept("ORDER", "BY"):
        while True:
            col = p.ident()
            desc = p.accept("DESC")
            if not desc:
                p.accept("ASC")
            order.append((col, desc))
            if not p.accept_p(","):
                break
    if p.accept("LIMIT"):
        limit = p.int_()
    return order, limit


def show(p):
    p.i += 1
    if p.accept("DATABASES"):
        p.end()
        return {"kind": "show_databases"}
    full = p.accept("FULL")
    if p.accept("TABLES"):
        db = p.ident() if p.accept("FROM") or p.accept("IN") else None
        p.end()
        return {"kind": "show_tables", "db": db, "full": full}
    temporary = p.accept("TEMPORARY")
    if p.accept("PARTITIONS"):
        p.expect("FROM")
        db, name = p.qname()
        where = where_clause(p)
        order, limit = order_limit(p)
        p.end()
        return {"kind": "show_partitions", "db": db, "name": name, "where": where,
                "order": order, "limit": limit, "temporary": temporary}
    if p.accept("CREATE", "TABLE"):
        db, name = p.qname()
        p.end()
        return {"kind": "show_create_table", "db": db, "name": name}
    for what in ("EXPORT", "LOAD"):
        if p.accept(what):
            db = p.ident() if p.accept("FROM") else None
            where = where_clause(p)
            order, limit = order_limit(p)
            p.end()
            return {"kind": "show_" + what.lower(), "db": db, "where": where, "order": order, "limit": limit}
    return None  # SHOW VARIABLES etc.: mysql-mimic


def alter_table(p):
    p.i += 2
    db, name = p.qname()
    if p.accept("SWAP", "WITH"):
        other = p.ident()
        p.end()
        return {"kind": "swap", "db": db, "name": name, "other": other}
    raise SqlError("ALTER TABLE: the StarRocks stand-in models only ALTER TABLE t SWAP WITH t2", 1105)


def export(p):
    p.expect("EXPORT", "TABLE")
    e = {"kind": "export", "partitions": None, "columns": None, "properties": {}, "broker": {}}
    e["db"], e["table"] = p.qname()
    if p.accept("PARTITION"):
        e["partitions"] = p.name_list()
    if p.peek()[0] == "punct" and p.peek()[1] == "(":
        e["columns"] = p.name_list()
    p.expect("TO")
    e["path"] = p.string()
    if p.accept("PROPERTIES"):
        e["properties"] = p.props()
    p.expect("WITH", "BROKER")
    if p.peek()[0] != "eof" and p.peek()[1] != "(":
        p.i += 1  # a broker name: ignored from v2.5 on (unloading/Export.md)
    if p.peek()[1] == "(":
        e["broker"] = p.props()
    p.end()
    return e


def data_desc(p):
    """One DATA INFILE (...) INTO TABLE ... clause of a Broker Load."""
    p.expect("DATA", "INFILE")
    d = {"paths": [], "partitions": None, "column_separator": "\t", "row_delimiter": "\n",
         "format": "CSV", "format_options": {}, "columns": None, "set": {}, "negative": False}
    p.expect_p("(")
    d["paths"].append(p.string())
    while p.accept_p(","):
        d["paths"].append(p.string())
    p.expect_p(")")
    d["negative"] = p.accept("NEGATIVE")
    p.expect("INTO", "TABLE")
    d["table"] = p.ident()
    if p.accept("PARTITION"):
        d["partitions"] = p.name_list()
    if p.accept("COLUMNS", "TERMINATED", "BY"):
        d["column_separator"] = p.string()
    if p.accept("ROWS", "TERMINATED", "BY"):
        d["row_delimiter"] = p.string()
    if p.accept("FORMAT", "AS"):
        d["format"] = (p.string() if p.peek()[0] == "str" else p.ident()).upper()
    while p.peek()[0] == "punct" and p.peek()[1] == "(":
        # (k = v ...) format options, or (c1, c2, ...) the column list
        if p.peek(2)[1] == "=":
            p.expect_p("(")
            while not p.accept_p(")"):
                k = p.ident().lower()
                p.expect_p("=")
                d["format_options"][k] = p.literal()
                p.accept_p(",")
        else:
            d["columns"] = p.name_list()
    if p.accept("COLUMNS", "FROM", "PATH", "AS"):
        raise SqlError("COLUMNS FROM PATH AS is not modelled by the StarRocks stand-in", 1105)
    if p.accept("SET"):
        p.expect_p("(")
        while not p.accept_p(")"):
            col = p.ident()
            p.expect_p("=")
            t = p.peek()
            if t[0] in ("word", "ident") and t[1].upper() not in ("NULL", "TRUE", "FALSE"):
                d["set"][col] = ("col", p.ident())
            else:
                d["set"][col] = ("lit", p.literal())
            p.accept_p(",")
    if p.accept("WHERE"):
        raise SqlError("WHERE in a Broker Load is not modelled by the StarRocks stand-in", 1105)
    return d


def broker_load(p):
    p.expect("LOAD", "LABEL")
    job = {"kind": "broker_load", "data": [], "broker": {}, "properties": {}}
    job["db"], job["label"] = p.qname()
    p.expect_p("(")
    job["data"].append(data_desc(p))
    while p.accept_p(","):
        job["data"].append(data_desc(p))
    p.expect_p(")")
    p.expect("WITH", "BROKER")
    if p.peek()[0] != "eof" and p.peek()[1] != "(" and not p.is_word("PROPERTIES"):
        p.i += 1  # a broker name
    if p.peek()[1] == "(":
        job["broker"] = p.props()
    if p.accept("PROPERTIES"):
        job["properties"] = p.props()
    p.end()
    return job


def files_fn(p):
    p.expect("FILES")
    return p.props()


def insert(p):
    p.expect("INSERT")
    overwrite = p.accept("OVERWRITE")
    if not overwrite:
        p.expect("INTO")
    if p.is_word("FILES") and p.peek(1)[1] == "(":
        props = files_fn(p)
        return {"kind": "insert_files", "props": props, "select": p.rest()}
    if overwrite:
        raise SqlError("INSERT OVERWRITE is not modelled by the StarRocks stand-in", 1105)
    ins = {"kind": "insert", "partitions": None, "label": None, "columns": None}
    ins["db"], ins["table"] = p.qname()
    if p.accept("PARTITION"):
        ins["partitions"] = p.name_list()
    if p.accept("WITH", "LABEL"):
        ins["label"] = p.ident()
    if p.peek()[1] == "(" and not p.is_word("SELECT", k=1):
        ins["columns"] = p.name_list()
    if p.accept("VALUES"):
        rows = []
        while True:
            p.expect_p("(")
            row = [p.literal()]
            while p.accept_p(","):
                row.append(p.literal())
            p.expect_p(")")
            rows.append(row)
            if not p.accept_p(","):
                break
        p.end()
        ins["values"] = rows
        return ins
    if not p.is_word("SELECT", "WITH"):
        p.fail("expected VALUES or SELECT")
    start = p.i
    # SELECT <list> FROM FILES(...) [WHERE ...]: the stand-in reads the files itself.
    depth, j = 0, p.i
    while j < len(p.toks):
        t = p.toks[j]
        if t[0] == "punct":
            depth += t[1].count("(") - t[1].count(")")
        if depth == 0 and t[0] == "word" and t[1].upper() == "FROM" and j + 1 < len(p.toks) \
                and p.toks[j + 1][0] == "word" and p.toks[j + 1][1].upper() == "FILES":
            select_list = p.sql[p.toks[start + 1][2]:t[2]].strip()
            p.i = j + 1
            ins["files"] = files_fn(p)
            ins["select_list"] = [c.strip().strip("`") for c in select_list.split(",")]
            p.end()
            return ins
        j += 1
    ins["select"] = p.rest()
    return ins


def admin(p):
    p.expect("ADMIN")
    if p.accept("SET", "FRONTEND", "CONFIG"):
        props = p.props()
        p.end()
        return {"kind": "admin_set_config", "config": props}
    if p.accept("SHOW", "FRONTEND", "CONFIG"):
        like = p.string() if p.accept("LIKE") else None
        p.end()
        return {"kind": "admin_show_config", "like": like}
    raise SqlError("ADMIN: the StarRocks stand-in models ADMIN SET/SHOW FRONTEND CONFIG only", 1105)
