"""No key holder can stop the pipeline: what the gateway accepts the aggregator stores, what it cannot
store is refused at the gateway with a 4xx naming the field, and poison that reaches the topic anyway
(a broken producer) is dead-lettered per app without stopping anything else."""

from __future__ import annotations

import asyncio
import base64
import itertools
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer
from fastapi import APIRouter

from libs.kafka import EVENTS_DLQ_TOPIC, EVENTS_TOPIC, make_consumer
from libs.runtime import ServiceParts, ServiceSpec, Stack
from libs.settings import Settings
from tests.conftest import eventually, register_app, signup_login
from tests.services.aggregator.test_aggregator import enriched, wait_count

pytestmark = pytest.mark.engines

FRESH = {"cache-control": "no-cache"}


@pytest.fixture
async def app(client: httpx.AsyncClient) -> dict[str, Any]:
    return await register_app(client, await signup_login(client), "poison-test")


@pytest.fixture
async def other_app(client: httpx.AsyncClient) -> dict[str, Any]:
    return await register_app(client, await signup_login(client), "bystander")


def nested(depth: int) -> dict[str, Any]:
    """An object `depth` levels deep: {"a": {"a": ... {"a": 1}}}."""
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


async def pipeline_alive(client: httpx.AsyncClient, stack: Stack, bystander: dict[str, Any]) -> None:
    """Another app's event sent now is stored, and the HTTP services answer as ready."""
    r = await client.post("/api/analytics/collect", json={"event": "still_here"},
                          headers={"x-api-key": bystander["write_key"]})
    assert r.status_code == 202, r.text[:400]
    await wait_count(client, bystander["api_key"], 1)
    r = await client.get("/readyz")
    assert r.status_code == 200, r.text[:400]
    r = await client.post("/api/user/login", json={"username": "nobody-here", "password": "x" * 10})
    assert r.status_code == 401, r.text[:400]


# ---- refused at the gateway ---------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e400"])
async def test_300_non_finite_metrics_are_refused_and_the_pipeline_keeps_storing_other_apps_events(
    client: httpx.AsyncClient, stack: Stack, app: dict[str, Any], other_app: dict[str, Any], value: str
) -> None:
    body = {"events": [{"metric_name": "m", "value": value}] * 300}
    r = await client.post("/api/analytics/metrics", json=body, headers={"x-api-key": app["write_key"]})
    assert r.status_code == 422, r.text[:400]
    errors = r.json()["detail"]
    assert [e["index"] for e in errors] == list(range(300))
    assert errors[0]["errors"][0]["loc"] == ["value"], errors[0]
    assert "finite" in errors[0]["errors"][0]["msg"], errors[0]
    await pipeline_alive(client, stack, other_app)


@pytest.mark.parametrize("depth", [40, 200, 253, 254, 400])
@pytest.mark.parametrize(
    ("path", "field", "wrap"),
    [
        pytest.param("/api/analytics/collect", "properties", lambda p: {"event": "deep", "properties": p}, id="collect"),
        pytest.param("/api/analytics/collect", "metadata", lambda p: {"event": "deep", "metadata": {"extra": p}},
                     id="collect-metadata"),
        pytest.param("/api/analytics/events", "metadata", lambda p: {"event_name": "deep", "metadata": p}, id="events"),
        pytest.param("/v1/track", "properties", lambda p: {"userId": "u", "event": "deep", "properties": p}, id="segment"),
        pytest.param("/v1/identify", "traits", lambda p: {"userId": "u", "traits": p}, id="segment-traits"),
        pytest.param("/v1/track", "context", lambda p: {"userId": "u", "event": "deep", "context": {"x": p}},
                     id="segment-context"),
    ],
)
async def test_over_deep_json_is_refused_naming_the_field(
    client: httpx.AsyncClient, app: dict[str, Any], path: str, field: str, wrap: Any, depth: int
) -> None:
    headers = {"x-api-key": app["write_key"]}
    if path.startswith("/v1/"):
        headers = {"authorization": "Basic " + base64.b64encode(f"{app['write_key']}:".encode()).decode()}
    r = await client.post(path, json=wrap(nested(depth)), headers=headers)
    assert r.status_code == 422, r.text[:400]
    error = r.json()["detail"][0]
    assert error["loc"][0] == field and "deeper than" in error["msg"], error


