"""Stopping loses nothing that was acknowledged, and /readyz means ready.

In process (real engines): the aggregator's readiness and a drain that cannot store. End to end
(`analytics run` and `analytics infra` as a user starts them): Ctrl-C right after 2,000 events were
answered 202 stores all of them; `infra` waits for the consumer groups before stopping its Kafka.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from libs.kafka import EMAIL_TOPIC, EVENTS_TOPIC, ensure_topics, make_producer
from libs.runtime import Stack
from libs.settings import Settings
from services import aggregator, gateway
from tests.conftest import eventually, register_app, signup_login
from tests.e2e import analytics, clean_env, port, read_exports, running, stop_and_check_nothing_left
from tests.services.aggregator.test_aggregator import count, enriched, wait_count
from tests.system.slice_http import PASSWORD

# ---- in process: the aggregator of a Stack on its own topic and group ------------------------------


@pytest.fixture
async def app(client: httpx.AsyncClient) -> dict[str, Any]:
    return await register_app(client, await signup_login(client), "drain-test")


async def own_aggregator(stack: Stack, **update: Any) -> tuple[Stack, str]:
    """A second Stack running only the aggregator, on a topic (returned) and consumer group of its own."""
    topic = f"test.drain.{uuid.uuid4().hex[:8]}"
    await ensure_topics(stack.settings.model_copy(update={"kafka_partitions": 2}), (topic,))
    return Stack(stack.settings.model_copy(update=update), [aggregator.service(topic, f"g-{topic}")]), topic


async def readyz(stack: Stack) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=stack.app()), base_url="http://svc") as http:
        return await http.get("/readyz")


@pytest.mark.engines
async def test_readyz_is_503_until_the_aggregator_owns_its_partitions_then_what_is_sent_is_stored(
    client: httpx.AsyncClient, stack: Stack, app: dict[str, Any]
) -> None:
    agg, topic = await own_aggregator(stack)
    await agg.start()
    try:
        first = await readyz(agg)
        assert first.status_code == 503, first.text
        assert first.json()["checks"]["aggregator"] is False, first.json()

        async def ready() -> bool:
            return (await readyz(agg)).status_code == 200

        await eventually(ready, 30, "the aggregator never became ready")
        assert (await readyz(agg)).json()["checks"]["aggregator"] is True
        producer = await stack.runtime.producer()
        await producer.send_and_wait(topic, enriched(app["app_id"]), key=app["app_id"].encode())
        await wait_count(client, app["api_key"], 1, timeout=3)
    finally:
        await agg.stop()


@pytest.mark.engines
async def test_a_drain_that_cannot_store_says_how_many_acknowledged_events_are_at_risk(
    client: httpx.AsyncClient, stack: Stack, app: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    agg, topic = await own_aggregator(stack, drain_timeout_s=2)
    key = app["app_id"].encode()
    producer = await stack.runtime.producer()
    ch = await stack.runtime.clickhouse()
    await agg.start()
    try:
        await eventually(lambda: _is_ready(agg), 30, "the aggregator never became ready")
        for _ in range(20):
            await producer.send(topic, enriched(app["app_id"]), key=key)
        await producer.flush()
        await wait_count(client, app["api_key"], 20)
        await ch.command("DETACH TABLE events")
        try:
            for _ in range(300):
                await producer.send(topic, enriched(app["app_id"]), key=key)
            await producer.flush()
            started = time.monotonic()
            drained = await agg.stop()
            assert time.monotonic() - started < 15, "the drain was not bounded by its timeout"
        finally:
            await ch.command("ATTACH TABLE events")
    finally:
        await agg.stop()
    assert "300 acknowledged events at risk" in caplog.text, caplog.text[-3000:]
    assert [(d.service, d.at_risk) for d in drained] == [("aggregator", 300)], drained
    from services.runner import log_stopped

    log_stopped(drained, kafka_embedded=True)
    assert "stopped cleanly" not in caplog.text
    assert "300 acknowledged events at risk; lost" in caplog.text

    # Nothing refused was committed: with a Kafka that keeps its messages, the next run stores them.
    again = Stack(agg.settings, agg.specs)
    async with again:
        await wait_count(client, app["api_key"], 320, timeout=30)
    assert await count(client, app["api_key"]) == 320


@pytest.mark.engines
async def test_once_stopping_began_ingest_answers_503_with_retry_after(stack: Stack, app: dict[str, Any]) -> None:
    gw = Stack(stack.settings, [gateway.SERVICE])  # a gateway of its own: the session's keeps serving
    await gw.start()
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=gw.app()), base_url="http://gw") as http:
            async def post() -> httpx.Response:
                return await http.post("/api/analytics/collect", json={"event": "stopping"},
                                       headers={"x-api-key": app["write_key"]})

            async def accepted() -> bool:
                return (await post()).status_code == 202

            await eventually(accepted, 10, "the gateway never accepted the key")
            await gw.drain()
            r = await post()
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "5" and "shutting down" in r.json()["detail"]
    finally:
        await gw.stop()


async def _is_ready(stack: Stack) -> bool:
    return (await readyz(stack)).status_code == 200


# ---- end to end: `analytics run` -----------------------------------------------------------------

EVENTS = 2000
PER_REQUEST = 10


def _new_app(base: str) -> dict[str, Any]:
    name = f"drain{uuid.uuid4().hex[:8]}"
    with httpx.Client(base_url=base, timeout=10) as http:
        assert http.post("/api/user/signup", json={"username": name, "email": f"{name}@example.com",
                                                   "password": PASSWORD}).status_code == 201
        token = http.post("/api/user/login", json={"username": name, "password": PASSWORD}).json()["access_token"]
        r = http.post("/api/auth/register", json={"name": "drain"}, headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 201, r.text
        app = r.json()
        deadline = time.monotonic() + 10
        # The key reaches the gateway through Kafka: 401 until then, 422 (an empty event) after.
        while http.post("/api/analytics/collect", json={}, headers={"x-api-key": app["write_key"]}).status_code == 401:
            assert time.monotonic() < deadline, "the new key never reached the gateway"
            time.sleep(0.1)
    return app


def _summary(base: str, app: dict[str, Any], event: str) -> int:
    deadline = time.monotonic() + 10
    with httpx.Client(base_url=base, timeout=10) as http:
        while True:
            r = http.get("/api/analytics/event-summary", params={"event": event},
                         headers={"x-api-key": app["api_key"], "cache-control": "no-cache"})
            if r.status_code != 401 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    assert r.status_code == 200, r.text
    return int(r.json()["count"])


@pytest.mark.e2e
def test_ctrl_c_right_after_2000_events_were_acknowledged_stores_all_of_them(tmp_path: Path) -> None:
    data, p = tmp_path / "d", port()
    base = f"http://127.0.0.1:{p}"
    env = clean_env(data)
    first_log = tmp_path / "first.log"
    with running("run", "--port", str(p), env=env, log=first_log, base=base) as proc:
        app = _new_app(base)
        headers = {"x-api-key": app["write_key"]}
        batch = {"events": [{"event": "drained", "userId": f"u{i}"} for i in range(PER_REQUEST)]}
        with httpx.Client(base_url=base, timeout=10) as http:
            for _ in range(EVENTS // PER_REQUEST):
                r = http.post("/api/analytics/collect", json=batch, headers=headers)
                assert r.status_code == 202 and r.json()["accepted"] == PER_REQUEST, r.text
        last_202 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert time.monotonic() - last_202 < 0.2
        assert proc.wait(60) == 0

    with running("run", "--port", str(p), env=env, log=tmp_path / "second.log", base=base) as proc:
        assert _summary(base, app, "drained") == EVENTS
        # Ready means the aggregator owns its partitions (tests/system/test_drain.py, in process, shows the 503 before).
        assert httpx.get(f"{base}/readyz").json()["checks"].get("aggregator") is True
        assert stop_and_check_nothing_left(proc, signal.SIGTERM) == 0
    text = first_log.read_text()
    assert re.search(r"drained (\d+) acknowledged events", text), f"the log does not say how many were drained:\n{text[-3000:]}"
    assert "at risk" not in text, text[-3000:]
    assert "stopped cleanly" in text


# ---- end to end: `analytics infra` ---------------------------------------------------------------


def _publish(exports: dict[str, str], events: int, mails: int) -> None:
    """Messages no consumer group has read: `events` on the events topic, `mails` on the email topic."""

    async def send() -> None:
        settings = Settings(kafka_bootstrap_servers=exports["KAFKA_BOOTSTRAP_SERVERS"])
        producer: AIOKafkaProducer = make_producer(settings)
        await producer.start()
        try:
            for _ in range(events):
                await producer.send(EVENTS_TOPIC, enriched("lag-app"))
            for i in range(mails):
                await producer.send(EMAIL_TOPIC, orjson.dumps({"message_id": f"m{i}", "to": "a@example.com",
                                                               "subject": "s", "text": "t"}))
            await producer.flush()
        finally:
            await producer.stop()

    asyncio.run(send())


@contextmanager
def _infra(tmp_path: Path, **env: str) -> Iterator[tuple[subprocess.Popen[str], dict[str, str]]]:
    """`analytics infra` running, with the exports it printed; killed at the end if still running."""
    infra = analytics("infra", env=clean_env(tmp_path / "d", **env), log=tmp_path / "infra.log")
    try:
        yield infra, read_exports(infra, tmp_path / "infra.log")
    finally:
        if infra.poll() is None:
            infra.kill()


def _rest_of_output(infra: subprocess.Popen[str], timeout: float) -> str:
    out, _ = infra.communicate(timeout=timeout)
    return out


@pytest.mark.e2e
def test_infra_ctrl_c_with_nothing_left_in_kafka_stops_at_once(tmp_path: Path) -> None:
    with _infra(tmp_path) as (infra, _):
        started = time.monotonic()
        assert stop_and_check_nothing_left(infra, signal.SIGINT, timeout=20) == 0
        elapsed = time.monotonic() - started
        out = _rest_of_output(infra, 5)
    assert "nothing left" in out, out
    assert elapsed < 6, f"took {elapsed:.1f}s to stop with nothing to wait for"


@pytest.mark.e2e
def test_infra_ctrl_c_waits_for_lagging_groups_with_progress_then_says_what_is_lost(tmp_path: Path) -> None:
    with _infra(tmp_path, DRAIN_TIMEOUT_S="3") as (infra, exports):
        _publish(exports, events=7, mails=2)
        started = time.monotonic()
        infra.send_signal(signal.SIGINT)
        out = _rest_of_output(infra, 30)
        elapsed = time.monotonic() - started
    assert infra.returncode == 0
    assert "3s" in out and "DRAIN_TIMEOUT_S" in out, out
    assert re.search(r"waiting: 7 events not yet stored, 2 mails not yet sent", out), out
    assert "lost: 7 events, 2 mails" in out, out
    assert 3 <= elapsed < 15, elapsed


@pytest.mark.e2e
def test_infra_second_ctrl_c_stops_at_once_saying_what_is_lost(tmp_path: Path) -> None:
    with _infra(tmp_path, DRAIN_TIMEOUT_S="120") as (infra, exports):
        _publish(exports, events=5, mails=0)
        infra.send_signal(signal.SIGINT)
        assert infra.stdout is not None
        deadline = time.monotonic() + 20
        seen = ""
        while "waiting:" not in seen:
            assert time.monotonic() < deadline, seen
            seen += infra.stdout.readline()
        started = time.monotonic()
        infra.send_signal(signal.SIGINT)
        out = seen + _rest_of_output(infra, 20)
        assert time.monotonic() - started < 5
    assert infra.returncode == 0
    assert "second Ctrl-C; lost: 5 events, 0 mails" in out, out
