#!/usr/bin/env bash
# Local adclick cluster on 127.0.0.1: a coordinator, ADCLICK_NODES nodes,
# the database writer and the query service.
#
#   deploy/local/cluster.sh start|stop|status
#   deploy/local/cluster.sh start-one NAME   (re)start one process: coordinator,
#                                            node-<i>, writer or query
#
# Environment (all optional):
#   ADCLICK_BIN              adclick binary (default: target/debug/adclick, then PATH)
#   ADCLICK_CONFIG           config file passed to every process
#   ADCLICK_KAFKA_BOOTSTRAP  broker address (overrides kafka.bootstrap)
#   ADCLICK_NODES            number of nodes (default 3)
#   ADCLICK_RUN_DIR          pids and logs (default ./run/local)
#   ADCLICK_BASE_PORT        first port (default 7700): coordinator gRPC = BASE,
#                            coordinator ops = BASE+1, writer ops = BASE+2,
#                            query HTTP = BASE+3, node i gRPC = BASE+10+i,
#                            node i ops = BASE+40+i
#   ADCLICK_SERVING          set to 0 to skip the writer and query processes
#   ADCLICK_CHECKPOINT__STORE snapshot store (default $ADCLICK_RUN_DIR/snapshots)
#   ADCLICK_DATABASE__URL    the writer's and query service's database (default:
#                            the config file's [database] url, else
#                            sqlite://$ADCLICK_RUN_DIR/adclick.db)
#   ADCLICK_ADMIN_TOKEN      the admin API's bearer token (default: a random one
#                            generated into $ADCLICK_RUN_DIR/admin.token)
# It only ever stops the processes whose pid files it wrote.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
BIN=${ADCLICK_BIN:-}
if [[ -z "$BIN" ]]; then
  if [[ -x "$root/target/debug/adclick" ]]; then BIN="$root/target/debug/adclick"; else BIN=$(command -v adclick || true); fi
fi
NODES=${ADCLICK_NODES:-3}
RUN_DIR=${ADCLICK_RUN_DIR:-$PWD/run/local}
BASE=${ADCLICK_BASE_PORT:-7700}
PIDS="$RUN_DIR/pids"
LOGS="$RUN_DIR/logs"

die() { echo "cluster.sh: $*" >&2; exit 1; }

# Whether $ADCLICK_CONFIG has a `url` key in its [database] table.
config_sets_database_url() {
  [[ -n "${ADCLICK_CONFIG:-}" && -f "$ADCLICK_CONFIG" ]] || return 1
  awk '/^[[:space:]]*\[/ { in_db = ($0 ~ /^[[:space:]]*\[database\][[:space:]]*(#.*)?$/) }
       in_db && /^[[:space:]]*url[[:space:]]*=/ { found = 1 }
       END { exit !found }' "$ADCLICK_CONFIG"
}

env_args() {
  export ADCLICK_CLUSTER__COORDINATOR="127.0.0.1:$BASE"
  export ADCLICK_CLUSTER__NODES="$NODES"
  if [[ -n "${ADCLICK_KAFKA_BOOTSTRAP:-}" ]]; then export ADCLICK_KAFKA__BOOTSTRAP="$ADCLICK_KAFKA_BOOTSTRAP"; fi
  if [[ -n "${ADCLICK_CONFIG:-}" ]]; then export ADCLICK_CONFIG; fi
  # Each run directory has its own snapshot store unless one is given.
  export ADCLICK_CHECKPOINT__STORE="${ADCLICK_CHECKPOINT__STORE:-$RUN_DIR/snapshots}"
  # ...and its own database, unless one is given (here or in the config
  # file): a database left in the working directory by an earlier run holds
  # offsets of that run's topic.
  if [[ -z "${ADCLICK_DATABASE__URL:-}" ]] && ! config_sets_database_url; then
    export ADCLICK_DATABASE__URL="sqlite://$RUN_DIR/adclick.db"
  fi
  # The admin API's bearer token: ADCLICK_ADMIN_TOKEN when it is set (the
  # coordinator inherits it), otherwise a random one generated once into
  # $RUN_DIR/admin.token (mode 600) and kept across restarts.
  if [[ -z "${ADCLICK_ADMIN_TOKEN:-}" ]]; then
    TOKEN_FILE="$RUN_DIR/admin.token"
    if [[ ! -s "$TOKEN_FILE" ]]; then
      (umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$TOKEN_FILE")
    fi
    export ADCLICK_ADMIN__TOKEN_FILE="$TOKEN_FILE"
  fi
}

launch() { # name, args...
  local name=$1; shift
  "$BIN" "$@" >"$LOGS/$name.log" 2>&1 &
  echo $! >"$PIDS/$name.pid"
}

# Alive = exists and is not a zombie waiting to be reaped. One read of
# /proc decides: a zombie reaped between two checks (kill -0, then a read
# that finds nothing) must not count as alive.
alive() {
  [[ -f "$1" ]] || return 1
  local pid stat; pid=$(cat "$1")
  stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
  [[ ! "$stat" =~ ^[0-9]+\ \(.*\)\ Z ]]
}

start_named() { # name
  case "$1" in
    coordinator) launch coordinator coordinator --ops-addr "127.0.0.1:$((BASE + 1))" ;;
    node-*)
      local i=${1#node-}
      [[ "$i" =~ ^[0-9]+$ ]] || die "bad node name '$1'"
      launch "node-$i" node --node-id "node-$i" --listen "127.0.0.1:$((BASE + 10 + i))" --ops-addr "127.0.0.1:$((BASE + 40 + i))"
      ;;
    writer) launch writer writer --ops-addr "127.0.0.1:$((BASE + 2))" ;;
    query) launch query query --listen "127.0.0.1:$((BASE + 3))" ;;
    *) die "unknown process '$1' (coordinator, node-<i>, writer, query)" ;;
  esac
}

