"""Numbered SQL migrations for Postgres and ClickHouse: applied once, in order, and recorded.

A migration is a file `NNNN_name.sql` in a folder of them (a service's `migrations/postgres/`, or
libs/clickhouse/migrations/ for the events tables that several services share). Statements are
separated by a line ending in `;`. ClickHouse files are jinja2 templates rendered with values from
settings (retention days and the like: never client input) and `schema` (libs/clickhouse/schema.py:
one server, or a cluster with ON CLUSTER, Replicated local tables and Distributed ones). Block tags
(`{% if %}` on a line of its own) leave no blank line behind, so what the single-server rendering
sends is unchanged by the cluster branches.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import jinja2

from libs.clickhouse import ClickHouse, ClickHouseError, check_identifier
from libs.logs import get_logger

log = get_logger(__name__)

_NAME_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_PG_LOCK_ID = 0x616E616C79  # "analy": one applier at a time across processes


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()

    def statements(self) -> list[str]:
        parts = re.split(r";\s*$", self.sql, flags=re.MULTILINE)
        return [p.strip() for p in parts if p.strip() and not _only_comments(p)]


def _only_comments(sql: str) -> bool:
    return all(not line.strip() or line.strip().startswith("--") for line in sql.splitlines())


def load(folder: Path, context: dict[str, Any] | None = None) -> list[Migration]:
    env = jinja2.Environment(
        undefined=jinja2.StrictUndefined, autoescape=False, trim_blocks=True, lstrip_blocks=True  # noqa: S701 - SQL, not HTML
    )
    found = []
    for path in sorted(folder.glob("*.sql")):
        match = _NAME_RE.match(path.name)
        if not match:
            raise ValueError(f"migration file {path} must be named NNNN_name.sql")
        text = path.read_text()
        if context is not None:
            text = env.from_string(text).render(**context)
        found.append(Migration(int(match.group(1)), match.group(2), text))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration numbers in {folder}")
    return found


async def apply_postgres(pool: asyncpg.Pool, component: str, folder: Path) -> list[str]:
    """Apply pending migrations of `component`; returns the names applied."""
    applied_now: list[str] = []
    async with pool.acquire() as conn:
        await conn.execute("SELECT pg_advisory_lock($1)", _PG_LOCK_ID)
        try:
            await conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       component text NOT NULL, version int NOT NULL, name text NOT NULL,
                       checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(),
                       PRIMARY KEY (component, version))"""
            )
            done = {
                r["version"]
                for r in await conn.fetch("SELECT version FROM schema_migrations WHERE component=$1", component)
            }
            for mig in load(folder):
                if mig.version in done:
                    continue
                async with conn.transaction():
                    await conn.execute(mig.sql)
                    await conn.execute(
                        "INSERT INTO schema_migrations(component, version, name, checksum) VALUES($1,$2,$3,$4)",
                        component, mig.version, mig.name, mig.checksum,
                    )
                applied_now.append(f"{mig.version:04d}_{mig.name}")
                log.info("postgres migration applied", component=component, migration=mig.name)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", _PG_LOCK_ID)
    return applied_now