async def test_over_wide_json_is_refused_by_index_in_a_batch(client: httpx.AsyncClient, app: dict[str, Any]) -> None:
    wide = {f"k{i}": 1 for i in range(1001)}
    body = {"events": [{"event": "ok"}, {"event": "wide", "properties": wide}, {"event": "long", "properties": {"l": [0] * 1001}}]}
    r = await client.post("/api/analytics/collect", json=body, headers={"x-api-key": app["write_key"]})
    assert r.status_code == 202, r.text[:400]
    assert r.json()["accepted"] == 1
    errors = r.json()["errors"]
    assert [e["index"] for e in errors] == [1, 2]
    assert errors[0]["errors"][0]["loc"] == ["properties"] and "1000" in errors[0]["errors"][0]["msg"]
    assert errors[1]["errors"][0]["loc"] == ["properties", "l"]


def _basic(key: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


@pytest.mark.parametrize(("timestamp", "sent_at"), [("9999-12-31T00:00:00Z", "0001-01-01T00:00:00Z"),
                                                     ("0001-01-01T00:00:00Z", "9999-12-31T00:00:00Z")])
async def test_extreme_segment_timestamps_are_a_4xx_not_an_overflow(
    client: httpx.AsyncClient, app: dict[str, Any], timestamp: str, sent_at: str
) -> None:
    call = {"type": "track", "event": "e", "userId": "u", "timestamp": timestamp}
    r = await client.post("/v1/batch", json={"batch": [call], "sentAt": sent_at}, headers=_basic(app["write_key"]))
    assert 400 <= r.status_code < 500, r.text[:400]
    r = await client.post("/v1/batch", json={"batch": [{**call, "sentAt": sent_at}]}, headers=_basic(app["write_key"]))
    assert r.status_code == 422, r.text[:400]
    assert r.json()["detail"][0]["errors"][0]["loc"][0] in ("timestamp", "sentAt"), r.text[:400]


async def test_timestamps_outside_the_stored_range_are_refused_with_the_limit_and_the_rest_are_exported(
    client: httpx.AsyncClient, settings_retention: int, app: dict[str, Any]
) -> None:
    user = f"range-{uuid.uuid4().hex[:6]}"
    now = datetime.now(UTC)
    times = ["0001-01-01T00:00:00Z", "1899-12-31T00:00:00Z", "1970-01-01T00:00:00Z",
             (now - timedelta(days=settings_retention + 1)).isoformat(),
             (now - timedelta(days=settings_retention - 1)).isoformat(), now.isoformat()]
    body = {"events": [{"event": "ranged", "userId": user, "timestamp": t} for t in times]}
    r = await client.post("/api/analytics/collect", json=body, headers={"x-api-key": app["write_key"]})
    assert r.status_code == 202, r.text[:400]
    answer = r.json()
    assert answer["accepted"] == 2
    assert [e["index"] for e in answer["errors"]] == [0, 1, 2, 3]
    for error in answer["errors"]:
        assert error["errors"][0]["loc"] == ["timestamp"], error
    assert f"{settings_retention} days" in answer["errors"][3]["errors"][0]["msg"]
    assert "1900" in answer["errors"][0]["errors"][0]["msg"]

    async def exported() -> bool:
        r = await client.get(f"/api/analytics/users/{user}/export", headers={"x-api-key": app["api_key"]})
        return r.status_code == 200 and len(r.content.splitlines()) == 2

    await eventually(exported, 15, "the two accepted events are not both in the user's export")


@pytest.fixture
def settings_retention(stack: Stack) -> int:
    return stack.settings.clickhouse_retention_days


# ---- dotted keys and the JSON column --------------------------------------------------------------------

@pytest.mark.parametrize(
    "props",
    [
        pytest.param({"a": 1, "a.b": 2}, id="number-and-dotted"),
        pytest.param({"a": {"b": 1}, "a.b": 2}, id="object-and-dotted-same-path"),
        pytest.param({"a.b": {"c": None}, "a": {"b": {"d": 1}}, "x..y": [], ".": "", "": {"": 0}}, id="odd-keys"),
    ],
)
async def test_dotted_keys_are_stored_and_read_back_exactly(
    client: httpx.AsyncClient, app: dict[str, Any], props: dict[str, Any]
) -> None:
    user = f"dots-{uuid.uuid4().hex[:6]}"
    r = await client.post("/api/analytics/collect", json={"event": "dotted", "userId": user, "properties": props},
                          headers={"x-api-key": app["write_key"]})
    assert r.status_code == 202, r.text[:400]
    event_id = r.json()["event_ids"][0]
    got: dict[str, Any] = {}

    async def stored() -> bool:
        r = await client.get(f"/api/analytics/events/{event_id}", headers={"x-api-key": app["api_key"]})
        got.update(r.json() if r.status_code == 200 else {})
        return r.status_code == 200

    await eventually(stored, 15, "the event was not stored")
    assert got["properties"] == props
    r = await client.get("/api/analytics/events", params={"event_name": "dotted", "user_id": user},
                         headers={"x-api-key": app["api_key"], **FRESH})
    assert [e["properties"] for e in r.json()["events"]] == [props], r.text[:400]
    r = await client.get(f"/api/analytics/users/{user}/export", headers={"x-api-key": app["api_key"]})
    assert [orjson.loads(line)["properties"] for line in r.content.splitlines()] == [props]


# ---- poison straight onto the topic ---------------------------------------------------------------------

async def test_one_apps_poison_is_dead_lettered_while_other_apps_are_stored_and_services_answer(
    client: httpx.AsyncClient, stack: Stack, app: dict[str, Any], other_app: dict[str, Any]
) -> None:
    producer: AIOKafkaProducer = await stack.runtime.producer()
    key = app["app_id"].encode()
    poison = [b"{oops", orjson.dumps({"event_id": "x", "app_id": app["app_id"], "type": "metric", "event_name": "m",
                                      "metric_value": None, "timestamp": "2024-01-01T00:00:00Z",
                                      "received_at": "2024-01-01T00:00:00Z"}),
              enriched(app["app_id"], properties={"big": 0}).replace(b'"big":0', b'"big":' + b"9" * 30),
              enriched(app["app_id"], properties=nested(250))]
    for i in range(300):
        await producer.send(EVENTS_TOPIC, poison[i % len(poison)], key=key)
    await producer.flush()
    for _ in range(5):
        await producer.send(EVENTS_TOPIC, enriched(other_app["app_id"]), key=other_app["app_id"].encode())
    await producer.flush()
    await wait_count(client, other_app["api_key"], 5, timeout=30)

    dlq = make_consumer(stack.settings, EVENTS_DLQ_TOPIC, group_id=None)
    await dlq.start()
    found = 0
    try:
        async def all_dead_lettered() -> bool:
            nonlocal found
            batches = await dlq.getmany(timeout_ms=200)
            found += sum(1 for msgs in batches.values() for m in msgs if m.key == key)
            return found >= 300

        await eventually(all_dead_lettered, 20, f"only {found} of 300 poison messages reached the DLQ")
    finally:
        await dlq.stop()
    r = await client.get("/readyz")
    assert r.status_code == 200, r.text[:400]
    r = await client.post("/api/analytics/collect", json={"event": "after"}, headers={"x-api-key": other_app["write_key"]})
    assert r.status_code == 202
    await wait_count(client, other_app["api_key"], 6)


# ---- a failing background task never stops the HTTP services --------------------------------------------

async def test_a_failing_background_task_is_restarted_with_backoff_reported_in_readyz_and_http_stays_up(
    engines: Settings,
) -> None:
    runs: list[float] = []
    healthy = asyncio.Event()

    def build(runtime: Any) -> ServiceParts:
        router = APIRouter()

        @router.get("/ping")
        async def ping() -> dict[str, str]:
            return {"pong": "yes"}

        async def flaky() -> None:
            runs.append(asyncio.get_running_loop().time())
            if len(runs) <= 3:
                raise RuntimeError("consumer broke")
            healthy.set()
            await asyncio.Event().wait()

        return ServiceParts(routers=[router], background=[flaky])

    spec = ServiceSpec(name="flaky", port=0, needs=frozenset(), build=build)
    async with Stack(engines, [spec]) as stack:
        transport = httpx.ASGITransport(app=stack.app())
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            async def failing_reported() -> bool:
                r = await http.get("/readyz")
                return r.status_code == 503 and r.json()["checks"].get("flaky:flaky") is False

            await eventually(failing_reported, 5, "the failing task is not reported in /readyz")
            assert (await http.get("/ping")).json() == {"pong": "yes"}
            await asyncio.wait_for(healthy.wait(), 20)
            assert (await http.get("/ping")).status_code == 200
            gaps = [b - a for a, b in itertools.pairwise(runs)]
            assert gaps == sorted(gaps) and gaps[-1] > gaps[0], gaps  # growing backoff

            async def ready_again() -> bool:
                return (await http.get("/readyz")).status_code == 200

            await eventually(ready_again, 15, "not ready again once the task runs")
