"""Fresh data through the cached query API: an answer served from the cache is never older than the
newest events stored for its app. Ranges that reach "now" are keyed by the app's live data version
(bumped by the aggregator after every write), closed ranges by its late version (bumped only when an
event older than a few minutes is stored), so closed ranges stay cached while live traffic flows.

Everything runs with the product's default cache TTLs (a live answer may be kept 5 s)."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from libs.dataversions import LIVE
from libs.runtime import Stack
from libs.stores import create_redis
from tests.conftest import eventually, register_app, signup_login
from tests.services.aggregator.test_aggregator import enriched, own_topic, wait_count

pytestmark = pytest.mark.engines

UA = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
FRESH_WITHIN_S = 2.0

# (path, params, how to read the count from the answer): live ranges, the defaults reach "now".
LIVE_READS: list[tuple[str, dict[str, str], Any]] = [
    ("event-summary", {"event": "fresh_click"}, lambda body: body["count"]),
    ("stats/aggregate", {"metrics": "events", "event_name": "fresh_click"}, lambda body: body["results"]["events"]["value"]),
    ("events/count", {"event_name": "fresh_click"}, lambda body: body["count"]),
]


@pytest.fixture
async def app(client: httpx.AsyncClient) -> dict[str, Any]:
    return await register_app(client, await signup_login(client), "freshness")


async def collect(client: httpx.AsyncClient, app: dict[str, Any], event: dict[str, Any]) -> float:
    """Send one event; the monotonic time of its 202."""
    r = await client.post("/api/analytics/collect", json=event, headers={"x-api-key": app["write_key"], "user-agent": UA})
    assert r.status_code == 202, r.text
    return time.monotonic()


async def read(client: httpx.AsyncClient, app: dict[str, Any], path: str, params: dict[str, str]) -> httpx.Response:
    r = await client.get(f"/api/analytics/{path}", params=params, headers={"x-api-key": app["api_key"]})
    assert r.status_code == 200, r.text
    return r


async def counted_within(client: httpx.AsyncClient, app: dict[str, Any], path: str, params: dict[str, str],
                         count_of: Any, expected: int, acked: float) -> None:
    """Poll until the answer counts `expected`; fail if that takes longer than FRESH_WITHIN_S after the 202."""
    seen: list[tuple[int, str]] = []
    while time.monotonic() - acked <= FRESH_WITHIN_S:
        r = await read(client, app, path, params)
        seen.append((count_of(r.json()), r.headers["x-cache"]))
        if seen[-1][0] == expected:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{path} did not count the new event within {FRESH_WITHIN_S}s of its 202; "
                         f"last answers (count, X-Cache): {seen[-5:]}")


async def live_version_reaches(stack: Stack, app_id: str, writes: int) -> None:
    """Wait until the aggregator bumped the app's live data version for `writes` writes: it bumps right
    after an insert, so a reader may count an event a moment before the bump that follows it (and an
    answer cached in that moment is then keyed by a version about to move)."""
    redis = create_redis(stack.settings)
    try:
        async def bumped() -> bool:
            return int(await redis.get(LIVE + app_id) or 0) >= writes

        await eventually(bumped, timeout=5, message=f"the aggregator did not bump {app_id}'s live version")
    finally:
        await redis.aclose()


async def test_a_new_event_is_counted_by_cached_live_answers_within_2s_of_its_202(
    client: httpx.AsyncClient, app: dict[str, Any], stack: Stack
) -> None:
    assert stack.settings.query_cache_ttl_live_s >= 5  # the product's default: freshness must not come from a short TTL
    await collect(client, app, {"event": "warm_up"})  # the aggregator has joined its group (slow after a start)
    await wait_count(client, app["api_key"], 1)
    for expected in (1, 2):  # twice in a row: once is not luck with the cache's expiry
        await live_version_reaches(stack, app["app_id"], expected)  # each event so far was one write
        for path, params, count_of in LIVE_READS:
            await read(client, app, path, params)  # answered and cached ...
            cached = await read(client, app, path, params)  # ... and served from the cache
            assert cached.headers["x-cache"] == "HIT", path
            assert count_of(cached.json()) == expected - 1, (path, cached.json())
        acked = await collect(client, app, {"event": "fresh_click", "userId": f"u{expected}", "device": "mobile"})
        await asyncio.gather(*(counted_within(client, app, path, params, count_of, expected, acked)
                               for path, params, count_of in LIVE_READS))


async def test_a_closed_range_stays_cached_while_live_events_arrive_and_a_late_event_refreshes_it(
    client: httpx.AsyncClient, app: dict[str, Any]
) -> None:
    past = datetime.now(UTC).date() - timedelta(days=3)
    closed = [
        ("event-summary", {"startDate": str(past), "endDate": str(past)}, lambda body: body["count"]),
        ("stats/aggregate", {"period": "custom", "date": f"{past},{past}", "metrics": "events"},
         lambda body: body["results"]["events"]["value"]),
    ]
    for path, params, count_of in closed:
        first = await read(client, app, path, params)
        assert (first.headers["x-cache"], count_of(first.json())) == ("MISS", 0), path

    await collect(client, app, {"event": "live_view", "userId": "u1"})  # now: outside the closed range
    await wait_count(client, app["api_key"], 1)
    for path, params, count_of in closed:
        again = await read(client, app, path, params)
        assert (again.headers["x-cache"], count_of(again.json())) == ("HIT", 0), path  # live writes leave it cached

    late = {"event": "late_view", "userId": "u2", "timestamp": f"{past}T12:00:00.000Z"}  # an offline client's event
    acked = await collect(client, app, late)
    await asyncio.gather(*(counted_within(client, app, path, params, count_of, 1, acked)
                           for path, params, count_of in closed))


async def test_redis_refusing_the_bump_neither_stops_the_aggregator_nor_loses_events(
    client: httpx.AsyncClient, app: dict[str, Any], stack: Stack, tmp_path: Any
) -> None:
    from libs.embedded.engines import start_redis
    from services.aggregator.consumer import EventConsumer
    from services.aggregator.versions import DataVersions

    # A Redis server of its own for this aggregator, stopped and started again while it runs.
    server, url = start_redis(tmp_path)
    redis = create_redis(stack.settings.model_copy(update={"redis_url": url}))
    producer: AIOKafkaProducer = await stack.runtime.producer()
    topic = await own_topic(stack.settings, 2)
    versions = DataVersions(redis)
    consumer = EventConsumer(stack.settings, await stack.runtime.clickhouse(), producer, topic=topic,
                             group_id=f"g-{topic}", versions=versions)
    task = asyncio.create_task(consumer.run())
    app_id = app["app_id"]
    live, late = f"query:live:{app_id}", f"query:late:{app_id}"
    week_ago = (datetime.now(UTC) - timedelta(days=7)).isoformat()

    async def send(n: int, target: str = app_id, **extra: Any) -> None:
        for _ in range(n):
            await producer.send(topic, enriched(target, uuid.uuid4().hex, **extra), key=target.encode())
        await producer.flush()

    async def number(key: str) -> int:
        return int(await redis.get(key) or 0)

    try:
        await send(10)
        await wait_count(client, app["api_key"], 10)

        async def bumped() -> bool:  # right after the insert that made the events readable
            return await number(live) >= 1

        await eventually(bumped, 5, f"the aggregator never bumped {app_id}'s live version")
        assert await number(late) == 0

        server.stop()
        await send(40)
        await send(5, timestamp=week_ago)  # late events while the versions cannot be bumped
        await wait_count(client, app["api_key"], 55)
        assert not task.done(), "the aggregator stopped when Redis did"

        server, url = start_redis(tmp_path)  # the same socket: the client reconnects
        before = await number(live), await number(late)
        await send(1, "another-app")  # any later write; the versions missed meanwhile are bumped too

        async def caught_up() -> bool:
            return await number(live) > before[0] and await number(late) > before[1]

        await eventually(caught_up, 15, f"the missed bumps of {app_id} never reached Redis")
        await send(5)
        await wait_count(client, app["api_key"], 60)
        assert not task.done()
    finally:
        consumer.stop()
        await asyncio.wait_for(task, 30)
        await versions.close()
        await redis.aclose()
        server.stop()


async def test_the_aggregator_stays_ready_without_redis(stack: Stack, tmp_path: Any) -> None:
    from services.aggregator import SERVICE, service

    assert "redis" in SERVICE.needs  # it bumps the apps' data versions there
    topic = await own_topic(stack.settings, 1)
    no_redis = stack.settings.model_copy(update={"redis_url": f"unix://{tmp_path}/no-redis.sock"})
    async with Stack(no_redis, [service(topic, f"g-{topic}")]) as aggregator:
        transport = httpx.ASGITransport(app=aggregator.app())
        async with httpx.AsyncClient(transport=transport, base_url="http://aggregator.test") as http:

            async def ready() -> bool:  # once it owns its partition: that takes a group join, not Redis
                nonlocal r
                r = await http.get("/readyz")
                return r.status_code == 200

            r = await http.get("/readyz")
            await eventually(ready, 15, "the aggregator without Redis never became ready")
    assert r.status_code == 200, r.text  # storing events does not wait for Redis
    assert set(r.json()["checks"]) == {"kafka", "clickhouse", "aggregator", "aggregator:consume"}, r.text
