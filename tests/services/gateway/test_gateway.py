"""The ingest gateway as clients see it: the /api/analytics routes, the Segment API with real SDKs, browsers,
limits, enrichment, and what happens when Kafka or Redis is down."""

from __future__ import annotations

import asyncio
import base64
import gzip
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from libs.embedded.engines import start_kafka
from libs.runtime import Stack
from libs.settings import Settings
from services import gateway
from tests.conftest import eventually, register_app, serving, signup_login

pytestmark = pytest.mark.engines

IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.0 Mobile/15E148 Safari/604.1"
)
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


@pytest.fixture(scope="module")
async def app_keys(client: httpx.AsyncClient) -> dict[str, Any]:
    return await register_app(client, await signup_login(client), "gateway tests")


@pytest.fixture(scope="module")
async def live_url(stack: Stack) -> AsyncIterator[str]:
    """The whole app on a real socket, for SDKs that speak HTTP themselves."""
    async with serving(stack.app()) as url:
        yield url


async def stored_event(client: httpx.AsyncClient, key: str, event_id: str, timeout: float = 10) -> dict[str, Any]:
    found: dict[str, Any] = {}

    async def present() -> bool:
        r = await client.get(f"/api/analytics/events/{event_id}", headers={"x-api-key": key})
        if r.status_code == 200:
            found.update(r.json())
        return r.status_code == 200

    await eventually(present, timeout, f"event {event_id} never stored")
    return found


async def count_named(client: httpx.AsyncClient, key: str, name: str) -> int:
    r = await client.get("/api/analytics/events/count", params={"event_name": name},
                         headers={"x-api-key": key, "cache-control": "no-cache"})
    assert r.status_code == 200, r.text
    return int(r.json()["count"])


# ---- the /api/analytics routes -------------------------------------------------------------------

@pytest.mark.parametrize(
    ("headers", "status", "detail"),
    [
        pytest.param({}, 401, "missing API key", id="no-key"),
        pytest.param({"x-api-key": "wk_not-a-real-key"}, 401, "invalid, revoked or expired", id="unknown-key"),
    ],
)
async def test_ingest_without_a_valid_key_is_401(client: httpx.AsyncClient, headers: dict, status: int, detail: str) -> None:
    r = await client.post("/api/analytics/collect", json={"event": "x"}, headers=headers)
    assert r.status_code == status
    assert detail in r.json()["detail"]


async def test_a_batch_accepts_the_good_events_and_reports_the_bad_by_index(client: httpx.AsyncClient, app_keys: dict) -> None:
    name = f"batch-{uuid.uuid4().hex[:6]}"
    body = {"events": [{"event": name}, {"url": "no event name"}, {"event": name, "timestamp": "not a time"}, {"event": name}]}
    r = await client.post("/api/analytics/collect", json=body, headers={"x-api-key": app_keys["write_key"]})
    assert r.status_code == 202
    answer = r.json()
    assert answer["accepted"] == 2
    assert [e["index"] for e in answer["errors"]] == [1, 2]
    assert answer["errors"][0]["errors"][0]["loc"] == ["event"]
    await eventually(lambda: _equals(count_named(client, app_keys["api_key"], name), 2), 10)


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


@pytest.mark.parametrize(
    ("body", "status"),
    [
        pytest.param(b"{not json", 400, id="not-json"),
        pytest.param(b"[1, 2]", 400, id="not-an-object"),
        pytest.param(b'{"events": []}', 400, id="empty-batch"),
        pytest.param(b'{"event": ""}', 422, id="empty-name"),
        pytest.param(b'{"events": [{"nope": 1}]}', 422, id="all-bad"),
    ],
)
async def test_bad_bodies_get_a_clear_4xx(client: httpx.AsyncClient, app_keys: dict, body: bytes, status: int) -> None:
    r = await client.post("/api/analytics/collect", content=body, headers={"x-api-key": app_keys["write_key"]})
    assert r.status_code == status, r.text
    assert r.json()["detail"]


async def test_requests_over_500_kb_are_413_and_events_over_32_kb_are_refused_by_index(
    client: httpx.AsyncClient, app_keys: dict
) -> None:
    big = {"event": "big", "properties": {"blob": "x" * 600_000}}
    r = await client.post("/api/analytics/collect", json=big, headers={"x-api-key": app_keys["write_key"]})
    assert r.status_code == 413
    body = {"events": [{"event": "ok"}, {"event": "fat", "properties": {"blob": "x" * 40_000}}]}
    r = await client.post("/api/analytics/collect", json=body, headers={"x-api-key": app_keys["write_key"]})
    assert r.status_code == 202
    assert r.json()["accepted"] == 1
    assert r.json()["errors"][0]["index"] == 1
    assert "32 KB" in r.json()["errors"][0]["errors"][0]["msg"]


