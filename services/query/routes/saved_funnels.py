"""Saved funnels (named, per app: `/api/analytics/funnels/saved`) and a funnel's drop-off list
(`/api/analytics/funnels/dropoff`: who reached step N but not N+1). Stored as goals and segments are
(definitions.py); SQL in funnels.py."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from libs.access import ApiKeyHeader, BearerCredentials
from libs.http import ApiError
from libs.openapi import errors
from services.query import funnels
from services.query import schemas as s
from services.query.context import AdminApp, App, QueryCtx, SignedRequest, Tz, analytics_router, cached
from services.query.definitions import Defs, admin_app_of_body
from services.query.params import PeriodName, period_of
from services.query.refine import SegmentParam
from services.query.routes.journeys import MAX_FUNNEL_WINDOW_S

router = analytics_router("funnels")
MAX_STEPS = 8
FUNNEL_EXAMPLE: dict[str, Any] = {"name": "Signup", "steps": ["page_view", "signup_click", "signed_up"], "window": 86400}


def step_names(raw: list[str]) -> list[str]:
    names = [n.strip() for n in raw if n.strip()]
    if not 2 <= len(names) <= MAX_STEPS:
        raise ValueError(f"a funnel has 2 to {MAX_STEPS} steps (event names); got {len(names)}")
    if any(len(n) > 200 for n in names):
        raise ValueError("an event name is at most 200 characters")
    return names


class SavedFunnelIn(s.DefinitionIn):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [FUNNEL_EXAMPLE]})
    steps: list[str] = Field(description=f"2 to {MAX_STEPS} event names, in order")
    window: int = Field(86400, ge=1, le=MAX_FUNNEL_WINDOW_S, description="seconds from the first step")

    @field_validator("steps")
    @classmethod
    def _steps(cls, value: list[str]) -> list[str]:
        return step_names(value)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()


class FunnelSpec(BaseModel):
    steps: list[str]
    window: int


class SavedFunnel(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "0b7a3f52-5a1e-4f51-9d2c-2f0d8f2f7e11", "app_id": "3f2c8a9e-6a1b-4c9d-8e2f-0a1b2c3d4e5f",
        "name": "Signup", "spec": {"steps": FUNNEL_EXAMPLE["steps"], "window": 86400},
        "created_at": "2026-01-31T12:00:00+00:00"}]})
    id: str
    app_id: str
    name: str
    spec: FunnelSpec
    created_at: str


class SavedFunnelList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"funnels": []}]})
    funnels: list[SavedFunnel] = Field(description="by name")


class DroppedUser(BaseModel):
    visitor: str = Field(description="user id, else anonymous id, else session id")
    user_id: str
    last_seen: str = Field(description="their latest event, of any kind")


class Dropoff(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "period": {"start": "2026-01-01T00:00:00Z", "end": "2026-01-31T00:00:00Z"}, "steps": FUNNEL_EXAMPLE["steps"],
        "step": 1, "users": [{"visitor": "u_42", "user_id": "u_42", "last_seen": "2026-01-30T12:00:00+00:00"}],
        "page": 1, "limit": 50, "total": 1}]})
    period: s.Period
    steps: list[str]
    step: int = Field(description="they reached this step (1-based) and not the next")
    users: list[DroppedUser] = Field(description="most recently seen first")
    page: int
    limit: int
    total: int


@router.post("/funnels/saved", dependencies=[SignedRequest], operation_id="saveFunnel",
             status_code=201, response_model=SavedFunnel, responses=errors(409),
             summary="Save a named funnel (steps and window)")
async def save_funnel(ctx: QueryCtx, defs: Defs, credentials: BearerCredentials, x_api_key: ApiKeyHeader,
                      body: SavedFunnelIn, app_id: Annotated[str | None, Query(max_length=64)] = None) -> dict[str, Any]:
    app = await admin_app_of_body(ctx, credentials, x_api_key, app_id, body.app_id)
    return await defs.create("funnel", app, {"name": body.name, "spec": {"steps": body.steps, "window": body.window}})


@router.get("/funnels/saved", operation_id="listSavedFunnels", response_model=SavedFunnelList, summary="The app's saved funnels")
async def list_saved(defs: Defs, app_id: App) -> dict[str, Any]:
    return {"funnels": await defs.list("funnel", app_id)}


@router.delete("/funnels/saved/{funnel_id}", operation_id="deleteSavedFunnel", status_code=204, summary="Delete a saved funnel")
async def delete_saved(defs: Defs, app_id: AdminApp, funnel_id: str) -> Response:
    await defs.delete("funnel", app_id, funnel_id)
    return Response(status_code=204)


@router.get("/funnels/dropoff", operation_id="getFunnelDropoff", responses=s.answer(Dropoff),
            summary="Who reached step N of a funnel but not step N+1")
async def dropoff(
    ctx: QueryCtx, app_id: App, tz: Tz, defs: Defs, segment: SegmentParam,
    step: Annotated[int, Query(ge=1, le=MAX_STEPS - 1, description="1-based: they did this step and not the next")],
    steps: Annotated[str | None, Query(max_length=2000, description="2 to 8 event names, comma separated")] = None,
    funnel_id: Annotated[str | None, Query(max_length=120, description="a saved funnel's id or name, instead of steps")] = None,
    window: Annotated[int | None, Query(ge=1, le=MAX_FUNNEL_WINDOW_S, description="seconds (default: the saved one's, else 86400)")] = None,
    period: PeriodName = "30d", date: str | None = None,
    page: Annotated[int, Query(ge=1, le=100000)] = 1,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> Response:
    if (steps is None) == (funnel_id is None):
        raise ApiError(422, "send steps=first_event,second_event,... or funnel_id= (a saved funnel), one of them")
    if funnel_id is not None:
        saved = await defs.get("funnel", app_id, funnel_id)
        if saved is None:
            raise ApiError(404, "saved funnel not found; GET /api/analytics/funnels/saved lists them")
        names, window = saved["spec"]["steps"], window or saved["spec"]["window"]
    else:
        try:
            names = step_names((steps or "").split(","))
        except ValueError as exc:
            raise ApiError(422, f"{exc}; send steps=first_event,second_event,...") from exc
    if step >= len(names):
        raise ApiError(422, f"step runs from 1 to {len(names) - 1} for a funnel of {len(names)} steps (the last has no next)")
    span = period_of(period, date, tz)
    seconds = window or 86400

    async def compute() -> dict[str, Any]:
        users, total = await funnels.dropoff(ctx.clickhouse, app_id, span.start, span.end, names, seconds, step, limit,
                                             (page - 1) * limit, segment.condition())
        return {"period": span.as_json(), "steps": names, "step": step, "users": users, "page": page, "limit": limit,
                "total": total}

    params = {"s": names, "w": seconds, "st": step, "p": period, "d": date, "tz": tz, "pg": page, "l": limit,
              "sg": segment.key()}
    return await cached(ctx, app_id, "funnel-dropoff", params, span.live or segment.live, compute)
