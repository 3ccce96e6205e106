"""Where the StarRocks stand-in keeps rows and reaches object storage.

Rows live in a real engine: one chdb session per stand-in instance (its own data
directory), so loads and exports run real reads and writes. Object storage is the test
stack's S3 server (moto): exports are written with chdb's INSERT INTO FUNCTION s3(),
loads read objects back with s3(), and the export's final rename (copy + delete) goes
through the S3 API (boto3, installed with moto).
"""

import json
import threading
from urllib.parse import quote

import boto3
import chdb
from botocore.config import Config

from grammar import SqlError


class Engine:
    """One chdb session; calls are serialised (one chdb connection runs one query at a
    time, TEST-INFRA.md)."""

    def __init__(self, data_dir):
        self.conn = chdb.connect(f"file:{data_dir}")
        self.lock = threading.RLock()
        for setting in ("session_timezone = 'UTC'", "output_format_decimal_trailing_zeros = 1",
                        "output_format_json_quote_64bit_integers = 1", "output_format_json_quote_decimals = 1"):
            self.run(f"SET {setting}")

    def run(self, sql, fmt="TSVRaw", db=None):
        """Runs one statement; with `db`, unqualified names resolve in that database
        (the session's current one). The USE and the statement run under one lock:
        the chdb connection's current database is shared by every client session."""
        with self.lock:
            try:
                if db is not None:
                    self.conn.query(f"USE {q(db)}")
                return self.conn.query(sql, fmt).bytes().decode()
            except Exception as e:  # chdb raises RuntimeError with ClickHouse's text
                raise SqlError(clean_error(str(e)), 1105) from None

    def select(self, sql, db=None):
        """(column names, ClickHouse types, rows of str-or-None) of a SELECT."""
        out = self.run(sql, "JSONCompact", db)
        if not out.strip():
            return [], [], []
        doc = json.loads(out)
        names = [m["name"] for m in doc["meta"]]
        types = [m["type"] for m in doc["meta"]]
        return names, types, [[text(v) for v in row] for row in doc["data"]]

    def scalar(self, sql):
        return self.run(sql).strip()


def text(v):
    """A JSON value as the text a MySQL client receives (booleans as 1/0)."""
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, (list, dict)):
        return json.dumps(v)
    return str(v)


def clean_error(text):
    """ClickHouse's message without its stack trace and version suffix."""
    i = text.find("Code: ")
    text = text[i:] if i >= 0 else text
    return text.split("\nStack trace")[0].split(" (version ")[0].strip()


def q(name):
    return "`" + name.replace("`", "``") + "`"


def s(text):
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


class S3Path:
    """An s3:// URL with the credentials and endpoint of a statement's properties
    (aws.s3.access_key, aws.s3.secret_key, aws.s3.endpoint, aws.s3.region: the keys of
    StarRocks' AWS S3 authentication, BROKER_LOAD.md / EXPORT.md / FILES.md)."""

    def __init__(self, url, props, default_endpoint):
        for scheme in ("s3://", "s3a://", "s3n://"):
            if url.startswith(scheme):
                rest = url[len(scheme):]
                break
        else:
            raise SqlError(f"Invalid path '{url}': the StarRocks stand-in reaches object "
                           "storage only through s3:// (or s3a://) paths", 1105)
        self.bucket, _, self.key = rest.partition("/")
        if not self.bucket:
            raise SqlError(f"Invalid path '{url}': no bucket", 1105)
        props = props or {}
        self.endpoint = (props.get("aws.s3.endpoint") or default_endpoint).rstrip("/")
        if "://" not in self.endpoint:
            self.endpoint = "http://" + self.endpoint
        self.access_key = props.get("aws.s3.access_key") or "test"
        self.secret_key = props.get("aws.s3.secret_key") or "test"
        self.region = props.get("aws.s3.region") or "us-east-1"

    def child(self, key):
        c = object.__new__(S3Path)
        c.__dict__.update(self.__dict__)
        c.key = key
        return c

    def url(self):
        return f"s3://{self.bucket}/{self.key}"

    def chdb_fn(self, fmt, structure=None):
        """The s3(...) table function for this path (the key may hold * globs)."""
        http = f"{self.endpoint}/{self.bucket}/{quote(self.key, safe='/*?{},')}"
        args = [s(http), s(self.access_key), s(self.secret_key), s(fmt)]
        if structure:
            args.append(s(structure))
        return "s3(" + ", ".join(args) + ")"

    def client(self):
        return boto3.client("s3", endpoint_url=self.endpoint, region_name=self.region,
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}))

    def list(self, prefix):
        c = self.client()
        keys, token = [], None
        while True:
            kw = {"Bucket": self.bucket, "Prefix": prefix}
            if token:
                kw["ContinuationToken"] = token
            r = c.list_objects_v2(**kw)
            keys += [o["Key"] for o in r.get("Contents", [])]
            if not r.get("IsTruncated"):
                return keys
            token = r["NextContinuationToken"]

    def rename(self, src_key, dst_key):
        c = self.client()
        c.copy_object(Bucket=self.bucket, Key=dst_key, CopySource={"Bucket": self.bucket, "Key": src_key})
        c.delete_object(Bucket=self.bucket, Key=src_key)

    def delete(self, key):
        self.client().delete_object(Bucket=self.bucket, Key=key)
