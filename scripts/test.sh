#!/usr/bin/env bash
# The test command (README): every unit, property and end-to-end test, then
# the Helm chart tests. End-to-end tests start real processes (tansu,
# PostgreSQL, moto, the cluster), so each test binary runs its tests one at
# a time on this 2-core machine. Afterwards, the tests must have left no
# file in the working tree (outside target/) and no process running.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
leftovers() { git status --porcelain --ignored 2>/dev/null | grep -v ' target/$' | sort || true; }
before=$(leftovers)
cargo build --locked --workspace --bins --features failpoints
cargo test --locked --workspace --features failpoints -- --test-threads=1
# The Helm chart and the container recipe: render, lint, validate, check every
# rendered config with the binary, and run the rendered workloads locally.
bash helm/tests/run.sh
after=$(leftovers)
if [[ "$before" != "$after" ]]; then
  echo "the tests left files in the working tree:" >&2
  diff <(echo "$before") <(echo "$after") >&2 || true
  exit 1
fi
sleep 1
if stray=$(pgrep -af "$PWD/target/(debug|release)/adclick" | grep -v pgrep); then
  echo "the tests left processes running:" >&2
  echo "$stray" >&2
  exit 1
fi
echo "all tests passed; nothing left behind"
