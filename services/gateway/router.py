"""HTTP routes of the ingest gateway: the seeds' routes and the Segment Tracking API."""

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse

from libs.access import client_ip
from services.gateway import service as ingest
from services.gateway.schemas import Accepted, CollectEvent, MetricIn, SeedEvent
from services.gateway.segment import CallType, SegmentMessage, basic_auth_user, from_segment, parse_time, segment_items

_JSON_BODY = {"requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}}}
ApiKey = Annotated[str | None, Header(description="the app's write key (wk_...) or secret key (sk_...)")]


def build_routers(ingestor: Callable[[], ingest.Ingestor]) -> list[APIRouter]:
    seeds = APIRouter(prefix="/api/analytics", tags=["ingest"])

    # Bodies are read raw (gzip, text/plain beacons) and validated event by event.
    async def seed_route(request: Request, api_key: str | None, model: Any, convert: Any, route: str) -> JSONResponse:
        gate = ingestor()
        record = ingest.authenticate(gate.keys, api_key)
        body = ingest.decode_body(await request.body(), request.headers.get("content-encoding"))
        items, is_batch = ingest.split_batch(body)
        facts = gate.facts(record, client_ip(request), request.headers)
        events, bad = await gate.ingest(facts, items, is_batch, model, convert, route)
        result = Accepted(accepted=len(events), event_ids=[e["event_id"] for e in events], errors=bad)
        return JSONResponse(result.model_dump(), status_code=202)

    @seeds.post("/collect", status_code=202, response_model=Accepted, openapi_extra=_JSON_BODY,
                summary='Collect one event (the second seed\'s shape) or {"events": [...]}')
    async def collect(request: Request, x_api_key: ApiKey = None) -> JSONResponse:
        return await seed_route(request, x_api_key, CollectEvent, ingest.from_collect, "collect")

    @seeds.post("/events", status_code=202, response_model=Accepted, openapi_extra=_JSON_BODY,
                summary='Record an event (the first seed\'s shape) or {"events": [...]}')
    async def events(request: Request, x_api_key: ApiKey = None) -> JSONResponse:
        return await seed_route(request, x_api_key, SeedEvent, ingest.from_seed_event, "events")

    @seeds.post("/metrics", status_code=202, response_model=Accepted, openapi_extra=_JSON_BODY,
                summary='Record a custom metric {metric_name, value, unit, tags} or {"events": [...]}')
    async def metrics(request: Request, x_api_key: ApiKey = None) -> JSONResponse:
        return await seed_route(request, x_api_key, MetricIn, ingest.from_metric, "metrics")

    segment = APIRouter(prefix="/v1", tags=["Segment tracking API"])

    async def segment_route(request: Request, call: CallType | None) -> JSONResponse:
        gate = ingestor()
        body = ingest.decode_body(await request.body(), request.headers.get("content-encoding"))
        if not isinstance(body, dict):
            raise ingest.ApiError(400, "send a JSON object")
        key = basic_auth_user(request.headers.get("authorization")) or body.get("writeKey")
        record = ingest.authenticate(gate.keys, key if isinstance(key, str) else None,
                                     "HTTP Basic auth (write key as user name) or writeKey in the body")
        items, is_batch = segment_items(call or "batch", body)
        sent_at = parse_time(body.get("sentAt"))
        facts = gate.facts(record, client_ip(request), request.headers)
        events, bad = await gate.ingest(
            facts, items, is_batch, SegmentMessage, lambda msg, base: from_segment(msg, base, sent_at), "segment",
        )
        return JSONResponse({"success": True, "accepted": len(events), "errors": bad})

    for call in ("track", "page", "screen", "identify", "group", "alias"):
        segment.add_api_route(
            f"/{call}", _segment_endpoint(segment_route, call), methods=["POST"], openapi_extra=_JSON_BODY,
            summary=f"Segment {call} call", name=f"segment_{call}",
        )
    segment.add_api_route("/batch", _segment_endpoint(segment_route, None), methods=["POST"],
                          openapi_extra=_JSON_BODY, summary="Segment batch of calls", name="segment_batch")
    return [seeds, segment]


def _segment_endpoint(handler: Any, call: CallType | None) -> Any:
    async def endpoint(request: Request) -> JSONResponse:
        return await handler(request, call)

    return endpoint
