"""Exactly once in effect, the hard way: 100,000 events (10% sent twice with the same event id)
stream into Kafka while the aggregator process is SIGKILLed at random moments 5 times and restarted;
afterwards the query service counts exactly 100,000.

The aggregator (with the query service, which must share its chDB) runs as `analytics run` in a
subprocess (tests/isolated.py) with its own data dir, its own topic and its own consumer group, against the session's
Kafka, Postgres and Redis. Set CRASH_SEED to replay a run.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from libs.kafka import ensure_topics, make_producer
from libs.settings import Settings
from tests.conftest import register_app, signup_login
from tests.e2e import clean_env, isolated, port, stop_and_check_nothing_left, wait_ready
from tests.services.aggregator.test_aggregator import committed

pytestmark = pytest.mark.engines

EVENTS = 100_000
RETRIED = EVENTS // 10
PARTITIONS = 3
KILLS = 5


def build_stream(app_id: str, rng: random.Random) -> list[tuple[int, dict[str, Any]]]:
    """(partition, event) in sending order; a retry follows its original by up to 20,000 messages and
    may land on another partition (a client retry through another gateway request)."""
    now = datetime.now(UTC)
    events = [
        {
            "event_id": uuid.uuid4().hex, "app_id": app_id, "type": "track", "event_name": f"crash_{i % 7}",
            "source": "test", "user_id": f"u{i % 500}", "device_type": "mobile" if i % 3 else "desktop",
            "timestamp": (now - timedelta(seconds=rng.uniform(60, 3600))).isoformat(),
        }
        for i in range(EVENTS)
    ]
    ordered: list[tuple[float, int, dict[str, Any]]] = [(i, i % PARTITIONS, e) for i, e in enumerate(events)]
    for i in rng.sample(range(EVENTS), RETRIED):
        ordered.append((i + rng.randint(1, 20_000) + 0.5, rng.randrange(PARTITIONS), events[i]))
    ordered.sort(key=lambda item: item[0])
    return [(partition, event) for _, partition, event in ordered]


async def stream(producer: AIOKafkaProducer, topic: str, items: list[tuple[int, dict[str, Any]]], sent: list[int]) -> None:
    """About 10,000 messages a second, so that the kills land while events are still arriving."""
    for start in range(0, len(items), 1000):
        received = datetime.now(UTC).isoformat()  # a retry is received again: its received_at differs
        for partition, event in items[start:start + 1000]:
            value = orjson.dumps({**event, "received_at": received})
            await producer.send(topic, value, key=event["app_id"].encode(), partition=partition)
        await producer.flush()
        sent[0] = start + 1000
        await asyncio.sleep(0.4)
    sent[0] = len(items)


async def counted(base: str, key: str) -> int:
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        r = await http.get("/api/analytics/events/count", headers={"x-api-key": key, "cache-control": "no-cache"})
    assert r.status_code == 200, r.text
    return int(r.json()["count"])


async def consuming(base: str, timeout: float = 30) -> None:
    """Wait until this aggregator has inserted rows (it joined the group and got partitions)."""
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=base, timeout=5) as http:
        while time.monotonic() < deadline:
            text = (await http.get("/metrics")).text
            for line in text.splitlines():
                if line.startswith("aggregator_rows_inserted_total") and float(line.split()[-1]) > 0:
                    return
            await asyncio.sleep(0.05)
    raise AssertionError(f"the aggregator at {base} inserted nothing in {timeout}s")


def subprocess_env(engines: Settings, data: Path) -> dict[str, str]:
    urls = {
        "KAFKA_BOOTSTRAP_SERVERS": engines.kafka_bootstrap_servers, "DATABASE_URL": engines.database_url,
        "REDIS_URL": engines.redis_url, "SMTP_URL": engines.smtp_url,
    }
    env = clean_env(
        data, **{k: v for k, v in urls.items() if v},
        AGGREGATOR_BATCH_SIZE="2000", AGGREGATOR_BATCH_MAX_AGE_MS="200", ANALYTICS_ENV="test",
        AGGREGATOR_SESSION_TIMEOUT_MS="3000",
    )
    env["LOG_LEVEL"] = "WARNING"
    return env


# Once, on chDB: the killed aggregator and its query service run in a subprocess on their own chDB data
# dir (the session's stack only registers the app), and at about a minute it is the suite's longest test;
# the aggregator's exactly-once over clickhouse-connect is covered by test_aggregator.py, which runs per adapter.
@pytest.mark.adapters("chdb")
async def test_sigkilled_five_times_mid_stream_the_query_service_counts_every_event_once(
    client: httpx.AsyncClient, engines: Settings, tmp_path: Path
) -> None:
    seed = int(os.environ.get("CRASH_SEED") or random.randrange(1 << 30))
    print(f"crash test seed: CRASH_SEED={seed}")
    rng = random.Random(seed)
    app = await register_app(client, await signup_login(client), "crash")
    topic = f"test.crash.{uuid.uuid4().hex[:8]}"
    await ensure_topics(engines.model_copy(update={"kafka_partitions": PARTITIONS}), (topic,))
    env = subprocess_env(engines, tmp_path / "data")
    base_port = port()
    base = f"http://127.0.0.1:{base_port}"
    items = build_stream(app["app_id"], rng)

    producer = make_producer(engines, linger_ms=5)
    await producer.start()
    sent = [0]
    producing = asyncio.create_task(stream(producer, topic, items, sent))
    mid_stream_kills = 0
    try:
        for kill in range(KILLS):
            log = tmp_path / f"run{kill}.log"
            proc = isolated(topic, f"crash-{topic}", "run", "--services", "aggregator,query", "--port", str(base_port),
                            env=env, log=log)
            try:
                await asyncio.to_thread(wait_ready, base, proc, log)
                t0 = time.monotonic()
                await consuming(base)
                print(f"consuming {time.monotonic() - t0:.1f}s after ready")
                await asyncio.sleep(rng.uniform(0.0, 1.5))
            finally:
                proc.kill()  # SIGKILL: no flush, no commit, no leaving the group
                await asyncio.to_thread(proc.wait, 10)
            stored = sum((await committed(engines, f"crash-{topic}", topic)).values())
            print(f"kill {kill + 1}: {sent[0]} sent, {stored} committed")
            mid_stream_kills += stored < sent[0]
        await producing
    finally:
        producing.cancel()
        await producer.stop()
    assert mid_stream_kills >= 1, "no kill landed while messages were uncommitted; the test proved nothing"

    log = tmp_path / "final.log"
    proc = isolated(topic, f"crash-{topic}", "run", "--services", "aggregator,query", "--port", str(base_port),
                            env=env, log=log)
    try:
        await asyncio.to_thread(wait_ready, base, proc, log)
        deadline = time.monotonic() + 60
        seen = 0
        while seen != EVENTS and time.monotonic() < deadline:
            seen = await counted(base, app["api_key"])
            assert seen <= EVENTS, f"{seen} counted: duplicates got through"
            await asyncio.sleep(0.5)
        assert seen == EVENTS, f"{seen} of {EVENTS} counted after the restarts"
        await asyncio.sleep(1)
        assert await counted(base, app["api_key"]) == EVENTS
        assert await asyncio.to_thread(stop_and_check_nothing_left, proc, signal.SIGTERM) == 0
        # SIGTERM committed everything it had stored: a restart would read nothing again.
        assert sum((await committed(engines, f"crash-{topic}", topic)).values()) == len(items)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
        if isinstance(proc, subprocess.Popen) and proc.stdout:
            proc.stdout.close()
