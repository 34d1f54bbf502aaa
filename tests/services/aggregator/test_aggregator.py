"""The aggregator against real engines: poison to the DLQ, the bad-ratio guard, refused writes, a
group of three sharing partitions. Counts are read back through the query API, as a user reads them.
(The SIGKILL crash test runs the aggregator in a subprocess: tests/services/aggregator/test_aggregator_crash.py.)"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from prometheus_client import REGISTRY

from libs.kafka import AGGREGATOR_GROUP, EVENTS_DLQ_TOPIC, EVENTS_TOPIC, ensure_topics, make_consumer
from libs.runtime import Stack
from libs.settings import Settings
from libs.stream.produce import refresh_metadata
from services.aggregator.consumer import EventConsumer, TooManyBadMessages
from tests.conftest import eventually, register_app, signup_login

pytestmark = pytest.mark.engines

FRESH = {"cache-control": "no-cache"}


def enriched(app_id: str, event_id: str | None = None, name: str = "agg_test", **extra: Any) -> bytes:
    now = datetime.now(UTC).isoformat()
    event = {
        "event_id": event_id or uuid.uuid4().hex, "app_id": app_id, "type": "track", "event_name": name,
        "source": "test", "user_id": "u1", "device_type": "desktop", "timestamp": now, "received_at": now,
        "properties": {"plan": "pro"}, **extra,
    }
    return orjson.dumps(event)


async def count(client: httpx.AsyncClient, key: str) -> int:
    r = await client.get("/api/analytics/events/count", headers={"x-api-key": key, **FRESH})
    assert r.status_code == 200, r.text
    return int(r.json()["count"])


async def wait_count(client: httpx.AsyncClient, key: str, expected: int, timeout: float = 20) -> None:
    seen: list[int] = []

    async def reached() -> bool:
        seen.append(await count(client, key))
        assert seen[-1] <= expected, f"{seen[-1]} events counted, more than the {expected} sent"
        return seen[-1] == expected

    await eventually(reached, timeout, f"expected {expected} events, last counted {seen[-1:]} ")


async def committed(settings: Settings, group: str, topic: str) -> dict[int, int]:
    """The group's committed offsets, read as a (non-joining) member of the group would."""
    reader = make_consumer(settings, group_id=group)
    await reader.start()
    try:
        partitions = reader.partitions_for_topic(topic) or set()
        if not partitions:
            await refresh_metadata(reader)  # a fresh client knows no topics yet
            partitions = reader.partitions_for_topic(topic) or set()
        offsets = {p: await reader.committed(TopicPartition(topic, p)) for p in sorted(partitions)}
    finally:
        await reader.stop()
    return {p: o for p, o in offsets.items() if o is not None}


