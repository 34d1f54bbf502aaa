"""The compose stack for real: build, start with scaled services, and run the slice through the edge.

Needs a Docker engine with the compose plugin and ANALYTICS_TEST_DOCKER=1; skips with the reason
otherwise. Uses its own compose project name, free host ports and throwaway volumes, and removes
them all at the end.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.containers import docker_available
from tests.e2e import port
from tests.system.slice_http import run_slice

pytestmark = [pytest.mark.docker, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]


def compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    return None


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    ok, reason = docker_available()
    if not ok:
        pytest.skip(reason)
    cli = compose_cli()
    if cli is None:
        pytest.skip("the Docker compose plugin (`docker compose`) is not installed")
    env_file = tmp_path_factory.mktemp("compose") / ".env"
    example = (ROOT / ".env.example").read_text().splitlines()
    values = {
        "JWT_SECRET": secrets.token_urlsafe(48), "POSTGRES_PASSWORD": secrets.token_hex(16),
        "CLICKHOUSE_PASSWORD": secrets.token_hex(16), "REDIS_PASSWORD": secrets.token_hex(16),
        "GRAFANA_ADMIN_PASSWORD": secrets.token_hex(16), "KAFKA_PARTITIONS": "6",
        "EDGE_PORT": str(port()), "MAILPIT_UI_PORT": str(port()), "GRAFANA_PORT": str(port()), "PROMETHEUS_PORT": str(port()),
    }
    lines = [f"{line.split('=', 1)[0]}={values[line.split('=', 1)[0]]}" if line.split("=", 1)[0] in values else line
             for line in example]
    env_file.write_text("\n".join(lines) + "\n")
    project = f"analytics-test-{secrets.token_hex(3)}"
    base = [*cli, "--project-directory", str(ROOT), "-f", str(ROOT / "docker-compose.yml"),
            "--env-file", str(env_file), "-p", project]
    # The shell's variables win over --env-file in compose: keep ours from being overridden.
    configured = {line.split("=", 1)[0] for line in example if "=" in line and not line.startswith("#")}
    env = {k: v for k, v in os.environ.items() if k not in configured | set(values)}
    try:
        up = subprocess.run([*base, "up", "-d", "--build", "--wait", "--wait-timeout", "600",
                             "--scale", "aggregator=3", "--scale", "gateway=2"],
                            env=env, capture_output=True, text=True, timeout=1500)
        if up.returncode != 0:
            logs = subprocess.run([*base, "logs", "--tail", "60"], env=env, capture_output=True, text=True).stdout
            raise AssertionError(f"docker compose up failed:\n{up.stderr[-4000:]}\n{logs[-8000:]}")
        yield {"edge": f"http://127.0.0.1:{values['EDGE_PORT']}", "mailpit": f"http://127.0.0.1:{values['MAILPIT_UI_PORT']}",
               "prometheus": f"http://127.0.0.1:{values['PROMETHEUS_PORT']}", "ps": " ".join([*base, "ps"])}
    finally:
        subprocess.run([*base, "down", "-v", "--remove-orphans"], env=env, capture_output=True, timeout=300)


def test_the_scaled_compose_stack_serves_the_slice_through_the_edge(stack: dict[str, str]) -> None:
    edge = stack["edge"]
    assert httpx.get(f"{edge}/healthz").json()["service"] == "edge"
    result = run_slice(edge, edge, edge)
    assert result["summary"]["count"] == 5  # type: ignore[index]
    # The welcome mail reached Mailpit's inbox through the notifier.
    deadline = time.monotonic() + 30
    while True:
        messages = httpx.get(f"{stack['mailpit']}/api/v1/messages").json()
        if messages.get("total", 0) >= 1 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert messages["total"] >= 1, messages


def test_prometheus_scrapes_every_replica(stack: dict[str, str]) -> None:
    deadline = time.monotonic() + 60
    while True:
        targets = httpx.get(f"{stack['prometheus']}/api/v1/targets").json()["data"]["activeTargets"]
        up = [t for t in targets if t["health"] == "up"]
        jobs = {job: sum(1 for t in up if t["labels"]["job"] == job)
                for job in ("gateway", "auth", "query", "aggregator", "notifier")}
        if (jobs["aggregator"] == 3 and jobs["gateway"] == 2 and all(jobs.values())) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert jobs == {"gateway": 2, "auth": 1, "query": 1, "aggregator": 3, "notifier": 1}, jobs
