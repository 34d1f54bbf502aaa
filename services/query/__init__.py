"""Query service: read APIs over ClickHouse with a Redis cache, and the dashboard. Port 8003."""

from __future__ import annotations

import functools

from libs.apikeys import shared_key_table, stop_shared_key_table
from libs.apps import shared_app_directory, stop_shared_app_directory
from libs.runtime import Runtime, ServiceParts, ServiceSpec

NAME = "query"


def build(runtime: Runtime) -> ServiceParts:
    from libs.clickhouse.migrate import migrate_clickhouse
    from services.query import dashboard
    from services.query.alerts import run_alerts
    from services.query.annotation_store import STORE, QueryStore
    from services.query.cache import QueryCache
    from services.query.context import QueryContext, site_timezone
    from services.query.definitions import NAME as DEFINITIONS
    from services.query.definitions import Definitions
    from services.query.reports import run_scheduler
    from services.query.routes import ROUTERS

    async def start() -> None:
        ch = await runtime.clickhouse()
        await migrate_clickhouse(ch, runtime.settings)  # the schema it reads; idempotent next to the aggregator's own run
        redis = await runtime.redis()
        context = QueryContext(
            runtime.settings, ch, redis, QueryCache(redis), await shared_key_table(runtime),
            await shared_app_directory(runtime),
        )
        runtime.contexts.set(NAME, context)
        runtime.contexts.set(DEFINITIONS, Definitions(runtime))  # goals, segments, saved funnels (Postgres)
        runtime.contexts.set(STORE, QueryStore(runtime))  # its own Postgres (annotations)

    async def stop() -> None:
        await stop_shared_key_table(runtime)
        await stop_shared_app_directory(runtime)

    async def app_deletions() -> None:
        """Every event of an app that auth announced deleted (services/query/privacy.py)."""
        from services.query.privacy import follow_app_deletions

        context = runtime.contexts.get(NAME, QueryContext)
        definitions = runtime.contexts.get(DEFINITIONS, Definitions)
        await follow_app_deletions(runtime.settings, context.clickhouse, context.cache, definitions.forget_app)

    async def reports() -> None:
        """Scheduled report emails (here because ClickHouse is here); see services/query/reports.py."""
        ctx = runtime.contexts.get(NAME, QueryContext)
        await run_scheduler(runtime, ctx.clickhouse, functools.partial(site_timezone, ctx.apps))

    async def alerts() -> None:
        """Alert checks (here because ClickHouse is here); see services/query/alerts.py."""
        context = runtime.contexts.get(NAME, QueryContext)
        await run_alerts(runtime, context.clickhouse, context.apps)

    return ServiceParts(routers=[*ROUTERS, dashboard.router], on_start=[start], on_stop=[stop], background=[reports, app_deletions, alerts])


SERVICE = ServiceSpec(
    name=NAME,
    port=8003,
    needs=frozenset({"clickhouse", "redis", "kafka", "postgres"}),
    build=build,
    description="summaries and event reads from ClickHouse, cached in Redis",
    tags=(
        ("events", "event summaries, lists, counts, series and groups; one user's stats; active users"),
        ("metrics", "custom metrics: summaries and series"),
        ("stats", "web analytics: visitors, visits, pageviews, bounce rate, breakdowns, realtime"),
        ("funnels", "ordered steps and their conversion"),
        ("retention", "cohorts and how many came back"),
        ("goals", "pages or events that count as conversions"),
        ("segments", "saved sets of visitors: filters, behaviour, first seen, traits"),
        ("paths", "the most common steps after or before a page or an event"),
        ("annotations", "notes on the time series: launches, campaigns, outages"),
        ("users", "the users of an app, most recently seen first"),
        ("privacy", "export or delete every event of one user"),
        ("dashboard", "the web dashboard"),
    ),
)
