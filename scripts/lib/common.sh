# shellcheck shell=bash
# Shared shell helpers of scripts/services.
# Sourced, not executed. Defines the project root, the run folder and small
# process helpers. Every server is started by us and stopped by the pid we recorded.

FLOW_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
FLOW_RUN_DIR="${FLOW_RUN_DIR:-$FLOW_ROOT/.run}"
FLOW_VENV="${FLOW_VENV:-$FLOW_ROOT/.venv}"

say() { printf '%s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# A free TCP port on 127.0.0.1 (bind to port 0, read what the kernel chose).
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# True if something accepts TCP connections on 127.0.0.1:$1.
port_open() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# True if the pid recorded in file $1 is a live process.
pid_alive() {
  local pid
  [[ -s "$1" ]] || return 1
  pid="$(cat "$1")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  # a zombie still answers kill -0; treat it as dead
  [[ "$(ps -o stat= -p "$pid" 2>/dev/null)" != Z* ]]
}

# stop_pidfile FILE NAME [SIGNAL]: send SIGNAL (default TERM) to the recorded pid,
# wait up to 20 s, then KILL.
stop_pidfile() {
  local file="$1" name="$2" sig="${3:-TERM}" pid i
  if ! pid_alive "$file"; then
    rm -f "$file"
    return 0
  fi
  pid="$(cat "$file")"
  kill "-$sig" "$pid" 2>/dev/null || true
  for ((i = 0; i < 200; i++)); do
    pid_alive "$file" || break
    sleep 0.1
  done
  if pid_alive "$file"; then
    say "$name (pid $pid) did not stop after $sig; sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      pid_alive "$file" || break
      sleep 0.1
    done
  fi
  rm -f "$file"
}

# start_daemon PIDFILE LOGFILE CMD...: start CMD in its own session, detached from
# our stdin/stdout; the child writes its own pid before exec, so the recorded pid
# is the server's pid, not a wrapper's.
start_daemon() {
  local pidfile="$1" log="$2"
  shift 2
  rm -f "$pidfile"
  # shellcheck disable=SC2016 # $$ and $@ are for the inner sh
  setsid sh -c 'echo $$ > "$0"; shift; exec "$@"' "$pidfile" _ "$@" </dev/null >>"$log" 2>&1 9>&- &
  local i
  for ((i = 0; i < 50; i++)); do
    [[ -s "$pidfile" ]] && return 0
    sleep 0.02
  done
  die "could not start $1 (no pid written); see $log"
}

# wait_until SECONDS NAME LOG PIDFILE CMD...: poll CMD until it succeeds; fail naming
# the server and its log if the time runs out or the process dies.
wait_until() {
  local secs="$1" name="$2" log="$3" pidfile="$4"
  shift 4
  local deadline=$((SECONDS + secs))
  while ((SECONDS < deadline)); do
    if "$@" >/dev/null 2>&1; then
      return 0
    fi
    if [[ -n "$pidfile" ]] && ! pid_alive "$pidfile"; then
      say "--- last lines of $log ---"
      tail -n 15 "$log" >&2 || true
      die "$name exited during startup; see $log"
    fi
    sleep 0.1
  done
  say "--- last lines of $log ---"
  tail -n 15 "$log" >&2 || true
  die "$name did not answer a query within ${secs}s; see $log"
}
