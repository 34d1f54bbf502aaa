"""Every service serves /healthz, /readyz (its own dependencies) and /metrics."""

from __future__ import annotations

import httpx
import pytest

from libs.runtime import Stack
from services.runner import SERVICES

pytestmark = pytest.mark.engines

# Dependencies, and each background task (false while it is being restarted after a failure).
EXPECTED_CHECKS = {
    "gateway": {"kafka", "api_key_table"},  # ingest goes on with Postgres or Redis down
    "auth": {"kafka", "postgres", "redis", "auth:key_checks", "auth:report_runs", "auth:webhook_deliveries",
             "auth:webhook_key_events", "auth:alert_firings", "auth:weather"},
    "query": {"kafka", "postgres", "redis", "clickhouse", "query:reports", "query:alerts", "query:app_deletions"},
    "aggregator": {"kafka", "clickhouse", "aggregator", "aggregator:consume"},  # "aggregator": it owns its partitions
    "notifier": {"kafka", "redis", "smtp", "notifier:consume"},
}


@pytest.mark.parametrize("name", list(SERVICES), ids=list(SERVICES))
async def test_each_service_reports_health_readiness_and_metrics(stack: Stack, name: str) -> None:
    app = stack.app([SERVICES[name]])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc") as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        ready = await http.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert set(ready.json()["checks"]) == EXPECTED_CHECKS[name]
        assert all(ready.json()["checks"].values())
        metrics = await http.get("/metrics")
        assert metrics.status_code == 200
        assert "http_requests_total" in metrics.text
        assert (await http.get("/docs")).status_code == 200


async def test_readyz_says_503_when_a_dependency_is_down(stack: Stack) -> None:
    from libs.runtime import ServiceParts, ServiceSpec

    async def down() -> bool:
        return False

    spec = ServiceSpec("probe", 0, frozenset(), lambda _rt: ServiceParts(checks={"thing": down}))
    stack.parts["probe"] = spec.build(stack.runtime)
    try:
        app = stack.app([spec])
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://svc") as http:
            r = await http.get("/readyz")
        assert r.status_code == 503
        assert r.json()["checks"] == {"thing": False}
        assert r.headers["retry-after"] == "1"
    finally:
        del stack.parts["probe"]
