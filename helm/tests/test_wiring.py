"""The chart's wiring, run for real: every workload the chart renders (with
helm/tests/wiring-values.yaml) is started as a local process from its own
container spec (command, args, env, mounted config and volumes; see
local_pods.py for how Kubernetes is stood in for), against a tansu broker.
The cluster must form through the chart's addresses (coordinator Service,
node pod DNS names under the headless Service), every probe must answer on
the port the chart points it at, the helm test hook pod must succeed, and a
seeded stream from `adclick gen` must come out of the writer's SQLite
database exactly as its ground truth says, for every (ad, window, slice)
and every top-N list.

Needs the adclick and adclickctl binaries ($ADCLICK_BIN or target/debug) and
tansu ($TANSU, PATH or ~/.cargo/bin): under CI=true a missing one fails the
test, elsewhere it skips loudly. Run directories go to target/helm-wiring/.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import subprocess
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest

from chart_support import REPO, adclick_bin, adclickctl_bin, missing_tool, objects, render
from local_pods import LocalCluster, LocalPod, free_port

WIRING = Path(__file__).with_name("wiring-values.yaml")
GEN = ["--seed", "7", "--events", "3000", "--minutes", "3", "--disorder-ms", "1500"]


def tansu_bin() -> Path:
    cands = [os.environ.get("TANSU")] + [str(Path(d) / "tansu") for d in os.environ.get("PATH", "").split(os.pathsep)]
    cands.append(str(Path.home() / ".cargo" / "bin" / "tansu"))
    for c in cands:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return Path(c)
    missing_tool("tansu", "cargo install tansu --version 0.6.0 --locked --features dynostore,libsql (bash .ci/run does)")


def wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@pytest.fixture
def run_dir() -> Path:
    d = REPO / "target" / "helm-wiring" / f"run-{os.getpid()}-{int(time.time())}"
    d.mkdir(parents=True)
    return d


@pytest.fixture
def broker(run_dir):
    binary = tansu_bin()
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = open(run_dir / "tansu.log", "wb")
    proc = subprocess.Popen(
        [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url],
        cwd=run_dir, env={"PATH": os.environ.get("PATH", ""), "RUST_LOG": "warn"},
        stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
    )
    log.close()
    try:
        wait_port(port, 30)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def wait_until(what: str, timeout: float, cond, cluster: LocalCluster):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        dead = [p.name for p in cluster.pods if p.proc and p.proc.poll() is not None]
        assert not dead, f"while waiting for {what}: {dead} exited"
        ok, last = cond()
        if ok:
            return last
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last}")


def all_probes(cluster: LocalCluster, kind: str):
    def cond():
        res = {p.name: cluster.probe(p, kind) for p in cluster.pods}
        bad = {n: r for n, r in res.items() if r[0] != 200}
        return not bad, bad
    return cond


def ctl_status(ctl: Path, coordinator: str) -> dict | None:
    out = subprocess.run([str(ctl), "--coordinator", coordinator, "-o", "json", "status"],
                         capture_output=True, text=True, timeout=20, env={"PATH": os.environ.get("PATH", "")})
    return json.loads(out.stdout) if out.returncode == 0 else None


def read_db(path: Path):
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        counts = {(s, a, w): (c, i) for s, a, w, c, i in
                  con.execute("SELECT slice, ad_id, window_start, clicks, impressions FROM counts")}
        top = {(s, m, e): [(x["ad_id"], x["clicks"]) for x in json.loads(ads)] for s, m, e, ads in
               con.execute("SELECT slice, window_minutes, window_end, ads FROM top_n")}
    finally:
        con.close()
    return counts, top


def differences(db, truth) -> list[str]:
    counts, top = db
    want = {(c["slice"], c["ad_id"], c["window_start"]): (c["clicks"], c["impressions"]) for c in truth["counts"]}
    out = [f"count {k}: want {v}, got {counts.get(k)}" for k, v in want.items() if counts.get(k) != v]
    out += [f"extra count {k}" for k in counts if k not in want]
    want_top = {(t["slice"], t["window_minutes"], t["window_end"]): [tuple(a) for a in t["ads"]] for t in truth["top"]}
    out += [f"top {k}: want {v}, got {top.get(k)}" for k, v in want_top.items() if top.get(k) != v]
    out += [f"extra top {k}" for k, ads in top.items() if k not in want_top and ads]
    return out


def local_config(cluster: LocalCluster, pod: LocalPod) -> Path:
    return pod.mounts["/etc/adclick"] / "adclick.toml"


def test_rendered_chart_forms_a_cluster_and_counts_exactly(run_dir, broker):
    binary, ctl = adclick_bin(), adclickctl_bin()
    objs = objects(render([WIRING], {"kafka": {"bootstrap": broker}}))
    cluster = LocalCluster(objs, run_dir, {"/usr/local/bin/adclick": binary, "/usr/local/bin/adclickctl": ctl})
    print(cluster.describe())
    (run_dir / "tables.txt").write_text(cluster.describe() + "\n")
    by_comp: dict[str, list[LocalPod]] = {}
    for p in cluster.pods:
        by_comp.setdefault(p.component, []).append(p)
    assert {c: len(ps) for c, ps in by_comp.items()} == {"coordinator": 1, "node": 3, "writer": 1, "query": 1}
    passed = False
    try:
        for p in cluster.pods:
            cluster.start(p)
        coord, writer, query = by_comp["coordinator"][0], by_comp["writer"][0], by_comp["query"][0]
        cfg = tomllib.loads(local_config(cluster, coord).read_text())

        # Probes, as the kubelet runs them: startup, then readiness.
        wait_until("startup probes", 60, all_probes(cluster, "startupProbe"), cluster)
        wait_until("readiness probes", 120, all_probes(cluster, "readinessProbe"), cluster)

        # The coordinator, through its Service address, sees the pool the chart
        # declared: node ids are the StatefulSet pod names.
        coordinator = cluster.rewrite(coord, cfg["cluster"]["coordinator"])
        node_names = sorted(p.name for p in by_comp["node"])

        def formed():
            s = ctl_status(ctl, coordinator)
            if not s or s.get("generation", 0) < 1 or s.get("state") != "running":
                return False, s
            alive = sorted(n["node"] for n in s["nodes"] if n["alive"])
            running = all(a["state"] == "running" and a["node"] in node_names for a in s["actors"])
            return alive == node_names and running and len(s["actors"]) > 0, s

        status = wait_until("the cluster to form", 120, formed, cluster)
        kinds = [a["actor"].rsplit("-", 1)[0] for a in status["actors"]]
        assert kinds.count("aggregate") == cfg["aggregate"]["replicas"] == 3
        assert kinds.count("map") == cfg["kafka"]["input_partitions"]
        assert kinds.count("reduce") == 1
        assert {a["node"] for a in status["actors"]} == set(node_names), "actors spread over every node"

        # `helm test`: the hook pod, run from its own spec.
        (hook,) = cluster.hooks
        r = cluster.run_hook(hook)
        assert r.returncode == 0, f"helm test pod failed: {r.stdout}{r.stderr}"
        assert "generation" in r.stdout

        # A seeded stream and its ground truth.
        truth_path = run_dir / "truth.json"
        gen = subprocess.run(
            [str(binary), "gen", "--config", str(local_config(cluster, coord)), *GEN, "--truth", str(truth_path)],
            capture_output=True, text=True, timeout=180, cwd=run_dir, env={"PATH": os.environ.get("PATH", "")},
        )
        assert gen.returncode == 0, gen.stderr
        truth = json.loads(truth_path.read_text())
        assert truth["counts"] and truth["top"]

        wcfg = tomllib.loads(local_config(cluster, writer).read_text())
        db = Path(wcfg["database"]["url"].removeprefix("sqlite://"))
        assert db.is_relative_to(run_dir / "pvc"), f"the database is not on the chart's volume: {db}"
        equal_since = [None]

        def exact():
            if not db.exists():
                return False, "no database yet"
            try:
                diff = differences(read_db(db), truth)
            except sqlite3.Error as e:
                return False, f"reading {db}: {e}"
            if diff:
                equal_since[0] = None
                return False, f"{len(diff)} differences, first: {diff[:5]}"
            equal_since[0] = equal_since[0] or time.monotonic()
            # equal on reads 3 s apart: rows still arriving would show
            return time.monotonic() - equal_since[0] > 3, "equal"

        wait_until("the database to equal the ground truth", 180, exact, cluster)

        # The query service reads the same file through the same volume.
        qaddr = cluster.rewrite(query, f"{query.owner['metadata']['name']}.{query.namespace}.svc.cluster.local:{query.container['ports'][0]['containerPort']}")
        w_ms = cfg["job"]["window_secs"] * 1000
        hot = [c for c in truth["counts"] if c["ad_id"] == "ad-hot" and c["slice"] == "*"]
        lo, hi = min(c["window_start"] for c in hot), max(c["window_start"] for c in hot) + w_ms
        with urllib.request.urlopen(f"http://{qaddr}/v1/ads/ad-hot/aggregated_count?from={lo}&to={hi}", timeout=5) as resp:
            body = json.loads(resp.read())
        assert body["count"] == sum(c["clicks"] for c in hot), body
        assert body["impressions"] == sum(c["impressions"] for c in hot), body

        # Still alive and healthy at the end.
        wait_until("liveness probes", 10, all_probes(cluster, "livenessProbe"), cluster)
        passed = True
    except BaseException:
        for p in cluster.pods:
            if p.log.exists():
                tail = p.log.read_text(errors="replace").splitlines()[-25:]
                print(f"----- {p.name} ({p.log})\n" + "\n".join(tail))
        raise
    finally:
        cluster.stop_all()
        for p in cluster.pods:
            assert p.proc is None or p.proc.poll() is not None, f"{p.name} still running"
    # A failed run keeps its directory (logs, command lines, tables, database).
    if passed:
        shutil.rmtree(run_dir, ignore_errors=True)
