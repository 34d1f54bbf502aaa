"""Per-key ingest limits: a moving window in Redis (`limits`) shared by every gateway, checked locally.

A Redis round trip per request would cost more than the rest of the request, so the hot path only
does dict work: it counts the key's requests since the last sync and compares them with what the
shared window had left at that sync. Every `interval` seconds the counts go to Redis in one
`hit(cost=n)` per key (one moving window, shared by all gateways), and the window's remaining
capacity and reset time come back; a key whose window is full is refused here until it resets, with
`Retry-After`. Across several gateways the overshoot is bounded by one interval's traffic. When Redis
is down the sync fails open (counted in `rate_limit_fail_open_total`) and requests pass.
"""

from __future__ import annotations

import asyncio
import collections
import math
import time

from limits import parse

from libs.logs import get_logger
from libs.ratelimit import RATE_LIMIT_FAIL_OPEN, RateLimiter

log = get_logger(__name__)


class KeyRateLimiter:
    def __init__(self, limit: str, shared: RateLimiter | None, interval: float = 0.1) -> None:
        self.item = parse(limit)
        self.shared = shared
        self.interval = interval
        self._pending: collections.Counter[str] = collections.Counter()
        self._in_flight: dict[str, int] = {}  # hits a sync is sending to Redis right now, per key
        self._remaining: dict[str, int] = {}  # the shared window's room at the last sync
        self._reset_at: dict[str, float] = {}
        self._blocked_until: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    def check(self, key_id: str) -> int | None:
        """Count one request of `key_id`: None when allowed, else seconds until it would be."""
        until = self._blocked_until.get(key_id)
        if until is not None:
            now = time.time()
            if until > now:
                return max(1, math.ceil(until - now))
            del self._blocked_until[key_id]
            self._remaining.pop(key_id, None)
        # Hits on their way to Redis still count: the room learnt at the last sync does not include them.
        used = self._pending[key_id] + self._in_flight.get(key_id, 0)
        if used >= self._remaining.get(key_id, self.item.amount):
            reset = self._reset_at.get(key_id, time.time() + self.item.get_expiry())
            return max(1, math.ceil(reset - time.time()))
        self._pending[key_id] += 1
        return None

    def start(self) -> None:
        if self.shared is not None and self._task is None:
            self._task = asyncio.create_task(self._sync_forever(), name="ingest-rate-limit-sync")

    async def stop(self) -> None:
        if self._task is not None:
            # Cancelled again until it ends: the Redis client can turn a cancellation that lands during
            # a call into a timeout error, which sync() takes for Redis being away and carries on.
            while not self._task.done():
                self._task.cancel()
                await asyncio.wait({self._task}, timeout=0.5)
            self._task = None
        await self.sync()  # the last hits still count toward the shared window

    async def _sync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.sync()

    async def sync(self) -> None:
        """Send the hits counted since the last sync to the shared window; learn what room it has left."""
        if self.shared is None:
            self._pending.clear()
            self._remaining.clear()
            return
        pending, self._pending = self._pending, collections.Counter()
        self._in_flight = dict(pending)
        # Keys seen lately whose window was not empty: their room grows back as the window moves.
        keys = set(pending) | {k for k, room in self._remaining.items() if room < self.item.amount}
        for key_id in keys:
            cost = pending.get(key_id, 0)
            try:
                limiter = self.shared.limiter
                accepted = await self.shared.call(limiter.hit, self.item, "ingest", key_id, cost=cost) if cost else True
                stats = await self.shared.call(limiter.get_window_stats, self.item, "ingest", key_id)
            except Exception as exc:  # noqa: BLE001 - limits wraps every storage failure; fail open
                RATE_LIMIT_FAIL_OPEN.labels(str(self.item)).inc(cost)
                log.warning("rate limit store unreachable; allowing the requests", error=repr(exc))
                self._remaining.pop(key_id, None)
                self._in_flight.pop(key_id, None)
                continue
            self._remaining[key_id] = stats.remaining  # counts this sync's hits of the key
            self._reset_at[key_id] = stats.reset_time
            self._in_flight.pop(key_id, None)
            if not accepted or stats.remaining <= 0:
                self._blocked_until[key_id] = stats.reset_time
