"""Per-key ingest limits: a moving window in Redis (`limits`) shared by every gateway, checked locally.

A Redis round trip per request would cost more than the rest of the request, so the hot path does
two in-process things only: a local moving window (`limits` in memory, about 5 µs), which enforces
the limit exactly for this instance, and a dict lookup of keys that Redis has said are over the
shared limit. Every `interval` seconds the hits counted since the last sync go to Redis in one
`hit(cost=n)` per key, so N gateways share one window; a key found over it is refused here until its
window resets. Overshoot across instances is bounded by one interval's traffic. When Redis is down
the sync fails open (counted in `rate_limit_fail_open_total`) and the local window still applies.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import time

from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter as LocalMovingWindow

from libs.logs import get_logger
from libs.ratelimit import RATE_LIMIT_FAIL_OPEN, RateLimiter

log = get_logger(__name__)


class KeyRateLimiter:
    def __init__(self, limit: str, shared: RateLimiter | None, interval: float = 0.1) -> None:
        self.item = parse(limit)
        self.shared = shared
        self.interval = interval
        self._local = LocalMovingWindow(MemoryStorage())
        self._pending: collections.Counter[str] = collections.Counter()
        self._blocked_until: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    def check(self, key_id: str) -> int | None:
        """Count one request of `key_id`: None when allowed, else seconds until it would be."""
        now = time.time()
        until = self._blocked_until.get(key_id)
        if until is not None:
            if until > now:
                return max(1, math.ceil(until - now))
            del self._blocked_until[key_id]
        if not self._local.hit(self.item, "ingest", key_id):
            reset = self._local.get_window_stats(self.item, "ingest", key_id).reset_time
            return max(1, math.ceil(reset - now))
        self._pending[key_id] += 1
        return None

    def start(self) -> None:
        if self.shared is not None and self._task is None:
            self._task = asyncio.create_task(self._sync_forever(), name="ingest-rate-limit-sync")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.sync()  # the last hits still count toward the shared window

    async def _sync_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.sync()

    async def sync(self) -> None:
        """Send the hits counted since the last sync to the shared window in Redis."""
        if self.shared is None or not self._pending:
            return
        pending, self._pending = self._pending, collections.Counter()
        for key_id, cost in pending.items():
            try:
                if await self.shared.limiter.hit(self.item, "ingest", key_id, cost=cost):
                    continue
                stats = await self.shared.limiter.get_window_stats(self.item, "ingest", key_id)
            except Exception as exc:  # noqa: BLE001 - limits wraps every storage failure; fail open
                RATE_LIMIT_FAIL_OPEN.labels(str(self.item)).inc(cost)
                log.warning("rate limit store unreachable; allowing the requests", error=repr(exc))
                continue
            self._blocked_until[key_id] = stats.reset_time
