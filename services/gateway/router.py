"""HTTP routes of the ingest gateway: the `/api/analytics/*` routes and the Segment Tracking API.

In the gateway these POSTs are answered by the plain-ASGI fast path (`fastpath.py`) before FastAPI
sees them; the routes here document them in OpenAPI and serve them wherever the fast path is not
installed. Both run `fastpath.handle_ingest`, so the answers are the same.
"""

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse

from libs.access import peer_ip
from libs.runtime import context_dependency
from services.gateway import NAME
from services.gateway import service as ingest
from services.gateway.fastpath import handle_ingest
from services.gateway.schemas import Accepted

_JSON_BODY = {"requestBody": {"content": {"application/json": {"schema": {"type": "object"}}}}}
ApiKey = Annotated[str | None, Header(description="the app's write key (wk_...) or secret key (sk_...)")]
ANALYTICS_ROUTES = {
    "collect": 'Collect one event {event, url, device, userId, metadata, ...} or {"events": [...]}',
    "events": 'Record an event {event_name, event_category, user_id, metadata, ...} or {"events": [...]}',
    "metrics": 'Record a custom metric {metric_name, value, unit, tags} or {"events": [...]}',
}
SEGMENT_CALLS = ("track", "page", "screen", "identify", "group", "alias", "batch")


Gateway = Annotated[ingest.Ingestor, Depends(context_dependency(NAME, ingest.Ingestor))]
analytics = APIRouter(prefix="/api/analytics", tags=["ingest"])
segment = APIRouter(prefix="/v1", tags=["Segment tracking API"])


# Bodies are read raw (gzip, text/plain beacons) and validated event by event.
async def answer(request: Request, ingestor: Gateway) -> JSONResponse:
    status, payload = await handle_ingest(ingestor, request.url.path, peer_ip(request), request.headers, await request.body())
    return JSONResponse(payload, status_code=status)


async def analytics_endpoint(request: Request, ingestor: Gateway, x_api_key: ApiKey = None) -> JSONResponse:
    return await answer(request, ingestor)


for _name, _summary in ANALYTICS_ROUTES.items():
    analytics.add_api_route(f"/{_name}", analytics_endpoint, methods=["POST"], status_code=202, response_model=Accepted,
                        openapi_extra=_JSON_BODY, summary=_summary, name=f"ingest_{_name}")
for _call in SEGMENT_CALLS:
    segment.add_api_route(f"/{_call}", answer, methods=["POST"], openapi_extra=_JSON_BODY,
                          summary="Segment batch of calls" if _call == "batch" else f"Segment {_call} call",
                          name=f"segment_{_call}")

ROUTERS = [analytics, segment]
