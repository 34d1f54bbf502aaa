"""Query service: read APIs over ClickHouse with a Redis cache. Port 8003."""

from __future__ import annotations

from typing import Any

from libs.apikeys import KeyTable, shared_key_table, stop_shared_key_table
from libs.runtime import Runtime, ServiceParts, ServiceSpec


def build(runtime: Runtime) -> ServiceParts:
    from libs.clickhouse.migrate import migrate_clickhouse
    from services.query import dashboard
    from services.query.cache import QueryCache
    from services.query.router import build_router

    state: dict[str, Any] = {}

    async def start() -> None:
        state["clickhouse"] = ch = await runtime.clickhouse()
        await migrate_clickhouse(ch, runtime.settings)  # the schema it reads; idempotent next to the aggregator's own run
        state["redis"] = redis = await runtime.redis()
        state["cache"] = QueryCache(redis)
        state["keys"] = await shared_key_table(runtime)

    async def stop() -> None:
        await stop_shared_key_table(runtime)

    async def reports() -> None:
        """Scheduled report emails (here because ClickHouse is here); see services/query/reports.py."""
        from services.query.reports import run_scheduler

        await run_scheduler(runtime, state["clickhouse"])

    def keys() -> KeyTable:
        return state["keys"]  # type: ignore[no-any-return]

    router = build_router(
        runtime.settings, keys, lambda: state["clickhouse"], lambda: state.get("cache"), lambda: state.get("redis")
    )
    return ServiceParts(routers=[router, dashboard.router], on_start=[start], on_stop=[stop], background=[reports])


SERVICE = ServiceSpec(
    name="query",
    port=8003,
    needs=frozenset({"clickhouse", "redis", "kafka", "postgres"}),
    build=build,
    description="summaries and event reads from ClickHouse, cached in Redis",
)
