#!/usr/bin/env bash
# Log-watcher throughput: `adclick ship` lines/s into the broker, next to a
# plain producer (`adclick gen`, the same records) in the same run, on a
# fresh tansu broker (memory storage).
#
#   cargo build --release && benches/ship_throughput.sh [EVENTS]   (default 1000000)
#
# The log files come from `adclick gen --log-dir` (half the clicks in the
# raw form, rotated every 100k lines). ship's time is from its start until
# its ship_lines_total reaches the number of lines; gen's is its own report
# (the same records, produced first to the same topic).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${ADCLICK_BIN:-target/release/adclick}
N=${1:-1000000}
TANSU=${TANSU:-$(command -v tansu || echo "$HOME/.cargo/bin/tansu")}
[[ -x $BIN ]] || { echo "missing $BIN: cargo build --release" >&2; exit 1; }
[[ -x $TANSU ]] || { echo "missing tansu (bash .ci/run installs it)" >&2; exit 1; }
dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

port=$(free_port)
"$TANSU" broker --listener-url "tcp://127.0.0.1:$port" --advertised-listener-url "tcp://127.0.0.1:$port" \
  >"$dir/tansu.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
cat >"$dir/adclick.toml" <<TOML
[kafka]
bootstrap = "127.0.0.1:$port"
input_partitions = 4
TOML
gen=("$BIN" gen --config "$dir/adclick.toml" --seed 1 --events "$N" --minutes 10
  --malformed-every 0 --duplicate-every 0)

# The plain producer first (it also creates the topics ship writes to).
"${gen[@]}" 2>&1 | grep -E "^produced" | sed 's/^/gen (plain producer): /'
"${gen[@]}" --log-dir "$dir/logs" --log-rotate-lines 100000 2>/dev/null
lines=$(cat "$dir"/logs/clicks.log* | wc -l)
bytes=$(cat "$dir"/logs/clicks.log* | wc -c)

ops=$(free_port)
start=$(date +%s.%N)
"$BIN" ship --config "$dir/adclick.toml" --state-file "$dir/ship.state" --ops-addr "127.0.0.1:$ops" \
  "$dir/logs/clicks.log*" >"$dir/ship.log" 2>&1 &
pids+=($!)
shipped=0
while (( shipped < lines )); do
  sleep 0.2
  shipped=$(curl -s "http://127.0.0.1:$ops/metrics" | awk '/^ship_lines_total/ {print int($2)}')
  shipped=${shipped:-0}
done
end=$(date +%s.%N)
ship_secs=$(echo "$end - $start" | bc -l)
echo "ship: $lines lines ($bytes bytes) in ${ship_secs}s = $(echo "$lines / $ship_secs" | bc) lines/s"
