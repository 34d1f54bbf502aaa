"""chDB sized for a laptop (libs/clickhouse/embedded.py): its server-wide cache limits are in force, and
handing its code pages back to the kernel leaves the engine answering as before."""

from __future__ import annotations

import pytest

from libs.clickhouse.embedded import LAPTOP_SERVER_SETTINGS, release_code_pages
from libs.runtime import Stack

pytestmark = pytest.mark.adapters("chdb")


async def test_chdb_runs_with_the_laptop_cache_limits(stack: Stack) -> None:
    ch = await stack.runtime.clickhouse()
    names = ", ".join(f"'{name}'" for name in LAPTOP_SERVER_SETTINGS)
    rows = await ch.query(f"SELECT name, value FROM system.server_settings WHERE name IN ({names})")
    assert {r["name"]: int(r["value"]) for r in rows} == LAPTOP_SERVER_SETTINGS


async def test_chdb_answers_after_its_code_pages_are_released(stack: Stack) -> None:
    ch = await stack.runtime.clickhouse()
    assert release_code_pages() > 100 * 2**20  # the library's read-only mappings were advised
    rows = await ch.query("SELECT uniqExact(number % 7) AS n, toStartOfHour(toDateTime(0)) AS h FROM numbers(1000)")
    assert rows == [{"n": 7, "h": "1970-01-01T00:00:00Z"}]
