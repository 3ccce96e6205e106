#!/usr/bin/env python3
"""yb_backup.py contract stand-in: YugabyteDB's backup script's command line and output,
doing the logical (YSQL) part of a backup and restore on PostgreSQL, for flow's tests.

Why: no YugabyteDB server runs on the test machines, but flow drives `yb_backup.py` as
an exec step and must parse what it prints. This command takes the same arguments as
yugabyte/yugabyte-db `managed/devops/bin/yb_backup.py` (commit 008a3b8; ENGINES-NEXT.md
section 3), prints the same JSON line on stdout and exits the same way, and does what
YSQL's logical path does, on PostgreSQL 15 (YSQLDump is plain `ysql_dump`, a pg_dump
fork; ENGINES-NEXT.md 3.3):

  create   one `pg_dump --create --format=custom` of the database of
           `--keyspace ysql.<db>` at `--ysql_host` (default: the first master's host) :
           `--ysql_port` (default 5433), from which YSQLDump is the schema as SQL (the
           real YSQLDump is `ysql_dump --create --schema-only`) and the archive itself
           stands in for the tablet snapshot files (data); uploaded with a metadata file
           and sha256 sidecars to `<backup_location>/keyspace-ysql.<db>` (or exactly
           `--backup_location` with `--no_auto_name`); prints
           {"snapshot_url": "<that location>"}.
  restore  downloads from the exact snapshot directory `--backup_location`, checks the
           sidecar checksums, renames the database in YSQLDump as the real script's
           `replace_db_name_cmd` does (sed, first match per line:
           `DATABASE <old>` -> `DATABASE <new>`, `\\connect <old>` -> `\\connect <new>`),
           runs it with psql, then loads the data (`pg_restore --data-only`, where the
           real script copies tablet files and runs `restore_snapshot`); prints
           {"success": true}.
  delete   removes the objects under `--backup_location`; prints {"success": true}.

Output contract, as in the real script's `run()`: the result is one JSON line on
stdout; on any failure it is {"error": "Backup exception: <text>"} (or
{"error": "Exception: <text>"} for an unexpected one) **and the exit code is still 0**;
an argument error exits 2 with argparse's usage text on stderr. Logs go to stderr in
the real script's format (`%(asctime)s %(levelname)s: %(message)s`).

S3 as the real script's s3cmd config: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY,
AWS_HOST_BASE (host:port of an S3-compatible endpoint; required here, the stand-in
never talks to AWS), PATH_STYLE_ACCESS=true for path-style addressing.
PostgreSQL: binaries from --local_ysql_dump_binary / --local_ysql_shell_binary or
$YB_BACKUP_STANDIN_PG_BIN; user and password through libpq's own variables (PGUSER,
PGPASSWORD), never on a command line.

Failure injection: YB_BACKUP_STANDIN_FAIL=<phase>[:kill]. Phases, in order:
create: `create_snapshot`, `upload`; restore: `download`, `checksum`, `import_snapshot`
(after the dump was loaded into the renamed database), `restore_snapshot`. Without
`:kill` the phase fails as the real script fails (error JSON, exit 0); with `:kill` the
process kills itself with SIGKILL at that point (no output, as after an OOM kill).

Cannot be emulated (see README.md): distributed snapshots, tablet/SST copies,
`import_snapshot` id remapping, colocation, PITR (`--restore_time`), YCQL keyspaces,
nfs/gcs/az storage, encryption keys.
"""

import argparse
import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from datetime import timedelta
from urllib.parse import urlsplit

