#!/usr/bin/env bash
# Chart tests: renders, lints and validates helm/adclick, checks every
# rendered adclick.toml with `adclick config check`, and runs the rendered
# workloads locally against tansu (test_wiring.py).
#
#   bash helm/tests/run.sh            set up the venv if needed, run every test
#   bash helm/tests/run.sh --setup    only create/refresh the venv
#   bash helm/tests/run.sh -k lint    extra arguments go to pytest
#
# The venv lives in target/helm-venv; the tests write only to temporary
# directories and target/helm-wiring. Binaries: $ADCLICK_BIN or
# target/debug/adclick (+ adclickctl beside it), tansu on PATH or in
# ~/.cargo/bin; under CI=true a missing one fails its tests.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PATH"
venv=target/helm-venv
req=helm/tests/requirements.txt
if [[ ! -x $venv/bin/python ]] || ! cmp -s "$req" "$venv/requirements.txt"; then
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
  cp "$req" "$venv/requirements.txt"
fi
[[ "${1:-}" == --setup ]] && exit 0
export PYTHONDONTWRITEBYTECODE=1
exec "$venv/bin/python" -m pytest -c helm/tests/pytest.ini helm/tests "$@"
