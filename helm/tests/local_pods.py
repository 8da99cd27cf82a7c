"""Runs the pods of a rendered chart as local processes on 127.0.0.1, doing
by hand what Kubernetes would do for them.

In Kubernetes every pod has its own IP, so all node pods listen on the same
ports (7800, 9800) and are told apart by address; here they share one
loopback address, so each (pod, containerPort) gets a port of its own. Two
tables make that explicit and are printed into the test log:

- the port table, (pod, containerPort) -> loopback port, used to rewrite a
  pod's own listen addresses (`0.0.0.0:7800` in its args or config becomes
  `127.0.0.1:<its port>`);
- the DNS table, (name, port) -> loopback port, with what cluster DNS and
  kube-proxy would resolve: `<svc>.<ns>.svc[.cluster.local]:<port>` of a
  ClusterIP Service goes to the targetPort of the (single) pod it selects, and
  `<pod>.<headless svc>.<ns>.svc[.cluster.local]:<port>` to that pod.

Volumes become directories: a PersistentVolumeClaim is one directory shared by
every pod that mounts the claim (that is what ReadWriteMany means), an
emptyDir one per pod, a ConfigMap or Secret volume its files. A pod's
mountPaths in its args, env and mounted config are rewritten to those
directories. Environment variables are resolved as the kubelet does (literal
values, the downward API, Secret and ConfigMap keys), and `$(VAR)` in command,
args and env values is expanded from the container's environment, with `$$`
as the escape. The image's ENTRYPOINT (read from deploy/docker/Dockerfile) and
its binaries in /usr/local/bin map to the locally built ones.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chart_support import dockerfile_entrypoint, selects

LISTEN_HOSTS = ("0.0.0.0", "[::]")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def expand_vars(text: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: defined variables are replaced, undefined
    references stay as written, $$ is a literal $."""
    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1)
        return env[name] if name in env else m.group(0)
    return re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)", sub, text)


def decode_secret(obj: dict[str, Any], key: str) -> str:
    if key in obj.get("stringData", {}):
        return obj["stringData"][key]
    return base64.b64decode(obj["data"][key]).decode()


@dataclass
class LocalPod:
    """One pod of a workload (or a bare Pod such as the helm test hook)."""

    name: str
    owner: dict[str, Any]
    spec: dict[str, Any]
    labels: dict[str, str]
    namespace: str
    dir: Path
    ports: dict[int, int] = field(default_factory=dict)  # containerPort -> loopback
    mounts: dict[str, Path] = field(default_factory=dict)  # mountPath -> local dir
    proc: subprocess.Popen | None = None

    @property
    def container(self) -> dict[str, Any]:
        return self.spec["containers"][0]

    @property
    def component(self) -> str:
        return self.labels.get("app.kubernetes.io/component", "")

    @property
    def log(self) -> Path:
        return self.dir / "container.log"

    def port_by_name(self, port: int | str) -> int:
        if isinstance(port, int):
            return port
        return next(p["containerPort"] for p in self.container.get("ports", []) if p["name"] == port)