async def test_gzip_and_text_plain_beacon_bodies_are_accepted(client: httpx.AsyncClient, app_keys: dict) -> None:
    name = f"beacon-{uuid.uuid4().hex[:6]}"
    payload = b'{"event": "%s"}' % name.encode()
    r = await client.post(
        "/api/analytics/collect", content=gzip.compress(payload),
        headers={"x-api-key": app_keys["write_key"], "content-encoding": "gzip", "content-type": "application/json"},
    )
    assert r.status_code == 202, r.text
    r = await client.post(
        "/api/analytics/collect", content=payload,
        headers={"x-api-key": app_keys["write_key"], "content-type": "text/plain;charset=UTF-8"},
    )
    assert r.status_code == 202, r.text
    await eventually(lambda: _equals(count_named(client, app_keys["api_key"], name), 2), 10)


async def test_the_documented_fastapi_routes_answer_as_the_fast_path_does(stack: Stack, app_keys: dict) -> None:
    """Without the fast path in front (e.g. the routes mounted elsewhere), the same answers come back."""
    from fastapi import FastAPI

    from libs.http import install_error_handlers

    plain = FastAPI()
    install_error_handlers(plain)
    for router in stack.parts["gateway"].routers:
        plain.include_router(router)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=plain), base_url="http://gw") as http:
        ok = await http.post("/api/analytics/collect", json={"events": [{"event": "doc"}, {"nope": 1}]},
                             headers={"x-api-key": app_keys["write_key"]})
        seg = await http.post("/v1/track", json={"userId": "d", "event": "Doc"}, headers=_basic(app_keys["write_key"]))
        missing = await http.post("/api/analytics/collect", json={"event": "doc"})
    assert ok.status_code == 202
    assert (ok.json()["accepted"], [e["index"] for e in ok.json()["errors"]]) == (1, [1])
    assert seg.status_code == 200 and seg.json()["success"] is True
    assert missing.status_code == 401 and "missing API key" in missing.json()["detail"]


async def test_cors_preflight_is_answered_for_any_origin(client: httpx.AsyncClient) -> None:
    r = await client.options(
        "/api/analytics/collect",
        headers={"origin": "https://blog.example", "access-control-request-method": "POST",
                 "access-control-request-headers": "content-type,x-api-key"},
    )
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "*"
    assert "POST" in r.headers["access-control-allow-methods"]
    assert "x-api-key" in r.headers["access-control-allow-headers"].lower()


async def test_a_browsers_post_may_read_the_answer_and_its_request_id(client: httpx.AsyncClient, app_keys: dict) -> None:
    r = await client.post("/api/analytics/collect", json={"event": "cors"},
                          headers={"x-api-key": app_keys["write_key"], "origin": "https://blog.example"})
    assert r.status_code == 202
    assert r.headers["access-control-allow-origin"] == "*"
    assert "X-Request-ID" in r.headers["access-control-expose-headers"]
    assert len(r.headers["x-request-id"]) == 32


async def test_named_events_and_custom_metrics_are_accepted(client: httpx.AsyncClient, app_keys: dict) -> None:
    r = await client.post(
        "/api/analytics/events",
        json={"event_name": "checkout", "event_category": "shop", "source": "web", "user_id": "u9",
              "session_id": "s1", "metadata": {"total": 12.5}},
        headers={"x-api-key": app_keys["api_key"]},
    )
    assert r.status_code == 202
    event = await stored_event(client, app_keys["api_key"], r.json()["event_ids"][0])
    assert (event["event_category"], event["source"], event["properties"]) == ("shop", "web", {"total": 12.5})
    r = await client.post(
        "/api/analytics/metrics", json={"metric_name": "latency_ms", "value": 42, "unit": "ms", "tags": {"r": "eu"}},
        headers={"x-api-key": app_keys["api_key"]},
    )
    assert r.status_code == 202

    async def metric_visible() -> bool:
        r = await client.get("/api/analytics/metrics", params={"metric_name": "latency_ms"},
                             headers={"x-api-key": app_keys["api_key"]})
        rows = r.json()["metrics"]
        return bool(rows) and rows[0]["count"] == 1 and rows[0]["avg"] == 42

    await eventually(metric_visible, 10, "the metric never showed up")


# ---- enrichment ---------------------------------------------------------------------------------

async def test_events_are_enriched_from_the_user_agent_url_and_referrer(client: httpx.AsyncClient, app_keys: dict) -> None:
    r = await client.post(
        "/api/analytics/collect",
        json={"event": "pageview", "url": "https://shop.example/p/1?utm_source=news&utm_campaign=spring",
              "referrer": "https://www.google.com/search?q=x"},
        headers={"x-api-key": app_keys["write_key"], "user-agent": IPHONE},
    )
    event = await stored_event(client, app_keys["api_key"], r.json()["event_ids"][0])
    assert (event["device_type"], event["browser"], event["os"]) == ("mobile", "Mobile Safari", "iOS")
    assert (event["path"], event["utm_source"], event["utm_campaign"]) == ("/p/1", "news", "spring")
    assert event["referrer_host"] == "google.com"
    assert event["type"] == "page"
    assert event["is_bot"] is False


