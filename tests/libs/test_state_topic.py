"""Following a keyed state topic into a table of one's own (libs/statetopic.py) on the real embedded
Kafka and Postgres: a batch the database refuses is applied once it takes work again, and its offsets
are committed only after it went in."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg
import orjson
import pytest

from libs.runtime import Stack
from libs.settings import Settings
from libs.statetopic import follow_state_topic
from libs.stores import close_pg_pool, create_pg_pool
from tests.conftest import eventually
from tests.libs.stream.test_consumer import own_topic
from tests.services.aggregator.test_aggregator import committed

pytestmark = pytest.mark.engines


async def test_a_state_batch_refused_by_a_locked_table_is_applied_once_the_table_is_free_and_committed_only_after(
    stack: Stack, engines: Settings,
) -> None:
    topic = await own_topic(engines, 1)
    group = f"g-{topic}"
    table = f"test_state_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(engines.database_url)
    await admin.execute(f"CREATE TABLE {table} (key text PRIMARY KEY, name text NOT NULL)")
    pool = await create_pg_pool(engines, command_timeout=1)  # a locked table refuses the batch within a second
    refusals: list[BaseException] = []

    async def apply(states: Sequence[tuple[str, dict[str, Any] | None]]) -> None:
        try:
            async with pool.acquire() as conn, conn.transaction():
                for key, state in states:
                    if state is None:
                        await conn.execute(f"DELETE FROM {table} WHERE key = $1", key)
                    else:
                        await conn.execute(f"INSERT INTO {table} VALUES ($1, $2) ON CONFLICT (key) DO UPDATE "
                                           "SET name = EXCLUDED.name", key, state["name"])
        except Exception as exc:
            refusals.append(exc)
            raise

    async def names() -> dict[str, str]:
        return {r["key"]: r["name"] for r in await admin.fetch(f"SELECT key, name FROM {table}")}

    producer = await stack.runtime.producer()
    follower: asyncio.Task[None] | None = None
    try:
        locker = await asyncpg.connect(engines.database_url)
        try:
            async with locker.transaction():
                await locker.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
                await producer.send_and_wait(topic, b"{not json", key=b"unreadable")  # skipped with a log
                await producer.send_and_wait(topic, orjson.dumps({"name": "Bakery"}), key=b"app-1")
                follower = asyncio.create_task(follow_state_topic(engines, topic, group, apply))

                async def refused_twice_or_ended() -> bool:
                    return len(refusals) >= 2 or follower.done()

                await eventually(refused_twice_or_ended, 30, "the follower never tried to apply the batch")
                assert not follower.done(), f"the follower ended on a refused batch: {follower.exception()!r}"
                assert await committed(engines, group, topic) == {}, "offsets committed before the batch went in"
        finally:
            await locker.close()

        async def applied() -> bool:
            return await names() == {"app-1": "Bakery"}

        await eventually(applied, 30, "the refused state never reached the table once it was free")

        async def committed_after() -> bool:
            return await committed(engines, group, topic) == {0: 2}

        await eventually(committed_after, 10, "the applied batch was never committed")
        # The follower goes on: a tombstone removes the key.
        await producer.send_and_wait(topic, None, key=b"app-1")

        async def removed() -> bool:
            return await names() == {}

        await eventually(removed, 15, "a tombstone after the outage was not applied")
    finally:
        if follower is not None:
            follower.cancel()
            await asyncio.wait({follower}, timeout=15)
        await close_pg_pool(pool)
        await admin.execute(f"DROP TABLE {table}")
        await admin.close()
