"""Redis cache-aside for query results, with single-flight for identical concurrent misses.

Keys: `query:v1:<app>:<endpoint>:<sha256 of the normalized parameters and the app's data versions>`.
The versions (libs/dataversions.py) move on when the aggregator stores new events of the app, so a
cached answer is never older than the newest data stored for it: a range that reaches "now" is keyed by
the app's live version (and kept a short TTL besides, as time passing moves its window), a range closed
in the past by its late version (kept long: only events older than a few minutes can change it).
Redis being down only means answers are computed every time.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any, cast

import orjson
import redis.asyncio as aioredis
from prometheus_client import Counter
from redis.exceptions import RedisError

from libs.dataversions import GENERATION, LATE, LIVE
from libs.logs import get_logger

log = get_logger(__name__)

CACHE_LOOKUPS = Counter("query_cache_lookups_total", "Cache lookups", ["result"])


def cache_key(app_id: str, endpoint: str, params: dict[str, Any]) -> str:
    normalized = orjson.dumps({k: params[k] for k in sorted(params) if params[k] is not None}, default=str)
    return f"query:v1:{app_id}:{endpoint}:{hashlib.sha256(normalized).hexdigest()[:32]}"


class QueryCache:
    def __init__(self, redis: aioredis.Redis) -> None:
        self.redis = redis
        self._inflight: dict[str, asyncio.Future[bytes]] = {}

    async def versions(self, app_id: str, live: bool) -> dict[str, int] | None:
        """The app's data versions an answer is keyed by, in one round trip: its generation (moved by
        privacy deletions) and its live version (for a range that reaches now) or its late version (for
        a closed range). None when Redis cannot say: the answer is then computed and not cached."""
        kind, prefix = ("live", LIVE) if live else ("late", LATE)
        try:
            generation, version = await self.redis.mget(GENERATION + app_id, prefix + app_id)
        except (RedisError, OSError) as exc:
            log.warning("query cache unreachable; answering uncached", error=repr(exc))
            return None
        return {"gen": int(generation or 0), kind: int(version or 0)}

    async def bump_generation(self, app_id: str) -> None:
        """Make every cached answer of the app unreachable (they expire on their own TTL)."""
        try:
            await self.redis.incr(GENERATION + app_id)
        except (RedisError, OSError) as exc:
            log.warning("could not invalidate the app's cached answers", app_id=app_id, error=repr(exc))

    async def get_or_compute_json(
        self, key: str, ttl: int, compute: Callable[[], Awaitable[Any]], refresh: bool = False
    ) -> tuple[bytes, bool]:
        """(JSON bytes, hit): a hit is answered with the stored bytes as they are, never re-encoded. The
        value is computed once per key at a time in this process. With `refresh`, the cached value is
        ignored and replaced."""
        cached: bytes | None = None
        if not refresh:
            try:
                # The client does not decode responses: a value is bytes (redis-py's types allow str too).
                cached = cast("bytes | None", await self.redis.get(key))
            except (RedisError, OSError) as exc:
                log.warning("query cache unreachable; answering uncached", error=repr(exc))
        if cached is not None:
            CACHE_LOOKUPS.labels("hit").inc()
            return bytes(cached), True
        CACHE_LOOKUPS.labels("miss").inc()
        running = self._inflight.get(key)
        if running is not None:
            return await asyncio.shield(running), False
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            body = orjson.dumps(await compute(), default=str)
            future.set_result(body)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters get it, nobody else must
            raise
        finally:
            self._inflight.pop(key, None)
        try:
            await self.redis.set(key, body, ex=ttl)
        except (RedisError, OSError) as exc:
            log.warning("query cache write failed", error=repr(exc))
        return body, False
