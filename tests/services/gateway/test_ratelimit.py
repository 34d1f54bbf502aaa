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
