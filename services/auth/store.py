"""What every part of the auth service shares: its Postgres pool (a hung server answers 503 soon),
Kafka producer, Redis and rate limiter, and queuing emails. No HTTP here; errors are ApiError."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer

from libs.http import DependencyUnavailable
from libs.kafka import KafkaUnavailable
from libs.logs import get_logger
from libs.notifications import EmailMessage, queue_email
from libs.ratelimit import RateLimiter
from libs.settings import Settings
from libs.stores import PgConnection
from services.auth import repository as repo

log = get_logger(__name__)

# Postgres on a request's path: a hung server (accepting connections, never answering) must not hold
# a client for long, so a free connection and each statement's answer get this long; past it, 503.
PG_ACQUIRE_TIMEOUT_S = 1.5
PG_STATEMENT_TIMEOUT_S = 1.5
# Postgres down, restarting or unreachable (not a bad query): answered 503, retried by background jobs.
POSTGRES_DOWN = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
)


class AuthStore:
    """The connections of the auth service. Its parts (accounts.py, keys.py, jobs.py) build on it."""

    def __init__(
        self,
        settings: Settings,
        pg: asyncpg.Pool,
        producer: AIOKafkaProducer,
        redis: aioredis.Redis,
        limiter: RateLimiter,
    ) -> None:
        self.settings = settings
        self.pg = pg
        self.producer = producer
        self.redis = redis
        self.limiter = limiter

    @contextlib.asynccontextmanager
    async def db(self) -> AsyncIterator[PgConnection]:
        """A pooled connection; Postgres being down, hung or unreachable becomes a 503 with Retry-After.

        A connection that timed out or broke is dropped rather than returned to the pool: resetting
        it would wait on the same unanswering server."""
        try:
            async with self.pg.acquire(timeout=PG_ACQUIRE_TIMEOUT_S) as conn:
                try:
                    yield conn
                except POSTGRES_DOWN:
                    conn.terminate()
                    raise
        except POSTGRES_DOWN as exc:
            log.warning("postgres unavailable", error=repr(exc))
            raise DependencyUnavailable("the account database (Postgres)", retry_after=2) from exc

    async def _email_owner(self, user_id: str, template: str, data: dict[str, Any]) -> None:
        async with self.db() as conn:
            user = await repo.user_by_id(conn, user_id)
        if user is not None:
            data = {"username": user["username"], **data}
            await self._email_quietly(EmailMessage(to=user["email"], template=template, data=data))

    async def _email_quietly(self, message: EmailMessage) -> None:
        """Emails are side effects: a broker hiccup must not fail the signup or key change."""
        try:
            await queue_email(self.producer, message)
        except KafkaUnavailable as exc:
            log.error("email not queued", template=message.template, error=repr(exc))
