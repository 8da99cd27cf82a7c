"""Every adclick.toml the chart renders is one the binary accepts: for each
values file, each workload's container is given its mounted config and its
environment (ADCLICK_<SECTION>__<KEY> overrides included, Secrets resolved)
and `adclick config check --config FILE` must exit 0. A bad file must be
refused with the key named, so the check cannot pass by doing nothing.

The binary is $ADCLICK_BIN or target/debug/adclick. Without it the tests
fail under CI=true and skip loudly otherwise.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from chart_support import CHART, CI_VALUES, adclick_bin, objects, render, workloads
from local_pods import LocalCluster

WIRING = Path(__file__).with_name("wiring-values.yaml")
CASES = [*CI_VALUES, WIRING]
IMAGE_BINARIES = ("/usr/local/bin/adclick", "/usr/local/bin/adclickctl")


def check(binary: Path, config: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env}
    clean.pop("ADCLICK_CONFIG", None)
    return subprocess.run(
        [str(binary), "config", "check", "--config", str(config)],
        env=clean, capture_output=True, text=True, timeout=60,
    )


@pytest.mark.parametrize("values_file", CASES, ids=[p.name for p in CASES])
def test_every_rendered_config_passes_adclick_config_check(values_file, tmp_path):
    binary = adclick_bin()
    objs = objects(render([values_file]))
    cluster = LocalCluster(
        objs, tmp_path, {p: binary for p in IMAGE_BINARIES}, unresolved_secret="placeholder"
    )
    (cm,) = [o for o in objs if o["kind"] == "ConfigMap"]
    config = tmp_path / "adclick.toml"
    # The file exactly as rendered: no address or path is rewritten here.
    config.write_text(cm["data"]["adclick.toml"])
    checked = 0
    for w in workloads(objs):
        pod = next(p for p in cluster.pods if p.owner is w)
        args = pod.container["args"]
        assert f"--config=/etc/adclick/{next(iter(cm['data']))}" in args, args
        env = {k: v for k, v in cluster.env(pod, local=False).items() if k.startswith("ADCLICK_")}
        out = check(binary, config, env)
        assert out.returncode == 0, (
            f"{values_file.name}: the config of {pod.name} (env {sorted(env)}) is refused:\n"
            f"{out.stdout}{out.stderr}\n--- adclick.toml\n{config.read_text()}"
        )
        assert "valid" in out.stdout + out.stderr
        checked += 1
    assert checked == len(workloads(objs)) == 4


@pytest.mark.parametrize(
    "body,named",
    [
        ("[aggregate]\nreplicas = 0\n", "aggregate.replicas"),
        ("[job]\nwindow_sec = 60\n", "window_sec"),
        ("[cluster]\nnodes = \"three\"\n", "nodes"),
    ],
    ids=["out-of-range", "unknown-key", "wrong-type"],
)
def test_config_check_refuses_a_bad_file_naming_the_key(body, named, tmp_path):
    binary = adclick_bin()
    f = tmp_path / "adclick.toml"
    f.write_text(body)
    out = check(binary, f, {})
    assert out.returncode != 0, f"accepted {body!r}: {out.stdout}{out.stderr}"
    assert named in out.stdout + out.stderr, out.stdout + out.stderr
