# ruff: noqa: S608 - SQL from fixed fragments only; every value is a bind parameter
"""Annotations on the time series, in the query service's own Postgres table `query_annotations`
(migrations/postgres/0020_annotations.sql; the same folder as the report subscriptions').

A note is on a day (`date`, the day as the site shows it) or at a moment (`datetime`, UTC). A period's
notes are those of its days (in its time zone) and those at a moment within it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg

from libs.http import ApiError
from libs.logs import get_logger
from libs.migrations import apply_postgres
from libs.runtime import Runtime
from libs.stores import PG_ERRORS, PgConnection
from services.query.periods import Period
from services.query.reports import MIGRATIONS

log = get_logger(__name__)

STORE = "query-store"  # the context name of the query service's Postgres (runtime.contexts)
MAX_PER_APP = 5000

COLUMNS = "id, day, at, text, created_at"


class QueryStore:
    """The query service's Postgres: the runtime's pool, its migrations applied on first use."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._ready = False
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[PgConnection]:
        """A connection; 503 while Postgres cannot answer."""
        try:
            pool = await asyncio.wait_for(self._runtime.pg(), 10)
            if not self._ready:
                async with self._lock:
                    if not self._ready:
                        await apply_postgres(pool, "query", MIGRATIONS)
                        self._ready = True
            async with pool.acquire() as conn:
                yield conn
        except PG_ERRORS as exc:
            log.warning("annotations: Postgres unavailable", error=repr(exc))
            raise ApiError(503, "the annotation store is not answering; try again in a moment", {"Retry-After": "5"}) from exc


def as_json(row: asyncpg.Record) -> dict[str, Any]:
    at: datetime | None = row["at"]
    day: date | None = row["day"]
    return {
        "id": str(row["id"]),
        "date": day.isoformat() if day else None,
        "datetime": at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if at else None,
        "text": row["text"],
        "created_at": row["created_at"].astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


async def add(store: QueryStore, app_id: str, day: date | None, at: datetime | None, text: str) -> dict[str, Any]:
    async with store.connection() as conn, conn.transaction():
        # One app's notes at a time: the cap holds under concurrent adds.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('query_annotations:' || $1))", app_id)
        if await conn.fetchval("SELECT count(*) FROM query_annotations WHERE app_id = $1", app_id) >= MAX_PER_APP:
            raise ApiError(409, f"an app has at most {MAX_PER_APP} annotations; delete some first")
        row = await conn.fetchrow(
            f"INSERT INTO query_annotations (id, app_id, day, at, text) VALUES ($1, $2, $3, $4, $5) RETURNING {COLUMNS}",
            uuid.uuid4(), app_id, day, at, text)
    assert row is not None
    return as_json(row)


async def in_period(store: QueryStore, app_id: str, period: Period) -> list[dict[str, Any]]:
    first = period.start.astimezone(period.tz).date()
    last = (period.end - timedelta(microseconds=1)).astimezone(period.tz).date()
    async with store.connection() as conn:
        rows = await conn.fetch(
            f"""SELECT {COLUMNS} FROM query_annotations
                WHERE app_id = $1 AND ((day >= $2 AND day <= $3) OR (at >= $4 AND at < $5))
                ORDER BY coalesce(day, (at AT TIME ZONE $6)::date), at NULLS FIRST, created_at, id""",
            app_id, first, last, period.start, period.end, period.tz.key)
    return [as_json(r) for r in rows]


async def delete(store: QueryStore, app_id: str, annotation_id: str) -> bool:
    try:
        key = uuid.UUID(annotation_id)
    except ValueError:
        return False
    async with store.connection() as conn:
        done = await conn.execute("DELETE FROM query_annotations WHERE id = $1 AND app_id = $2", key, app_id)
    return bool(done.endswith(" 1"))
