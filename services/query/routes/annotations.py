"""`/api/analytics/annotations`: notes on an app's time series (a launch, a campaign, an outage).
Adding and deleting need the admin role on the app (a secret key acts as its owner); reading, viewer.
Storage in services/query/annotations.py."""

from __future__ import annotations

from datetime import UTC
from typing import Annotated, Any

from fastapi import Depends, Query
from fastapi.responses import JSONResponse, Response

from libs.access import ApiKeyHeader, BearerCredentials
from libs.apps import Role, at_least
from libs.http import ApiError
from libs.openapi import errors
from libs.runtime import context_dependency
from services.query import annotation_store as notes
from services.query import report_schemas as rs
from services.query import schemas as s
from services.query.context import QueryCtx, SignedRequest, Tz, analytics_router, app_access, json_response
from services.query.params import PeriodName, period_of
from services.query.periods import readable_day

router = analytics_router("annotations")

Store = Annotated[notes.QueryStore, Depends(context_dependency(notes.STORE, notes.QueryStore))]
Access = Annotated[tuple[str, Role], Depends(app_access)]


def _admin(access: tuple[str, Role]) -> str:
    app_id, role = access
    if not at_least(role, "admin"):
        raise ApiError(403, "adding or deleting annotations needs the admin role on this app")
    return app_id


@router.post("/annotations", dependencies=[SignedRequest], operation_id="addAnnotation", status_code=201, response_model=rs.Annotation,
             responses={**s.answer(rs.Annotation, "the note, as stored", csv=False), **errors(409)},
             summary="Add a note on a day or at a moment of the time series (admin)")
async def add_annotation(
    ctx: QueryCtx, store: Store, body: rs.AnnotationIn, credentials: BearerCredentials, x_api_key: ApiKeyHeader,
    app_id: Annotated[str | None, Query(max_length=64, description="or in the body")] = None,
) -> JSONResponse:
    if app_id and body.app_id and app_id != body.app_id:
        raise ApiError(422, "app_id= and the body's app_id differ; send one")
    target = _admin(await app_access(ctx, credentials, x_api_key, body.app_id or app_id))
    if (body.date is None) == (body.datetime is None):
        raise ApiError(422, "send either date (YYYY-MM-DD, an all-day note) or datetime (ISO 8601), not both")
    moment = body.datetime
    if moment is not None:
        moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
        readable_day(moment.date(), "datetime")
    if body.date is not None:
        readable_day(body.date, "date")
    text = body.text.strip()
    if not text:
        raise ApiError(422, "text is empty; say what happened")
    return JSONResponse(await notes.add(store, target, body.date, moment, text), status_code=201)


@router.get("/annotations", operation_id="listAnnotations", responses=s.answer(rs.Annotations),
            summary="The notes of a period (its days in tz, and moments within it)")
async def list_annotations(
    store: Store, access: Access, tz: Tz, period: PeriodName = "30d", date: str | None = None,
) -> Response:
    span = period_of(period, date, tz)
    found: list[dict[str, Any]] = await notes.in_period(store, access[0], span)
    return json_response({"period": span.as_json(), "annotations": found})


@router.delete("/annotations/{annotation_id}", operation_id="deleteAnnotation", status_code=204,
               responses={204: {"description": "deleted"}}, summary="Delete a note (admin)")
async def delete_annotation(store: Store, access: Access, annotation_id: str) -> Response:
    app_id = _admin(access)
    if len(annotation_id) > 64 or not await notes.delete(store, app_id, annotation_id):
        raise ApiError(404, "no such annotation in this app")
    return Response(status_code=204)
