# shellcheck shell=bash
# Installs what the real-server test stack needs, only what is missing.
# Sourced by scripts/services, which sets APT_PACKAGES to what the requested servers
# need (ClickHouse 18.16, MariaDB 10.11, PostgreSQL 15, pgcopydb, curl, graphviz).
# pip (into $FLOW_VENV): chdb (modern ClickHouse engine), moto (S3 + EC2), lz4 and
# clickhouse-cityhash (block compression for the chdb front), mysql-mimic (MySQL
# protocol of the StarRocks stand-in, support/starrocks_standin/), boto3 (S3 for the
# yb_backup.py stand-in; moto depends on it too).

APT_PACKAGES=()
PIP_PACKAGES=("chdb==4.4.0" "moto[server]" "lz4" "clickhouse-cityhash" "mysql-mimic==3.0.5" "boto3")

apt_missing() {
  local p status
  for p in "${APT_PACKAGES[@]}"; do
    status="$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)"
    [[ "$status" == "install ok installed" ]] || printf '%s\n' "$p"
  done
}

ensure_apt_packages() {
  local missing
  mapfile -t missing < <(apt_missing)
  ((${#missing[@]} == 0)) && return 0
  [[ "$(id -u)" == 0 ]] || die "missing packages ${missing[*]}; run as root or install them: apt-get install ${missing[*]}"
  say "installing apt packages: ${missing[*]}"
  # Package scripts must not start system-wide daemons on default ports: the stack
  # runs its own servers. Debian consults policy-rc.d; add a temporary one if absent.
  local policy=/usr/sbin/policy-rc.d own_policy=0
  if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod +x "$policy"
    own_policy=1
  fi
  local rc=0
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >"$FLOW_RUN_DIR/apt.log" 2>&1; then
    say "apt-get install failed; running apt-get update once and retrying"
    if apt-get update -q >>"$FLOW_RUN_DIR/apt.log" 2>&1; then
      apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$FLOW_RUN_DIR/apt.log" 2>&1 || rc=$?
    else
      rc=$?
    fi
  fi
  ((own_policy)) && rm -f "$policy"
  ((rc == 0)) || die "apt-get failed (exit $rc); see $FLOW_RUN_DIR/apt.log"
}

venv_ok() {
  [[ -x "$FLOW_VENV/bin/python" ]] || return 1
  [[ -x "$FLOW_VENV/bin/moto_server" ]] || return 1
  "$FLOW_VENV/bin/python" - <<'PY' >/dev/null 2>&1
import importlib.metadata as m, lz4.block, moto, chdb, clickhouse_cityhash.cityhash, mysql_mimic, boto3
assert m.version("chdb") == "4.4.0"
assert m.version("mysql-mimic") == "3.0.5"
PY
}

ensure_pip_packages() {
  venv_ok && return 0
  say "installing pip packages into $FLOW_VENV: ${PIP_PACKAGES[*]}"
  if [[ ! -x "$FLOW_VENV/bin/python" ]]; then
    python3 -m venv "$FLOW_VENV" >"$FLOW_RUN_DIR/pip.log" 2>&1 ||
      die "python3 -m venv failed (on Debian: apt-get install python3-venv); see $FLOW_RUN_DIR/pip.log"
  fi
  "$FLOW_VENV/bin/python" -m pip install -q "${PIP_PACKAGES[@]}" >>"$FLOW_RUN_DIR/pip.log" 2>&1 ||
    die "pip install failed; see $FLOW_RUN_DIR/pip.log"
  venv_ok || die "pip packages installed but not importable; see $FLOW_RUN_DIR/pip.log"
}