async def test_what_a_collect_event_says_of_itself_wins_and_its_extra_metadata_is_kept(
    client: httpx.AsyncClient, app_keys: dict
) -> None:
    own_id = f"client-{uuid.uuid4().hex[:8]}"
    body = {"event": "signup_click", "device": "Tablet", "userId": "u-7", "sessionId": "s-7", "event_id": own_id,
            "metadata": {"browser": "Firefox", "os": "Linux", "screenSize": "1920x1080", "plan": "pro", "gone": None},
            "properties": {"cta": "hero"}}
    r = await client.post("/api/analytics/collect", json=body,
                          headers={"x-api-key": app_keys["write_key"], "user-agent": IPHONE})
    assert r.status_code == 202, r.text
    assert r.json()["event_ids"] == [own_id]
    event = await stored_event(client, app_keys["api_key"], own_id)
    assert (event["device_type"], event["browser"], event["os"]) == ("tablet", "Firefox", "Linux")
    assert (event["screen_size"], event["user_id"], event["session_id"]) == ("1920x1080", "u-7", "s-7")
    assert event["properties"] == {"cta": "hero", "plan": "pro"}
    assert event["type"] == "track" and event["event_name"] == "signup_click"
    too_long = await client.post("/api/analytics/collect", json={"event": "x", "metadata": {"browser": "b" * 201}},
                                 headers={"x-api-key": app_keys["write_key"]})
    assert too_long.status_code == 422
    assert too_long.json()["detail"][0]["loc"] == ["metadata", "browser"]


async def test_bots_are_flagged(client: httpx.AsyncClient, app_keys: dict) -> None:
    r = await client.post("/api/analytics/collect", json={"event": "crawl"},
                          headers={"x-api-key": app_keys["write_key"], "user-agent": GOOGLEBOT})
    event = await stored_event(client, app_keys["api_key"], r.json()["event_ids"][0])
    assert event["is_bot"] is True
    assert event["device_type"] == "bot"


