"""`GET /api/analytics/paths`: the most common steps after (or before) a page or an event. SQL in paths.py."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query
from fastapi.responses import Response

from services.query import paths, stats
from services.query import report_schemas as rs
from services.query import schemas as s
from services.query.context import App, QueryCtx, Tz, analytics_router, cached
from services.query.params import Filters, PeriodName, period_of
from services.query.refine import SegmentParam

MAX_LIMIT = 100

router = analytics_router("paths")


@router.get("/paths", operation_id="getPaths", responses=s.answer(rs.Paths),
            summary="The most common next (or previous) steps of visits from a page or an event")
async def get_paths(
    ctx: QueryCtx, app_id: App, tz: Tz, filters: Filters, segment: SegmentParam,
    start: Annotated[str, Query(min_length=1, max_length=2048,
                                description="a page path (starting with /) or an event name")],
    direction: paths.Direction = "after",
    depth: Annotated[int, Query(ge=1, le=paths.MAX_DEPTH, description=f"steps, 1 to {paths.MAX_DEPTH}")] = 3,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="sequences, and links per level")] = 10,
    period: PeriodName = "30d", date: str | None = None,
) -> Response:
    span = period_of(period, date, tz)

    async def compute() -> dict[str, Any]:
        visitors, bound = segment.condition()  # only the segment's visitors' visits, with segment_id=
        scope = stats.Scope(app_id, span.start, span.end, filters, refine=stats.Refine(visitor_sql=visitors, params=bound))
        found = await paths.paths(ctx.clickhouse, scope, start, direction, depth, limit)
        return {"start": start, "direction": direction, "depth": depth, "period": span.as_json(), **found}

    params = {"s": start, "dir": direction, "dp": depth, "l": limit, "p": period, "d": date, "tz": tz, "f": filters,
              "sg": segment.key()}
    return await cached(ctx, app_id, "paths", params, span.live or segment.live, compute)
