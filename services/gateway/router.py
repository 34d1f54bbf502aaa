"""HTTP routes of the ingest gateway."""


from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from libs.access import client_ip
from libs.apikeys import KeyTable
from libs.http import ApiError
from services.gateway import enrich
from services.gateway import service as ingest
from services.gateway.schemas import Accepted, CollectEvent, MetricIn, SeedEvent

Converter = Callable[[Any, dict[str, Any]], dict[str, Any]]

_OPENAPI_BODY = {"requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}}}


def build_router(keys: Callable[[], KeyTable], publisher: Callable[[], ingest.Publisher]) -> APIRouter:
    router = APIRouter(prefix="/api/analytics", tags=["ingest"])

    # Bodies are read raw (gzip, text/plain beacons) and validated event by event.
    async def ingest_request(
        request: Request, api_key: str | None, model: type[BaseModel], convert: Converter, route: str
    ) -> JSONResponse:
        record = ingest.authenticate(keys(), api_key)
        body = ingest.decode_body(await request.body(), request.headers.get("content-encoding"))
        items, is_batch = ingest.split_batch(body)
        good, bad = ingest.validate_items(model, items)
        ingest.EVENTS_REJECTED.labels(route).inc(len(bad))
        if not good:
            detail: Any = bad[0]["errors"] if not is_batch else bad
            raise ApiError(422, detail)
        received_at = enrich.now_utc()
        user_agent = request.headers.get("user-agent", "")
        ip = client_ip(request)
        events = [
            convert(ev, enrich.base_event(record.app_id, getattr(ev, "event_id", None), received_at, user_agent, ip))
            for _, ev in good
        ]
        await publisher().publish(record.app_id, events)
        ingest.EVENTS_ACCEPTED.labels(route).inc(len(events))
        result = Accepted(accepted=len(events), event_ids=[e["event_id"] for e in events], errors=bad)
        return JSONResponse(result.model_dump(), status_code=202)

    @router.post(
        "/collect", status_code=202, response_model=Accepted, openapi_extra=_OPENAPI_BODY,
        summary="Collect one event (the second seed's shape) or {\"events\": [...]}",
    )
    async def collect(request: Request, x_api_key: str | None = Header(default=None)) -> JSONResponse:
        return await ingest_request(request, x_api_key, CollectEvent, ingest.from_collect, "collect")

    @router.post(
        "/events", status_code=202, response_model=Accepted, openapi_extra=_OPENAPI_BODY,
        summary="Record an event (the first seed's shape) or {\"events\": [...]}",
    )
    async def events(request: Request, x_api_key: str | None = Header(default=None)) -> JSONResponse:
        return await ingest_request(request, x_api_key, SeedEvent, ingest.from_seed_event, "events")

    @router.post(
        "/metrics", status_code=202, response_model=Accepted, openapi_extra=_OPENAPI_BODY,
        summary="Record a custom metric {metric_name, value, unit, tags} or {\"events\": [...]}",
    )
    async def metrics(request: Request, x_api_key: str | None = Header(default=None)) -> JSONResponse:
        return await ingest_request(request, x_api_key, MetricIn, ingest.from_metric, "metrics")

    return router