METADATA_FILE_NAME = "SnapshotInfoPB"
SQL_DUMP_FILE_NAME = "YSQLDump"
DATA_FILE_NAME = "tablet-data.standin.pgdump"  # stands in for the tablet snapshot directories
UUID_ONLY_RE = re.compile("^[0-9a-f-]{32,36}$")
# A database name the stand-in hands to libpq: an unquoted PostgreSQL identifier. Any
# other text could be taken as a connection string by `--dbname` (`=` or a URI) or
# fall back to the user's default database (empty).
PLAIN_DB_NAME_RE = re.compile(r"^[a-z_][a-z0-9_$]{0,62}$")
INJECT_PHASES = ("create_snapshot", "upload", "download", "checksum", "import_snapshot", "restore_snapshot")


class BackupException(Exception):
    """A failure reported the way the real script reports it."""


# ---------------------------------------------------------------- arguments


def check_arg_range(min_value, max_value):
    def check_fn(value):
        value = int(value)
        if value < min_value or value > max_value:
            raise argparse.ArgumentTypeError(
                "Expected a value between {} and {}, got {}".format(min_value, max_value, value))
        return value

    return check_fn


def check_uuid(uuid_str):
    if not UUID_ONLY_RE.match(uuid_str):
        raise argparse.ArgumentTypeError("Expected a UUID, got {}".format(uuid_str))
    return uuid_str


def parse_arguments(argv):
    """The real script's argument surface (yb_backup.py `parse_arguments`, 008a3b8)."""
    p = argparse.ArgumentParser(description="Backup/restore YB table (PostgreSQL stand-in)")
    p.add_argument("--masters", required=True, help="Comma separated list of masters for the cluster")
    p.add_argument("--ts_web_hosts_ports")
    p.add_argument("--k8s_config", required=False,
                   help="JSON {namespace: KUBECONFIG path}; validated, kubectl is not run")
    p.add_argument("--keyspace", action="append")
    p.add_argument("--table", action="append")
    p.add_argument("--table_uuid", action="append")
    p.add_argument("--local_yb_admin_binary")
    p.add_argument("--remote_yb_admin_binary")
    p.add_argument("--local_ysql_dump_binary", help="pg_dump to use (default $YB_BACKUP_STANDIN_PG_BIN/pg_dump)")
    p.add_argument("--remote_ysql_dump_binary")
    p.add_argument("--local_ysql_shell_binary", help="psql to use (default $YB_BACKUP_STANDIN_PG_BIN/psql)")
    p.add_argument("--remote_ysql_shell_binary")
    p.add_argument("--ssh_key_path", required=False)
    p.add_argument("--ssh_user", default="yugabyte")
    p.add_argument("--remote_user", default="yugabyte")
    p.add_argument("--ssh_port", default="54422")
    p.add_argument("--no_ssh", action="store_true", default=False)
    p.add_argument("--mac", action="store_true", default=False)
    p.add_argument("--ysql_port", help="YSQL port (default 5433)")
    p.add_argument("--ysql_host", help="YSQL host (default: the first master's host)")
    p.add_argument("--ysql_enable_auth", action="store_true",
                   help="the stand-in connects over TCP; give the password in PGPASSWORD")
    p.add_argument("--disable_checksums", action="store_true")
    location = p.add_mutually_exclusive_group(required=True)
    location.add_argument("--backup_location")
    location.add_argument("--s3bucket", required=False, help=argparse.SUPPRESS)
    p.add_argument("--no_auto_name", action="store_true")
    p.add_argument("--no_snapshot_deleting", action="store_true")
    p.add_argument("--snapshot_id", type=check_uuid)
    p.add_argument("--verbose", required=False, action="store_true")
    p.add_argument("-j", "--parallelism", type=check_arg_range(1, 100), default=8)
    p.add_argument("--storage_type", choices=["s3", "nfs", "gcs", "az"], default="s3")
    p.add_argument("command", choices=["create", "restore", "restore_keys", "delete"])
    p.add_argument("--certs_dir", required=False)
    p.add_argument("--sse", required=False, action="store_true")
    p.add_argument("--backup_keys_source", required=False)
    p.add_argument("--restore_keys_destination", required=False)
    p.add_argument("--nfs_storage_path", required=False)
    p.add_argument("--restore_time", required=False)
    p.add_argument("--upload", dest="upload", action="store_true")
    p.add_argument("--no_upload", dest="upload", action="store_false")
    p.set_defaults(upload=True)
    return p.parse_args(argv)


