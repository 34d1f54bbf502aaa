"""The aggregator's half of the apps' data versions (libs/dataversions.py): after each insert that
succeeded, and before its offsets are committed, one pipelined Redis round trip bumps the live version
of every app in the insert and the late version of those with an event older than LATE_AFTER.

Redis must never stop the storing of events. A bump that fails is kept (which apps, and whether late)
and the write goes on; from then on the writes only add to what is kept, without waiting on Redis, and
a task of its own retries with backoff until Redis takes it all, however few writes follow. Meanwhile
the query service keys its answers by versions that do not move: a live answer is at most its TTL old,
a closed one could be served until its TTL although late events arrived. What is kept is lost if the
aggregator stops before Redis is back (closed answers then wait for their TTL, or a later late event).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable

import redis.asyncio as aioredis
from prometheus_client import Counter
from redis.exceptions import RedisError

from libs.dataversions import LATE, LATE_AFTER, LIVE
from libs.logs import get_logger
from services.aggregator.writer import PartitionBatch

log = get_logger(__name__)

BUMP_FAILURES = Counter("aggregator_version_bump_failures_total", "Failed bumps of the apps' data versions in Redis")

RETRY_FIRST_S = 0.5
# Short: once Redis answers again, cached answers should follow new events within seconds; a bump every
# 2 s against a Redis that is down costs nothing (the guard's breaker answers most of them at once).
RETRY_MAX_S = 2.0
# The longest a write waits on Redis (it answers in about a millisecond): a hung Redis costs one such
# wait, then the bumps go to the retry task. A bump that timed out may still have landed: bumping
# twice only makes the query service compute an answer once more.
BUMP_TIMEOUT_S = 0.5


class DataVersions:
    """Bumps the data versions of the apps whose events were stored. `stored` never raises."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._live: set[str] = set()  # apps whose bump is due
        self._late: set[str] = set()
        self._retrying: asyncio.Task[None] | None = None

    async def stored(self, batches: Iterable[PartitionBatch]) -> None:
        """Call once the rows of `batches` are stored (readable). Bumps their apps' versions, in line
        while Redis answers; keeps them for the retry task while it does not."""
        cutoff = time.time() - LATE_AFTER.total_seconds()  # taken after the insert: the safe side
        for batch in batches:
            for app_id, oldest in batch.oldest.items():
                self._live.add(app_id)
                if oldest < cutoff:
                    self._late.add(app_id)
        if self._retrying is not None or not self._live:
            return
        error = await self._send()
        if error is not None:
            log.warning("could not bump the apps' data versions in Redis; events are still stored, cached "
                        "answers may lag until Redis answers again (retried in the background)", error=error)
            self._retrying = asyncio.create_task(self._retry(), name="aggregator:version-bumps")

    async def close(self) -> None:
        """Stop the retry task (what it still keeps is dropped)."""
        task, self._retrying = self._retrying, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _send(self) -> str | None:
        """Bump every due app in one pipelined round trip; the error when Redis refused (kept due)."""
        live, late = self._live, self._late
        self._live, self._late = set(), set()
        try:
            async with asyncio.timeout(BUMP_TIMEOUT_S), self.redis.pipeline(transaction=False) as pipe:
                for app_id in live:
                    pipe.incr(LIVE + app_id)
                for app_id in late:
                    pipe.incr(LATE + app_id)
                await pipe.execute()
        except (RedisError, OSError) as exc:  # a timeout is an OSError too
            BUMP_FAILURES.inc()
            self._live |= live
            self._late |= late
            return repr(exc)
        return None

    async def _retry(self) -> None:
        """Until nothing is due: the bumps kept, with backoff while Redis refuses (and, at once, those
        that writes added while a bump was on its way)."""
        delay = RETRY_FIRST_S
        while self._live:
            await asyncio.sleep(delay)
            delay = 0 if await self._send() is None else min(max(delay, RETRY_FIRST_S) * 2, RETRY_MAX_S)
        log.info("the apps' data versions are bumped in Redis again; cached answers follow new events")
        self._retrying = None
