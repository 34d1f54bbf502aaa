"""`/api/analytics/users*`: an app's users, and one user's events exported or deleted (privacy requests).
SQL lives in privacy.py."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Query
from fastapi.responses import JSONResponse, Response, StreamingResponse

from libs.http import ApiError
from services.query import privacy
from services.query import schemas as s
from services.query.context import AdminApp, App, QueryCtx, analytics_router, cached
from services.query.refine import SegmentParam
from services.query.schemas import EXPORT

MAX_LIMIT = 1000

router = analytics_router()


@router.get("/users", operation_id="listUsers", responses=s.answer(s.UserList), tags=["users"],
            summary="Users by user_id, most recently seen first")
async def users(
    ctx: QueryCtx,
    app_id: App,
    segment: SegmentParam,
    page: Annotated[int, Query(ge=1, le=100000)] = 1,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"at most {MAX_LIMIT}")] = 50,
    search: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    async def compute() -> dict[str, Any]:
        rows, total = await privacy.list_users(ctx.clickhouse, app_id, search, limit, (page - 1) * limit, segment.condition())
        return {"users": rows, "page": page, "limit": limit, "total": total}

    return await cached(ctx, app_id, "users", {"p": page, "l": limit, "s": search, "sg": segment.key()}, True, compute)


@router.get("/users/{user_id}/export", operation_id="exportUser", responses=EXPORT, response_class=StreamingResponse, tags=["privacy"],
            summary="Every event of one user, as JSON lines (streamed)")
async def export(ctx: QueryCtx, app_id: App, user_id: str) -> StreamingResponse:
    if len(user_id) > 200:
        raise ApiError(422, "user_id is at most 200 characters")
    lines: AsyncIterator[bytes] = privacy.export_lines(ctx.clickhouse, app_id, user_id)
    headers = {"X-Cache": "MISS", "Cache-Control": "no-store",
               "Content-Disposition": f'attachment; filename="events-{app_id}.jsonl"'}
    return StreamingResponse(lines, media_type="application/x-ndjson", headers=headers)


@router.delete("/users/{user_id}", operation_id="deleteUser", responses=s.answer(s.Deleted, csv=False), tags=["privacy"],
               summary="Delete every event of one user")
async def delete(ctx: QueryCtx, app_id: AdminApp, user_id: str) -> JSONResponse:
    if len(user_id) > 200:
        raise ApiError(422, "user_id is at most 200 characters")
    deleted = await privacy.delete_user(ctx.clickhouse, app_id, user_id)
    await ctx.cache.bump_generation(app_id)
    return JSONResponse({"deleted": deleted})