def metric(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


@pytest.fixture
async def app(client: httpx.AsyncClient) -> dict[str, Any]:
    return await register_app(client, await signup_login(client), "aggregator-test")


@pytest.fixture
async def producer(stack: Stack) -> Any:
    return await stack.runtime.producer()


async def own_topic(settings: Settings, partitions: int) -> str:
    topic = f"test.aggregator.{uuid.uuid4().hex[:8]}"
    await ensure_topics(settings.model_copy(update={"kafka_partitions": partitions}), (topic,))
    return topic


# ---- poison ------------------------------------------------------------------------------------

POISON = [
    pytest.param(b"{not json", "Invalid JSON", id="bad-json"),
    pytest.param(b'["an", "array"]', "not an event object", id="not-an-object"),
    pytest.param(b'{"event_id": "e1", "event_name": "x"}', "schema violation at app_id", id="missing-field"),
    pytest.param(b"", "empty message", id="empty"),
]


async def test_poison_messages_land_in_the_dlq_with_their_error_and_good_events_around_them_are_stored(
    client: httpx.AsyncClient, stack: Stack, app: dict[str, Any], producer: AIOKafkaProducer
) -> None:
    app_id = app["app_id"]
    key = app_id.encode()
    bad_timestamp = enriched(app_id, timestamp="yesterday-ish")
    poison = [p.values[0] for p in POISON] + [bad_timestamp]
    expected = [p.values[1] for p in POISON] + ["schema violation at timestamp"]
    await producer.send_and_wait(EVENTS_TOPIC, enriched(app_id), key=key)
    for value in poison:
        await producer.send_and_wait(EVENTS_TOPIC, value, key=key)
    await producer.send_and_wait(EVENTS_TOPIC, enriched(app_id), key=key)
    await wait_count(client, app["api_key"], 2)

    dlq = make_consumer(stack.settings, EVENTS_DLQ_TOPIC, group_id=None)
    await dlq.start()
    found: list[dict[str, Any]] = []
    try:
        async def all_dead_lettered() -> bool:
            batches = await dlq.getmany(timeout_ms=200)
            found.extend(orjson.loads(m.value) for msgs in batches.values() for m in msgs if m.key == key)
            return len(found) >= len(poison)

        await eventually(all_dead_lettered, 15, f"only {len(found)} of {len(poison)} poison messages reached the DLQ")
    finally:
        await dlq.stop()
    assert [r["value"].encode() for r in found] == poison
    for record, error in zip(found, expected, strict=True):
        assert error in record["error"], record
        assert record["topic"] == EVENTS_TOPIC and record["offset"] >= 0


async def test_a_topic_of_mostly_poison_stops_the_consumer_with_a_clear_error(stack: Stack, producer: AIOKafkaProducer) -> None:
    """A broken deployment: most messages of most apps are poison. (One app's poison only goes to the
    DLQ: tests/system/test_poison.py.)"""
    settings = stack.settings.model_copy(update={"aggregator_dlq_min_bad": 20, "aggregator_max_bad_ratio": 0.5})
    topic = await own_topic(settings, 1)
    for i in range(60):
        app_id = f"guard-app-{i % 5}"
        await producer.send(topic, b"{oops" if i % 6 else enriched(app_id), key=app_id.encode())
    await producer.flush()
    consumer = EventConsumer(settings, await stack.runtime.clickhouse(), producer, topic=topic, group_id=f"g-{topic}")
    with pytest.raises(TooManyBadMessages) as stopped:
        await asyncio.wait_for(consumer.run(), 30)
    message = str(stopped.value)
    assert topic in message and "invalid" in message and EVENTS_DLQ_TOPIC in message, message


# ---- ClickHouse refuses writes -------------------------------------------------------------------


async def test_refused_writes_pause_the_partitions_commit_nothing_and_lose_or_double_nothing(
    client: httpx.AsyncClient, stack: Stack, app: dict[str, Any], producer: AIOKafkaProducer
) -> None:
    ch = await stack.runtime.clickhouse()
    app_id, key = app["app_id"], app["app_id"].encode()
    for _ in range(100):
        await producer.send(EVENTS_TOPIC, enriched(app_id), key=key)
    await producer.flush()
    await wait_count(client, app["api_key"], 100)
    await asyncio.sleep(0.3)  # the forced commit after that flush
    before = await committed(stack.settings, AGGREGATOR_GROUP, EVENTS_TOPIC)

    await ch.command("DETACH TABLE events")
    try:
        ids = [uuid.uuid4().hex for _ in range(500)]
        for event_id in ids + ids[:50]:  # 50 client retries with the same event id
            await producer.send(EVENTS_TOPIC, enriched(app_id, event_id), key=key)
        await producer.flush()

        async def paused() -> bool:
            return metric("aggregator_paused") == 1

        await eventually(paused, 10, "the aggregator did not pause while inserts failed")
        await asyncio.sleep(2.5)  # several retries and commit intervals
        assert metric("aggregator_paused") == 1
        assert "aggregator_paused 1.0" in (await client.get("/metrics")).text
        assert await committed(stack.settings, AGGREGATOR_GROUP, EVENTS_TOPIC) == before
    finally:
        await ch.command("ATTACH TABLE events")

    await wait_count(client, app["api_key"], 600, timeout=30)

    async def resumed_and_committed() -> bool:
        after = await committed(stack.settings, AGGREGATOR_GROUP, EVENTS_TOPIC)
        return metric("aggregator_paused") == 0 and sum(after.values()) >= sum(before.values()) + 550

    await eventually(resumed_and_committed, 5, "not resumed, or the stored events not committed")
    await asyncio.sleep(1)
    assert await count(client, app["api_key"]) == 600


# ---- a group of three ---------------------------------------------------------------------------


async def test_three_consumers_share_the_partitions_and_the_others_take_over_when_one_stops(
    client: httpx.AsyncClient, stack: Stack, app: dict[str, Any], producer: AIOKafkaProducer
) -> None:
    topic = await own_topic(stack.settings, 6)
    group = f"g-{topic}"
    ch = await stack.runtime.clickhouse()
    settings = stack.settings.model_copy(update={"aggregator_session_timeout_ms": 3000})
    members = [EventConsumer(settings, ch, producer, topic=topic, group_id=group) for _ in range(3)]
    tasks = [asyncio.create_task(m.run()) for m in members]

    def assignments(ms: list[EventConsumer]) -> list[set[int]]:
        return [{tp.partition for tp in m.consumer.assignment()} if m.consumer else set() for m in ms]

    async def spread(ms: list[EventConsumer]) -> bool:
        parts = assignments(ms)
        return all(parts) and set().union(*parts) == set(range(6)) and sum(map(len, parts)) == 6

    async def send(n: int) -> None:
        for i in range(n):
            await producer.send(topic, enriched(app["app_id"]), key=app["app_id"].encode(), partition=i % 6)
        await producer.flush()

    try:
        await eventually(lambda: spread(members), 30, f"partitions not spread over 3 members: {assignments(members)}")
        await send(1200)
        await wait_count(client, app["api_key"], 1200)

        members[0].stop()
        await asyncio.wait_for(tasks[0], 15)
        await eventually(lambda: spread(members[1:]), 30, f"the other two did not take over: {assignments(members[1:])}")
        await send(1200)
        await wait_count(client, app["api_key"], 2400)
        for m in members[1:]:
            m.stop()
        await asyncio.wait_for(asyncio.gather(*tasks[1:]), 15)
        assert sum((await committed(stack.settings, group, topic)).values()) == 2400
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t


# ---- rollups -------------------------------------------------------------------------------------


async def test_a_client_retry_with_the_same_event_id_counts_once_in_whole_day_summaries(
    client: httpx.AsyncClient, stack: Stack, app: dict[str, Any], producer: AIOKafkaProducer
) -> None:
    """Whole past days of event-summary are read from the events_daily rollup: a copy of an event that
    got past insert deduplication (a retry in another batch) must not be counted there either."""
    day = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0) - timedelta(days=3)
    value = enriched(app["app_id"], uuid.uuid4().hex, name="rollup_retry", timestamp=day.isoformat())
    for _ in range(2):  # the second copy in its own insert, as a client retry minutes later would be
        before = metric("aggregator_rows_inserted_total", {"table": "events"})
        await producer.send_and_wait(EVENTS_TOPIC, value, key=app["app_id"].encode())

        async def inserted(before: float = before) -> bool:
            return metric("aggregator_rows_inserted_total", {"table": "events"}) > before

        await eventually(inserted, 10, "the aggregator did not insert the event")
    params = {"event": "rollup_retry", "startDate": (day - timedelta(days=2)).date().isoformat(),
              "endDate": (day + timedelta(days=1)).date().isoformat()}
    r = await client.get("/api/analytics/event-summary", params=params, headers={"x-api-key": app["api_key"], **FRESH})
    assert r.status_code == 200, r.text
    assert r.json()["count"] == 1, r.json()


async def test_metrics_show_consumed_inserted_dead_lettered_batch_size_latency_and_lag_per_partition(
    client: httpx.AsyncClient, app: dict[str, Any], producer: AIOKafkaProducer
) -> None:
    await producer.send_and_wait(EVENTS_TOPIC, enriched(app["app_id"]), key=app["app_id"].encode())
    await wait_count(client, app["api_key"], 1)
    text = (await client.get("/metrics")).text
    for name in ("aggregator_messages_consumed_total", 'aggregator_rows_inserted_total{table="events"}',
                 "aggregator_messages_dead_lettered_total", "aggregator_batch_rows_bucket",
                 "aggregator_insert_seconds_bucket", 'aggregator_consumer_lag{partition="0"}', "aggregator_paused"):
        assert name in text, f"{name} missing from /metrics"
