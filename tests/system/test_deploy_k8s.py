"""deploy/k8s checked offline: Kubernetes schemas, the Kustomize overlay, autoscaling and routing.

Every manifest is validated with kubernetes-validate (the Kubernetes OpenAPI schemas it ships) for
built-in kinds. The CRDs it has no schema for (KEDA ScaledObject, Gateway API Gateway and
HTTPRoute) get structural checks of their required fields here; any other kind fails the test, so
nothing is skipped silently. Without the kustomize binary, the base and the production overlay are
rendered by a small renderer of the features they use (resources, generators with merge/replace,
strategic-merge and JSON 6902 patches, images, replicas, namespace, labels), and the rendered
output is validated again.
"""

from __future__ import annotations

import base64
import copy
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from libs.kafka import AGGREGATOR_GROUP, EVENTS_TOPIC

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
PRODUCTION = K8S / "overlays" / "production"

# Oldest Kubernetes minor we support, and the newest the installed schemas know.
K8S_VERSIONS = ("1.29.0", kubernetes_validate.latest_version())
CRD_KINDS = {("keda.sh/v1alpha1", "ScaledObject"), ("gateway.networking.k8s.io/v1", "Gateway"),
             ("gateway.networking.k8s.io/v1", "HTTPRoute")}
PORTS = {"gateway": 8001, "auth": 8002, "query": 8003, "aggregator": 8004, "notifier": 8005}
HTTP_METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}

# Where each request must land: the URL space of `analytics run`, spread over the services.
ROUTES = [
    ("POST", "/api/user/signup", "auth"), ("POST", "/api/user/login", "auth"), ("GET", "/api/user/get_user_profile", "auth"),
    ("POST", "/api/auth/register", "auth"), ("GET", "/api/auth/api-key", "auth"), ("POST", "/api/email/notification", "auth"),
    ("POST", "/api/analytics/collect", "gateway"), ("OPTIONS", "/api/analytics/collect", "gateway"),
    ("POST", "/api/analytics/events", "gateway"), ("OPTIONS", "/api/analytics/events", "gateway"),
    ("POST", "/api/analytics/metrics", "gateway"),
    ("POST", "/v1/track", "gateway"), ("POST", "/v1/batch", "gateway"), ("GET", "/js/script.js", "gateway"),
    ("GET", "/api/analytics/events", "query"), ("GET", "/api/analytics/metrics", "query"),
    ("GET", "/api/analytics/events/count", "query"), ("GET", "/api/analytics/events/0b7c", "query"),
    ("GET", "/api/analytics/event-summary", "query"), ("GET", "/api/analytics/user-stats", "query"),
    ("GET", "/api/analytics/users/active", "query"), ("GET", "/dashboard", "query"), ("GET", "/dashboard/app.js", "query"),
]


# ------------------------------------------------------------------------ a small kustomize


def load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    hits = [d for d in docs if d["kind"] == kind and d["metadata"].get("name") == name]
    assert len(hits) == 1, f"{kind}/{name}: {len(hits)} matches in the kustomization"
    return hits[0]


def strategic_merge(target: Any, patch: Any) -> Any:
    """Maps merge; lists of named items (containers, ports, volumes, env) merge by name; others replace."""
    if isinstance(target, dict) and isinstance(patch, dict):
        for key, value in patch.items():
            target[key] = strategic_merge(target[key], value) if key in target else copy.deepcopy(value)
        return target
    if (isinstance(target, list) and isinstance(patch, list) and patch
            and all(isinstance(i, dict) and "name" in i for i in target + patch)):
        by_name = {i["name"]: i for i in target}
        for item in patch:
            if item["name"] in by_name:
                strategic_merge(by_name[item["name"]], item)
            else:
                target.append(copy.deepcopy(item))
        return target
    return copy.deepcopy(patch)


def json6902(doc: dict[str, Any], ops: list[dict[str, Any]]) -> None:
    for op in ops:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key: Any = int(last) if isinstance(node, list) and last != "-" else last
        if op["op"] == "replace":
            assert (key < len(node)) if isinstance(node, list) else (key in node), f"replace of a missing {op['path']}"
            node[key] = op["value"]
        elif op["op"] == "add":
            if isinstance(node, list):
                node.insert(len(node) if key == "-" else key, op["value"])
            else:
                node[key] = op["value"]
        elif op["op"] == "remove":
            del node[key]
        else:
            raise AssertionError(f"unsupported JSON patch op {op['op']}")


