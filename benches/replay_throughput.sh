#!/usr/bin/env bash
# Recalculation throughput: `adclickctl replay` of a 1M-event range beside a
# live 3-node cluster (the job has already counted the range), and how long
# the writer then takes to store it, on a fresh tansu broker (memory
# storage) and SQLite.
#
#   cargo build --release && benches/replay_throughput.sh [EVENTS]   (default 1000000)
#
# The stream is `adclick gen` with 10 minutes of event time from
# 2021-03-03T00:00:00Z over 5,000 ads; the replay covers its first 9 minutes
# (the last one waits for the live job's allowed lateness), so it reads the
# whole input and rewrites 9/10 of its rows. Figures: the replay's own
# duration (`adclickctl replays`: start to end-marker acknowledged), the
# records it read per second, the time from the start of the replay until
# the writer has deleted superseded rows and recorded it, and then
# `adclick reconcile` of the same range (release build, must match).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${ADCLICK_BIN:-target/release/adclick}
CTL=$(dirname "$BIN")/adclickctl
N=${1:-1000000}
TANSU=${TANSU:-$(command -v tansu || echo "$HOME/.cargo/bin/tansu")}
[[ -x $BIN && -x $CTL ]] || { echo "missing $BIN or $CTL: cargo build --release" >&2; exit 1; }
[[ -x $TANSU ]] || { echo "missing tansu (bash .ci/run installs it)" >&2; exit 1; }
dir=$(mktemp -d)
pids=()
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
base=$(( ($(free_port) % 20000) + 30000 ))
export ADCLICK_BIN=$BIN ADCLICK_RUN_DIR=$dir/cluster ADCLICK_BASE_PORT=$base ADCLICK_NODES=3
cleanup() {
  bash deploy/local/cluster.sh stop >/dev/null 2>&1 || true
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT

port=$(free_port)
"$TANSU" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
  >"$dir/tansu.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
cat >"$dir/adclick.toml" <<TOML
[kafka]
bootstrap = "127.0.0.1:$port"
input_partitions = 4
[database]
url = "sqlite://$dir/adclick.db"
TOML
export ADCLICK_CONFIG=$dir/adclick.toml ADCLICK_KAFKA_BOOTSTRAP=127.0.0.1:$port
bash deploy/local/cluster.sh start >/dev/null
ctl() { "$CTL" --coordinator "127.0.0.1:$base" "$@"; }
until ctl -o json status 2>/dev/null | grep -q '"generation": [1-9]'; do sleep 0.5; done
"$BIN" gen --config "$dir/adclick.toml" --seed 1 --events "$N" --minutes 10 --ads 5000 \
  --malformed-every 0 --duplicate-every 0 2>&1 | grep -E "^produced"
from=2021-03-03T00:00:00Z to=2021-03-03T00:09:00Z
echo "waiting until the live job has closed [$from, $to) for good..."
until out=$(ctl -o json replay --from "$from" --to "$to" --no-wait 2>"$dir/replay.err"); do
  grep -q "allowed lateness\|no watermark" "$dir/replay.err" || { cat "$dir/replay.err" >&2; exit 1; }
  sleep 2
done
id=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])' <<<"$out")
start=$(date +%s.%N)
while ctl -o json replays | python3 -c 'import json,sys; r=[x for x in json.load(sys.stdin) if x["id"]==sys.argv[1]][0]; sys.exit(0 if r["state"]=="running" else 1)' "$id"; do
  sleep 0.2
done
ctl replays
applied=""
until [[ -n $applied ]]; do
  sleep 0.2
  applied=$(sqlite3 "$dir/adclick.db" "SELECT applied_at_ms FROM replays_applied" 2>/dev/null || true)
done
end=$(date +%s.%N)
python3 - "$id" "$start" "$end" <<PY
import json, subprocess, sys
rid, start, end = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
r = [x for x in json.loads(subprocess.check_output(["$CTL", "--coordinator", "127.0.0.1:$base", "-o", "json", "replays"])) if x["id"] == rid][0]
print(f"replay {rid}: {r['state']}, {r['records_read']} records in {r['duration_s']} s = {r['records_read'] / max(r['duration_s'], 1e-9):,.0f} records/s; "
      f"{r['counts_written']} counts and {r['top_n_written']} top-N lists written")
print(f"start of the replay until the writer stored it: {end - start + 0.0:.1f} s (polled)")
PY
sqlite3 "$dir/adclick.db" "SELECT counts_deleted, top_n_deleted FROM replays_applied" | sed 's/^/rows deleted (counts|top_n): /'
# The billing check over the replayed range, on the same data: a release
# figure for reconciliation, and proof that the replay left it exact.
rstart=$(date +%s.%N)
"$BIN" reconcile --config "$dir/adclick.toml" --from "$from" --to "$to" | grep -E "^RESULT|cells"
rend=$(date +%s.%N)
echo "reconcile of [$from, $to): $(echo "$rend - $rstart" | bc -l | cut -c1-5) s"
