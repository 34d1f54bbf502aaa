"""HTTP routes of the ingest gateway: the `/api/analytics/*` routes and the Segment Tracking API.

In the gateway these POSTs are answered by the plain-ASGI fast path (`fastpath.py`) before FastAPI
sees them; the routes here document them in OpenAPI and serve them wherever the fast path is not
installed. Both run `fastpath.handle_ingest`, so the answers are the same.
"""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from libs.access import ApiKeyHeader, peer_ip, write_key_basic
from libs.openapi import errors
from libs.runtime import context_dependency
from services.gateway import NAME
from services.gateway import service as ingest
from services.gateway.fastpath import handle_ingest
from services.gateway.schemas import Accepted, ingest_body
from services.gateway.segment import SegmentAccepted, segment_body

# (operationId, summary) per route
ANALYTICS_ROUTES = {
    "collect": ("collectEvent", 'Collect one event {event, url, device, userId, metadata, ...} or {"events": [...]}'),
    "events": ("recordEvent", 'Record an event {event_name, event_category, user_id, metadata, ...} or {"events": [...]}'),
    "metrics": ("recordMetric", 'Record a custom metric {metric_name, value, unit, tags} or {"events": [...]}'),
}
SEGMENT_CALLS = ("track", "page", "screen", "identify", "group", "alias", "batch")
INGEST_ERRORS = errors(400, 401, 403, 413, 415, 422, 429, 503)  # 403: an Origin the site does not allow

Gateway = Annotated[ingest.Ingestor, Depends(context_dependency(NAME, ingest.Ingestor))]
analytics = APIRouter(prefix="/api/analytics", tags=["ingest"], responses=INGEST_ERRORS)
segment = APIRouter(prefix="/v1", tags=["segment"], responses=INGEST_ERRORS,
                    dependencies=[Depends(write_key_basic)])  # documents the scheme; the write key is read raw


# Bodies are read raw (gzip, text/plain beacons) and validated event by event.
async def answer(request: Request, ingestor: Gateway) -> JSONResponse:
    status, payload = await handle_ingest(ingestor, request.url.path, peer_ip(request), request.headers, await request.body())
    return JSONResponse(payload, status_code=status)


async def analytics_endpoint(request: Request, ingestor: Gateway, x_api_key: ApiKeyHeader) -> JSONResponse:
    return await answer(request, ingestor)


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": schema}}}


for _name, (_operation, _summary) in ANALYTICS_ROUTES.items():
    analytics.add_api_route(f"/{_name}", analytics_endpoint, methods=["POST"], status_code=202, response_model=Accepted,
                            openapi_extra=_body(ingest_body(_name, ingest.MAX_BATCH_EVENTS)), summary=_summary, operation_id=_operation,
                            name=f"ingest_{_name}")
for _call in SEGMENT_CALLS:
    segment.add_api_route(f"/{_call}", answer, methods=["POST"], openapi_extra=_body(segment_body(_call)),
                          response_model=SegmentAccepted, operation_id=f"segment{_call.title()}",
                          summary="Segment batch of calls" if _call == "batch" else f"Segment {_call} call",
                          name=f"segment_{_call}")

ROUTERS = [analytics, segment]