def env_file(path: Path) -> dict[str, str]:
    if not path.exists():  # a secret the operator writes (never in git): render with its example
        example = path.with_name(path.name + ".example")
        assert example.exists(), f"{path} is missing and has no {example.name} to show what goes in it"
        path = example
    pairs = [line.split("=", 1) for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    return {k.strip(): v.strip() for k, v in pairs}


def generate(docs: list[dict[str, Any]], kind: str, gen: dict[str, Any], here: Path) -> None:
    data: dict[str, str] = {}
    for literal in gen.get("literals", []):
        key, _, value = literal.partition("=")
        data[key] = value
    for name in gen.get("envs", []):
        data.update(env_file(here / name))
    behavior = gen.get("behavior", "create")
    payload = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()} if kind == "Secret" else data
    if behavior == "create":
        doc = {"apiVersion": "v1", "kind": kind, "metadata": {"name": gen["name"]}, "data": payload}
        if kind == "Secret":
            doc["type"] = gen.get("type", "Opaque")
        docs.append(doc)
        return
    existing = find(docs, kind, gen["name"])
    if behavior == "replace":
        existing.pop("stringData", None)
        existing["data"] = payload
    elif behavior == "merge":
        if kind == "Secret" and "stringData" in existing:
            existing["stringData"].update(data)
        else:
            existing.setdefault("data", {}).update(payload)
    else:
        raise AssertionError(f"unknown generator behavior {behavior}")


def render(directory: Path) -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    docs: list[dict[str, Any]] = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        assert path.exists(), f"{directory.name}/kustomization.yaml lists {resource}, which does not exist"
        docs += render(path) if path.is_dir() else load_all(path)
    for gen in kustomization.get("configMapGenerator", []):
        generate(docs, "ConfigMap", gen, directory)
    for gen in kustomization.get("secretGenerator", []):
        generate(docs, "Secret", gen, directory)
    for patch in kustomization.get("patches", []):
        if "path" in patch:
            for body in load_all(directory / patch["path"]):
                strategic_merge(find(docs, body["kind"], body["metadata"]["name"]), body)
        else:
            target = patch["target"]
            doc = find(docs, target["kind"], target["name"])
            assert doc["apiVersion"] == f"{target['group']}/{target['version']}" if target.get("group") else target["version"]
            json6902(doc, yaml.safe_load(patch["patch"]))
    for rep in kustomization.get("replicas", []):
        find(docs, "Deployment", rep["name"])["spec"]["replicas"] = rep["count"]
    for image in kustomization.get("images", []):
        used = False
        for container in all_containers(docs):
            name, _, tag = container["image"].partition(":")
            if name == image["name"]:
                used = True
                container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
        assert used, f"images: no container uses {image['name']}"
    for label in kustomization.get("labels", []):
        for doc in docs:
            doc["metadata"].setdefault("labels", {}).update(label["pairs"])
            if label.get("includeTemplates") and doc["kind"] == "Deployment":
                doc["spec"]["template"]["metadata"]["labels"].update(label["pairs"])
    if "namespace" in kustomization:
        for doc in docs:
            if doc["kind"] != "Namespace":
                doc["metadata"]["namespace"] = kustomization["namespace"]
    return docs


def all_containers(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c for d in docs if d["kind"] in ("Deployment", "Job") for c in d["spec"]["template"]["spec"]["containers"]]


# ------------------------------------------------------------------------ validation


def check_crd(doc: dict[str, Any], docs: list[dict[str, Any]]) -> None:
    kind, spec = doc["kind"], doc["spec"]
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    if kind == "ScaledObject":
        assert ("Deployment", spec["scaleTargetRef"]["name"]) in names
        assert 0 <= spec.get("minReplicaCount", 0) <= spec["maxReplicaCount"]
        assert spec["triggers"], "a ScaledObject needs triggers"
        for trigger in spec["triggers"]:
            assert trigger["type"] and isinstance(trigger["metadata"], dict)
            assert all(isinstance(v, str) for v in trigger["metadata"].values()), "KEDA trigger metadata values are strings"
            if trigger["type"] == "kafka":
                assert {"bootstrapServers", "consumerGroup", "topic", "lagThreshold"} <= set(trigger["metadata"])
                assert int(trigger["metadata"]["lagThreshold"]) > 0
    elif kind == "Gateway":
        assert isinstance(spec["gatewayClassName"], str) and spec["gatewayClassName"]
        assert spec["listeners"]
        for listener in spec["listeners"]:
            assert listener["name"] and 1 <= listener["port"] <= 65535
            assert listener["protocol"] in ("HTTP", "HTTPS", "TLS", "TCP", "UDP")
            if listener["protocol"] == "HTTPS":
                assert listener["tls"]["certificateRefs"], "HTTPS listeners need a certificate"
    elif kind == "HTTPRoute":
        for parent in spec["parentRefs"]:
            assert ("Gateway", parent["name"]) in names, f"HTTPRoute {doc['metadata']['name']}: no Gateway {parent['name']}"
        for rule in spec["rules"]:
            for backend in rule["backendRefs"]:
                service = find(docs, "Service", backend["name"])
                assert backend["port"] in [p["port"] for p in service["spec"]["ports"]]
            for match in rule.get("matches", []):
                assert match["path"]["type"] in ("Exact", "PathPrefix", "RegularExpression")
                assert match["path"]["value"].startswith("/")
                assert match.get("method", "GET") in HTTP_METHODS
                assert set(match) <= {"path", "method", "headers", "queryParams"}
    else:
        raise AssertionError(f"{doc['apiVersion']} {kind}: no schema and no structural check")