def keyspace_type(keyspace):
    return "ysql" if "." in keyspace and keyspace.split(".")[0].lower() == "ysql" else "ycql"


def keyspace_name(keyspace):
    return keyspace.split(".")[1] if "." in keyspace else keyspace


def check_db_name(name, what):
    if not PLAIN_DB_NAME_RE.match(name):
        raise BackupException(
            "{} {!r} is not a plain database name: use lowercase letters, digits, _ and $, "
            "starting with a letter or _, at most 63 characters".format(what, name))
    return name


# ---------------------------------------------------------------- the database rename


def get_db_name(dump_text):
    """`get_db_name_cmd`: sed -n '/CREATE DATABASE/{s|CREATE DATABASE||;s|WITH.*||;p}'."""
    names = []
    for line in dump_text.splitlines():
        if "CREATE DATABASE" in line:
            line = line.replace("CREATE DATABASE", "", 1)
            line = re.sub(r"WITH.*", "", line, count=1)
            names.append(line)
    return "\n".join(names).strip()


def replace_db_name(dump_text, old_name, new_name):
    """`replace_db_name_cmd`: sed 's|DATABASE old|DATABASE new|;s|\\\\connect old|\\\\connect new|',
    the first match on each line, no word boundary (so a name that is a prefix of
    another is replaced inside it too, as the real script does)."""
    out = []
    for line in dump_text.split("\n"):
        line = line.replace("DATABASE " + old_name, "DATABASE " + new_name, 1)
        line = line.replace("\\connect " + old_name, "\\connect " + new_name, 1)
        out.append(line)
    return "\n".join(out)


# ---------------------------------------------------------------- the backup


class Timer:
    """Phases logged like the real script's BackupTimer."""

    def __init__(self):
        self.times = [time.time()]
        self.phases = ["START"]

    def phase(self, msg):
        self.times.append(time.time())
        self.phases.append(msg)
        logging.info("Starting phase {}: {}".format(len(self.phases) - 1, msg))

    def summary(self):
        lines = ["Summary of run:"]
        for i in range(1, len(self.phases)):
            end = self.times[i + 1] if i + 1 < len(self.times) else time.time()
            lines.append("{} : PHASE {} : {}".format(timedelta(seconds=end - self.times[i]), i, self.phases[i]))
        lines.append("Total runtime: {}".format(timedelta(seconds=time.time() - self.times[0])))
        logging.info("[app] " + "\n".join(lines))