start_one() {
  [[ -n "${1:-}" ]] || die "usage: $0 start-one NAME"
  [[ -n "$BIN" && -x "$BIN" ]] || die "adclick binary not found; build it (cargo build) or set ADCLICK_BIN"
  mkdir -p "$PIDS" "$LOGS"
  if alive "$PIDS/$1.pid"; then die "$1 is already running"; fi
  env_args
  # Keep the earlier log of a crashed process for post-mortems.
  [[ -f "$LOGS/$1.log" ]] && mv "$LOGS/$1.log" "$LOGS/$1.$(date +%s%N).log"
  start_named "$1"
}

start() {
  [[ -n "$BIN" && -x "$BIN" ]] || die "adclick binary not found; build it (cargo build) or set ADCLICK_BIN"
  [[ "$NODES" =~ ^[0-9]+$ && "$NODES" -ge 1 ]] || die "ADCLICK_NODES must be a positive integer, got '$NODES'"
  mkdir -p "$PIDS" "$LOGS"
  for f in "$PIDS"/*.pid; do
    [[ -e "$f" ]] || continue
    if alive "$f"; then die "already running ($(basename "$f" .pid)); run '$0 stop' first"; fi
    rm -f "$f"
  done
  env_args
  start_named coordinator
  for ((i = 0; i < NODES; i++)); do
    start_named "node-$i"
  done
  if [[ "${ADCLICK_SERVING:-1}" != 0 ]] && "$BIN" help writer >/dev/null 2>&1; then
    start_named writer
    start_named query
    echo "query API and dashboard: http://127.0.0.1:$((BASE + 3))/"
    echo "operations console: http://127.0.0.1:$((BASE + 3))/console"
  fi
  if [[ -n "${TOKEN_FILE:-}" ]]; then
    echo "admin token: $TOKEN_FILE (generated; set ADCLICK_ADMIN_TOKEN to choose one)"
    echo "coordinator: 127.0.0.1:$BASE  (adclickctl --coordinator 127.0.0.1:$BASE --token-file $TOKEN_FILE status)"
  else
    echo "admin token: from ADCLICK_ADMIN_TOKEN"
    echo "coordinator: 127.0.0.1:$BASE  (ADCLICK_ADMIN_TOKEN=... adclickctl --coordinator 127.0.0.1:$BASE status)"
  fi
  echo "logs: $LOGS"
}

stop() {
  [[ -d "$PIDS" ]] || { echo "nothing to stop"; return 0; }
  local pids=()
  for f in "$PIDS"/*.pid; do
    [[ -e "$f" ]] || continue
    if alive "$f"; then
      local pid; pid=$(cat "$f")
      kill -CONT "$pid" 2>/dev/null || true
      kill -TERM "$pid" 2>/dev/null || true
      pids+=("$pid")
    fi
  done
  for _ in $(seq 1 100); do
    local left=0
    for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && left=1; done
    [[ $left == 0 ]] && break
    sleep 0.1
  done
  for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  rm -f "$PIDS"/*.pid
  echo "stopped ${#pids[@]} process(es)"
}

status() {
  [[ -d "$PIDS" ]] || { echo "not started"; return 0; }
  for f in "$PIDS"/*.pid; do
    [[ -e "$f" ]] || continue
    local name; name=$(basename "$f" .pid)
    if alive "$f"; then echo "$name: running (pid $(cat "$f"))"; else echo "$name: stopped"; fi
  done
}

case "${1:-}" in
  start) start ;;
  start-one) start_one "${2:-}" ;;
  stop) stop ;;
  status) status ;;
  *) die "usage: $0 start|stop|status|start-one NAME" ;;
esac