def validate_all(docs: list[dict[str, Any]]) -> None:
    for doc in docs:
        if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
            check_crd(doc, docs)
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                raise AssertionError(f"{doc['kind']}/{doc['metadata'].get('name')} (Kubernetes {version}): {exc.message}") from None
            except kubernetes_validate.SchemaNotFoundError:
                raise AssertionError(f"{doc['apiVersion']} {doc['kind']} is unknown to Kubernetes {version} "
                                     "and not a CRD checked here") from None


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return render(BASE)


@pytest.fixture(scope="module")
def production() -> list[dict[str, Any]]:
    return render(PRODUCTION)


def test_every_manifest_file_is_valid_on_its_own() -> None:
    files = sorted(K8S.rglob("*.yaml"))
    assert len(files) >= 10
    for path in files:
        if path.name == "kustomization.yaml":
            continue
        docs = load_all(path)
        standalone = [d for d in docs if (d["apiVersion"], d["kind"]) not in CRD_KINDS]
        if "patches" not in path.parts:  # patches are partial by design; checked once applied
            validate_all(standalone)


def test_base_and_production_overlay_render_to_valid_kubernetes(base: list[dict[str, Any]], production: list[dict[str, Any]]) -> None:
    validate_all(base)
    validate_all(production)
    kinds = {(d["kind"], d["metadata"]["name"]) for d in production}
    assert ("Namespace", "analytics") in kinds
    assert all(d["metadata"].get("namespace") == "analytics" for d in production if d["kind"] != "Namespace")


