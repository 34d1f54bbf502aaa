"""Goals, segments and custom properties (issue #20, Reports): `/api/analytics/goals`,
`/api/analytics/segments` (saved per app, definitions.py; reading needs the viewer role, creating and
deleting the admin role) and `/api/analytics/properties` (the custom property names seen on an event)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from libs.access import ApiKeyHeader, BearerCredentials
from libs.openapi import errors
from services.query.context import AdminApp, App, QueryCtx, SignedRequest, Tz, analytics_router, cached
from services.query.definitions import Defs, admin_app_of_body
from services.query.goals import Goal, GoalIn, GoalList
from services.query.params import PeriodName, period_of
from services.query.refine import property_names
from services.query.segments import Segment, SegmentIn, SegmentList

router = analytics_router()
BodyApp = Annotated[str | None, Query(max_length=64, description="the app, unless the body or a secret key names it")]
Ref = Annotated[str, Query(max_length=120)]


@router.post("/goals", dependencies=[SignedRequest], operation_id="createGoal",
             status_code=201, response_model=Goal, responses=errors(409), tags=["goals"],
             summary="Save a goal: a page (with * wildcards) or an event that counts as a conversion")
async def create_goal(ctx: QueryCtx, defs: Defs, credentials: BearerCredentials, x_api_key: ApiKeyHeader, body: GoalIn,
                      app_id: BodyApp = None) -> dict[str, Any]:
    app = await admin_app_of_body(ctx, credentials, x_api_key, app_id, body.app_id)
    return await defs.create("goal", app, {"name": body.name, "kind": body.kind, "match": body.match})


@router.get("/goals", operation_id="listGoals", response_model=GoalList, tags=["goals"], summary="The app's goals, by name")
async def list_goals(defs: Defs, app_id: App) -> dict[str, Any]:
    return {"goals": await defs.list("goal", app_id)}


@router.delete("/goals/{goal_id}", operation_id="deleteGoal", status_code=204, tags=["goals"], summary="Delete a goal")
async def delete_goal(defs: Defs, app_id: AdminApp, goal_id: str) -> Response:
    await defs.delete("goal", app_id, goal_id)
    return Response(status_code=204)


@router.post("/segments", dependencies=[SignedRequest], operation_id="createSegment",
             status_code=201, response_model=Segment, responses=errors(409),
             tags=["segments"], summary="Save a segment: filters, event counts, first seen, traits (all must hold)")
async def create_segment(ctx: QueryCtx, defs: Defs, credentials: BearerCredentials, x_api_key: ApiKeyHeader, body: SegmentIn,
                         app_id: BodyApp = None) -> dict[str, Any]:
    app = await admin_app_of_body(ctx, credentials, x_api_key, app_id, body.app_id)
    return await defs.create("segment", app, {"name": body.name, "spec": body.spec()})


@router.get("/segments", operation_id="listSegments", response_model=SegmentList, tags=["segments"],
            summary="The app's segments, by name")
async def list_segments(defs: Defs, app_id: App) -> dict[str, Any]:
    return {"segments": await defs.list("segment", app_id)}


@router.delete("/segments/{segment_id}", operation_id="deleteSegment", status_code=204, tags=["segments"],
               summary="Delete a segment")
async def delete_segment(defs: Defs, app_id: AdminApp, segment_id: str) -> Response:
    await defs.delete("segment", app_id, segment_id)
    return Response(status_code=204)


class PropertyName(BaseModel):
    name: str
    events: int = Field(description="events that carried it")


class PropertyNames(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "event_name": "purchase", "period": {"start": "2026-01-01T00:00:00Z", "end": "2026-01-31T00:00:00Z"},
        "properties": [{"name": "plan", "events": 12}, {"name": "amount", "events": 12}]}]})
    event_name: str | None
    period: dict[str, str]
    properties: list[PropertyName] = Field(description="most common first")


@router.get("/properties", operation_id="listProperties", responses={200: {"model": PropertyNames, "description": "the answer"}},
            tags=["stats"], summary="Custom property names seen on an event (or on every event), with counts")
async def properties(
    ctx: QueryCtx, app_id: App, tz: Tz, event_name: Annotated[str | None, Query(max_length=200)] = None,
    period: PeriodName = "30d", date: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    span = period_of(period, date, tz)

    async def compute() -> dict[str, Any]:
        rows = await property_names(ctx.clickhouse, app_id, event_name, span.start, span.end, limit)
        return {"event_name": event_name, "period": span.as_json(), "properties": rows}

    params = {"e": event_name, "p": period, "d": date, "tz": tz, "l": limit}
    return await cached(ctx, app_id, "properties", params, span.live, compute)
