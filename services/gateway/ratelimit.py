"""Per-key ingest limits: a moving window in Redis (`limits`) shared by every gateway, checked locally.

A Redis round trip per request would cost more than the rest of the request, so the hot path only
does local work: each gateway keeps its own requests per key in a moving window of real time (buckets
of `interval` seconds), and adds what the other gateways took, as the shared window said at the last
sync. Every `interval` seconds this gateway's new hits go to Redis in one `hit(cost=n)` per key (one
moving window, shared by all gateways), and the window's count comes back; what this gateway itself
put in it is subtracted, so the rest is the other gateways' share.

Why the local window counts real time: Redis stamps a sync's hits with the time of the sync. When the
event loop is busy and a sync comes late, a second of requests lands in the shared window at once and
stays there a second longer than it should; a limiter that read only the shared window refused keys
that never went over their limit (a key sending 7,000 events/s under `10000/second` got 429s on a
loaded 2-core machine). Both shares carry the same shift (ours is subtracted with the stamps Redis
gave it), so only the other gateways' late syncs can count early, by at most one sync's hits.

Across several gateways the overshoot is bounded by one interval's traffic. When Redis is down the
sync fails open (counted in `rate_limit_fail_open_total`): each gateway still holds its own traffic
to the limit, and the other gateways' share counts as nothing.
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


class _Window:
    """One key's hits at this gateway: counts per bucket of real time, oldest first, and their sum."""

    __slots__ = ("buckets", "total")

    def __init__(self) -> None:
        self.buckets: collections.deque[list[int]] = collections.deque()  # [bucket number, hits]
        self.total = 0

    def expire(self, oldest: int) -> None:
        """Drop the buckets numbered below `oldest`."""
        buckets = self.buckets
        while buckets and buckets[0][0] < oldest:
            self.total -= buckets.popleft()[1]

    def add(self, bucket: int) -> None:
        if self.buckets and self.buckets[-1][0] == bucket:
            self.buckets[-1][1] += 1
        else:
            self.buckets.append([bucket, 1])
        self.total += 1


class KeyRateLimiter:
    def __init__(self, limit: str, shared: RateLimiter | None, interval: float = 0.1) -> None:
        self.item = parse(limit)
        self.shared = shared
        self.interval = interval
        self._span = self.item.get_expiry()  # the window's length in seconds
        self._buckets = max(1, math.ceil(self._span / interval))  # buckets in one window
        self._local: dict[str, _Window] = {}
        self._pending: collections.Counter[str] = collections.Counter()  # hits not yet sent to Redis
        self._sent: dict[str, collections.deque[tuple[float, int]]] = {}  # (sync time, hits) in Redis
        self._others: dict[str, int] = {}  # the other gateways' hits in the shared window, at the last sync
        self._task: asyncio.Task[None] | None = None

    def check(self, key_id: str) -> int | None:
        """Count one request of `key_id`: None when allowed, else seconds until it would be."""
        now = time.time()
        bucket = int(now / self.interval)
        window = self._local.get(key_id)
        if window is None:
            window = self._local[key_id] = _Window()
        window.expire(bucket - self._buckets + 1)
        if window.total + self._others.get(key_id, 0) >= self.item.amount:
            # Room comes back as this gateway's oldest hits leave the window (or the others' do).
            oldest = window.buckets[0][0] if window.buckets else bucket
            return max(1, math.ceil(oldest * self.interval + self._span - now))
        window.add(bucket)
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
        """Send the hits counted since the last sync to the shared window; learn the other gateways'
        share of it. Keys with nothing left in any window are forgotten."""
        pending, self._pending = self._pending, collections.Counter()
        oldest = int(time.time() / self.interval) - self._buckets + 1
        for key_id, window in list(self._local.items()):
            window.expire(oldest)
            if not window.total and key_id not in pending and not self._others.get(key_id):
                del self._local[key_id]
                self._sent.pop(key_id, None)
                self._others.pop(key_id, None)
        if self.shared is None:
            return
        for key_id in set(pending) | set(self._others):
            cost = pending.get(key_id, 0)
            try:
                limiter = self.shared.limiter
                accepted = await self.shared.call(limiter.hit, self.item, "ingest", key_id, cost=cost) if cost else False
                stats = await self.shared.call(limiter.get_window_stats, self.item, "ingest", key_id)
            except Exception as exc:  # noqa: BLE001 - limits wraps every storage failure; fail open
                RATE_LIMIT_FAIL_OPEN.labels(str(self.item)).inc(cost)
                log.warning("rate limit store unreachable; allowing the requests", error=repr(exc))
                self._others.pop(key_id, None)
                continue
            now = time.time()
            sent = self._sent.setdefault(key_id, collections.deque())
            if accepted:  # a refused hit(cost) puts nothing in the shared window
                sent.append((now, cost))
            while sent and sent[0][0] <= now - self._span:
                sent.popleft()
            ours = sum(hits for _, hits in sent)
            others = self.item.amount - stats.remaining - ours
            if others > 0:
                self._others[key_id] = others
            else:
                self._others.pop(key_id, None)
