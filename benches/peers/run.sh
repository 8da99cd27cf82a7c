#!/usr/bin/env bash
# The side-by-side benchmark (BENCHMARKS.md, "adclick and Apache Flink"):
# one JSON-lines file from `adclick gen --out`, read by adclick's core path
# (benches/src/bin/core_path_file.rs) and by the same job on Apache Flink
# (benches/peers/flink_job.py, PyFlink's local mini-cluster, Java 17).
#
#   benches/peers/run.sh [EVENTS] [ADS] [MINUTES]   (default 3000000 2000000 5)
#
# Installs apache-flink into target/flink-venv on first use. Run it on an
# otherwise idle machine; it prints one table row per engine.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PATH"
events=${1:-3000000}
ads=${2:-2000000}
minutes=${3:-5}
venv=target/flink-venv
if [[ ! -x $venv/bin/python ]] || ! $venv/bin/python -c 'import pyflink' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q apache-flink
fi
# Generating the file is not timed: the debug build the tests use (same
# features, so neither build undoes the other) will do.
cargo build --workspace --bins --features failpoints
cargo build --release -p adclick-benches --bin core_path_file
file=target/peers-$events-$ads-$minutes.json
if [[ ! -s $file ]]; then
  # Malformed and duplicate records off: Flink's job neither dead-letters
  # nor dedups, so both engines count the same records.
  env -u ADCLICK_CONFIG target/debug/adclick gen --seed 11 --events "$events" --ads "$ads" \
    --minutes "$minutes" --disorder-ms 5000 --malformed-every 0 --duplicate-every 0 --out "$file"
fi
echo "== adclick (core path, one thread)"
target/release/core_path_file "$file" 3
for p in 1 2; do
  echo "== Apache Flink $($venv/bin/python -c 'import importlib.metadata as m; print(m.version("apache-flink"))'), parallelism $p"
  "$venv/bin/python" benches/peers/flink_job.py "$file" "$p"
done
