"""chDB runs one call at a time (libs/clickhouse/embedded.py); the aggregator's inserts go before the
reads already waiting, so a dashboard polling a busy day does not hold new events back from every
reader (bench pipeline: freshness under the dashboard's queries)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from libs.runtime import Stack

pytestmark = pytest.mark.adapters("chdb")

SLOW_READ = "SELECT count() AS n FROM numbers(30000000) WHERE sipHash64(number) % 7 = 1"


async def test_an_insert_goes_before_the_reads_waiting_for_chdb(stack: Stack) -> None:
    ch = await stack.runtime.clickhouse()
    table = f"prio_{uuid.uuid4().hex[:8]}"
    await ch.command(f"CREATE TABLE {table} (n UInt64) ENGINE = MergeTree ORDER BY n")
    done: list[str] = []

    async def read(name: str) -> None:
        await ch.query(SLOW_READ)
        done.append(name)

    async def insert() -> None:
        await ch.insert_rows(table, [b'{"n": 1}'])
        done.append("insert")

    try:
        # The first read runs; the other three wait; the insert arrives after them.
        reads = [asyncio.create_task(read(f"read {i}")) for i in range(4)]
        await asyncio.sleep(0.05)
        await asyncio.gather(*reads, insert())
        assert done.index("insert") <= 1, done  # after the read that was running at most
        assert await ch.query(f"SELECT n FROM {table}") == [{"n": 1}]
    finally:
        await ch.command(f"DROP TABLE {table}")
