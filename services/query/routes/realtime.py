"""`GET /api/analytics/stats/realtime/detail`: the realtime view (SQL in realtime.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi.responses import Response

from services.query import realtime
from services.query import report_schemas as rs
from services.query import schemas as s
from services.query.context import QueryCtx, StatsApp, analytics_router, cached

router = analytics_router("stats")


@router.get("/stats/realtime/detail", operation_id="getRealtimeDetail", responses=s.answer(rs.RealtimeDetail),
            summary="Visitors per minute over the last 30 minutes, and the top pages and sources now")
async def realtime_detail(ctx: QueryCtx, app_id: StatsApp) -> Response:
    async def compute() -> dict[str, Any]:
        return await realtime.detail(ctx.clickhouse, app_id, datetime.now(UTC))

    # Keyed by the minute too: a cached answer never shows the minute before's window.
    return await cached(ctx, app_id, "stats-realtime-detail", {"m": datetime.now(UTC).strftime("%H%M")}, True, compute)
