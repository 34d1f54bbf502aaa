"""The topic contract: docs/asyncapi.json is what the code generates, and real messages taken off the
topics match their documented schema."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import orjson
import pytest
from aiokafka import TopicPartition

from libs.contracts import TOPICS, render
from libs.kafka import (
    ALERT_FIRINGS_TOPIC,
    ALERTS_TOPIC,
    API_KEYS_TOPIC,
    APP_DELETIONS_TOPIC,
    EMAIL_TOPIC,
    EVENTS_DLQ_TOPIC,
    EVENTS_TOPIC,
    REPORT_RUNS_TOPIC,
    REPORT_SUBSCRIPTIONS_TOPIC,
    make_consumer,
    make_producer,
)
from libs.settings import Settings
from tests.conftest import PASSWORD, register_app, signup_login

ROOT = Path(__file__).resolve().parents[2]


def test_the_committed_asyncapi_document_is_the_generated_one() -> None:
    committed = (ROOT / "docs" / "asyncapi.json").read_text()
    assert committed == render(), "regenerate it: .venv/bin/python -m libs.contracts > docs/asyncapi.json"


async def _messages(settings: Settings, topic: str, match: Any, want: int = 1, timeout: float = 15) -> list[dict]:
    consumer = make_consumer(settings, group_id=None)
    await consumer.start()
    found: list[dict] = []
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        for _ in range(50):
            if partitions:
                break
            await asyncio.sleep(0.1)
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        deadline = asyncio.get_running_loop().time() + timeout
        while len(found) < want and asyncio.get_running_loop().time() < deadline:
            for batch in (await consumer.getmany(timeout_ms=300)).values():
                for message in batch:
                    try:
                        body = orjson.loads(message.value)
                    except orjson.JSONDecodeError:
                        continue  # the poison message this test sends itself
                    if isinstance(body, dict) and match(body):
                        found.append(body)
    finally:
        await consumer.stop()
    return found


def _valid(topic: str, message: dict) -> None:
    _, model, _ = TOPICS[topic]
    jsonschema.validate(message, model.model_json_schema(by_alias=True))
    model.model_validate(message)


@pytest.mark.engines
async def test_real_messages_on_every_topic_match_their_documented_schema(client: httpx.AsyncClient, engines: Settings) -> None:
    user = await signup_login(client)
    app = await register_app(client, user)
    r = await client.post("/api/analytics/collect", json={"event": "contract", "userId": "c1"},
                          headers={"x-api-key": app["write_key"]})
    assert r.status_code == 202
    producer = make_producer(engines)
    await producer.start()
    try:
        await producer.send_and_wait(EVENTS_TOPIC, b"{not json", key=app["app_id"].encode())
    finally:
        await producer.stop()

    events = await _messages(engines, EVENTS_TOPIC, lambda m: m.get("app_id") == app["app_id"])
    keys = await _messages(engines, API_KEYS_TOPIC, lambda m: m.get("app_id") == app["app_id"], want=2)
    emails = await _messages(engines, EMAIL_TOPIC, lambda m: m.get("to") == user["email"], want=2)
    dead = await _messages(engines, EVENTS_DLQ_TOPIC, lambda m: m.get("value") == "{not json")
    assert events and len(keys) >= 2 and len(emails) >= 2 and dead
    for topic, batch in ((EVENTS_TOPIC, events), (API_KEYS_TOPIC, keys), (EMAIL_TOPIC, emails), (EVENTS_DLQ_TOPIC, dead)):
        for message in batch:
            _valid(topic, message)
    assert {k["kind"] for k in keys} == {"secret", "write"}
    assert all(app["api_key"] not in orjson.dumps(k).decode() for k in keys)


@pytest.mark.engines
async def test_report_subscription_and_run_messages_match_their_documented_schema(
    client: httpx.AsyncClient, engines: Settings,
) -> None:
    user = await signup_login(client)
    app = await register_app(client, user, "Contract Shop")
    r = await client.post("/api/email/reports", json={"app_id": app["app_id"], "frequency": "daily", "send_now": True},
                          headers=user["headers"])
    assert r.status_code == 201, r.text
    sub_id = r.json()["id"]
    [state] = await _messages(engines, REPORT_SUBSCRIPTIONS_TOPIC, lambda m: m.get("subscription_id") == sub_id)
    _valid(REPORT_SUBSCRIPTIONS_TOPIC, state)
    assert (state["email"], state["app_name"], state["frequency"]) == (user["email"], "Contract Shop", "daily")
    [run] = await _messages(engines, REPORT_RUNS_TOPIC, lambda m: m.get("subscription_id") == sub_id, timeout=30)
    _valid(REPORT_RUNS_TOPIC, run)


@pytest.mark.engines
async def test_account_deletion_and_password_reset_messages_match_their_documented_schema(
    client: httpx.AsyncClient, engines: Settings,
) -> None:
    user = await signup_login(client)
    app = await register_app(client, user, "Contract leaver")
    assert (await client.post("/api/user/password-reset", json={"email": user["email"]})).status_code == 202
    [mail] = await _messages(engines, EMAIL_TOPIC, lambda m: m.get("to") == user["email"] and m.get("template") == "password_reset")
    _valid(EMAIL_TOPIC, mail)
    assert set(mail["data"]) == {"username", "token", "valid_minutes"}
    r = await client.request("DELETE", "/api/user/me", json={"password": PASSWORD}, headers=user["headers"])
    assert r.status_code == 204, r.text
    [deletion] = await _messages(engines, APP_DELETIONS_TOPIC, lambda m: m.get("app_id") == app["app_id"])
    _valid(APP_DELETIONS_TOPIC, deletion)
    assert (deletion["owner_id"], deletion["reason"]) == (user["id"], "account_deleted")
    revoked = await _messages(engines, API_KEYS_TOPIC, lambda m: m.get("app_id") == app["app_id"] and m.get("type") == "revoked", want=2)
    assert {k["kind"] for k in revoked} == {"secret", "write"} and all(k["revoked_at"] for k in revoked)


async def test_alert_and_alert_firing_messages_match_their_documented_schema(
    client: httpx.AsyncClient, engines: Settings,
) -> None:
    user = await signup_login(client)
    app = await register_app(client, user, "Contract Alerts")
    r = await client.post(f"/api/auth/apps/{app['app_id']}/alerts", headers=user["headers"], json={
        "name": "quiet", "metric": "visitors", "window": "1h", "condition": "below", "threshold": 1, "channels": ["webhook"]})
    assert r.status_code == 201, r.text
    alert_id = r.json()["id"]
    [state] = await _messages(engines, ALERTS_TOPIC, lambda m: m.get("alert_id") == alert_id)
    _valid(ALERTS_TOPIC, state)
    assert (state["metric"], state["condition"], state["window_s"], state["threshold"]) == ("visitors", "below", 3600, 1.0)
    # No visitors at all: 0 is below 1, so the first check fires.
    [firing] = await _messages(engines, ALERT_FIRINGS_TOPIC, lambda m: m.get("alert_id") == alert_id, timeout=30)
    _valid(ALERT_FIRINGS_TOPIC, firing)
    assert (firing["state"], firing["value"]) == ("fired", 0.0)
    r = await client.delete(f"/api/auth/apps/{app['app_id']}/alerts/{alert_id}", headers=user["headers"])
    assert r.status_code == 204
