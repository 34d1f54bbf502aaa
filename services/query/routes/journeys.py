"""`/api/analytics/funnels` and `/api/analytics/retention`: how visitors move through steps and come
back. SQL and cohort arithmetic live in funnels.py."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Query
from fastapi.responses import Response

from libs.http import ApiError
from services.query import funnels
from services.query import schemas as s
from services.query.context import App, QueryCtx, Tz, analytics_router, cached
from services.query.params import PeriodName, period_of

MAX_FUNNEL_WINDOW_S = 90 * 86400

router = analytics_router()


@router.get("/funnels", operation_id="getFunnel", responses=s.answer(s.Funnel), tags=["funnels"],
            summary="Ordered steps within a window, with per-step conversion")
async def funnel(
    ctx: QueryCtx,
    app_id: App,
    tz: Tz,
    steps: Annotated[str, Query(max_length=2000, description="2 to 8 event names, comma separated")],
    window: Annotated[int, Query(ge=1, le=MAX_FUNNEL_WINDOW_S, description="seconds")] = 86400,
    period: PeriodName = "30d", date: str | None = None,
) -> Response:
    names = [s.strip() for s in steps.split(",") if s.strip()]
    if not 2 <= len(names) <= 8:
        raise ApiError(422, f"a funnel has 2 to 8 steps; send steps=first_event,second_event,... (got {len(names)})")
    span = period_of(period, date, tz)

    async def compute() -> dict[str, Any]:
        rows = await funnels.funnel(ctx.clickhouse, app_id, span.start, span.end, names, window)
        return {"period": span.as_json(), "window": window, "steps": rows}

    params = {"s": names, "w": window, "p": period, "d": date, "tz": tz}
    return await cached(ctx, app_id, "funnels", params, span.live, compute)


@router.get("/retention", operation_id="getRetention", responses=s.answer(s.Retention), tags=["retention"],
            summary="Cohorts by first-seen day or week, and how many came back")
async def retention(
    ctx: QueryCtx,
    app_id: App,
    tz: Tz,
    interval: Literal["day", "week"] = "week",
    cohorts: Annotated[int, Query(ge=1, le=52, description="how many cohorts, at most 52")] = 8,
) -> Response:

    async def compute() -> dict[str, Any]:
        return {"interval": interval, "cohorts": await funnels.retention_cohorts(ctx.clickhouse, app_id, interval, cohorts, tz)}

    return await cached(ctx, app_id, "retention", {"i": interval, "c": cohorts, "tz": tz}, True, compute)
