"""Web stats of docs/query-api.md (`/api/analytics/stats/*`): aggregate, series, breakdowns, realtime.
Parameters are checked here (services/query/params.py), SQL lives in stats.py."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import Query
from fastapi.responses import Response

from libs.http import ApiError
from services.query import goals, links, stats
from services.query import schemas as s
from services.query.context import QueryContext, QueryCtx, StatsApp, StatsTz, analytics_router, cached
from services.query.definitions import Definitions, Defs
from services.query.params import Filters, PeriodName, metric_list, period_of
from services.query.periods import Period, buckets
from services.query.refine import PROPS_PREFIX, Refinement, Refinements, property_value

MAX_LIMIT = 1000

router = analytics_router("stats")


def _change(now: float, before: float) -> float | None:
    if not before:
        return None
    return round(100 * (now - before) / before, 1)


@router.get("/stats/aggregate", operation_id="getStatsAggregate", responses=s.answer(s.StatsAggregate),
            summary="Visitors, visits, pageviews, bounce rate, visit duration, events")
async def aggregate(
    ctx: QueryCtx, app_id: StatsApp, tz: StatsTz, filters: Filters, refine: Refinements,
    period: PeriodName = "30d", date: str | None = None,
    metrics: Annotated[str | None, Query(max_length=200)] = None,
    compare: Annotated[Literal["previous_period"] | None, Query()] = None,
) -> Response:
    span = period_of(period, date, tz)
    wanted = metric_list(metrics, extra=stats.GOAL_METRICS)
    if refine.goal is None and set(wanted) & set(stats.GOAL_METRICS):
        raise ApiError(422, f"{', '.join(stats.GOAL_METRICS)} are a goal's; send goal=<goal id or name>")
    narrow = refine.refine()

    async def compute() -> dict[str, Any]:
        scope = stats.Scope(app_id, span.start, span.end, filters, refine=narrow)
        now = await stats.aggregate(ctx.clickhouse, scope, wanted, count_bots=True)
        before: dict[str, Any] = {}
        if compare:
            prev = span.previous()
            before = await stats.aggregate(ctx.clickhouse, stats.Scope(app_id, prev.start, prev.end, filters, refine=narrow),
                                           wanted)
        return {
            "period": span.as_json(),
            "results": {m: {"value": now[m], "change": _change(now[m], before[m]) if compare else None}
                        for m in wanted},
            "bot_events_excluded": now["bot_events"],
        }

    params = {"p": period, "d": date, "tz": tz, "m": wanted, "c": compare, "f": filters, "r": refine.key()}
    return await cached(ctx, app_id, "stats-aggregate", params, span.live or refine.live, compute)


@router.get("/stats/timeseries", operation_id="getStatsTimeseries", responses=s.answer(s.StatsTimeseries),
            summary="Metrics per hour, day, week or month (every bucket present)")
async def timeseries(
    ctx: QueryCtx, app_id: StatsApp, tz: StatsTz, filters: Filters, refine: Refinements,
    period: PeriodName = "30d", date: str | None = None,
    interval: Literal["hour", "day", "week", "month"] | None = None,
    metrics: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    span = period_of(period, date, tz)
    interval = interval or ("hour" if period in ("realtime", "day") else "month" if period.endswith("mo") else "day")
    wanted = metric_list(metrics, ("visitors", "pageviews"))
    slots = buckets(span, interval)

    async def compute() -> dict[str, Any]:
        scope = stats.Scope(app_id, span.start, span.end, filters, refine=refine.refine())
        found = await stats.timeseries(ctx.clickhouse, scope, interval, tz, wanted)
        zero = {m: 0 for m in wanted}
        return {"interval": interval, "period": span.as_json(),
                "results": [{"date": label, **found.get(key, zero)} for key, label in slots]}

    params = {"p": period, "d": date, "tz": tz, "i": interval, "m": wanted, "f": filters, "r": refine.key()}
    return await cached(ctx, app_id, "stats-timeseries", params, span.live or refine.live, compute)


@router.get("/stats/breakdown", operation_id="getStatsBreakdown", responses=s.answer(s.StatsBreakdown),
            summary="Metrics per page, entry/exit page, source, UTM, device, browser, os, ...")
async def breakdown(
    ctx: QueryCtx, app_id: StatsApp, tz: StatsTz, filters: Filters, refine: Refinements, defs: Defs,
    property: Annotated[str, Query(max_length=250, description=", ".join(
        (*stats.PROPERTIES, *links.PROPERTIES, "goal", "props:<name>")))] = "page",
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
    custom = property.startswith(PROPS_PREFIX)
    if property not in (*stats.PROPERTIES, *links.PROPERTIES, "goal") and not custom:
        raise ApiError(422, f"unknown property {property!r}; send one of "
                            f"{', '.join((*stats.PROPERTIES, *links.PROPERTIES))}, goal or props:<name>")
    span = period_of(period, date, tz)
    if property == "goal":
        if metrics:
            raise ApiError(422, "property=goal answers conversions, completions and conversion_rate; leave metrics out")
        return await goal_breakdown(ctx, defs, app_id, filters, refine, span, page_number, limit,
                                    {"p": period, "d": date, "tz": tz})
    wanted = metric_list(metrics, ("visitors", "events") if custom or property in links.PROPERTIES else ("visitors", "pageviews"))
    if property in links.PROPERTIES and set(wanted) - set(links.METRICS):
        raise ApiError(422, f"{property} is broken down by {' and '.join(links.METRICS)} only; send metrics=visitors,events")
    value = property_value(property.removeprefix(PROPS_PREFIX)) if custom else None

    async def compute() -> dict[str, Any]:
        if property in links.PROPERTIES:
            scope = stats.Scope(app_id, span.start, span.end, filters, refine=refine.refine())
            rows = await links.breakdown(ctx.clickhouse, scope, property, wanted, limit, (page_number - 1) * limit)
            return {"property": property, "period": span.as_json(), "results": rows}
        scope = stats.Scope(app_id, span.start, span.end, filters, carry=() if custom else (property,),
                            refine=refine.refine(needs_props=custom))
        rows = await stats.breakdown(ctx.clickhouse, scope, property, wanted, limit, (page_number - 1) * limit, value)
        return {"property": property, "period": span.as_json(), "results": rows}

    params = {"pr": property, "p": period, "d": date, "tz": tz, "m": wanted, "f": filters, "l": limit,
              "pg": page_number, "r": refine.key()}
    return await cached(ctx, app_id, "stats-breakdown", params, span.live or refine.live, compute)


async def goal_breakdown(
    ctx: QueryContext, defs: Definitions, app_id: str, filters: dict[str, str], refine: Refinement, span: Period,
    page_number: int, limit: int, key: dict[str, Any],
) -> Response:
    """`property=goal`: one row per goal of the app (every one, most conversions first): its
    conversions (visitors who completed it), completions (how often) and conversion rate (percent of
    the visitors of the same filters)."""
    every = await defs.list("goal", app_id)

    async def compute() -> dict[str, Any]:
        scope = stats.Scope(app_id, span.start, span.end, filters, refine=refine.refine())
        found: dict[int, dict[str, Any]] = {}
        total = 0
        if every:
            expr, where, params = goals.completed_index(every)
            rows = await stats.breakdown(ctx.clickhouse, scope, "goal", ["visitors", "events"], len(every), 0,
                                         stats.EventValue(expr, where, params))
            found = {int(r["goal"]): r for r in rows}
            base = replace(scope, refine=replace(scope.refine, goal_sql=""))
            total = (await stats.aggregate(ctx.clickhouse, base, ["visitors"]))["visitors"]
        results = []
        for i, goal in enumerate(every):
            row = found.get(i, {"visitors": 0, "events": 0})
            results.append({"goal": goal["name"], "goal_id": goal["id"], "conversions": row["visitors"],
                            "completions": row["events"],
                            "conversion_rate": round(100 * row["visitors"] / total, 1) if total else 0.0})
        results.sort(key=lambda r: (-r["conversions"], r["goal"]))
        start = (page_number - 1) * limit
        return {"property": "goal", "period": span.as_json(), "results": results[start:start + limit]}

    params = {**key, "f": filters, "l": limit, "pg": page_number, "r": refine.key(),
              "g": [[g["id"], g["name"], g["kind"], g["match"]] for g in every]}
    return await cached(ctx, app_id, "stats-breakdown-goal", params, span.live or refine.live, compute)


@router.get("/stats/realtime", operation_id="getRealtimeVisitors", responses=s.answer(s.Realtime),
            summary="Distinct visitors in the last 5 minutes")
async def realtime(ctx: QueryCtx, app_id: StatsApp) -> Response:
    end = datetime.now(UTC) + timedelta(seconds=1)

    async def compute() -> dict[str, Any]:
        return {"visitors": await stats.realtime(ctx.clickhouse, app_id, end - timedelta(minutes=5), end)}

    return await cached(ctx, app_id, "stats-realtime", {}, True, compute)