async def apply_clickhouse(ch: ClickHouse, component: str, folder: Path, context: dict[str, Any]) -> list[str]:
    """Apply pending ClickHouse migrations, one instance at a time (`clickhouse_migration_lock`): an
    aggregator and a query service, or several aggregators, start together and each migrates, and a
    migration that rebuilds a table (0003 drops and recreates the rollup and its view) interleaved with
    another instance's run of the same or the previous one left a view writing the old column types
    into the new table, or a statement reading a table dropped a moment before. The templates get
    `schema` (the client's: one server or a cluster) besides `context`.

    In a cluster, schema_migrations is one replicated table with a copy on every node (not sharded):
    whichever node a later `analytics migrate` reaches through a load balancer knows what was applied,
    so a backfill (not idempotent) or a rebuild (0003 drops the rollup for a moment) never runs again.
    Kept per node instead, each node would replay them against the whole cluster through ON CLUSTER."""
    migrations = load(folder, {"schema": ch.schema, **context})
    with contextlib.suppress(ClickHouseError):  # no schema_migrations yet: everything is pending
        if {m.version for m in migrations} <= await _applied(ch, component):
            return []  # the usual start: nothing to do, no lock taken
    async with clickhouse_migration_lock(ch, component):
        schema = ch.schema
        await ch.command(
            f"""CREATE TABLE IF NOT EXISTS schema_migrations{schema.on_cluster} (
                   component String, version UInt32, name String, checksum String,
                   applied_at DateTime DEFAULT now())
               ENGINE = {schema.engine("schema_migrations", "ReplacingMergeTree", sharded=False)} ORDER BY (component, version)"""
        )
        done = await _applied(ch, component)
        applied_now: list[str] = []
        for mig in migrations:
            if mig.version in done:
                continue
            for statement in mig.statements():
                await ch.command(statement)
            await ch.command(
                "INSERT INTO schema_migrations (component, version, name, checksum) "
                "VALUES ({c:String}, {v:UInt32}, {n:String}, {s:String})",
                {"c": component, "v": mig.version, "n": mig.name, "s": mig.checksum},
            )
            applied_now.append(f"{mig.version:04d}_{mig.name}")
            log.info("clickhouse migration applied", component=component, migration=mig.name)
        return applied_now


async def _applied(ch: ClickHouse, component: str) -> set[int]:
    rows = await ch.query("SELECT version FROM schema_migrations FINAL WHERE component = {c:String}", {"c": component})
    return {int(r["version"]) for r in rows}


CH_TABLE_ALREADY_EXISTS = 57
CH_LOCK_STALE_S = 600.0  # a holder that long is taken for dead (SIGKILLed mid-migration)
CH_LOCK_WAIT_S = 300.0


@contextlib.asynccontextmanager
async def clickhouse_migration_lock(
    ch: ClickHouse, component: str, wait_s: float = CH_LOCK_WAIT_S, stale_s: float = CH_LOCK_STALE_S
) -> AsyncIterator[None]:
    """Held while one instance migrates. ClickHouse has no advisory lock; a CREATE TABLE without IF NOT
    EXISTS succeeds for exactly one caller, so the lock is a table that exists while it is held. A lock
    older than `stale_s` (its holder was killed mid-migration) is broken; waiting longer than `wait_s`
    for a live one is an error saying what to do."""
    table = f"schema_migrations_lock_{check_identifier(component)}"
    on_cluster = ch.schema.on_cluster
    deadline = time.monotonic() + wait_s
    while True:
        try:
            await ch.command(f"CREATE TABLE {table}{on_cluster} (holder String) ENGINE = Memory")
            break
        except ClickHouseError as exc:
            if exc.code != CH_TABLE_ALREADY_EXISTS and "already exists" not in str(exc):
                raise
        rows = await ch.query(
            "SELECT toFloat64(dateDiff('second', metadata_modification_time, now())) AS age FROM system.tables "
            "WHERE database = {d:String} AND name = {t:String}", {"d": ch.database, "t": table},
        )
        age = float(rows[0]["age"]) if rows else 0.0
        if age > stale_s:
            log.warning("breaking a stale ClickHouse migration lock", table=table, age_s=age)
            await ch.command(f"DROP TABLE IF EXISTS {table}{on_cluster}")
            continue
        if time.monotonic() > deadline:
            raise ClickHouseError(
                f"another instance has been applying the ClickHouse migrations for {age:.0f}s (the table "
                f"{ch.database}.{table} exists while one does); wait for it, or if none is running, "
                f"`DROP TABLE {ch.database}.{table}` and start again"
            )
        await asyncio.sleep(0.1)
    try:
        yield
    finally:
        await ch.command(f"DROP TABLE IF EXISTS {table}{on_cluster}")
