#!/usr/bin/env bash
# The test command (README): every unit, property and end-to-end test.
# End-to-end tests start real processes (tansu, PostgreSQL, the cluster), so
# each test binary runs its tests one at a time on this 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --locked --workspace --bins --features failpoints
cargo test --locked --workspace --features failpoints -- --test-threads=1
# The Helm chart and the container recipe: render, lint, validate, check every
# rendered config with the binary, and run the rendered workloads locally.
bash helm/tests/run.sh
