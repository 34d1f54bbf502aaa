"""What the query service keeps per app besides the events (issue #20, Reports): goals, segments and
saved funnels, in its own Postgres tables (migrations/postgres/0010_analysis_definitions.sql).

Every read and write names the app (`app_id`): a definition of another app is not found (404), as one
that does not exist. Reads need the viewer role on the app, writes (create, delete) the admin role
(`AdminApp`; a secret key is its app's owner)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated, Any

import asyncpg
import orjson
from fastapi import Depends

from libs.access import ApiKeyHeader, BearerCredentials
from libs.http import ApiError
from libs.logs import get_logger
from libs.migrations import apply_postgres
from libs.runtime import Runtime, context_dependency
from services.query.context import QueryContext, app_access, managed_app

log = get_logger(__name__)

NAME = "query-definitions"
TABLES = {"goal": "query_goals", "segment": "query_segments", "funnel": "query_saved_funnels"}
MAX_PER_APP = 100
PG_WAIT_S = 5


class Definitions:
    """The Postgres pool of the definitions, opened on first use with the service's migrations applied."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._ready = False
        self._lock = asyncio.Lock()

    async def pool(self) -> asyncpg.Pool:
        try:
            pool = await asyncio.wait_for(self.runtime.pg(), PG_WAIT_S)
            if not self._ready:
                async with self._lock:
                    if not self._ready:
                        from services.query.reports import MIGRATIONS

                        await apply_postgres(pool, "query", MIGRATIONS)
                        self._ready = True
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            log.warning("definitions store unavailable", error=repr(exc))
            raise ApiError(503, "the definitions store (Postgres) is unavailable; try again in a moment",
                           {"Retry-After": "5"}) from exc
        return pool

    async def list(self, kind: str, app_id: str) -> list[dict[str, Any]]:
        pool = await self.pool()
        rows = await pool.fetch(f"SELECT * FROM {TABLES[kind]} WHERE app_id = $1 ORDER BY name", app_id)  # noqa: S608 - fixed table names
        return [_row(r) for r in rows]

    async def get(self, kind: str, app_id: str, ref: str) -> dict[str, Any] | None:
        """By id, else by name; None when the app has no such one."""
        if "\x00" in ref:  # no name holds NUL (create refuses it; Postgres text cannot)
            return None
        pool = await self.pool()
        table = TABLES[kind]
        try:
            row = await pool.fetchrow(f"SELECT * FROM {table} WHERE app_id = $1 AND id = $2", app_id, uuid.UUID(ref))  # noqa: S608
        except ValueError:
            row = None
        if row is None:
            row = await pool.fetchrow(f"SELECT * FROM {table} WHERE app_id = $1 AND name = $2", app_id, ref)  # noqa: S608
        return _row(row) if row is not None else None

    async def create(self, kind: str, app_id: str, fields: dict[str, Any]) -> dict[str, Any]:
        """Insert one; 409 when the app has one of that name or MAX_PER_APP of them; 422 for text with
        NUL (U+0000), which Postgres text cannot hold."""
        if _has_nul(fields):
            raise ApiError(422, f"a {kind}'s name and fields must not contain the NUL character (U+0000)")
        pool = await self.pool()
        table = TABLES[kind]
        values = {k: orjson.dumps(v).decode() if k == "spec" else v for k, v in fields.items()}
        columns = ["id", "app_id", *values]
        marks = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
        async with pool.acquire() as conn, conn.transaction():
            # One writer per app at a time, so the count below holds until the insert.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"{table}:{app_id}")
            if await conn.fetchval(f"SELECT count(*) FROM {table} WHERE app_id = $1", app_id) >= MAX_PER_APP:  # noqa: S608
                raise ApiError(409, f"an app has at most {MAX_PER_APP} {kind}s; delete one first")
            try:
                row = await conn.fetchrow(
                    f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks}) RETURNING *",  # noqa: S608
                    uuid.uuid4(), app_id, *values.values())
            except asyncpg.UniqueViolationError as exc:
                raise ApiError(409, f"this app has a {kind} named {fields['name']!r} already; pick another name") from exc
            assert row is not None  # RETURNING gives the row
        log.info("definition created", kind=kind, app_id=app_id, id=str(row["id"]))
        return _row(row)

    async def delete(self, kind: str, app_id: str, ref: str) -> None:
        """404 when the app has no such one (or it is another app's)."""
        found = await self.get(kind, app_id, ref)
        if found is None:
            raise ApiError(404, f"{kind} not found")
        pool = await self.pool()
        await pool.execute(f"DELETE FROM {TABLES[kind]} WHERE app_id = $1 AND id = $2", app_id, uuid.UUID(found["id"]))  # noqa: S608
        log.info("definition deleted", kind=kind, app_id=app_id, id=found["id"])

    async def forget_app(self, app_id: str) -> None:
        """Remove every definition of a deleted app (privacy.follow_app_deletions)."""
        pool = await self.pool()
        async with pool.acquire() as conn, conn.transaction():
            for table in TABLES.values():
                await conn.execute(f"DELETE FROM {table} WHERE app_id = $1", app_id)  # noqa: S608 - fixed table names
        log.info("definitions of a deleted app removed", app_id=app_id)


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_has_nul(v) for v in value)
    return False


def _row(row: asyncpg.Record) -> dict[str, Any]:
    out = dict(row)
    out["id"] = str(out["id"])
    out["created_at"] = out["created_at"].isoformat()
    if isinstance(out.get("spec"), str):
        out["spec"] = orjson.loads(out["spec"])
    return out


Defs = Annotated[Definitions, Depends(context_dependency(NAME, Definitions))]


async def admin_app_of_body(
    ctx: QueryContext, credentials: BearerCredentials, x_api_key: ApiKeyHeader, query_app: str | None, body_app: str | None
) -> str:
    """`AdminApp` for a create, whose app may be named in the body (`app_id`) or the query."""
    if query_app and body_app and query_app != body_app:
        raise ApiError(422, "app_id in the body and in the query differ; send one")
    return await managed_app(await app_access(ctx, credentials, x_api_key, body_app or query_app))