class StandinBackup:
    def __init__(self, args):
        self.args = args
        self.timer = Timer()
        self.inject = os.environ.get("YB_BACKUP_STANDIN_FAIL", "")

    # ------------------------------------------------------------ failure injection

    def checkpoint(self, phase):
        want, _, mode = self.inject.partition(":")
        if want != phase:
            return
        if mode == "kill":
            logging.error("injected kill at phase %s", phase)
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        raise BackupException("injected failure at phase {} (YB_BACKUP_STANDIN_FAIL)".format(phase))

    # ------------------------------------------------------------ checks

    def post_process_arguments(self):
        a = self.args
        if self.inject:
            want, _, mode = self.inject.partition(":")
            if want not in INJECT_PHASES or mode not in ("", "kill"):
                raise BackupException(
                    "YB_BACKUP_STANDIN_FAIL={!r} is not <phase>[:kill] with a phase among {}".format(
                        self.inject, ", ".join(INJECT_PHASES)))
        a.backup_location = a.backup_location or a.s3bucket
        if a.storage_type != "s3":
            raise BackupException(
                "--storage_type {} is not emulated by the PostgreSQL stand-in (only s3)".format(a.storage_type))
        if a.restore_time:
            raise BackupException("--restore_time (point-in-time restore) cannot be emulated on PostgreSQL")
        if a.snapshot_id:
            raise BackupException("--snapshot_id (an existing distributed snapshot) cannot be emulated on PostgreSQL")
        if a.table or a.table_uuid:
            raise BackupException("--table / --table_uuid (YCQL tables) are not emulated by the PostgreSQL stand-in")
        if a.keyspace and keyspace_type(a.keyspace[0]) != "ysql":
            raise BackupException(
                "keyspace {!r} is YCQL; the stand-in emulates only YSQL databases (--keyspace ysql.<db>)".format(
                    a.keyspace[0]))
        for keyspace in a.keyspace or []:
            check_db_name(keyspace_name(keyspace), "the database of --keyspace {!r},".format(keyspace))
        if a.k8s_config is not None:
            config = json.loads(a.k8s_config)  # a ValueError is an "Exception:" as in the real script
            if not isinstance(config, dict):
                raise BackupException("Couldn't load k8s configs")
        key, secret = os.getenv("AWS_ACCESS_KEY_ID"), os.getenv("AWS_SECRET_ACCESS_KEY")
        if not key or not secret:
            raise BackupException(
                "Missing either AWS access key or secret key for S3 "
                "in AWS_ACCESS_KEY_ID or AWS_SECRET_ACCESS_KEY environment variables.")
        if not os.getenv("AWS_HOST_BASE"):
            raise BackupException(
                "AWS_HOST_BASE is not set: the stand-in talks only to an S3-compatible endpoint "
                "(set AWS_HOST_BASE=host:port and PATH_STYLE_ACCESS=true)")
        if not a.backup_location.startswith("s3://") or not urlsplit(a.backup_location).netloc:
            raise BackupException(
                "--backup_location {!r} is not an s3://bucket/path location".format(a.backup_location))
        masters = [m for m in a.masters.split(",") if m.strip()]
        if not masters:
            raise BackupException("--masters is empty; give host:port[,host:port...]")
        self.ysql_host = a.ysql_host or masters[0].split(":")[0]
        self.ysql_port = a.ysql_port or "5433"
        pg_bin = os.getenv("YB_BACKUP_STANDIN_PG_BIN", "")
        self.pg_dump = a.local_ysql_dump_binary or (os.path.join(pg_bin, "pg_dump") if pg_bin else "pg_dump")
        self.psql = a.local_ysql_shell_binary or (os.path.join(pg_bin, "psql") if pg_bin else "psql")
        # pg_restore beside the pg_dump in use
        self.pg_restore = os.path.join(os.path.dirname(self.pg_dump), "pg_restore") \
            if os.path.dirname(self.pg_dump) else "pg_restore"

    # ------------------------------------------------------------ S3

    def s3(self):
        import boto3
        from botocore.config import Config

        host = os.environ["AWS_HOST_BASE"]
        endpoint = host if "://" in host else "http://" + host
        style = "path" if os.getenv("PATH_STYLE_ACCESS", "false") == "true" else "virtual"
        return boto3.client(
            "s3", endpoint_url=endpoint, region_name=os.getenv("AWS_DEFAULT_REGION", "us-east-1"),
            config=Config(s3={"addressing_style": style}, retries={"max_attempts": 3}))

    @staticmethod
    def split_location(location):
        parts = urlsplit(location)
        return parts.netloc, parts.path.strip("/")

    def upload(self, client, data, location):
        bucket, key = self.split_location(location)
        logging.info("Uploading %d bytes to %s", len(data), location)
        client.put_object(Bucket=bucket, Key=key, Body=data)

    def download(self, client, location):
        bucket, key = self.split_location(location)
        try:
            return client.get_object(Bucket=bucket, Key=key)["Body"].read()
        except client.exceptions.NoSuchKey:
            raise BackupException("Failed to download {}: no such object".format(location))
        except Exception as ex:  # botocore ClientError: bucket missing, access denied ...
            raise BackupException("Failed to download {}: {}".format(location, ex))

    # ------------------------------------------------------------ tools

    def run_program(self, args, **kwargs):
        """Like the real script's run_program: output captured; a failure names the command."""
        if self.args.verbose:
            logging.info("Running command: %s", " ".join(args))
        try:
            return subprocess.run(args, check=True, capture_output=True, **kwargs).stdout
        except FileNotFoundError:
            raise BackupException("Tool binary not found at {}".format(args[0]))
        except subprocess.CalledProcessError as e:
            output = (e.stderr or b"").decode("utf-8", "replace").strip()
            logging.error("Failed to run command [[ %s ]]: code=%s output=%s", " ".join(args), e.returncode, output)
            raise BackupException("{} failed with code {}: {}".format(os.path.basename(args[0]), e.returncode, output))

    def pg_args(self):
        return ["--host=" + self.ysql_host, "--port=" + self.ysql_port]

    # ------------------------------------------------------------ commands

    def create(self):
        a = self.args
        if not a.keyspace:
            raise BackupException("Need to specify --keyspace")
        if len(a.keyspace) != 1:
            raise BackupException("Only one keyspace supported. Found {} --keyspace keys.".format(len(a.keyspace)))
        db = keyspace_name(a.keyspace[0])
        location = a.backup_location.rstrip("/") if a.no_auto_name else \
            a.backup_location.rstrip("/") + "/keyspace-" + a.keyspace[0]
        logging.info("[app] Backing up keyspace: %s to %s", a.keyspace[0], a.backup_location)

        self.timer.phase("Create and upload snapshot metadata")
        snapshot_id = str(uuid.uuid4())
        logging.info("Snapshot started with id: %s", snapshot_id)
        self.checkpoint("create_snapshot")
        logging.info("[app] Creating ysql dump for DB '%s'", db)
        # One dump, one snapshot: schema (YSQLDump) and data come from the same archive.
        archive = self.run_program([self.pg_dump] + self.pg_args() + ["--create", "--format=custom", "--dbname=" + db])
        dump = self.run_program([self.pg_restore, "--create", "--schema-only", "--file=-"], input=archive)
        metadata = json.dumps({
            "format": "yb_backup.py PostgreSQL stand-in (JSON, not a SnapshotInfoPB protobuf)",
            "snapshot_id": snapshot_id, "keyspace": a.keyspace[0], "created_unix": time.time(),
        }).encode()
        if not a.upload:
            print(json.dumps({"snapshot_url": "UPLOAD_SKIPPED"}))
            return
        self.timer.phase("Upload snapshot directories")
        client = self.s3()
        self.checkpoint("upload")
        for name, data in ((METADATA_FILE_NAME, metadata), (SQL_DUMP_FILE_NAME, dump), (DATA_FILE_NAME, archive)):
            target = location + "/" + name
            if not a.disable_checksums:
                # sha256sum's line, as the real script's create_checksum_cmd writes it
                line = "{}  {}\n".format(hashlib.sha256(data).hexdigest(), name).encode()
                self.upload(client, line, target + ".sha256")
            self.upload(client, data, target)
        logging.info("[app] Backed up tables %s to %s successfully!", a.keyspace[0], location)
        print(json.dumps({"snapshot_url": location}))

    def fetch_checked(self, client, location):
        data = self.download(client, location)
        if not self.args.disable_checksums:
            expected = self.download(client, location + ".sha256").split(b" ", 1)[0].decode("ascii", "replace")
            actual = hashlib.sha256(data).hexdigest()
            if self.inject.partition(":")[0] == "checksum":
                self.checkpoint("checksum")
            if expected != actual:
                raise BackupException("Check-sum for {} is invalid".format(location))
        logging.info("Downloaded metadata file %s", location)
        return data

    def restore(self):
        a = self.args
        if a.keyspace and len(a.keyspace) > 1:
            raise BackupException("Only one --keyspace expected for the restore mode.")
        location = a.backup_location.rstrip("/")
        logging.info("Restoring backup from %s", location)
        client = self.s3()
        self.checkpoint("download")
        metadata = json.loads(self.fetch_checked(client, location + "/" + METADATA_FILE_NAME))
        dump = self.fetch_checked(client, location + "/" + SQL_DUMP_FILE_NAME).decode("utf-8")
        archive = self.fetch_checked(client, location + "/" + DATA_FILE_NAME)

        self.timer.phase("Create tables via YSQLDump")
        new_name = get_db_name(dump)
        if not new_name:
            raise BackupException("{} has no CREATE DATABASE line: not a dump of a YSQL database".format(
                SQL_DUMP_FILE_NAME))
        check_db_name(new_name, "the database in " + SQL_DUMP_FILE_NAME)
        if a.keyspace:
            old_name = new_name
            new_name = keyspace_name(a.keyspace[0])
            logging.info("[app] Renaming YSQL DB from '%s' into '%s'", old_name, new_name)
            dump = replace_db_name(dump, old_name, new_name)
        with tempfile.TemporaryDirectory(prefix="yb_backup_standin.") as tmp:
            dump_path = os.path.join(tmp, SQL_DUMP_FILE_NAME)
            with open(dump_path, "w", encoding="utf-8") as f:
                f.write(dump)
            # Stricter than ysqlsh in the real script (which goes on after an SQL error
            # and fails later): the first error fails the restore.
            self.run_program([self.psql] + self.pg_args() + [
                "--no-psqlrc", "--echo-all", "--set=ON_ERROR_STOP=1", "--dbname=postgres", "--file=" + dump_path])

            self.timer.phase("Import snapshot")
            self.checkpoint("import_snapshot")
            logging.info("Imported snapshot %s", metadata.get("snapshot_id"))

            self.timer.phase("Restore the snapshot")
            self.checkpoint("restore_snapshot")
            # The data (tablet files in the real script) into the database YSQLDump made;
            # triggers, and so foreign-key checks, are off while loading, as for SST files.
            data_path = os.path.join(tmp, DATA_FILE_NAME)
            with open(data_path, "wb") as f:
                f.write(archive)
            self.run_program([self.pg_restore] + self.pg_args() + [
                "--data-only", "--disable-triggers", "--exit-on-error", "--jobs=%d" % a.parallelism,
                "--dbname=" + new_name, data_path])
        logging.info("Restored backup successfully!")
        print(json.dumps({"success": True}))

    def delete(self):
        client = self.s3()
        bucket, prefix = self.split_location(self.args.backup_location)
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix + "/" if prefix else ""):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=bucket, Key=obj["Key"])
        logging.info("Deleted backup %s successfully!", self.args.backup_location)
        print(json.dumps({"success": True}))

    def restore_keys(self):
        if self.args.restore_keys_destination:
            raise BackupException("universe encryption keys are not emulated by the PostgreSQL stand-in")
        logging.info("Restored backup universe keys successfully!")
        print(json.dumps({"success": True}))

    def run(self):
        """The real script's `run()`: every failure becomes an error JSON line, exit 0."""
        try:
            self.post_process_arguments()
            {"create": self.create, "restore": self.restore,
             "restore_keys": self.restore_keys, "delete": self.delete}[self.args.command]()
        except BackupException as ex:
            print(json.dumps({"error": "Backup exception: {}".format(ex)}))
        except Exception as ex:
            print(json.dumps({"error": "Exception: {}".format(ex)}))
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            self.timer.summary()


def main():
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s: %(message)s")
    args = parse_arguments(sys.argv[1:])  # exits 2 on a usage error, as argparse does
    StandinBackup(args).run()


if __name__ == "__main__":
    main()
