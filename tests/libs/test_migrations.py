"""libs/migrations.py against a real engine: the ClickHouse migrations applied by several instances at once."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from libs.clickhouse import ClickHouseError
from libs.clickhouse.http import HttpClickHouse
from libs.clickhouse.migrate import MIGRATIONS, migrate_clickhouse
from libs.embedded import EmbeddedStack
from libs.migrations import clickhouse_migration_lock
from libs.settings import Settings

pytestmark = pytest.mark.engines


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """`analytics infra`'s ClickHouse (chDB over the HTTP interface), which separate processes share."""
    data = Path(tempfile.mkdtemp(prefix="mig-"))
    stack = EmbeddedStack.start(Settings(analytics_data_dir=data, clickhouse_url=None), ["clickhouse"])
    try:
        yield (stack.settings.clickhouse_url or "").rsplit("/", 1)[0]
    finally:
        stack.stop()
        shutil.rmtree(data, ignore_errors=True)


@pytest.mark.parametrize("round_", range(3))
async def test_instances_starting_at_once_migrate_one_working_schema(server: str, round_: int) -> None:
    """An aggregator and a query service (or three aggregators) started together each migrate at start:
    every one starts, and the schema they leave takes events and rolls them up."""
    url = f"{server}/m{uuid.uuid4().hex[:8]}"
    settings = Settings()
    clients = [await HttpClickHouse.connect(url) for _ in range(4)]
    try:
        applied = await asyncio.gather(*(migrate_clickhouse(ch, settings) for ch in clients), return_exceptions=True)
        failed = [a for a in applied if isinstance(a, BaseException)]
        assert not failed, failed
        names = sorted(name for a in applied if isinstance(a, list) for name in a)
        assert names == sorted(p.stem for p in MIGRATIONS.glob("*.sql")), "each migration applied exactly once"
        row = {"app_id": "a", "event_id": "e1", "event_name": "x", "device_type": "mobile", "user_id": "u",
               "timestamp": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3], "properties": {}}
        await clients[0].insert_rows("events", [orjson.dumps(row)])
        rows = await clients[1].query("SELECT uniqExactMerge(events) AS n FROM events_daily WHERE app_id = 'a'")
        assert rows == [{"n": 1}]
    finally:
        for ch in clients:
            await ch.close()


async def test_a_lock_left_by_a_killed_instance_is_broken_and_a_live_one_waited_for(server: str) -> None:
    ch = await HttpClickHouse.connect(f"{server}/m{uuid.uuid4().hex[:8]}")
    try:
        # As an instance SIGKILLed mid-migration leaves it.
        await ch.command("CREATE TABLE schema_migrations_lock_analytics (holder String) ENGINE = Memory")
        with pytest.raises(ClickHouseError, match="DROP TABLE .*schema_migrations_lock_analytics"):
            async with clickhouse_migration_lock(ch, "analytics", wait_s=0.3):
                pass
        await asyncio.sleep(1.1)
        async with clickhouse_migration_lock(ch, "analytics", stale_s=1):  # dead for longer: broken
            pass
        assert await migrate_clickhouse(ch, Settings())  # and free again once released
        assert not await ch.query("SELECT name FROM system.tables WHERE database = {d:String} AND name LIKE 'schema_migrations_lock%'",
                                  {"d": ch.database})
    finally:
        await ch.close()
