"""The compose deployment, its image and its observability config, checked offline.

docker-compose.yml is validated against the Compose Specification's JSON schema (the copy that
the check-jsonschema package ships), then read as `docker compose` reads it: interpolated from
.env.example with its secrets filled in, so each service's effective environment is checked by the
product's own Settings in production mode.
"""

from __future__ import annotations

import ast
import importlib.resources
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from libs.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"
DEPLOY = ROOT / "deploy"

APP_SERVICES = {"gateway": 8001, "auth": 8002, "query": 8003, "aggregator": 8004, "notifier": 8005}
BACKING = {"kafka", "clickhouse", "postgres", "redis", "mailpit"}
SECRETS = {"JWT_SECRET", "POSTGRES_PASSWORD", "CLICKHOUSE_PASSWORD", "REDIS_PASSWORD", "GRAFANA_ADMIN_PASSWORD"}


def compose_schema() -> dict[str, Any]:
    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / "compose-spec.json").read_text())


def schema_errors(doc: Any) -> list[str]:
    schema = compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(doc)]


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines as `docker compose` reads a .env file (comments and blank lines skipped)."""
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        env[key.strip()] = value.strip()
    return env


INTERPOLATION = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])((?:[^{}]|\{[^{}]*\})*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


class MissingRequired(Exception):
    pass


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation: ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR?error}, $$."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name = m.group(1) or m.group(4)
        op, arg = m.group(2), m.group(3) or ""
        current = env.get(name)
        unset_or_empty = current is None or (op is not None and op.startswith(":") and current == "")
        if op in ("-", ":-"):
            return interpolate(arg, env) if unset_or_empty else current  # type: ignore[return-value]
        if op in ("?", ":?"):
            if unset_or_empty:
                raise MissingRequired(f"{name}: {arg}")
            return current  # type: ignore[return-value]
        return current or ""

    return INTERPOLATION.sub(sub, value)


def referenced_variables(text: str) -> set[str]:
    text = text.replace("$$", "")
    return {m.group(1) or m.group(4) for m in INTERPOLATION.finditer(text) if m.group(0) != "$$"}


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def filled_env() -> dict[str, str]:
    """.env.example with its secrets filled in, as an operator does."""
    env = read_env_file(ENV_EXAMPLE)
    for name in SECRETS:
        env[name] = f"{name.lower().replace('_', '')}-0123456789abcdef0123456789abcdef"
    return env


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any], filled_env: dict[str, str]) -> dict[str, Any]:
    return interpolate(raw, filled_env)


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


# ------------------------------------------------------------------------ compose: the schema


def test_compose_file_is_valid_against_the_compose_specification(raw: dict[str, Any], compose: dict[str, Any]) -> None:
    assert schema_errors(raw) == []
    assert schema_errors(compose) == []


def test_the_schema_check_is_real_it_rejects_a_broken_file(raw: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(raw))
    broken["services"]["gateway"]["depends_on"]["kafka"]["condition"] = "service_ready"
    broken["services"]["query"]["healthcheck"] = {**raw["services"]["query"]["healthcheck"], "intervall": "5s"}
    errors = schema_errors(broken)
    assert any("service_ready" in e for e in errors), errors
    assert any("intervall" in e for e in errors), errors


# ------------------------------------------------------------------------ compose: the stack


def test_every_service_and_backing_service_is_there(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(APP_SERVICES) | BACKING | {"edge", "prometheus", "grafana"} <= set(services)
    images = {name: services[name]["image"] for name in BACKING | {"edge"}}
    assert images["kafka"].startswith("apache/kafka:")
    assert re.fullmatch(r"clickhouse/clickhouse-server:25\.[\d.]+", images["clickhouse"]), "the schema needs 25.x (JSON type)"
    assert re.fullmatch(r"postgres:16[\w.-]*", images["postgres"])
    assert re.fullmatch(r"redis:7[\w.-]*", images["redis"])
    assert images["mailpit"].startswith("axllent/mailpit:")
    assert images["edge"].startswith("nginx:")
    for name, service in services.items():
        image = service.get("image", "")
        tag = image.rsplit(":", 1)[-1] if ":" in image else ""
        assert (tag and tag != "latest") or name in APP_SERVICES, f"{name}: pin the image tag ({image})"


def test_kafka_runs_in_kraft_mode_and_topics_come_from_the_services(compose: dict[str, Any]) -> None:
    kafka = environment(compose["services"]["kafka"])
    assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "zookeeper" not in json.dumps(compose).lower()
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert kafka["KAFKA_ADVERTISED_LISTENERS"] == "PLAINTEXT://kafka:9092"
    for name in APP_SERVICES:
        env = environment(compose["services"][name])
        assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert int(env["KAFKA_PARTITIONS"]) >= 1


def test_each_app_service_runs_its_own_command_from_one_image_and_scales(compose: dict[str, Any]) -> None:
    services = compose["services"]
    images = {services[name]["image"] for name in APP_SERVICES}
    assert len(images) == 1, images
    for name, port in APP_SERVICES.items():
        service = services[name]
        assert service["command"] == ["run", "--services", name, "--host", "0.0.0.0"]
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        # `docker compose up --scale NAME=3` needs no fixed name and no host port.
        assert "container_name" not in service, name
        assert "ports" not in service, name
        assert str(port) in [str(p) for p in service.get("expose", [])], name
        assert environment(service)["HEALTHCHECK_PORT"] == str(port)


def test_every_app_service_loads_its_settings_in_production_mode(compose: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        env = environment(compose["services"][name])
        assert env["ANALYTICS_ENV"] == "production"
        settings = Settings(**{k.lower(): v for k, v in env.items()})  # what the container's process reads
        assert settings.analytics_env == "production"
        for url in ("kafka_bootstrap_servers", "clickhouse_url", "database_url", "redis_url", "smtp_url"):
            assert getattr(settings, url), f"{name}: {url} unset would start an embedded engine"
        assert settings.clickhouse_url.startswith("http://analytics:")
        assert settings.database_url.startswith("postgresql://analytics:")
        assert "@clickhouse:8123/analytics" in settings.clickhouse_url
        assert "@postgres:5432/analytics" in settings.database_url
        assert settings.smtp_url == "smtp://mailpit:1025"


def test_secrets_are_required_from_env_and_never_in_the_files(raw: dict[str, Any], filled_env: dict[str, str]) -> None:
    example = read_env_file(ENV_EXAMPLE)
    for name in SECRETS:
        assert example[name] == "", f".env.example must leave {name} empty"
        env = {**filled_env, name: ""}
        with pytest.raises(MissingRequired, match=name):
            interpolate(raw, env)
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    for name in SECRETS:
        assert name not in dockerfile
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def test_every_variable_the_compose_file_reads_is_documented_in_env_example() -> None:
    used = referenced_variables(COMPOSE.read_text())
    documented = set(read_env_file(ENV_EXAMPLE))
    assert used - documented == set(), f"add to .env.example: {sorted(used - documented)}"


def test_healthchecks_gate_startup_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        assert "healthcheck" in service, f"{name} has no healthcheck"
        deps = service.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: use the long depends_on form with a condition"
        for dep, how in deps.items():
            assert how["condition"] == "service_healthy", (name, dep)
            assert "healthcheck" in services[dep], (name, dep)
    for name in APP_SERVICES:
        assert set(services[name]["depends_on"]) >= BACKING, name
    assert set(services["edge"]["depends_on"]) == {"gateway", "auth", "query"}


def test_state_lives_in_named_volumes(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    mounts = {
        "kafka": "/var/lib/kafka/data", "clickhouse": "/var/lib/clickhouse",
        "postgres": "/var/lib/postgresql/data", "redis": "/data", "prometheus": "/prometheus", "grafana": "/var/lib/grafana",
    }
    for name, target in mounts.items():
        volumes = [v.split(":") for v in compose["services"][name]["volumes"]]
        sources = {src for src, dst, *_ in volumes if dst == target}
        assert sources and sources <= declared, f"{name}: {target} must be a named volume"
    for name in APP_SERVICES:
        assert compose["services"][name].get("read_only") is True  # the app keeps no state in its container


def test_the_edge_publishes_port_8000_and_renders_the_shared_routes(compose: dict[str, Any]) -> None:
    edge = compose["services"]["edge"]
    assert edge["ports"] == ["127.0.0.1:8000:8000"]
    assert "./deploy/nginx/routes.conf:/etc/nginx/analytics/routes.conf:ro" in edge["volumes"]
    assert "./deploy/nginx/templates:/etc/nginx/templates:ro" in edge["volumes"]
    template = (DEPLOY / "nginx" / "templates" / "default.conf.template").read_text()
    needed = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)\}", template))
    env = environment(edge)
    assert needed <= set(env), needed - set(env)
    assert env["GATEWAY_UPSTREAM"] == "gateway:8001"
    assert env["AUTH_UPSTREAM"] == "auth:8002"
    assert env["QUERY_UPSTREAM"] == "query:8003"
    assert env["UPSTREAM_RESOLVE"] == "resolve"  # follows replicas added by --scale
    assert "include analytics/routes.conf;" in template


# ------------------------------------------------------------------------ the image


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_image_is_multi_stage_slim_pinned_non_root_with_a_healthcheck() -> None:
    steps = dockerfile_instructions()
    args = dict(rest.split("=", 1) for word, rest in steps if word == "ARG" and "=" in rest)
    base = args["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base
    froms = [rest for word, rest in steps if word == "FROM"]
    assert len(froms) >= 2 and all(f.startswith("${PYTHON_IMAGE}") for f in froms)
    final_stage = steps[max(i for i, (w, _) in enumerate(steps) if w == "FROM"):]
    users = [rest for word, rest in final_stage if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert any(word == "HEALTHCHECK" for word, _ in final_stage)
    assert not any("build-essential" in rest for word, rest in final_stage if word == "RUN")
    runs = [rest for word, rest in steps if word == "RUN"]
    lock = next(i for i, r in enumerate(runs) if "pip install --require-hashes -r requirements.lock" in r)
    assert not any("requirements-" in r for r in runs)  # runtime only: no embedded engines, no test tools
    project = next(i for i, r in enumerate(runs) if "pip install --no-deps ." in r)
    assert lock < project
    entry = next(rest for word, rest in final_stage if word == "ENTRYPOINT")
    assert json.loads(entry) == ["analytics"]


def test_build_context_holds_only_what_the_image_needs() -> None:
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*")] == "*"  # everything excluded first...
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    assert allowed == {"requirements.lock", "pyproject.toml", "README.md", "libs", "services", "deploy/healthcheck.py"}
    copied = {rest.split()[0] for word, rest in dockerfile_instructions() if word == "COPY" and not rest.startswith("--from")}
    assert copied <= allowed | {"libs", "services"}, copied


# ------------------------------------------------------------------------ observability


def exported_metric_names() -> set[str]:
    """Every sample name the services' Prometheus metrics expose, read from the source (no import side effects)."""
    kinds = {"Counter": ("_total",), "Gauge": ("",), "Histogram": ("_bucket", "_sum", "_count"), "Summary": ("_sum", "_count", "")}
    kinds |= {"TalliedCounter": kinds["Counter"], "TalliedHistogram": kinds["Histogram"]}  # libs/metrics.py
    names: set[str] = set()
    for path in [*ROOT.joinpath("libs").rglob("*.py"), *ROOT.joinpath("services").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in kinds
                    and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                base = node.args[0].value.removesuffix("_total")
                names.update(base + suffix for suffix in kinds[node.func.id])
    assert len(names) > 10, names
    return names


def promql_metric_names(expr: str) -> set[str]:
    words = set(re.findall(r"\b([a-z_][a-z0-9_]*)\b(?=\s*[{\[)])", expr))
    functions = {"sum", "rate", "increase", "histogram_quantile", "clamp_min", "count", "max", "deriv", "by", "and", "up"}
    return {w for w in words if w not in functions and "_" in w}


def test_prometheus_scrapes_every_replica_of_every_service() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for name, port in APP_SERVICES.items():
        sd = jobs[name]["dns_sd_configs"][0]
        assert sd["names"] == [name] and sd["port"] == port and sd["type"] == "A"
    prom = yaml.safe_load(COMPOSE.read_text())["services"]["prometheus"]
    assert "./deploy/prometheus:/etc/prometheus:ro" in prom["volumes"]
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    known = exported_metric_names()
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert promql_metric_names(rule["expr"]) <= known, (rule["alert"], promql_metric_names(rule["expr"]) - known)


def test_grafana_dashboard_is_provisioned_with_the_operator_panels() -> None:
    provisioning = DEPLOY / "grafana" / "provisioning"
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((provisioning / "dashboards" / "analytics.yml").read_text())["providers"][0]
    grafana = yaml.safe_load(COMPOSE.read_text())["services"]["grafana"]
    assert f"./deploy/grafana/dashboards:{provider['options']['path']}:ro" in grafana["volumes"]
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "analytics.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    for p in dashboard["panels"]:
        assert p["datasource"]["uid"] == datasource["uid"]
    text = "\n".join(exprs)
    for wanted in ("gateway_events_accepted_total", 'http_requests_total{status=~"5.."}', "aggregator_consumer_lag",
                   "aggregator_insert_seconds_bucket", 'query_cache_lookups_total{result="hit"}', "notifier_emails_sent_total"):
        assert wanted in text, f"dashboard lacks {wanted}"
    known = exported_metric_names()
    for expr in exprs:
        assert promql_metric_names(expr) <= known, (expr, promql_metric_names(expr) - known)
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
