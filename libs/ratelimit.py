"""Rate limits in Redis (`limits`, moving window) that fail open when Redis is down."""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from limits import RateLimitItem, parse
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from prometheus_client import Counter

from libs.http import DependencyUnavailable
from libs.logs import get_logger
from libs.redisguard import guard_for

log = get_logger(__name__)

T = TypeVar("T")
TIMEOUT_S = 0.5  # of each Redis call and connection

RATE_LIMIT_FAIL_OPEN = Counter(
    "rate_limit_fail_open_total", "Requests let through because the rate-limit store was unreachable", ["limit"]
)


def _limits_uri(redis_url: str) -> str:
    if redis_url.startswith("unix://"):
        return "async+redis+unix://" + redis_url.removeprefix("unix://")
    return "async+" + redis_url


class RateLimiter:
    def __init__(self, redis_url: str, key_prefix: str) -> None:
        storage = RedisStorage(
            _limits_uri(redis_url), implementation="redispy", key_prefix=key_prefix,
            wrap_exceptions=True, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S,
        )
        self._limiter = MovingWindowRateLimiter(storage)
        self._guard = guard_for(redis_url)
        # Refunds only (`limits` has no call for them): a client of our own on the same server, and the
        # storage's key prefix, which `limits` puts before each item's key as `<prefix>:<key>`.
        self._refunds = aioredis.Redis.from_url(redis_url, socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S)
        self._key_prefix = key_prefix

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """`await fn(*args, **kwargs)` (a method of `limiter`) under the Redis server's budget and breaker
        (libs.redisguard)."""
        return await self._guard.call(fn, *args, **kwargs)

    @property
    def limiter(self) -> MovingWindowRateLimiter:
        """The `limits` strategy itself, for callers that batch hits (`hit(..., cost=n)`)."""
        return self._limiter

    async def hit(self, limit: str | RateLimitItem, *identifiers: str) -> int | None:
        """Count one hit. None when allowed; else seconds until the next hit would be allowed."""
        item = parse(limit) if isinstance(limit, str) else limit
        try:
            if await self.call(self._limiter.hit, item, *identifiers):
                return None
            stats = await self.call(self._limiter.get_window_stats, item, *identifiers)
        except Exception as exc:  # noqa: BLE001 - limits wraps every storage failure; fail open
            RATE_LIMIT_FAIL_OPEN.labels(str(item)).inc()
            log.warning("rate limit store unreachable; allowing the request", error=repr(exc))
            return None
        return max(1, math.ceil(stats.reset_time - time.time()))

    async def hit_or_refuse(self, limit: str | RateLimitItem, *identifiers: str) -> int | None:
        """Like `hit`, for a limit that must hold (brute-force protection): it fails closed, raising
        DependencyUnavailable (503) when Redis cannot count the hit, and its calls get their own timeout
        instead of the request's Redis budget, so that a burst of attempts cannot slip through as if
        Redis were away."""
        item = parse(limit) if isinstance(limit, str) else limit
        try:
            if await self._guard.call_outside_budget(self._limiter.hit, item, *identifiers):
                return None
            stats = await self._guard.call_outside_budget(self._limiter.get_window_stats, item, *identifiers)
        except Exception as exc:  # limits wraps every storage failure
            log.warning("rate limit store unreachable; refusing the request", limit=str(item), error=repr(exc))
            raise DependencyUnavailable("the rate-limit store (Redis)", retry_after=2) from exc
        return max(1, math.ceil(stats.reset_time - time.time()))

    async def refund(self, limit: str | RateLimitItem, *identifiers: str) -> None:
        """Give back one hit counted by `hit` (best effort), e.g. for an attempt that turned out not to
        count. `limits` has no call for it: its moving window is a Redis list of hit times, newest
        first, so the newest is removed (any one frees the same room, the newest the latest)."""
        item = parse(limit) if isinstance(limit, str) else limit
        try:
            await self._refunds.lpop(f"{self._key_prefix}:{item.key_for(*identifiers)}")
        except Exception as exc:  # noqa: BLE001 - best effort, as the limit itself fails open
            log.warning("rate limit refund failed", error=repr(exc))

    async def clear(self, limit: str, *identifiers: str) -> None:
        try:
            await self.call(self._limiter.clear, parse(limit), *identifiers)
        except Exception as exc:  # noqa: BLE001 - best effort
            log.warning("rate limit clear failed", error=repr(exc))
