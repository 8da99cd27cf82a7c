"""The adclick Helm chart, without a cluster: lint, render every values file
under helm/adclick/ci/, validate every object against the Kubernetes schemas,
check values.schema.json, and assert the wiring between the objects (replica
counts, ports, probes, disruption budget, affinity, checksums, monitoring,
image tags, NOTES)."""

from __future__ import annotations

import copy
import json
import re
import tomllib
from pathlib import Path

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from chart_support import (
    CHART,
    CHART_OWNED_KEYS,
    CI_VALUES,
    KUBE_VERSION,
    NAMESPACE,
    RELEASE,
    binary_config_keys,
    by_kind,
    component,
    configmap_toml,
    deep_merge,
    flag,
    load_values_file,
    merged_values,
    notes,
    objects,
    one,
    render,
    selects,
    workload,
    workloads,
)

MINIMAL = CHART / "ci" / "minimal-values.yaml"
BOOTSTRAP = {"kafka": {"bootstrap": "kafka.kafka.svc:9092"}}
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
CHART_META = yaml.safe_load((CHART / "Chart.yaml").read_text())

ids = [p.name for p in CI_VALUES]


@pytest.fixture(scope="module", params=CI_VALUES, ids=ids)
def ci_file(request) -> Path:
    return request.param


def rendered_objects(*files: Path, extra=None):
    return objects(render(files, extra))


def pod_spec(w):
    return w["spec"]["template"]["spec"]


def container(w):
    cs = pod_spec(w)["containers"]
    assert len(cs) == 1, f"{w['metadata']['name']}: one container expected"
    return cs[0]


def test_ci_values_files_exist():
    names = {p.name for p in CI_VALUES}
    assert len(names) >= 7, names
    for want in ("minimal", "s3", "pvc", "servicemonitor", "ingress", "hard-anti-affinity", "large"):
        assert any(want in n for n in names), f"no ci values file for {want}: {names}"


# --- lint and Kubernetes schema validation --------------------------------------

@pytest.mark.parametrize("values_file", CI_VALUES, ids=ids)
def test_lint_is_clean(values_file):
    report = helm.lint(
        CHART, load_values_file(values_file), strict=True, kube_version=f"v{KUBE_VERSION}"
    )
    assert report["errors"] == [], report
    serious = [m for m in report["messages"] if m["severity"] >= 2]
    assert serious == [], serious


