"""Shared helpers of the chart tests: rendering with helm-python-sdk (Helm's
own Go engine, loaded as a library: no helm binary and no cluster), parsing
the manifests, and finding the adclick binary.

Nothing here writes into the repository: temporary files go to pytest's
tmp_path (under the system temp dir) or, for the wiring test's run
directories, under target/.
"""

from __future__ import annotations

import os
import re
import sys
import tomllib
from pathlib import Path
from typing import Any, Iterable

import helm_python as helm
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "adclick"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
TESTS = Path(__file__).resolve().parent

#: Kubernetes version the manifests are validated against (kubernetes-validate
#: ships schemas for 1.25 .. 1.37; the chart's kubeVersion is >= 1.25).
KUBE_VERSION = "1.33.0"

RELEASE = "adclick"
NAMESPACE = "ads"

WORKLOAD_KINDS = ("Deployment", "StatefulSet")


def load_values_file(path: Path) -> dict[str, Any]:
    """A values file parsed the way `helm -f` parses it."""
    return helm.values_from_yaml(path.read_text())


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Later values files win key by key; lists are replaced (as in Helm)."""
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def user_values(files: Iterable[Path] = (), extra: dict[str, Any] | None = None) -> dict[str, Any]:
    vals: dict[str, Any] = {}
    for f in files:
        vals = deep_merge(vals, load_values_file(Path(f)))
    if extra:
        vals = deep_merge(vals, extra)
    return vals


def render(
    files: Iterable[Path] = (),
    extra: dict[str, Any] | None = None,
    *,
    name: str = RELEASE,
    namespace: str = NAMESPACE,
) -> dict[str, str]:
    """Renders the chart like `helm template NAME CHART -n NS -f F... ` and
    returns {template path: text}, NOTES.txt and test hooks included. Raises
    helm_python.HelmError (values rejected by the schema, a template's
    `required` or `fail`)."""
    with helm.Chart.load(CHART) as chart:
        return chart.render(
            values=user_values(files, extra), name=name, namespace=namespace, is_install=True
        )


def merged_values(files: Iterable[Path] = (), extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Chart defaults coalesced with the user values, as an install sees them."""
    with helm.Chart.load(CHART) as chart:
        return chart.merge_values(user_values(files, extra))


def objects(rendered: dict[str, str]) -> list[dict[str, Any]]:
    """Every Kubernetes object of a rendering (NOTES.txt excluded)."""
    out = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                out.append(doc)
    return out


def notes(rendered: dict[str, str]) -> str:
    return next(t for p, t in rendered.items() if p.endswith("NOTES.txt"))


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def workloads(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] in WORKLOAD_KINDS]


def component(obj: dict[str, Any]) -> str:
    return obj["metadata"]["labels"]["app.kubernetes.io/component"]


def workload(objs: list[dict[str, Any]], comp: str) -> dict[str, Any]:
    found = [o for o in workloads(objs) if component(o) == comp]
    assert len(found) == 1, f"expected one {comp} workload, found {len(found)}"
    return found[0]


def configmap_toml(objs: list[dict[str, Any]]) -> dict[str, Any]:
    """adclick.toml of the rendered ConfigMap, parsed."""
    cms = by_kind(objs, "ConfigMap")
    assert len(cms) == 1, f"expected one ConfigMap, found {len(cms)}"
    return tomllib.loads(cms[0]["data"]["adclick.toml"])


def flag(args: list[str], name: str) -> str | None:
    """Value of --name=V or --name V in a container's args."""
    for i, a in enumerate(args):
        if a.startswith(name + "="):
            return a.split("=", 1)[1]
        if a == name and i + 1 < len(args):
            return args[i + 1]
    return None


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


# --- the adclick binary ------------------------------------------------------

def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1")


def missing_tool(what: str, hint: str) -> None:
    """A tool a test needs is missing: under CI=true that fails the test (CI
    never passes a test that did not run); elsewhere it skips, loudly."""
    msg = f"{what} is missing: {hint}"
    if in_ci():
        pytest.fail(f"{msg} (required under CI=true)")
    sys.stderr.write(f"\n*** SKIPPED: {msg}; under CI=true this is a failure ***\n")
    pytest.skip(msg)


def adclick_bin() -> Path:
    """$ADCLICK_BIN, else <repo>/target/debug/adclick; fails or skips when absent."""
    env = os.environ.get("ADCLICK_BIN")
    path = Path(env) if env else REPO / "target" / "debug" / "adclick"
    if not (path.is_file() and os.access(path, os.X_OK)):
        missing_tool(f"the adclick binary ({path})", "build it (cargo build --workspace --bins) or set ADCLICK_BIN")
    return path


def adclickctl_bin() -> Path:
    path = adclick_bin().with_name("adclickctl")
    if not (path.is_file() and os.access(path, os.X_OK)):
        missing_tool(f"adclickctl ({path})", "cargo build --workspace --bins builds it beside adclick")
    return path


# --- the binary's configuration schema (core/src/config.rs) ------------------

#: Keys of adclick.toml the chart sets itself (from other values); every other
#: key comes from values.config.
CHART_OWNED_KEYS = {
    "kafka": {"bootstrap"},
    "cluster": {"coordinator", "nodes"},
    "aggregate": {"replicas"},
    "checkpoint": {"store"},
    "database": {"url"},
    "writer": {"ops_addr"},
    "query": {"listen"},
    # The admin token comes from the adminToken values (a Secret, as
    # ADCLICK_ADMIN_TOKEN), never from a file path in values.config.
    "admin": {"token_file"},
    # Certificates come from the grpcTls Secret, mounted into every pod.
    "grpc_tls": {"ca_file", "cert_file", "key_file", "require_client_cert", "server_name"},
}


def rust_struct_fields(*files: Path) -> dict[str, dict[str, str]]:
    """{struct name: {field: type}} of every `pub struct` in the Rust files."""
    structs: dict[str, dict[str, str]] = {}
    for f in files:
        text = f.read_text()
        for m in re.finditer(r"pub struct (\w+) \{(.*?)\n\}", text, re.S):
            fields = dict(re.findall(r"^\s*pub (\w+): ([^,]+),", m.group(2), re.M))
            structs[m.group(1)] = fields
    return structs


def binary_config_keys() -> dict[str, set[str]]:
    """Section -> keys the binary accepts (serde deny_unknown_fields), read from
    core/src/config.rs, core/src/slice.rs and core/src/grpc_tls.rs;
    "slices.filters[]" holds the
    keys of one [[slices.filters]] table."""
    core = REPO / "core" / "src"
    structs = rust_struct_fields(
        core / "config.rs", core / "slice.rs", core / "grpc_tls.rs"
    )
    sections = {}
    for section, ty in structs["Config"].items():
        sections[section] = set(structs[ty.strip()])
    sections["slices.filters[]"] = set(structs["FilterDef"])
    return sections


def dockerfile_entrypoint() -> list[str]:
    """ENTRYPOINT of the image (exec form), read from deploy/docker/Dockerfile."""
    text = (REPO / "deploy" / "docker" / "Dockerfile").read_text()
    m = re.findall(r'^ENTRYPOINT\s+(\[.*\])\s*$', text, re.M)
    assert m, "deploy/docker/Dockerfile has no exec-form ENTRYPOINT"
    return yaml.safe_load(m[-1])
