"""The thin slice through every service: signup -> login -> register -> collect -> aggregator ->
ClickHouse -> event-summary, in one process against the real engines."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from libs.kafka import EVENTS_TOPIC, make_consumer
from libs.runtime import Stack
from tests.conftest import eventually, register_app, signup_login

pytestmark = pytest.mark.engines

FRESH = {"cache-control": "no-cache"}  # polling must not read an answer cached a moment ago


async def summary(client: httpx.AsyncClient, key: str, **params: str) -> dict:
    r = await client.get("/api/analytics/event-summary", params=params, headers={"x-api-key": key})
    assert r.status_code == 200, r.text
    return r.json()


async def test_collected_events_show_up_in_the_event_summary(client: httpx.AsyncClient) -> None:
    user = await signup_login(client)
    app = await register_app(client, user)
    events = [
        {"event": "signup_click", "url": "https://shop.test/?utm_source=news", "device": "mobile", "userId": "u1"},
        {"event": "signup_click", "device": "desktop", "userId": "u2"},
        {"event": "signup_click", "device": "mobile", "userId": "u1"},
        {"event": "other", "device": "tablet", "userId": "u3"},
    ]
    r = await client.post("/api/analytics/collect", json={"events": events}, headers={"x-api-key": app["write_key"]})
    assert r.status_code == 202, r.text
    assert r.json()["accepted"] == 4

    async def counted() -> bool:
        return (await client.get("/api/analytics/events/count", headers={"x-api-key": app["api_key"], **FRESH})).json()[
            "count"
        ] == 4

    await eventually(counted, 10, "the aggregator did not store the 4 events")
    body = await summary(client, app["api_key"], event="signup_click")
    assert body["event"] == "signup_click"
    assert body["count"] == 3
    assert body["uniqueUsers"] == 2
    assert body["deviceData"] == {"mobile": 2, "desktop": 1}


async def test_one_app_never_sees_another_apps_events(client: httpx.AsyncClient) -> None:
    user = await signup_login(client)
    mine = await register_app(client, user, "mine")
    theirs = await register_app(client, await signup_login(client), "theirs")
    r = await client.post("/api/analytics/collect", json={"event": "ping"}, headers={"x-api-key": theirs["api_key"]})
    assert r.status_code == 202

    async def stored() -> bool:
        r = await client.get("/api/analytics/events/count", headers={"x-api-key": theirs["api_key"], **FRESH})
        return r.json()["count"] == 1

    await eventually(stored, 10)
    assert (await summary(client, mine["api_key"], event="ping"))["count"] == 0


async def test_request_id_travels_from_http_into_the_kafka_headers(client: httpx.AsyncClient, stack: Stack) -> None:
    user = await signup_login(client)
    app = await register_app(client, user)
    consumer = make_consumer(stack.settings, EVENTS_TOPIC, group_id=None, auto_offset_reset="latest")
    await consumer.start()
    try:
        await consumer.seek_to_end()
        await asyncio.sleep(0.5)  # the consumer has its end positions before we produce
        r = await client.post(
            "/api/analytics/collect", json={"event": "traced"},
            headers={"x-api-key": app["api_key"], "x-request-id": "req-trace-42"},
        )
        assert r.status_code == 202
        assert r.headers["x-request-id"] == "req-trace-42"
        found = None
        for _ in range(40):
            for messages in (await consumer.getmany(timeout_ms=250)).values():
                for m in messages:
                    try:
                        event = orjson.loads(m.value)
                    except orjson.JSONDecodeError:  # another test's poison message on the shared topic
                        continue
                    if event.get("event_name") == "traced" and event.get("app_id") == app["app_id"]:
                        found = m
            if found:
                break
        assert found is not None, "the event never reached the topic"
        assert dict(found.headers)["request_id"] == b"req-trace-42"
        assert found.key == app["app_id"].encode()
    finally:
        await consumer.stop()