def test_every_object_validates_against_kubernetes_schemas(ci_file):
    objs = rendered_objects(ci_file)
    kinds = {o["kind"] for o in objs}
    assert {"ConfigMap", "Deployment", "StatefulSet", "Service", "PodDisruptionBudget", "Pod"} <= kinds
    for o in objs:
        name = f"{o['kind']}/{o['metadata']['name']}"
        if o["kind"] == "ServiceMonitor":
            check_servicemonitor(o, objs)  # a CRD: no built-in schema
            continue
        try:
            kubernetes_validate.validate(o, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            pytest.fail(f"{ci_file.name}: {name} invalid at {path}: {e.message}")
        assert o["metadata"].get("namespace") == NAMESPACE, f"{name} has no namespace"
    keys = [(o["kind"], o["metadata"]["name"]) for o in objs]
    assert len(keys) == len(set(keys)), f"duplicate objects: {keys}"


def check_servicemonitor(sm, objs):
    assert sm["apiVersion"] == "monitoring.coreos.com/v1"
    spec = sm["spec"]
    services = [s for s in by_kind(objs, "Service") if selects(spec["selector"]["matchLabels"], s["metadata"]["labels"])]
    comps = next(e for e in spec["selector"]["matchExpressions"] if e["key"] == "app.kubernetes.io/component")
    services = [s for s in services if component(s) in comps["values"]]
    assert {component(s) for s in services} == {"coordinator", "node", "writer", "query"}
    assert spec["namespaceSelector"]["matchNames"] == [NAMESPACE]
    endpoint_ports = {e["port"] for e in spec["endpoints"]}
    for e in spec["endpoints"]:
        assert e["path"] == "/metrics"
        assert re.fullmatch(r"[0-9]+(ms|s|m|h)", e["interval"])
    for s in services:
        names = {p["name"] for p in s["spec"]["ports"]}
        assert names & endpoint_ports, f"ServiceMonitor scrapes no port of {s['metadata']['name']}: {names}"


# --- values.schema.json -----------------------------------------------------------

def test_schema_is_draft07_and_closed():
    assert SCHEMA["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    assert SCHEMA["additionalProperties"] is False
    props = SCHEMA["properties"]
    assert props["aggregate"]["properties"]["replicas"]["type"] == "integer"
    assert props["aggregate"]["properties"]["replicas"]["minimum"] == 1
    assert props["nodes"]["properties"]["replicas"]["minimum"] == 1


def test_defaults_and_ci_values_match_schema(ci_file):
    v = jsonschema.Draft7Validator(SCHEMA)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert list(v.iter_errors(defaults)) == []
    merged = merged_values([ci_file])
    errors = [f"{list(e.path)}: {e.message}" for e in v.iter_errors(merged)]
    assert errors == [], f"{ci_file.name}: {errors}"


BAD_VALUES = [
    pytest.param({"aggregate": {"replicas": "three"}}, "aggregate", "replicas", id="replicas-string"),
    pytest.param({"aggregate": {"replicas": 0}}, "aggregate", "replicas", id="replicas-zero"),
    pytest.param({"nodes": {"replicas": 0}}, "nodes", "replicas", id="nodes-zero"),
    pytest.param({"aggregation": {"replicas": 3}}, "", "aggregation", id="unknown-top-level-key"),
    pytest.param({"image": {"tag": "latest"}}, "image", "tag", id="image-latest"),
    pytest.param({"config": {"job": {"window_sec": 60}}}, "config", "window_sec", id="unknown-config-key"),
    pytest.param({"config": {"cluster": {"nodes": 4}}}, "config", "nodes", id="chart-owned-config-key"),
    pytest.param({"snapshots": {"type": "url", "url": "memory://"}}, "snapshots", "url", id="memory-store"),
    pytest.param({"snapshots": {"type": "url", "url": "gs://bucket/x"}}, "snapshots", "url", id="unsupported-store"),
    pytest.param({"listenHost": "localhost"}, "", "listenHost", id="listen-host-not-ip"),
]


@pytest.mark.parametrize("bad,section,key", BAD_VALUES)
def test_schema_rejects_bad_values_naming_the_key(bad, section, key):
    values = deep_merge(merged_values([MINIMAL]), copy.deepcopy(bad))
    errors = list(jsonschema.Draft7Validator(SCHEMA).iter_errors(values))
    assert errors, f"schema accepted {bad}"
    text = "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)
    assert key in text, text
    if section:
        assert any(section in map(str, e.absolute_path) for e in errors), text


@pytest.mark.parametrize("bad,section,key", BAD_VALUES)
def test_helm_refuses_to_render_bad_values_naming_the_key(bad, section, key):
    with pytest.raises(helm.HelmValuesError) as e:
        render([MINIMAL], bad)
    msg = str(e.value)
    assert key in msg, msg
    if section:
        assert f"/{section}" in msg, msg


def test_kafka_bootstrap_is_required_with_a_clear_message():
    with pytest.raises(helm.HelmRenderError) as e:
        render([])
    assert "kafka.bootstrap is required" in str(e.value)


@pytest.mark.parametrize(
    "extra,needle",
    [
        ({"aggregate": {"replicas": 5000}}, "aggregate.replicas (5000) must not exceed config.job.key_groups (4096)"),
        ({"nodes": {"terminationGracePeriodSeconds": 20}}, "must be longer than cluster.drain_timeout_ms"),
        ({"database": {"url": "sqlite:///tmp/x.db"}}, "must be under database.persistence.mountPath"),
        ({"snapshots": {"type": "url"}}, "snapshots.url is required"),
        ({"coordinator": {"terminationGracePeriodSeconds": 45}}, "must be longer than checkpoint.timeout_ms"),
    ],
    ids=[
        "aggregate-over-key-groups",
        "grace-below-drain",
        "sqlite-outside-volume",
        "url-store-without-url",
        "coordinator-grace-below-final-checkpoint",
    ],
)
def test_templates_refuse_inconsistent_values(extra, needle):
    with pytest.raises(helm.HelmRenderError) as e:
        render([MINIMAL], extra)
    assert needle in str(e.value)


def test_schema_config_block_mirrors_the_binary():
    """values.config has exactly the keys of core/src/config.rs (minus the ones
    the chart sets itself), so the schema rejects what the binary would reject
    and accepts every key the binary has."""
    binary = binary_config_keys()
    cfg = SCHEMA["properties"]["config"]["properties"]
    for section, keys in binary.items():
        if section == "slices.filters[]":
            schema_keys = set(cfg["slices"]["properties"]["filters"]["items"]["properties"])
            assert schema_keys == keys, (section, schema_keys ^ keys)
            continue
        schema_keys = set(cfg.get(section, {}).get("properties", {}))
        owned = CHART_OWNED_KEYS.get(section, set())
        assert not (schema_keys & owned), f"{section}: chart-owned keys in values.config: {schema_keys & owned}"
        assert schema_keys | owned == keys, (
            f"[{section}] differs from core/src/config.rs: missing in schema "
            f"{sorted(keys - schema_keys - owned)}, unknown to the binary {sorted(schema_keys - keys)}"
        )
    assert set(cfg) <= set(binary), set(cfg) - set(binary)


def test_rendered_config_uses_only_keys_the_binary_accepts(ci_file):
    binary = binary_config_keys()
    doc = configmap_toml(rendered_objects(ci_file))
    for section, table in doc.items():
        assert section in binary, f"unknown section [{section}]"
        for k, val in table.items():
            assert k in binary[section], f"unknown key {section}.{k}"
            if section == "slices" and k == "filters":
                for f in val:
                    assert set(f) <= binary["slices.filters[]"], f
    url_from_secret = bool(merged_values([ci_file])["database"]["existingSecret"])
    for section, keys in CHART_OWNED_KEYS.items():
        for k in keys:
            if (section, k) == ("database", "url") and url_from_secret:
                assert "url" not in doc.get("database", {})
                continue  # comes from the Secret as ADCLICK_DATABASE__URL
            if (section, k) == ("admin", "token_file"):
                # The token comes from the adminToken Secret as ADCLICK_ADMIN_TOKEN.
                assert "admin" not in doc
                continue
            if section == "grpc_tls":
                # Set from grpcTls as ADCLICK_GRPC_TLS__* environment
                # (test_grpc_tls_secret_reaches_every_grpc_process), never
                # in the ConfigMap, so a chart without TLS stays plaintext.
                assert "grpc_tls" not in doc
                continue
            assert k in doc.get(section, {}), f"{section}.{k} not rendered"


# --- what the objects say ------------------------------------------------------------

@pytest.mark.parametrize(
    "files,nodes,aggregates",
    [
        ([MINIMAL], 3, 3),
        ([CHART / "ci" / "large-values.yaml"], 5, 8),
        ([MINIMAL], 7, 2),
    ],
    ids=["defaults", "large", "override"],
)
def test_replica_counts_reach_the_statefulset_and_the_config(files, nodes, aggregates, request):
    extra = {"nodes": {"replicas": 7}, "aggregate": {"replicas": 2}} if request.node.callspec.id == "override" else None
    objs = rendered_objects(*files, extra=extra)
    sts = workload(objs, "node")
    assert sts["kind"] == "StatefulSet"
    assert sts["spec"]["replicas"] == nodes
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    cfg = configmap_toml(objs)
    assert cfg["cluster"]["nodes"] == nodes, "the coordinator must wait for the whole pool"
    assert cfg["aggregate"]["replicas"] == aggregates
    assert isinstance(cfg["aggregate"]["replicas"], int) and isinstance(cfg["cluster"]["nodes"], int)
    coord = workload(objs, "coordinator")
    assert coord["spec"]["replicas"] == 1 and coord["spec"]["strategy"]["type"] == "Recreate"


def test_large_numbers_stay_integers_in_toml():
    cfg = configmap_toml(rendered_objects(CHART / "ci" / "large-values.yaml"))
    assert cfg["job"]["max_ads_per_window"] == 2_000_000
    assert cfg["job"]["top_windows"] == [1, 5, 60]
    assert [f["id"] for f in cfg["slices"]["filters"]] == ["us_mobile_users", "not_internal"]
    assert cfg["slices"]["filters"][1]["mode"] == "exclude"


#: The flag of each subcommand that makes it serve /healthz and /readyz.
OPS_FLAG = {"coordinator": "--ops-addr", "node": "--ops-addr", "writer": "--ops-addr", "query": "--listen"}


def named_port(c, port):
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    if isinstance(port, str):
        assert port in ports, f"{c['name']}: probe port {port!r} is not a container port {ports}"
        return ports[port]
    assert port in ports.values(), f"{c['name']}: probe port {port} not exposed"
    return port


def test_probes_hit_ports_the_processes_listen_on(ci_file):
    objs = rendered_objects(ci_file)
    seen = set()
    for w in workloads(objs):
        c = container(w)
        sub = c["args"][0]
        seen.add(sub)
        ops = flag(c["args"], OPS_FLAG[sub])
        assert ops, f"{sub}: no {OPS_FLAG[sub]} in {c['args']}"
        host, port = ops.rsplit(":", 1)
        assert host in ("0.0.0.0", "[::]"), f"{sub} ops endpoints on {host}: the kubelet cannot reach them"
        for probe, path in (("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            http = c[probe]["httpGet"]
            assert http["path"] == path, (sub, probe)
            assert named_port(c, http["port"]) == int(port), f"{sub} {probe} is not on {OPS_FLAG[sub]} {ops}"
        # every listener of the process is a declared container port
        for f in ("--listen", "--ops-addr"):
            v = flag(c["args"], f)
            if v:
                assert int(v.rsplit(":", 1)[1]) in {p["containerPort"] for p in c["ports"]}, (sub, f, v)
    assert seen == {"coordinator", "node", "writer", "query"}
    # writer.ops_addr and query.listen of the file agree with the flags
    cfg = configmap_toml(objs)
    assert cfg["writer"]["ops_addr"] == flag(container(workload(objs, "writer"))["args"], "--ops-addr")
    assert cfg["query"]["listen"] == flag(container(workload(objs, "query"))["args"], "--listen")


def test_services_select_pods_and_target_declared_ports(ci_file):
    objs = rendered_objects(ci_file)
    pods = {component(w): w for w in workloads(objs)}
    for s in by_kind(objs, "Service"):
        comp = component(s)
        w = pods[comp]
        assert selects(s["spec"]["selector"], w["spec"]["template"]["metadata"]["labels"]), s["metadata"]["name"]
        names = {p["name"] for p in container(w)["ports"]}
        for p in s["spec"]["ports"]:
            assert p["targetPort"] in names, (s["metadata"]["name"], p)
    headless = one(objs, "Service", f"{RELEASE}-node")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    assert workload(objs, "node")["spec"]["serviceName"] == headless["metadata"]["name"]


def test_node_identity_and_addresses():
    objs = rendered_objects(MINIMAL)
    c = container(workload(objs, "node"))
    env = {e["name"]: e for e in c["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    args = c["args"]
    assert flag(args, "--node-id") == "$(POD_NAME)"
    assert flag(args, "--listen") == "0.0.0.0:7800"
    assert flag(args, "--ops-addr") == "0.0.0.0:9800"
    assert flag(args, "--advertise") == f"$(POD_NAME).{RELEASE}-node.$(POD_NAMESPACE).svc.cluster.local:7800"
    assert flag(args, "--coordinator") == f"{RELEASE}-coordinator.$(POD_NAMESPACE).svc.cluster.local:7700"
    cfg = configmap_toml(objs)
    assert cfg["cluster"]["coordinator"] == f"{RELEASE}-coordinator.{NAMESPACE}.svc.cluster.local:7700"
    coord = container(workload(objs, "coordinator"))
    assert flag(coord["args"], "--listen") == "0.0.0.0:7700"


def test_node_pdb_allows_one_node_down():
    objs = rendered_objects(MINIMAL)
    pdbs = [p for p in by_kind(objs, "PodDisruptionBudget") if component(p) == "node"]
    assert len(pdbs) == 1
    pdb = pdbs[0]
    assert pdb["spec"]["maxUnavailable"] == 1
    sts = workload(objs, "node")
    assert pdb["spec"]["selector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]


def test_termination_grace_covers_the_drain():
    objs = rendered_objects(MINIMAL)
    assert pod_spec(workload(objs, "node"))["terminationGracePeriodSeconds"] == 60
    large = rendered_objects(CHART / "ci" / "large-values.yaml")
    grace = pod_spec(workload(large, "node"))["terminationGracePeriodSeconds"]
    assert configmap_toml(large)["cluster"]["drain_timeout_ms"] < grace * 1000


def anti_affinity(w):
    return pod_spec(w).get("affinity", {}).get("podAntiAffinity", {})


def test_anti_affinity_soft_by_default_hard_on_request():
    soft = anti_affinity(workload(rendered_objects(MINIMAL), "node"))
    assert "requiredDuringSchedulingIgnoredDuringExecution" not in soft
    term = soft["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "node"

    objs = rendered_objects(CHART / "ci" / "hard-anti-affinity-values.yaml")
    for comp in ("node", "query"):
        hard = anti_affinity(workload(objs, comp))
        assert "preferredDuringSchedulingIgnoredDuringExecution" not in hard
        req = hard["requiredDuringSchedulingIgnoredDuringExecution"][0]
        assert req["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == comp
    tsc = pod_spec(workload(objs, "node"))["topologySpreadConstraints"][0]
    assert tsc["whenUnsatisfiable"] == "DoNotSchedule"
    assert tsc["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "node"

    none = workload(rendered_objects(MINIMAL, extra={"nodes": {"podAntiAffinity": "none"}}), "node")
    assert "affinity" not in pod_spec(none)


def test_sqlite_pins_query_pods_to_the_writer_and_postgres_does_not():
    objs = rendered_objects(MINIMAL)
    aff = pod_spec(workload(objs, "query"))["affinity"]["podAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert aff["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "writer"
    assert aff["topologyKey"] == "kubernetes.io/hostname"
    claims = {v["persistentVolumeClaim"]["claimName"] for comp in ("writer", "query")
              for v in pod_spec(workload(objs, comp))["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {f"{RELEASE}-db"}
    pg = rendered_objects(CHART / "ci" / "ingress-values.yaml")
    assert "podAffinity" not in pod_spec(workload(pg, "query")).get("affinity", {})
    assert not [p for p in by_kind(pg, "PersistentVolumeClaim") if p["metadata"]["name"].endswith("-db")]


def test_snapshot_store_is_shared_by_coordinator_and_nodes():
    objs = rendered_objects(MINIMAL)
    cfg = configmap_toml(objs)
    pvc = one(objs, "PersistentVolumeClaim", f"{RELEASE}-snapshots")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    for comp in ("coordinator", "node"):
        w = workload(objs, comp)
        mounts = {m["name"]: m["mountPath"] for m in container(w)["volumeMounts"]}
        assert mounts["snapshots"] == cfg["checkpoint"]["store"]
        vols = {v["name"]: v for v in pod_spec(w)["volumes"]}
        assert vols["snapshots"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    pvc_objs = rendered_objects(CHART / "ci" / "pvc-snapshots-values.yaml")
    assert configmap_toml(pvc_objs)["checkpoint"]["store"] == "/data/snapshots"
    assert not [p for p in by_kind(pvc_objs, "PersistentVolumeClaim")], "existingClaim: no PVC created"


def test_s3_snapshot_store_takes_credentials_from_a_secret():
    objs = rendered_objects(CHART / "ci" / "s3-snapshots-values.yaml")
    cfg = configmap_toml(objs)
    assert cfg["checkpoint"]["store"] == "s3://adclick-snapshots/prod"
    assert "url" not in cfg.get("database", {}), "the URL comes from the Secret"
    secret = one(objs, "Secret", f"{RELEASE}-s3")
    for comp in ("coordinator", "node"):
        c = container(workload(objs, comp))
        env = {e["name"]: e for e in c["env"]}
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            ref = env[var]["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"] and ref["key"] in secret["data"]
        assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio.storage.svc:9000"
        assert "snapshots" not in {m["name"] for m in c["volumeMounts"]}
    for comp in ("coordinator", "node", "writer", "query"):
        env = {e["name"]: e for e in container(workload(objs, comp))["env"]}
        assert env["ADCLICK_DATABASE__URL"]["valueFrom"]["secretKeyRef"] == {"name": "adclick-database", "key": "url"}
    token = one(objs, "Secret", f"{RELEASE}-admin-token")
    # The coordinator checks the token; the query service's console sends it.
    for comp in ("coordinator", "query"):
        env = {e["name"]: e for e in container(workload(objs, comp))["env"]}
        assert env["ADCLICK_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == token["metadata"]["name"]


def checksums(objs):
    return {component(w): w["spec"]["template"]["metadata"]["annotations"]["checksum/config"] for w in workloads(objs)}


def test_config_checksum_rolls_every_workload_on_config_change():
    base = checksums(rendered_objects(MINIMAL))
    assert set(base) == {"coordinator", "node", "writer", "query"}
    assert all(re.fullmatch(r"[0-9a-f]{64}", v) for v in base.values())
    changed = checksums(rendered_objects(MINIMAL, extra={"config": {"job": {"top_n": 20}}}))
    assert all(changed[k] != base[k] for k in base), (base, changed)
    nodes = checksums(rendered_objects(MINIMAL, extra={"nodes": {"replicas": 4}}))
    assert all(nodes[k] != base[k] for k in base), "cluster.nodes is in the config"
    same = checksums(rendered_objects(MINIMAL, extra={"query": {"replicas": 3}}))
    assert same == base, "a change outside the config must not roll the pods"


def test_servicemonitor_only_when_enabled(ci_file):
    objs = rendered_objects(ci_file)
    sms = by_kind(objs, "ServiceMonitor")
    enabled = merged_values([ci_file])["metrics"]["serviceMonitor"]["enabled"]
    assert len(sms) == (1 if enabled else 0)
    for w in workloads(objs):
        ann = w["spec"]["template"]["metadata"]["annotations"]
        if enabled:
            assert "prometheus.io/scrape" not in ann
        else:
            assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/path"] == "/metrics"
            c = container(w)
            http = c["livenessProbe"]["httpGet"]["port"]
            assert int(ann["prometheus.io/port"]) == named_port(c, http), "metrics live beside /healthz"
    if enabled:
        assert sms[0]["metadata"]["labels"]["release"] == "prometheus"


def test_ingress_routes_to_the_query_service():
    objs = rendered_objects(CHART / "ci" / "ingress-values.yaml")
    ing = by_kind(objs, "Ingress")
    assert len(ing) == 1
    spec = ing[0]["spec"]
    svc = one(objs, "Service", f"{RELEASE}-query")
    backend = spec["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == svc["metadata"]["name"]
    assert backend["port"]["name"] in {p["name"] for p in svc["spec"]["ports"]}
    assert spec["ingressClassName"] == "nginx" and spec["tls"][0]["secretName"] == "ads-example-com-tls"
    assert not by_kind(rendered_objects(MINIMAL), "Ingress")


def all_containers(objs):
    for o in objs:
        spec = o["spec"]["template"]["spec"] if o["kind"] in ("Deployment", "StatefulSet") else o.get("spec", {})
        if o["kind"] in ("Deployment", "StatefulSet", "Pod"):
            yield o, spec, spec["containers"]


def test_images_are_pinned_never_latest(ci_file):
    objs = rendered_objects(ci_file)
    for o, _, cs in all_containers(objs):
        for c in cs:
            image = c["image"]
            tag = image.rsplit("@", 1)[0].rsplit(":", 1)[1]
            assert tag != "latest" and tag, image
            assert tag == str(CHART_META["appVersion"]), image
    with pytest.raises(helm.HelmError):
        render([MINIMAL], {"image": {"tag": "latest"}})
    tagged = rendered_objects(MINIMAL, extra={"image": {"tag": "0.1.1", "digest": "sha256:" + "a" * 64}})
    assert container(workload(tagged, "node"))["image"] == "adclick:0.1.1@sha256:" + "a" * 64


def test_security_context_is_locked_down(ci_file):
    objs = rendered_objects(ci_file)
    for o, spec, cs in all_containers(objs):
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["automountServiceAccountToken"] is False
        assert spec["enableServiceLinks"] is False
        for c in cs:
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, o["metadata"]["name"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            assert c["resources"]["requests"] and c["resources"]["limits"]


def test_helm_test_hook_asks_the_coordinator_service_for_status():
    objs = rendered_objects(MINIMAL)
    pods = [p for p in by_kind(objs, "Pod") if p["metadata"]["annotations"].get("helm.sh/hook") == "test"]
    assert len(pods) == 1
    c = pods[0]["spec"]["containers"][0]
    assert c["command"] == ["/usr/local/bin/adclickctl"]
    assert c["args"][-1] == "status"
    addr = flag(c["args"], "--coordinator")
    host, port = addr.rsplit(":", 1)
    svc = one(objs, "Service", f"{RELEASE}-coordinator")
    assert host == f"{svc['metadata']['name']}.{NAMESPACE}.svc.cluster.local"
    grpc = next(p for p in svc["spec"]["ports"] if p["name"] == "grpc")
    assert int(port) == grpc["port"]
    assert pods[0]["spec"]["restartPolicy"] == "Never"


def test_notes_render_with_the_useful_commands(ci_file):
    text = notes(render([ci_file]))
    assert f"helm test {RELEASE} -n {NAMESPACE}" in text
    assert "adclickctl --coordinator 127.0.0.1:7700 status" in text
    assert f"port-forward svc/{RELEASE}-query" in text
    assert "{{" not in text and "<no value>" not in text
    if "s3" in ci_file.name:
        assert "checkpoint.store = s3://" in text


def test_no_template_leaves_placeholders(ci_file):
    for path, text in render([ci_file]).items():
        assert "<no value>" not in text, path
        assert "%!" not in text, path  # a printf verb with the wrong type


def test_wiring_values_render_and_validate():
    """The values the wiring test runs with are a valid install too."""
    wiring = Path(__file__).with_name("wiring-values.yaml")
    objs = rendered_objects(wiring, extra=BOOTSTRAP)
    for o in objs:
        kubernetes_validate.validate(o, KUBE_VERSION, strict=True)
    cfg = configmap_toml(objs)
    assert cfg["database"]["url"].startswith("sqlite:")
    assert tomllib.loads(by_kind(objs, "ConfigMap")[0]["data"]["adclick.toml"]) == cfg


def test_grpc_tls_secret_reaches_every_grpc_process():
    objs = rendered_objects(MINIMAL, extra={"grpcTls": {"existingSecret": "adclick-grpc-certs"}})
    for comp in ("coordinator", "node", "query"):
        w = workload(objs, comp)
        c = container(w)
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["ADCLICK_GRPC_TLS__CA_FILE"] == "/etc/adclick-grpc-tls/ca.crt", comp
        assert env["ADCLICK_GRPC_TLS__CERT_FILE"] == "/etc/adclick-grpc-tls/tls.crt", comp
        assert env["ADCLICK_GRPC_TLS__KEY_FILE"] == "/etc/adclick-grpc-tls/tls.key", comp
        assert env["ADCLICK_GRPC_TLS__REQUIRE_CLIENT_CERT"] == "true", comp
        assert env["ADCLICK_GRPC_TLS__SERVER_NAME"] == "adclick-grpc", comp
        vols = {v["name"]: v for v in w["spec"]["template"]["spec"]["volumes"]}
        assert vols["grpc-tls"]["secret"]["secretName"] == "adclick-grpc-certs", comp
        mounts = {m["name"]: m for m in c["volumeMounts"]}
        assert mounts["grpc-tls"]["mountPath"] == "/etc/adclick-grpc-tls" and mounts["grpc-tls"]["readOnly"]
    # Without the Secret, gRPC stays plaintext and nothing is mounted.
    plain = rendered_objects(MINIMAL)
    c = container(workload(plain, "coordinator"))
    assert not any(e["name"].startswith("ADCLICK_GRPC_TLS__") for e in c["env"])
