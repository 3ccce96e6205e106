"""Column types of the StarRocks stand-in: StarRocks type names, their ClickHouse
storage types, and conversion of loaded text to values.

Why: rows loaded from CSV, Parquet, VALUES or a SELECT are converted here once, in one
place, so every load path filters and converts a bad value the same way.
"""

import datetime
import decimal

INT_RANGES = {"tinyint": (8, 4), "smallint": (16, 6), "int": (32, 11), "integer": (32, 11),
              "bigint": (64, 20), "largeint": (128, 40)}


class ColType:
    def __init__(self, name, args=()):
        self.name = {"integer": "int", "bool": "boolean", "text": "string"}.get(name, name)
        self.args = args
        if self.name not in INT_RANGES and self.name not in (
                "boolean", "float", "double", "decimal", "decimalv3", "char", "varchar",
                "string", "date", "datetime", "json"):
            raise ValueError(f"Unsupported column type '{name}' (the StarRocks stand-in models "
                             "integers, boolean, float, double, decimal, char, varchar, string, date, datetime)")

    def sr_text(self):
        """The type as SHOW CREATE TABLE prints it."""
        if self.name in INT_RANGES:
            return f"{self.name}({INT_RANGES[self.name][1]})"
        if self.name in ("decimal", "decimalv3"):
            p, s = (self.args + (10, 0))[:2] if self.args else (10, 0)
            return f"decimal({p}, {s})"
        if self.name == "varchar":
            return f"varchar({self.args[0] if self.args else 1})"
        if self.name == "char":
            return f"char({self.args[0] if self.args else 1})"
        if self.name == "string":
            return "varchar(65533)"
        return self.name

    def range_type(self):
        """The type name in SHOW PARTITIONS' Range text."""
        return {"int": "INT", "bigint": "BIGINT", "tinyint": "TINYINT", "smallint": "SMALLINT",
                "largeint": "LARGEINT", "date": "DATE", "datetime": "DATETIME",
                "varchar": "VARCHAR", "char": "CHAR", "string": "VARCHAR"}.get(self.name, self.name.upper())

    def ch(self):
        if self.name in INT_RANGES:
            return f"Int{INT_RANGES[self.name][0]}"
        if self.name in ("decimal", "decimalv3"):
            p, s = (self.args + (10, 0))[:2] if self.args else (10, 0)
            return f"Decimal({p}, {s})"
        return {"boolean": "Bool", "float": "Float32", "double": "Float64", "date": "Date32",
                "datetime": "DateTime64(0, 'UTC')"}.get(self.name, "String")

    def parse(self, text):
        """The value of loaded text; raises ValueError when it does not convert."""
        if text is None:
            return None
        t = text.strip() if self.name not in ("char", "varchar", "string", "json") else text
        if self.name in INT_RANGES:
            v = int(t)
            bits = INT_RANGES[self.name][0]
            if not -(1 << (bits - 1)) <= v < (1 << (bits - 1)):
                raise ValueError("out of range")
            return v
        if self.name == "boolean":
            low = t.lower()
            if low in ("1", "true"):
                return True
            if low in ("0", "false"):
                return False
            raise ValueError("not a boolean")
        if self.name in ("float", "double"):
            return float(t)
        if self.name in ("decimal", "decimalv3"):
            d = decimal.Decimal(t)
            if not d.is_finite():
                raise ValueError("not a number")
            p, s = (self.args + (10, 0))[:2] if self.args else (10, 0)
            d = d.quantize(decimal.Decimal(1).scaleb(-s))
            if len(d.as_tuple().digits) > p:
                raise ValueError("too many digits")
            return d
        if self.name == "date":
            return datetime.date.fromisoformat(t[:10])
        if self.name == "datetime":
            return datetime.datetime.fromisoformat(t)
        if self.name in ("char", "varchar") and self.args and len(t.encode()) > self.args[0]:
            raise ValueError(f"longer than {self.args[0]} bytes")
        return t

    def literal(self, v):
        """A ClickHouse literal for a parsed value."""
        if v is None:
            return "NULL"
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float, decimal.Decimal)):
            return repr(v) if isinstance(v, float) else str(v)
        if isinstance(v, datetime.datetime):
            return "'" + v.strftime("%Y-%m-%d %H:%M:%S") + "'"
        if isinstance(v, datetime.date):
            return "'" + v.isoformat() + "'"
        return "'" + str(v).replace("\\", "\\\\").replace("'", "\\'") + "'"

    def zero(self):
        """A filler for a NOT NULL column of a deleted row (only its key counts)."""
        if self.name in INT_RANGES or self.name in ("float", "double", "decimal", "decimalv3"):
            return 0
        if self.name == "boolean":
            return False
        if self.name == "date":
            return datetime.date(1970, 1, 1)
        if self.name == "datetime":
            return datetime.datetime(1970, 1, 1)
        return ""

    def key_text(self, v):
        """A value as SHOW PARTITIONS prints partition keys."""
        if isinstance(v, datetime.datetime):
            return v.strftime("%Y-%m-%d %H:%M:%S")
        return str(v)

    def min_value(self):
        """The lower bound of a first `VALUES LESS THAN` partition (StarRocks prints the
        type's minimum, e.g. keys: [0000-01-01] for DATE)."""
        if self.name in INT_RANGES:
            return -(1 << (INT_RANGES[self.name][0] - 1))
        if self.name == "date":
            return "0000-01-01"
        if self.name == "datetime":
            return "0000-01-01 00:00:00"
        raise ValueError(f"RANGE partitioning by a {self.name} column is not modelled")

    def max_value(self):
        if self.name in INT_RANGES:
            return (1 << (INT_RANGES[self.name][0] - 1)) - 1
        if self.name == "date":
            return "9999-12-31"
        if self.name == "datetime":
            return "9999-12-31 23:59:59"
        raise ValueError(f"RANGE partitioning by a {self.name} column is not modelled")

    def bound(self, text):
        """A partition bound as a comparable value (MIN/MAX as None)."""
        if text in ("0000-01-01", "0000-01-01 00:00:00"):
            return None
        return self.parse(text)
