"""`GET /api/analytics/metrics*`: the custom metrics an app sends, summarised and as series."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Query
from fastapi.responses import Response

from libs.dataversions import reaches_now
from services.query import queries as q
from services.query import schemas as s
from services.query.context import App, QueryCtx, Tz, analytics_router, cached
from services.query.params import MAX_RANGE_DAYS, check_series, date_range
from services.query.periods import last_days

router = analytics_router("metrics")


@router.get("/metrics", operation_id="getMetricsSummary", responses=s.answer(s.MetricSummaries),
            summary="Custom metrics: count, sum, avg, min, max, p50, p95 per metric")
async def metrics_summary(
    ctx: QueryCtx,
    app_id: App,
    tz: Tz,
    metric_name: Annotated[str | None, Query(max_length=200)] = None,
    start_date: Annotated[str | None, Query()] = None,
    end_date: Annotated[str | None, Query()] = None,
) -> Response:
    start, end = date_range(start_date, end_date, "start_date", "end_date", tz)

    async def compute() -> dict[str, Any]:
        return {"metrics": await q.metric_summary(ctx.clickhouse, app_id, metric_name, start, end)}

    params = {"m": metric_name, "start": start_date, "end": end_date, "tz": tz}
    return await cached(ctx, app_id, "metrics", params, reaches_now(end), compute)


@router.get("/metrics/timeseries", operation_id="getMetricTimeseries", responses=s.answer(s.MetricSeries),
            summary="One custom metric per hour or day: count, sum, avg, min, max")
async def metric_timeseries(
    ctx: QueryCtx,
    app_id: App,
    tz: Tz,
    metric_name: Annotated[str, Query(min_length=1, max_length=200)],
    interval: Literal["day", "hour"] = "day",
    days: Annotated[int, Query(ge=1, le=MAX_RANGE_DAYS, description="the last local days, today included")] = 7,
) -> Response:
    check_series(interval, days)
    start, end = last_days(days, tz)

    async def compute() -> dict[str, Any]:
        rows = await q.metric_series(ctx.clickhouse, app_id, metric_name, start, end, interval, tz)
        return {"metric_name": metric_name, "interval": interval, "timezone": tz, "series": rows}

    params = {"m": metric_name, "i": interval, "d": days, "tz": tz}
    return await cached(ctx, app_id, "metric-timeseries", params, True, compute)
