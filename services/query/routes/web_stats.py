"""Web stats of docs/query-api.md (`/api/analytics/stats/*`): aggregate, series, breakdowns, realtime.
Parameters are checked here (services/query/params.py), SQL lives in stats.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import Query
from fastapi.responses import Response

from libs.http import ApiError
from services.query import links, stats
from services.query import schemas as s
from services.query.context import App, QueryCtx, Tz, analytics_router, cached
from services.query.params import Filters, PeriodName, metric_list, period_of
from services.query.periods import buckets

MAX_LIMIT = 1000

router = analytics_router("stats")


def _change(now: float, before: float) -> float | None:
    if not before:
        return None
    return round(100 * (now - before) / before, 1)


@router.get("/stats/aggregate", operation_id="getStatsAggregate", responses=s.answer(s.StatsAggregate),
            summary="Visitors, visits, pageviews, bounce rate, visit duration, events")
async def aggregate(
    ctx: QueryCtx, app_id: App, tz: Tz, filters: Filters, period: PeriodName = "30d", date: str | None = None,
    metrics: Annotated[str | None, Query(max_length=200)] = None,
    compare: Annotated[Literal["previous_period"] | None, Query()] = None,
) -> Response:
    span = period_of(period, date, tz)
    wanted = metric_list(metrics)

    async def compute() -> dict[str, Any]:
        scope = stats.Scope(app_id, span.start, span.end, filters)
        now = await stats.aggregate(ctx.clickhouse, scope, wanted, count_bots=True)
        before: dict[str, Any] = {}
        if compare:
            prev = span.previous()
            before = await stats.aggregate(ctx.clickhouse, stats.Scope(app_id, prev.start, prev.end, filters), wanted)
        return {
            "period": span.as_json(),
            "results": {m: {"value": now[m], "change": _change(now[m], before[m]) if compare else None}
                        for m in wanted},
            "bot_events_excluded": now["bot_events"],
        }

    params = {"p": period, "d": date, "tz": tz, "m": wanted, "c": compare, "f": filters}
    return await cached(ctx, app_id, "stats-aggregate", params, span.live, compute)


@router.get("/stats/timeseries", operation_id="getStatsTimeseries", responses=s.answer(s.StatsTimeseries),
            summary="Metrics per hour, day, week or month (every bucket present)")
async def timeseries(
    ctx: QueryCtx, app_id: App, tz: Tz, filters: Filters, period: PeriodName = "30d", date: str | None = None,
    interval: Literal["hour", "day", "week", "month"] | None = None,
    metrics: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    span = period_of(period, date, tz)
    interval = interval or ("hour" if period in ("realtime", "day") else "month" if period.endswith("mo") else "day")
    wanted = metric_list(metrics, ("visitors", "pageviews"))
    slots = buckets(span, interval)

    async def compute() -> dict[str, Any]:
        scope = stats.Scope(app_id, span.start, span.end, filters)
        found = await stats.timeseries(ctx.clickhouse, scope, interval, tz, wanted)
        zero = {m: 0 for m in wanted}
        return {"interval": interval, "period": span.as_json(),
                "results": [{"date": label, **found.get(key, zero)} for key, label in slots]}

    params = {"p": period, "d": date, "tz": tz, "i": interval, "m": wanted, "f": filters}
    return await cached(ctx, app_id, "stats-timeseries", params, span.live, compute)


@router.get("/stats/breakdown", operation_id="getStatsBreakdown", responses=s.answer(s.StatsBreakdown),
            summary="Metrics per page, entry/exit page, source, UTM, device, browser, os, ...")
async def breakdown(
    ctx: QueryCtx, app_id: App, tz: Tz, filters: Filters,
    property: Annotated[str, Query(description=", ".join((*stats.PROPERTIES, *links.PROPERTIES)))] = "page",
    period: PeriodName = "30d", date: str | None = None,
    metrics: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"at most {MAX_LIMIT}")] = 10,
) -> Response:
    # `page` is both the page filter (a path, starting with /) and the result page (a number).
    page_number = 1
    if filters.get("page", "").isdigit():
        raw = filters.pop("page")
        # Digits int() does not read (superscripts such as "²") are no page number either.
        page_number = int(raw) if raw.isdecimal() else 0
        if not 1 <= page_number <= 100000:
            raise ApiError(422, "page (the result page) runs from 1 to 100000; filter by a path with page=/path")
    if property not in stats.PROPERTIES and property not in links.PROPERTIES:
        raise ApiError(422, f"unknown property {property!r}; send one of {', '.join((*stats.PROPERTIES, *links.PROPERTIES))}")
    span = period_of(period, date, tz)
    wanted = metric_list(metrics, ("visitors", "pageviews") if property in stats.PROPERTIES else ("visitors", "events"))
    if property in links.PROPERTIES and set(wanted) - set(links.METRICS):
        raise ApiError(422, f"{property} is broken down by {' and '.join(links.METRICS)} only; send metrics=visitors,events")

    async def compute() -> dict[str, Any]:
        if property in links.PROPERTIES:
            scope = stats.Scope(app_id, span.start, span.end, filters)
            rows = await links.breakdown(ctx.clickhouse, scope, property, wanted, limit, (page_number - 1) * limit)
            return {"property": property, "period": span.as_json(), "results": rows}
        scope = stats.Scope(app_id, span.start, span.end, filters, carry=(property,))
        rows = await stats.breakdown(ctx.clickhouse, scope, property, wanted, limit, (page_number - 1) * limit)
        return {"property": property, "period": span.as_json(), "results": rows}

    params = {"pr": property, "p": period, "d": date, "tz": tz, "m": wanted, "f": filters, "l": limit,
              "pg": page_number}
    return await cached(ctx, app_id, "stats-breakdown", params, span.live, compute)


@router.get("/stats/realtime", operation_id="getRealtimeVisitors", responses=s.answer(s.Realtime),
            summary="Distinct visitors in the last 5 minutes")
async def realtime(ctx: QueryCtx, app_id: App) -> Response:
    end = datetime.now(UTC) + timedelta(seconds=1)

    async def compute() -> dict[str, Any]:
        return {"visitors": await stats.realtime(ctx.clickhouse, app_id, end - timedelta(minutes=5), end)}

    return await cached(ctx, app_id, "stats-realtime", {}, True, compute)