def test_the_validation_is_real_it_rejects_a_broken_deployment(base: list[dict[str, Any]]) -> None:
    broken = copy.deepcopy(find(base, "Deployment", "gateway"))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/readyz"
    with pytest.raises(AssertionError, match="pathh"):
        validate_all([broken])
    with pytest.raises(AssertionError, match="unknown to Kubernetes"):
        validate_all([{"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}])


# ------------------------------------------------------------------------ what an operator relies on


@pytest.mark.parametrize("overlay", ["base", "production"])
def test_one_deployment_and_service_per_service_with_probes_and_resources(overlay: str, request: pytest.FixtureRequest) -> None:
    docs = request.getfixturevalue(overlay)
    for name, port in PORTS.items():
        deployment = find(docs, "Deployment", name)
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["args"] == ["run", "--services", name, "--host", "0.0.0.0"]
        assert container["ports"][0]["containerPort"] == port
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
        for key in ("cpu", "memory"):
            assert container["resources"]["requests"][key] and container["resources"]["limits"][key], (name, key)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        refs = [next(iter(ref.values()))["name"] for ref in container["envFrom"]]
        assert refs == ["analytics-config", "analytics-secrets"]
        service = find(docs, "Service", name)
        assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
        assert service["spec"]["ports"][0]["port"] == port
        assert deployment["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    images = {c["image"] for c in all_containers(docs)}
    assert len(images) == 1, images
    if overlay == "production":
        assert images == {"registry.example.com/analytics/self-hosted-analytics:0.1.0"}


@pytest.mark.parametrize("overlay", ["base", "production"])
def test_autoscaling_gateway_query_on_cpu_and_aggregator_on_kafka_lag(overlay: str, request: pytest.FixtureRequest) -> None:
    docs = request.getfixturevalue(overlay)
    for name in ("gateway", "query"):
        hpa = find(docs, "HorizontalPodAutoscaler", name)
        assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
        assert "replicas" not in find(docs, "Deployment", name)["spec"], f"{name}: the HPA owns replicas"
    scaled = find(docs, "ScaledObject", "aggregator")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == AGGREGATOR_GROUP
    assert trigger["metadata"]["topic"] == EVENTS_TOPIC
    config = find(docs, "ConfigMap", "analytics-config")["data"]
    assert trigger["metadata"]["bootstrapServers"] == config["KAFKA_BOOTSTRAP_SERVERS"]
    # More aggregators than partitions would sit idle.
    assert scaled["spec"]["maxReplicaCount"] <= int(config["KAFKA_PARTITIONS"])
    assert "replicas" not in find(docs, "Deployment", "aggregator")["spec"], "KEDA owns the aggregator's replicas"


def test_config_and_secrets_are_apart_and_production_secrets_come_from_outside_git(
    base: list[dict[str, Any]], production: list[dict[str, Any]]
) -> None:
    secret_keys = {"JWT_SECRET", "DATABASE_URL", "CLICKHOUSE_URL", "REDIS_URL", "SMTP_URL"}
    config = find(base, "ConfigMap", "analytics-config")["data"]
    assert config["ANALYTICS_ENV"] == "production"
    assert not secret_keys & set(config)
    placeholder = find(base, "Secret", "analytics-secrets")["stringData"]
    assert set(placeholder) == secret_keys
    assert len(placeholder["JWT_SECRET"]) < 32, "the base placeholder must be refused by ANALYTICS_ENV=production"
    generated = find(production, "Secret", "analytics-secrets")
    assert set(generated["data"]) == secret_keys and "stringData" not in generated
    ignored = (ROOT / ".gitignore").read_text().split()
    assert "deploy/k8s/overlays/production/secrets.env" in ignored


def matching_backend(docs: list[dict[str, Any]], method: str, path: str) -> str | None:
    """Gateway API precedence: Exact path, then the longest prefix, then a method match."""
    best: tuple[tuple[int, int, int], str] | None = None
    for route in (d for d in docs if d["kind"] == "HTTPRoute"):
        for rule in route["spec"]["rules"]:
            for match in rule["matches"]:
                kind, value = match["path"]["type"], match["path"]["value"]
                if kind == "Exact":
                    hit = path == value
                else:
                    prefix = value.rstrip("/")
                    hit = path == prefix or path.startswith(prefix + "/") or prefix == ""
                if not hit or match.get("method", method) != method:
                    continue
                key = (int(kind == "Exact"), len(value), int("method" in match))
                if best is None or key > best[0]:
                    best = (key, rule["backendRefs"][0]["name"])
    return best[1] if best else None


@pytest.mark.parametrize(("method", "path", "service"), ROUTES)
def test_httproutes_send_each_request_to_its_service(production: list[dict[str, Any]], method: str, path: str, service: str) -> None:
    assert matching_backend(production, method, path) == service


def test_httproutes_leave_unknown_paths_unrouted(production: list[dict[str, Any]]) -> None:
    assert matching_backend(production, "GET", "/metrics") is None
    assert matching_backend(production, "GET", "/api/analyticsX") is None
    gateway = find(production, "Gateway", "analytics")
    assert gateway["spec"]["listeners"][0]["protocol"] == "HTTPS"


def test_the_migration_job_runs_analytics_migrate_with_the_same_config() -> None:
    (job,) = load_all(K8S / "jobs" / "migrate.yaml")
    validate_all([job])
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["migrate"]
    assert [next(iter(r.values()))["name"] for r in container["envFrom"]] == ["analytics-config", "analytics-secrets"]


def service_routes() -> list[tuple[str, str, str]]:
    """(method, path, service) for every route the services declare: built, not started."""
    from libs.runtime import Runtime
    from libs.settings import Settings
    from services.runner import SERVICES

    runtime = Runtime(Settings())
    return [
        (method, re.sub(r"\{[^}]+\}", "x1", route.path), name)
        for name, spec in SERVICES.items()
        for router in spec.build(runtime).routers
        for route in router.routes
        for method in sorted(getattr(route, "methods", None) or ())
    ]


def test_httproutes_cover_every_route_the_services_declare(production: list[dict[str, Any]]) -> None:
    routes = service_routes()
    assert {name for _, _, name in routes} >= {"gateway", "auth", "query"}
    wrong = {f"{m} {p}": f"routed to {matching_backend(production, m, p)}, served by {name}"
             for m, p, name in routes if matching_backend(production, m, p) != name}
    assert not wrong, wrong
