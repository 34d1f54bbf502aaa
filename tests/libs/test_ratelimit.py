"""libs.ratelimit against the real Redis: a refund gives back exactly one hit of the identity it names."""

from __future__ import annotations

import pytest

from libs.ratelimit import RateLimiter
from libs.settings import Settings
from tests.conftest import unique

pytestmark = pytest.mark.engines


async def test_a_refund_gives_back_one_hit_of_its_own_window_only(engines: Settings) -> None:
    assert engines.redis_url
    limiter = RateLimiter(engines.redis_url, unique("refund-test-"))
    limit, me, other = "2/minute", unique("me-"), unique("other-")
    for who in (me, other):
        assert await limiter.hit(limit, "attempts", who) is None
        assert await limiter.hit(limit, "attempts", who) is None
        assert await limiter.hit(limit, "attempts", who) is not None  # full: seconds until one is free

    await limiter.refund(limit, "attempts", me)
    assert await limiter.hit(limit, "attempts", me) is None  # the refunded hit is free again
    assert await limiter.hit(limit, "attempts", me) is not None  # and only that one
    assert await limiter.hit(limit, "attempts", other) is not None  # another identity's window is untouched

    # The same for a limit that fails closed (login attempts).
    await limiter.refund(limit, "attempts", other)
    assert await limiter.hit_or_refuse(limit, "attempts", other) is None
    retry_after = await limiter.hit_or_refuse(limit, "attempts", other)
    assert retry_after is not None and 1 <= retry_after <= 60
