"""Connections to Postgres (asyncpg pool) and Redis (redis-py asyncio), with a start-up wait."""

from __future__ import annotations

import asyncio
from typing import cast

import asyncpg
import redis.asyncio as aioredis
from asyncpg.pool import PoolConnectionProxy
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from libs.redisguard import GuardedRedis, guard_for
from libs.settings import Settings

# A Postgres connection: one of its own (asyncpg.connect), or one lent by a pool (a proxy to it).
PgConnection = asyncpg.Connection | PoolConnectionProxy

# What a refusing or unreachable Postgres raises (a statement timed out, a closed pool or connection).
PG_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


async def create_pg_pool(
    settings: Settings, *, timeout: float = 60, max_size: int = 10, command_timeout: float = 10
) -> asyncpg.Pool:
    """A pool on DATABASE_URL, waiting (with backoff) for Postgres to accept connections.

    `command_timeout`: how long a statement may go unanswered (the default of every statement run
    on the pool's connections, BEGIN and COMMIT included; a call may pass its own `timeout=`)."""
    assert settings.database_url, "DATABASE_URL is not set and no embedded Postgres was started"
    async for attempt in AsyncRetrying(
        stop=stop_after_delay(timeout),
        wait=wait_exponential(multiplier=0.2, max=3),
        retry=retry_if_exception_type(PG_ERRORS),
        reraise=True,
    ):
        with attempt:
            pool = await asyncpg.create_pool(
                settings.database_url, min_size=1, max_size=max_size, command_timeout=command_timeout, timeout=5
            )
    assert pool is not None
    return pool


async def close_pg_pool(pool: asyncpg.Pool) -> None:
    """Close gracefully within 5 s, else terminate: a dead or hung database must not hold up shutdown."""
    try:
        await asyncio.wait_for(pool.close(), 5)
    except Exception:  # noqa: BLE001 - closing goes on regardless
        pool.terminate()


def create_redis(settings: Settings) -> aioredis.Redis:
    """A Redis client on REDIS_URL whose every call goes through the process's guard for that server
    (libs.redisguard: a time budget per request, a circuit breaker), so callers fail open (or refuse)
    within milliseconds when Redis is down or hung."""
    assert settings.redis_url, "REDIS_URL is not set and no embedded Redis was started"
    # redis-py types from_url as returning Redis, not the subclass it is called on.
    client = cast(GuardedRedis, GuardedRedis.from_url(
        settings.redis_url,
        socket_timeout=1.0,
        socket_connect_timeout=1.0,
        health_check_interval=30,
        # One immediate retry: a pooled connection that died with a restarted Redis is replaced at
        # once. More retries (redis-py's default is 10, with backoff) would only spend the budget.
        retry=Retry(NoBackoff(), 1),
    ))
    client.guard = guard_for(settings.redis_url)
    return client


async def pg_ping(pool: asyncpg.Pool) -> bool:
    try:
        async with pool.acquire(timeout=2) as conn:
            return bool(await conn.fetchval("SELECT 1", timeout=2) == 1)
    except Exception:  # noqa: BLE001 - a ping answers yes or no
        return False


async def redis_ping(client: aioredis.Redis) -> bool:
    try:
        return bool(await client.ping())
    except Exception:  # noqa: BLE001 - a ping answers yes or no
        return False
