#!/usr/bin/env bash
# The long chaos soak (RELIABILITY.md, "Chaos soak"): the same harness as
# the test command's short soak (tests/e2e_chaos.rs), with faults injected
# for SECS seconds (default 1800) at RATE records/s (default 200: tansu
# 0.6.0 on SQLite falls behind at 400 over 30 minutes). Needs root (tmpfs,
# ip netns) and tansu.
#
#   benches/chaos_soak.sh [SECS] [SEED] [RATE]
#
# The seed defaults to the current time and is printed first; the same seed
# replays the same stream and the same faults. The summary (faults by kind,
# recoveries, checkpoints, longest output stall, recovery times) ends the
# output, which is also kept in target/chaos-soak-SEED.log.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
export ADCLICK_CHAOS_SECS=${1:-1800}
export ADCLICK_CHAOS_SEED=${2:-$(date +%s)}
export ADCLICK_CHAOS_RATE=${3:-200}
cargo build --workspace --bins --features failpoints
cargo test --features failpoints --test e2e_chaos -- --nocapture --test-threads=1 2>&1 |
  tee "target/chaos-soak-$ADCLICK_CHAOS_SEED.log"
