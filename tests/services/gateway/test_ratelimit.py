"""The gateway's per-key ingest limit (services/gateway/ratelimit.py) against the real Redis."""

from __future__ import annotations

import asyncio

import pytest

from libs.ratelimit import RateLimiter
from libs.settings import Settings
from services.gateway.ratelimit import KeyRateLimiter
from tests.conftest import unique

pytestmark = pytest.mark.engines


async def test_hits_on_their_way_to_redis_still_count_against_the_limit(engines: Settings) -> None:
    """A sync takes the hits counted so far and sends them to Redis; requests arriving while it waits
    for Redis must not find the whole window free again (the 4th of 3/minute was let through)."""
    assert engines.redis_url
    limiter = KeyRateLimiter("3/minute", RateLimiter(engines.redis_url, unique("ingest-test-")))
    key = unique("key-")
    assert limiter.check(key) is None and limiter.check(key) is None
    sync = asyncio.create_task(limiter.sync())
    await asyncio.sleep(0)  # the sync has taken the two hits and waits for Redis
    assert not sync.done()
    assert limiter.check(key) is None  # the third of three
    retry_after = limiter.check(key)  # the fourth, while the first two are still on their way
    assert retry_after is not None and 1 <= retry_after <= 60
    await sync
    assert limiter.check(key) is not None  # the window has room for one, which the third took
    await limiter.sync()
    assert limiter.check(key) is not None  # three hits in the window: full for the rest of the minute


async def _send(limiter: KeyRateLimiter, key: str, per_second: float, seconds: float,
                sync_every: float | None) -> list[bool]:
    """`per_second` requests of `key` for `seconds` of real time, syncing every `sync_every` seconds (None:
    never, as when the event loop is too busy to run the sync). True for each request let through."""
    allowed: list[bool] = []
    loop = asyncio.get_running_loop()
    start = last_sync = loop.time()
    while (now := loop.time()) - start < seconds:
        allowed.append(limiter.check(key) is None)
        if sync_every is not None and now - last_sync >= sync_every:
            await limiter.sync()
            last_sync = now
        await asyncio.sleep(max(0.0, start + len(allowed) / per_second - loop.time()))
    return allowed


async def test_a_late_sync_does_not_refuse_a_key_that_stays_under_its_limit(engines: Settings) -> None:
    """A sync that comes late (the event loop busy for a second) puts a second of hits into the shared
    window at once, stamped with the sync's time. Read from that window alone, a key steadily at 70 % of
    its limit looked over it and was refused: 429s at 7,000 events/s under `10000/second`."""
    assert engines.redis_url
    limiter = KeyRateLimiter("100/second", RateLimiter(engines.redis_url, unique("ingest-test-")))
    key = unique("key-")
    stalled = await _send(limiter, key, 70, 1.2, sync_every=None)
    await limiter.sync()  # late: 1.2 s of hits at once
    steady = await _send(limiter, key, 70, 1.5, sync_every=0.1)
    assert all(stalled) and all(steady), f"{steady.count(False)} of {len(steady)} requests refused at 70 % of the limit"


async def test_two_gateways_together_over_a_keys_limit_are_held_to_it(engines: Settings) -> None:
    """Each gateway alone is under the limit; together they are over it, and the shared window holds the
    key to about its limit (plus at most a sync's worth of hits per gateway)."""
    assert engines.redis_url
    prefix = unique("ingest-test-")
    one, two = (KeyRateLimiter("100/second", RateLimiter(engines.redis_url, prefix)) for _ in range(2))
    key = unique("key-")
    # Warm-up: both gateways learn the other's share.
    first = await asyncio.gather(_send(one, key, 90, 1.0, sync_every=0.1), _send(two, key, 90, 1.0, sync_every=0.1))
    then = await asyncio.gather(_send(one, key, 90, 1.0, sync_every=0.1), _send(two, key, 90, 1.0, sync_every=0.1))
    sent = sum(len(a) for a in then)
    let_through = sum(sum(a) for a in then)
    assert sent >= 150, f"the machine sent only {sent} requests in a second"  # together over the limit
    assert let_through <= 100 + 2 * 10, f"{let_through} of {sent} let through in one second"
    assert any(not ok for a in first + then for ok in a)


async def test_a_burst_over_the_limit_is_refused_with_retry_after_and_room_comes_back(engines: Settings) -> None:
    assert engines.redis_url
    limiter = KeyRateLimiter("50/second", RateLimiter(engines.redis_url, unique("ingest-test-")))
    key = unique("key-")
    answers = [limiter.check(key) for _ in range(80)]
    assert answers[:50] == [None] * 50
    assert all(a == 1 for a in answers[50:])  # Retry-After: the window frees within a second
    await limiter.sync()
    await asyncio.sleep(1.05)
    await limiter.sync()
    assert limiter.check(key) is None