async def test_the_client_ip_comes_from_x_forwarded_for_only_behind_a_trusted_proxy(
    stack: Stack, client: httpx.AsyncClient, app_keys: dict
) -> None:
    headers = {"x-api-key": app_keys["write_key"], "x-forwarded-for": "81.2.69.160"}
    r = await client.post("/api/analytics/collect", json={"event": "direct"}, headers=headers)
    untrusted = await stored_event(client, app_keys["api_key"], r.json()["event_ids"][0])
    assert untrusted["ip"] == "203.0.113.7"  # the socket peer: its forwarded-for header is not believed
    transport = httpx.ASGITransport(app=stack.app(), client=("127.0.0.1", 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://edge") as via_proxy:
        r = await via_proxy.post("/api/analytics/collect", json={"event": "proxied"}, headers=headers)
    proxied = await stored_event(client, app_keys["api_key"], r.json()["event_ids"][0])
    assert (proxied["ip"], proxied["country"]) == ("81.2.69.160", "GB")


async def test_a_timestamp_more_than_a_day_ahead_is_clamped_and_flagged(client: httpx.AsyncClient, app_keys: dict) -> None:
    future = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    r = await client.post("/api/analytics/collect", json={"event": "future", "timestamp": future},
                          headers={"x-api-key": app_keys["write_key"]})
    event = await stored_event(client, app_keys["api_key"], r.json()["event_ids"][0])
    assert event["timestamp"] == event["received_at"]
    r = await client.get("/api/analytics/events", params={"event_name": "future"}, headers={"x-api-key": app_keys["api_key"]})
    assert r.status_code == 200


# ---- Segment ------------------------------------------------------------------------------------

def _basic(key: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


async def test_segment_calls_with_basic_auth_or_write_key_in_the_body(client: httpx.AsyncClient, app_keys: dict) -> None:
    mid = str(uuid.uuid4())
    r = await client.post("/v1/track", json={"userId": "seg-1", "event": "Signed Up", "messageId": mid,
                                             "properties": {"plan": "pro"}}, headers=_basic(app_keys["write_key"]))
    assert r.status_code == 200 and r.json()["success"] is True, r.text
    r = await client.post("/v1/identify", json={"writeKey": app_keys["write_key"], "userId": "seg-1",
                                                "traits": {"email": "s@example.com"}})
    assert r.status_code == 200, r.text
    r = await client.post("/v1/track", json={"event": "No Identity"}, headers=_basic(app_keys["write_key"]))
    assert r.status_code == 422
    assert "userId or anonymousId" in str(r.json()["detail"])
    r = await client.post("/v1/track", json={"userId": "x", "event": "e"})
    assert r.status_code == 401
    assert "Basic auth" in r.json()["detail"]
    event = await stored_event(client, app_keys["api_key"], mid)
    assert (event["type"], event["event_name"], event["user_id"], event["properties"]) == (
        "track", "Signed Up", "seg-1", {"plan": "pro"})


async def test_segment_timestamps_are_corrected_for_the_clients_clock_skew(client: httpx.AsyncClient, app_keys: dict) -> None:
    # The client's clock runs 2 hours ahead: it says the event happened 10 s before it sent it.
    client_now = datetime.now(UTC) + timedelta(hours=2)
    mid = str(uuid.uuid4())
    r = await client.post("/v1/batch", json={
        "batch": [{"type": "track", "event": "Skewed", "userId": "u", "messageId": mid,
                   "timestamp": (client_now - timedelta(seconds=10)).isoformat()}],
        "sentAt": client_now.isoformat(),
    }, headers=_basic(app_keys["write_key"]))
    assert r.status_code == 200, r.text
    event = await stored_event(client, app_keys["api_key"], mid)
    happened = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
    received = datetime.fromisoformat(event["received_at"].replace("Z", "+00:00"))
    assert abs((received - happened) - timedelta(seconds=10)) < timedelta(seconds=1)


async def test_a_retried_message_id_is_counted_once(client: httpx.AsyncClient, app_keys: dict) -> None:
    mid, name = str(uuid.uuid4()), f"retry-{uuid.uuid4().hex[:6]}"
    call = {"type": "track", "event": name, "userId": "u", "messageId": mid, "timestamp": datetime.now(UTC).isoformat()}
    for _ in range(3):
        r = await client.post("/v1/batch", json={"batch": [call]}, headers=_basic(app_keys["write_key"]))
        assert r.status_code == 200
    await stored_event(client, app_keys["api_key"], mid)
    await asyncio.sleep(1.0)  # let every copy reach ClickHouse
    assert await count_named(client, app_keys["api_key"], name) == 1


async def test_the_official_segment_and_rudderstack_sdks_work_unchanged(
    client: httpx.AsyncClient, app_keys: dict, live_url: str
) -> None:
    import rudderstack.analytics as rudder
    from segment.analytics import Client as SegmentClient

    name = f"sdk-{uuid.uuid4().hex[:6]}"
    failures: list[Any] = []

    def send() -> None:
        seg = SegmentClient(app_keys["write_key"], host=live_url, sync_mode=True, on_error=lambda e, b: failures.append(e))
        seg.track("sdk-user", name, {"sdk": "segment"})
        seg.page("sdk-user", "Docs", "Home", {"url": f"{live_url}/docs?utm_source=sdk"})
        seg.identify("sdk-user", {"plan": "free"})
        seg.flush()
        rudder.write_key = app_keys["write_key"]
        rudder.dataPlaneUrl = live_url
        rudder.sync_mode = True
        rudder.on_error = lambda e, b: failures.append(e)
        rudder.track("sdk-user", name, {"sdk": "rudderstack"})
        rudder.flush()

    await asyncio.to_thread(send)
    assert not failures, failures
    await eventually(lambda: _equals(count_named(client, app_keys["api_key"], name), 2), 15, "SDK events not stored")
    r = await client.get("/api/analytics/events", params={"event_name": "Home"}, headers={"x-api-key": app_keys["api_key"]})
    page = r.json()["events"][0]
    assert (page["type"], page["utm_source"]) == ("page", "sdk")


# ---- limits and failures ---------------------------------------------------------------------------

@asynccontextmanager
async def gateway_alone(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A second gateway with its own settings, reading keys from the same Postgres and topic."""
    async with Stack(settings, [gateway.SERVICE]) as gw:
        transport = httpx.ASGITransport(app=gw.app(), client=("198.51.100.4", 999))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as http:
            yield http


async def test_a_key_over_its_rate_limit_gets_429_with_retry_after(engines: Settings, app_keys: dict) -> None:
    async with gateway_alone(engines.model_copy(update={"ingest_rate_limit": "3/minute"})) as gw:
        statuses = [(await gw.post("/api/analytics/collect", json={"event": "rl"},
                                   headers={"x-api-key": app_keys["write_key"]})) for _ in range(4)]
    assert [r.status_code for r in statuses] == [202, 202, 202, 429]
    assert 1 <= int(statuses[-1].headers["retry-after"]) <= 60
    await _clear_limit(engines, app_keys)


async def _clear_limit(engines: Settings, app_keys: dict) -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(engines.redis_url or "")
    async for key in client.scan_iter("ingest*"):
        await client.delete(key)
    await client.aclose()


async def test_with_redis_down_ingest_fails_open(engines: Settings, app_keys: dict) -> None:
    from limits import parse
    from prometheus_client import REGISTRY

    label = {"limit": str(parse(engines.ingest_rate_limit))}
    before = REGISTRY.get_sample_value("rate_limit_fail_open_total", label) or 0
    dead_redis = engines.model_copy(update={"redis_url": "unix:///nonexistent/redis.sock"})
    async with gateway_alone(dead_redis) as gw:
        r = await gw.post("/api/analytics/collect", json={"event": "no-redis"}, headers={"x-api-key": app_keys["write_key"]})
    assert r.status_code == 202, r.text
    after = REGISTRY.get_sample_value("rate_limit_fail_open_total", label)
    assert after == before + 1


async def test_anonymized_ips_keep_only_the_network_and_bots_can_be_dropped(
    engines: Settings, client: httpx.AsyncClient, app_keys: dict
) -> None:
    settings = engines.model_copy(update={"ip_anonymize": True, "bot_policy": "drop"})
    async with gateway_alone(settings) as gw:
        r = await gw.post("/api/analytics/collect", json={"events": [{"event": "anon"}]},
                          headers={"x-api-key": app_keys["write_key"], "user-agent": IPHONE})
        bot = await gw.post("/api/analytics/collect", json={"event": "dropped-bot"},
                            headers={"x-api-key": app_keys["write_key"], "user-agent": GOOGLEBOT})
    assert bot.status_code == 202 and bot.json()["accepted"] == 0
    event = await stored_event(client, app_keys["api_key"], r.json()["event_ids"][0])
    assert event["ip"] == "198.51.100.0"


async def copy_key_states(source: Settings, target: Settings, key: str) -> None:
    """Publish the key's state from `source`'s key topic on `target`'s: a gateway knows keys only from
    the key topic of its own broker."""
    from libs.apikeys import hash_key
    from libs.kafka import API_KEYS_TOPIC, ensure_topics, make_consumer, make_producer

    reader = make_consumer(source, group_id=None)
    await reader.start()
    states: list[Any] = []
    try:
        reader.subscribe([API_KEYS_TOPIC])
        while not states:
            batch = await asyncio.wait_for(reader.getmany(timeout_ms=500), 10)
            states += [m for ms in batch.values() for m in ms if orjson.loads(m.value)["key_hash"] == hash_key(key)]
    finally:
        await reader.stop()
    await ensure_topics(target)
    producer = make_producer(target)
    await producer.start()
    try:
        for m in states:
            await producer.send_and_wait(API_KEYS_TOPIC, m.value, key=m.key)
    finally:
        await producer.stop()


async def test_kafka_down_gives_503_with_retry_after_in_under_a_second(
    engines: Settings, app_keys: dict, tmp_path: Any
) -> None:
    broker, bootstrap = start_kafka(tmp_path)  # from this thread: the broker dies with the thread that forked it
    try:
        settings = engines.model_copy(update={"kafka_bootstrap_servers": bootstrap})
        await copy_key_states(engines, settings, app_keys["write_key"])  # as auth republishes them at start
        async with gateway_alone(settings) as gw:
            ok = await gw.post("/api/analytics/collect", json={"event": "up"}, headers={"x-api-key": app_keys["write_key"]})
            assert ok.status_code == 202, ok.text
            broker.stop()
            started = time.monotonic()
            down = await gw.post("/api/analytics/collect", json={"event": "down"}, headers={"x-api-key": app_keys["write_key"]})
            elapsed = time.monotonic() - started
    finally:
        broker.stop()
    assert down.status_code == 503
    assert int(down.headers["retry-after"]) >= 1
    assert "Kafka" in down.json()["detail"]
    assert elapsed < 1.0


def open_kafka_clients() -> int:
    """The Kafka clients open in this loop: each runs one metadata task (`AIOKafkaClient._md_synchronizer`)
    from its start to its close."""
    return sum(1 for task in asyncio.all_tasks()
               if not task.done() and getattr(task.get_coro(), "__qualname__", "") == "AIOKafkaClient._md_synchronizer")


async def test_a_gateway_stopped_while_kafka_is_down_leaves_no_kafka_client_open(
    engines: Settings, app_keys: dict, tmp_path: Any
) -> None:
    # A client left open would ask the dead broker for metadata every 5 minutes and log an error each time.
    before = open_kafka_clients()
    broker, bootstrap = start_kafka(tmp_path)
    try:
        settings = engines.model_copy(update={"kafka_bootstrap_servers": bootstrap})
        await copy_key_states(engines, settings, app_keys["write_key"])
        async with gateway_alone(settings) as gw:
            ok = await gw.post("/api/analytics/collect", json={"event": "up"}, headers={"x-api-key": app_keys["write_key"]})
            assert ok.status_code == 202, ok.text
            assert open_kafka_clients() > before
            broker.stop()
            await asyncio.sleep(0.5)  # the key table's follower has fetches in flight to the dead broker
    finally:
        broker.stop()

    async def closed() -> bool:  # other parts of this process may open a client for a moment meanwhile
        return open_kafka_clients() <= before

    await eventually(closed, 10, f"{open_kafka_clients() - before} Kafka client(s) of the stopped gateway are still open")


async def produce_batches(client: httpx.AsyncClient) -> tuple[float, float]:
    """(record batches handed to Kafka, events in them) so far, from the gateway's /metrics."""
    text = (await client.get("/metrics")).text
    found = dict(re.findall(r"^gateway_produce_batch_events_(count|sum) ([0-9.e+]+)$", text, re.M))
    return float(found.get("count", 0)), float(found.get("sum", 0))


def metric_value(text: str, name: str, **labels: str) -> float:
    """The value of one sample in a /metrics page (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_metrics_count_every_ingest_request_and_acknowledged_event_at_once(
    client: httpx.AsyncClient, app_keys: dict
) -> None:
    key = {"x-api-key": app_keys["write_key"]}
    route = {"route": "/api/analytics/collect"}
    before = (await client.get("/metrics")).text
    ok = [await client.post("/api/analytics/collect", json={"event": f"m{i}"}, headers=key) for i in range(5)]
    bad = await client.post("/api/analytics/collect", json={"nope": 1}, headers=key)
    batch = await client.post("/api/analytics/collect", json={"events": [{"event": "a"}, {"event": "b"}]}, headers=key)
    assert [r.status_code for r in ok] == [202] * 5 and bad.status_code == 422 and batch.status_code == 202
    after = (await client.get("/metrics")).text  # read right away: nothing may lag behind
    for status, count in (("202", 6), ("422", 1)):
        grew = metric_value(after, "http_requests_total", status=status, **route) - metric_value(
            before, "http_requests_total", status=status, **route)
        assert grew == count, f"{status}: {grew}"
    accepted = metric_value(after, "gateway_events_accepted_total", route="collect") - metric_value(
        before, "gateway_events_accepted_total", route="collect")
    assert accepted == 7
    latency = metric_value(after, "http_request_duration_seconds_count", **route) - metric_value(
        before, "http_request_duration_seconds_count", **route)
    assert latency == 7


async def test_concurrent_requests_share_produce_batches_and_every_event_is_stored_once(
    client: httpx.AsyncClient, app_keys: dict
) -> None:
    name = f"burst_{uuid.uuid4().hex[:8]}"
    key = {"x-api-key": app_keys["write_key"]}
    batches_before, events_before = await produce_batches(client)
    answers = await asyncio.gather(*[
        client.post("/api/analytics/collect", json={"event": name, "userId": f"u{i}"}, headers=key) for i in range(300)
    ])
    assert [r.status_code for r in answers] == [202] * 300
    assert len({r.json()["event_ids"][0] for r in answers}) == 300
    batches_after, events_after = await produce_batches(client)
    assert events_after - events_before == 300
    assert batches_after - batches_before < 100, "concurrent requests' events should travel in shared record batches"

    async def all_stored() -> bool:
        return await count_named(client, app_keys["api_key"], name) == 300

    await eventually(all_stored, 20, "not every acknowledged event was stored exactly once")


async def test_a_stalled_partition_refuses_new_events_at_once_past_its_backlog_bound(tmp_path: Any) -> None:
    from libs.kafka import EVENTS_TOPIC, ensure_topics, make_producer
    from libs.stream.produce import Backpressure, CoalescingPublisher

    broker, bootstrap = start_kafka(tmp_path)
    settings = Settings(kafka_bootstrap_servers=bootstrap)
    producer = make_producer(settings, request_timeout_ms=1500)
    try:
        await ensure_topics(settings, (EVENTS_TOPIC,))
        await producer.start()
        batches = CoalescingPublisher(lambda: producer, EVENTS_TOPIC, ack_timeout_s=0.5, max_pending_bytes=1000)
        await batches.ensure_metadata()
        partition = batches.partition(b"app")
        await asyncio.gather(*batches.append(partition, b"app", [b"x" * 2000], []))  # the broker answers
        broker.stop()
        started = time.monotonic()
        waiting = batches.append(partition, b"app", [b"y" * 2000], [])
        with pytest.raises(Backpressure):  # 2,000 bytes already wait: no more queueing behind them
            batches.append(partition, b"app", [b"z"], [])
        with pytest.raises(TimeoutError, match="did not acknowledge"):
            await asyncio.gather(*waiting)
        assert time.monotonic() - started < 1.0, "a request must learn of the failure within its deadline"
        await batches.close()
    finally:
        broker.stop()
        await producer.stop()


async def test_a_batch_for_a_partition_without_a_leader_is_retried_until_its_deadline_then_fails(
    engines: Settings,
) -> None:
    from libs.kafka import EVENTS_TOPIC, make_producer
    from libs.stream.produce import CoalescingPublisher

    producer = make_producer(engines)
    await producer.start()
    try:
        batches = CoalescingPublisher(lambda: producer, EVENTS_TOPIC, ack_timeout_s=0.5)
        await batches.ensure_metadata()
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="did not acknowledge"):  # retried until the deadline answered
            await asyncio.gather(*batches.append(99, b"app", [b"lost"], []))  # the topic has no partition 99
        elapsed = time.monotonic() - started
        assert 0.4 <= elapsed < 1.0, f"retried for {elapsed:.2f}s: it should keep trying until the 0.5 s deadline"
        # The other partitions are not held up by it.
        await asyncio.wait_for(asyncio.gather(*batches.append(batches.partition(b"app"), b"app", [b"ok"], [])), 5)
        await batches.close()
    finally:
        await producer.stop()



# ---- fidelity: properties as sent, source kinds, IPv6 countries ------------------------------------

SENT_PROPERTIES: dict[str, Any] = {
    "a": None, "b": {"c": None, "d": 1}, "e": [1, None, "x", {"f": None}], "g": {}, "h": "", "i": 1.5, "j": False,
}


async def test_properties_are_stored_and_read_back_exactly_as_sent_nulls_included(
    client: httpx.AsyncClient, app_keys: dict, live_url: str
) -> None:
    import rudderstack.analytics as rudder
    from segment.analytics import Client as SegmentClient

    user = f"exact-{uuid.uuid4().hex[:8]}"
    ids = {route: str(uuid.uuid4()) for route in ("segment-sdk", "rudder-sdk", "v1-batch", "collect", "events")}
    failures: list[Any] = []

    def send_with_the_sdks() -> None:
        seg = SegmentClient(app_keys["write_key"], host=live_url, sync_mode=True, on_error=lambda e, b: failures.append(e))
        seg.track(user, "exact", SENT_PROPERTIES, message_id=ids["segment-sdk"])
        seg.flush()
        rudder.write_key = app_keys["write_key"]
        rudder.dataPlaneUrl = live_url
        rudder.sync_mode = True
        rudder.on_error = lambda e, b: failures.append(e)
        rudder.track(user, "exact", SENT_PROPERTIES, message_id=ids["rudder-sdk"])
        rudder.flush()

    await asyncio.to_thread(send_with_the_sdks)
    assert not failures, failures
    key = {"x-api-key": app_keys["write_key"]}
    r = await client.post("/v1/batch", json={"batch": [{"type": "track", "event": "exact", "userId": user,
                                                        "messageId": ids["v1-batch"], "properties": SENT_PROPERTIES}]},
                          headers=_basic(app_keys["write_key"]))
    assert r.status_code == 200, r.text
    r = await client.post("/api/analytics/collect", json={"event": "exact", "userId": user, "event_id": ids["collect"],
                                                          "properties": SENT_PROPERTIES}, headers=key)
    assert r.status_code == 202, r.text
    r = await client.post("/api/analytics/events", json={"event_name": "exact", "user_id": user,
                                                         "event_id": ids["events"], "metadata": SENT_PROPERTIES},
                          headers=key)
    assert r.status_code == 202, r.text

    read = {"x-api-key": app_keys["api_key"], "cache-control": "no-cache"}
    for route, event_id in ids.items():
        assert (route, (await stored_event(client, app_keys["api_key"], event_id))["properties"]) == (
            route, SENT_PROPERTIES)
    listed = (await client.get("/api/analytics/events", params={"user_id": user}, headers=read)).json()["events"]
    assert [e["properties"] for e in listed] == [SENT_PROPERTIES] * 5
    recent = (await client.get("/api/analytics/user-stats", params={"userId": user}, headers=read)).json()
    assert [e["properties"] for e in recent["recentEvents"]] == [SENT_PROPERTIES] * 5
    export = await client.get(f"/api/analytics/users/{user}/export", headers=read)
    assert export.status_code == 200
    lines = [orjson.loads(line) for line in export.content.splitlines()]
    assert sorted(e["event_id"] for e in lines) == sorted(ids.values())
    assert [e["properties"] for e in lines] == [SENT_PROPERTIES] * 5


CURL = "curl/8.5.0"
HEADLESS = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) HeadlessChrome/131.0.0.0 "
            "Safari/537.36")


@pytest.mark.parametrize(
    ("user_agent", "kind", "is_bot", "device"),
    [
        pytest.param(IPHONE, "browser", False, "mobile", id="safari"),
        pytest.param(GOOGLEBOT, "browser", True, "bot", id="googlebot"),
        pytest.param(HEADLESS, "browser", True, "bot", id="headless-chrome"),
        pytest.param(CURL, "server", False, "other", id="curl"),
        pytest.param("python-requests/2.32.3", "server", False, "other", id="requests"),
        pytest.param("python-httpx/0.27.0", "server", False, "other", id="httpx"),
        pytest.param("Go-http-client/1.1", "server", False, "other", id="go"),
        pytest.param("Java/17.0.1", "server", False, "other", id="java"),
        pytest.param("analytics-node/2.1.0", "server", False, "other", id="analytics-node"),
        pytest.param("okhttp/4.12.0", "mobile", False, "mobile", id="okhttp"),
        pytest.param("Shop/3.1 CFNetwork/1496.0.7 Darwin/23.5.0", "mobile", False, "mobile", id="ios-app"),
        pytest.param("", "server", False, "", id="no-user-agent"),
    ],
)
async def test_each_event_records_its_source_kind_and_only_crawlers_are_bots(
    client: httpx.AsyncClient, app_keys: dict, user_agent: str, kind: str, is_bot: bool, device: str
) -> None:
    r = await client.post("/api/analytics/collect", json={"event": "kind"},
                          headers={"x-api-key": app_keys["write_key"], "user-agent": user_agent})
    assert r.status_code == 202, r.text
    event = await stored_event(client, app_keys["api_key"], r.json()["event_ids"][0])
    assert (event["source_kind"], event["is_bot"], event["device_type"]) == (kind, is_bot, device)


@pytest.mark.parametrize(
    ("call", "user_agent", "kind", "is_bot"),
    [
        pytest.param({"context": {"library": {"name": "analytics-python", "version": "2.4.0"}}},
                     "analytics-python/2.4.0", "server", False, id="segment-python"),
        pytest.param({"context": {"library": {"name": "@segment/analytics-node"}}}, "node-fetch/1.0", "server", False,
                     id="segment-node"),
        pytest.param({"channel": "server", "context": {"library": {"name": "analytics-python"}}}, CURL, "server", False,
                     id="rudder-channel"),
        pytest.param({"context": {"library": {"name": "analytics-ios"}}}, "Shop/1 CFNetwork/1496 Darwin/23.5.0",
                     "mobile", False, id="segment-ios"),
        pytest.param({"context": {"library": {"name": "com.rudderstack.android.sdk.core"}}}, "okhttp/4.12.0",
                     "mobile", False, id="rudder-android"),
        pytest.param({"context": {"library": {"name": "analytics.js"}}}, IPHONE, "browser", False, id="analytics-js"),
        # A server SDK forwarding its visitor's user agent: a crawler it served is still a bot.
        pytest.param({"context": {"library": {"name": "analytics-node"}, "userAgent": GOOGLEBOT}}, "analytics-node/2",
                     "server", True, id="server-forwarding-a-crawler"),
        pytest.param({"context": {"library": {"name": "analytics-node"}, "userAgent": IPHONE}}, "analytics-node/2",
                     "server", False, id="server-forwarding-a-browser"),
        pytest.param({}, GOOGLEBOT, "browser", True, id="crawler-posing-as-segment"),
    ],
)
async def test_segment_calls_record_the_kind_of_library_that_sent_them(
    client: httpx.AsyncClient, app_keys: dict, call: dict, user_agent: str, kind: str, is_bot: bool
) -> None:
    mid = str(uuid.uuid4())
    r = await client.post("/v1/track", json={"userId": "k", "event": "kind", "messageId": mid, **call},
                          headers={**_basic(app_keys["write_key"]), "user-agent": user_agent})
    assert r.status_code == 200, r.text
    event = await stored_event(client, app_keys["api_key"], mid)
    assert (event["source_kind"], event["is_bot"]) == (kind, is_bot)


async def test_bot_policy_drop_drops_crawlers_but_keeps_server_side_events(
    engines: Settings, client: httpx.AsyncClient, app_keys: dict
) -> None:
    settings = engines.model_copy(update={"bot_policy": "drop"})
    async with gateway_alone(settings) as gw:
        server = await gw.post("/api/analytics/collect", json={"event": "from-a-server"},
                               headers={"x-api-key": app_keys["write_key"], "user-agent": CURL})
        crawler = await gw.post("/api/analytics/collect", json={"event": "from-a-crawler"},
                                headers={"x-api-key": app_keys["write_key"], "user-agent": GOOGLEBOT})
    assert (server.json()["accepted"], crawler.json()["accepted"]) == (1, 0)
    event = await stored_event(client, app_keys["api_key"], server.json()["event_ids"][0])
    assert (event["source_kind"], event["is_bot"]) == ("server", False)


@pytest.mark.parametrize(
    ("peer", "forwarded", "country"),
    [
        pytest.param("127.0.0.1", "2a00:1450:4009:81f::200e", "GB", id="ipv6-behind-a-proxy"),
        pytest.param("2001:4860:4860::8888", None, "US", id="ipv6-peer"),
        pytest.param("127.0.0.1", "81.2.69.160", "GB", id="ipv4-still"),
    ],
)
async def test_ipv6_clients_get_their_country(
    stack: Stack, client: httpx.AsyncClient, app_keys: dict, peer: str, forwarded: str | None, country: str
) -> None:
    transport = httpx.ASGITransport(app=stack.app(), client=(peer, 5000))
    headers = {"x-api-key": app_keys["write_key"], **({"x-forwarded-for": forwarded} if forwarded else {})}
    async with httpx.AsyncClient(transport=transport, base_url="http://edge") as http:
        r = await http.post("/api/analytics/collect", json={"event": "v6"}, headers=headers)
    event = await stored_event(client, app_keys["api_key"], r.json()["event_ids"][0])
    assert (event["ip"], event["country"]) == (forwarded or peer, country)


async def test_ingest_still_publishes_after_the_shared_producer_sends_to_another_topic(stack: Stack) -> None:
    """The gateway shares the process's producer with auth (key messages) and the aggregator (DLQ). Once
    that producer sends to some other topic, aiokafka's metadata refreshes ask for its tracked topics only:
    the events topic must be one of them, or ingest waits for a leader it cannot find and answers 503."""
    from tests.services.aggregator.test_aggregator import own_topic

    client_ip = ("203.0.113.9", 4242)
    transport = httpx.ASGITransport(app=stack.app(), client=client_ip)
    async with httpx.AsyncClient(transport=transport, base_url="http://analytics.test", timeout=30) as http:
        user = await signup_login(http)
        app = await register_app(http, user)
        producer = await stack.runtime.producer()
        await producer.send_and_wait(await own_topic(stack.settings, 1), b"{}")
        await producer.client.force_metadata_update()
        r = await http.post("/api/analytics/collect", json={"event": "after_other_topic"}, headers={"x-api-key": app["api_key"]})
        assert r.status_code == 202, r.text