class LocalCluster:
    """The pods of one rendering, mapped to loopback ports and directories."""

    def __init__(
        self,
        objs: list[dict[str, Any]],
        run_dir: Path,
        binaries: dict[str, Path],
        *,
        unresolved_secret: str | None = None,
    ):
        self.objs = objs
        self.run_dir = run_dir
        self.binaries = binaries  # image path -> local binary
        self.entrypoint = dockerfile_entrypoint()
        self.unresolved_secret = unresolved_secret
        self.secrets = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Secret"}
        self.configmaps = {o["metadata"]["name"]: o for o in objs if o["kind"] == "ConfigMap"}
        self.pods: list[LocalPod] = []
        self.hooks: list[LocalPod] = []
        for o in objs:
            ns = o["metadata"]["namespace"]
            if o["kind"] in ("Deployment", "StatefulSet"):
                tmpl = o["spec"]["template"]
                for i in range(o["spec"].get("replicas", 1)):
                    # StatefulSet pods are <name>-<ordinal>; Deployment pods
                    # would get a random suffix, which nothing here depends on.
                    name = f"{o['metadata']['name']}-{i}"
                    self.pods.append(LocalPod(name, o, tmpl["spec"], tmpl["metadata"]["labels"], ns, run_dir / "pods" / name))
            elif o["kind"] == "Pod":
                name = o["metadata"]["name"]
                self.hooks.append(LocalPod(name, o, o["spec"], o["metadata"].get("labels", {}), ns, run_dir / "pods" / name))
        for p in self.pods:
            for cp in p.container.get("ports", []):
                p.ports[cp["containerPort"]] = free_port()
        self.dns = self._dns_table()
        for p in self.pods + self.hooks:
            self._volumes(p)

    # -- tables ------------------------------------------------------------------

    def _dns_table(self) -> dict[tuple[str, int], int]:
        table: dict[tuple[str, int], int] = {}
        for svc in (o for o in self.objs if o["kind"] == "Service"):
            name, ns = svc["metadata"]["name"], svc["metadata"]["namespace"]
            spec = svc["spec"]
            selected = [p for p in self.pods if selects(spec["selector"], p.labels)]
            suffixes = [f"{ns}.svc.cluster.local", f"{ns}.svc"]
            for sp in spec["ports"]:
                for pod in selected:
                    local = pod.ports[pod.port_by_name(sp.get("targetPort", sp["port"]))]
                    if spec.get("clusterIP") == "None":
                        for sfx in suffixes:
                            table[(f"{pod.name}.{name}.{sfx}", sp["port"])] = local
                if selected and spec.get("clusterIP") != "None":
                    # kube-proxy would balance over every selected pod; the
                    # chart's ClusterIP Services here select one pod each.
                    pod = selected[0]
                    local = pod.ports[pod.port_by_name(sp.get("targetPort", sp["port"]))]
                    for host in [f"{name}.{s}" for s in suffixes] + [f"{name}.{ns}", name]:
                        table[(host, sp["port"])] = local
        return table

    def _volumes(self, pod: LocalPod) -> None:
        vols = {v["name"]: v for v in pod.spec.get("volumes", [])}
        for m in pod.container.get("volumeMounts", []):
            v = vols[m["name"]]
            if "persistentVolumeClaim" in v:
                local = self.run_dir / "pvc" / v["persistentVolumeClaim"]["claimName"]
            else:
                local = pod.dir / "volumes" / m["name"]
            local.mkdir(parents=True, exist_ok=True)
            pod.mounts[m["mountPath"]] = local

    def describe(self) -> str:
        lines = ["port table (pod, containerPort -> 127.0.0.1 port):"]
        for p in self.pods:
            for cp, lp in sorted(p.ports.items()):
                lines.append(f"  {p.name:28} {cp:5} -> {lp}")
        lines.append("DNS table (name:port -> 127.0.0.1 port):")
        for (host, port), lp in sorted(self.dns.items()):
            lines.append(f"  {host}:{port} -> {lp}")
        lines.append("volumes (pod, mountPath -> directory):")
        for p in self.pods + self.hooks:
            for mp, d in p.mounts.items():
                lines.append(f"  {p.name:28} {mp} -> {d}")
        return "\n".join(lines)

    # -- rewriting ---------------------------------------------------------------

    def rewrite(self, pod: LocalPod, text: str) -> str:
        """A pod's view of a string: mountPaths to directories, its own listen
        addresses to its loopback ports, Service and pod DNS names to theirs.
        One pass each, so a replacement is never rewritten again."""
        if pod.mounts:
            paths = sorted(pod.mounts, key=len, reverse=True)
            pat = re.compile(r"(?<![\w.-])(" + "|".join(map(re.escape, paths)) + r")(?=/|\"|'|\s|$)")
            text = pat.sub(lambda m: str(pod.mounts[m.group(1)]), text)

        def addr(m: re.Match) -> str:
            host, port = m.group("host"), int(m.group("port"))
            if host in LISTEN_HOSTS and port in pod.ports:
                return f"127.0.0.1:{pod.ports[port]}"
            if (host, port) in self.dns:
                return f"127.0.0.1:{self.dns[(host, port)]}"
            return m.group(0)
        return re.sub(r"(?P<host>\[[0-9a-fA-F:.]*\]|[A-Za-z0-9][A-Za-z0-9.-]*):(?P<port>\d{1,5})\b", addr, text)

    def env(self, pod: LocalPod, *, local: bool = True) -> dict[str, str]:
        """The container's environment as the kubelet builds it; with local,
        rewritten for this machine (see rewrite)."""
        out: dict[str, str] = {"HOSTNAME": pod.name}
        for e in pod.container.get("env", []) or []:
            if "value" in e:
                val = expand_vars(str(e["value"]), out)
            else:
                src = e["valueFrom"]
                if "fieldRef" in src:
                    val = {
                        "metadata.name": pod.name,
                        "metadata.namespace": pod.namespace,
                        "status.podIP": "127.0.0.1",
                        "spec.nodeName": "localhost",
                        "spec.serviceAccountName": pod.spec.get("serviceAccountName", "default"),
                    }[src["fieldRef"]["fieldPath"]]
                elif "secretKeyRef" in src:
                    ref = src["secretKeyRef"]
                    if ref["name"] in self.secrets:
                        val = decode_secret(self.secrets[ref["name"]], ref["key"])
                    elif self.unresolved_secret is not None:
                        val = self.unresolved_secret_value(e["name"])
                    else:
                        raise KeyError(f"{pod.name}: env {e['name']} needs Secret {ref['name']}, which the chart did not render")
                elif "configMapKeyRef" in src:
                    ref = src["configMapKeyRef"]
                    val = self.configmaps[ref["name"]]["data"][ref["key"]]
                else:
                    raise KeyError(f"{pod.name}: env {e['name']}: unsupported source {src}")
            out[e["name"]] = self.rewrite(pod, val) if local else val
        return out

    def unresolved_secret_value(self, var: str) -> str:
        """A stand-in for a key of an existing Secret the chart only names."""
        if var == "ADCLICK_DATABASE__URL":
            return "postgres://adclick@db.invalid:5432/adclick"
        return self.unresolved_secret or "placeholder"

    def write_volumes(self, pod: LocalPod) -> None:
        """ConfigMap and Secret volume files, rewritten for this pod."""
        vols = {v["name"]: v for v in pod.spec.get("volumes", [])}
        for m in pod.container.get("volumeMounts", []):
            v = vols[m["name"]]
            d = pod.mounts[m["mountPath"]]
            if "configMap" in v:
                for k, text in self.configmaps[v["configMap"]["name"]]["data"].items():
                    (d / k).write_text(self.rewrite(pod, text))
            elif "secret" in v:
                sec = self.secrets[v["secret"]["secretName"]]
                for k in sec.get("data", {}):
                    (d / k).write_text(decode_secret(sec, k))

    def command(self, pod: LocalPod, env: dict[str, str]) -> list[str]:
        c = pod.container
        argv = list(c.get("command") or self.entrypoint) + list(c.get("args") or [])
        argv = [self.rewrite(pod, expand_vars(a, env)) for a in argv]
        if argv[0] not in self.binaries:
            raise KeyError(f"{pod.name}: {argv[0]} is not a binary of the image ({sorted(self.binaries)})")
        argv[0] = str(self.binaries[argv[0]])
        return argv

    # -- processes ---------------------------------------------------------------

    def prepare(self, pod: LocalPod) -> tuple[list[str], dict[str, str]]:
        pod.dir.mkdir(parents=True, exist_ok=True)
        self.write_volumes(pod)
        env = self.env(pod)
        argv = self.command(pod, env)
        # Only the pod's own variables (plus PATH): nothing of the test's
        # environment (ADCLICK_* overrides, say) leaks into the process.
        full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(pod.dir), "TMPDIR": str(pod.dir), **env}
        return argv, full

    def start(self, pod: LocalPod) -> None:
        argv, env = self.prepare(pod)
        (pod.dir / "command.txt").write_text(" ".join(argv) + "\n" + "\n".join(f"{k}={v}" for k, v in env.items()) + "\n")
        log = open(pod.log, "wb")
        pod.proc = subprocess.Popen(argv, env=env, cwd=pod.dir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()

    def run_hook(self, pod: LocalPod, timeout: float = 30) -> subprocess.CompletedProcess:
        argv, env = self.prepare(pod)
        return subprocess.run(argv, env=env, cwd=pod.dir, capture_output=True, text=True, timeout=timeout)

    def stop_all(self, grace: float = 10) -> None:
        live = [p for p in self.pods if p.proc and p.proc.poll() is None]
        for p in live:
            try:
                os.killpg(p.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        for p in live:
            try:
                p.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p in self.pods:
            if p.proc and p.proc.poll() is None:
                try:
                    os.killpg(p.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.proc.wait(5)

    # -- probes ------------------------------------------------------------------

    def probe(self, pod: LocalPod, kind: str) -> tuple[int, str]:
        """Runs the container's startupProbe/livenessProbe/readinessProbe once."""
        http = pod.container[kind]["httpGet"]
        port = pod.ports[pod.port_by_name(http["port"])]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{http['path']}", timeout=2) as r:
                return r.status, r.read().decode(errors="replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode(errors="replace")
        except OSError as e:
            return 0, str(e)
