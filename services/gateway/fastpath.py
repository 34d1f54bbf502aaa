"""A plain-ASGI path for the ingest routes, in front of FastAPI.

Ingest is the hot path of the platform: a request should cost little more than the HTTP parsing
itself. FastAPI's routing, dependency solving and middleware stack cost several times the work of
the request here, so `POST` to the ingest routes is answered by this layer directly, with the same
logic (`service.Ingestor`) and the same answers (status, JSON body, request id, CORS header) as the
FastAPI routes in `router.py`, which stay for the OpenAPI docs and for every other method.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.http import HTTP_LATENCY, HTTP_REQUESTS, ApiError, DependencyUnavailable
from libs.logs import get_logger, new_request_id, request_id_var
from services.gateway import service as ingest
from services.gateway.schemas import COLLECT_EVENT, MetricIn, NamedEvent
from services.gateway.segment import SegmentMessage, basic_auth_user, from_segment, parse_time, segment_items

log = get_logger(__name__)

ANALYTICS_ROUTES: dict[str, tuple[Any, Any, str]] = {
    "/api/analytics/collect": (COLLECT_EVENT.validate_python, ingest.from_collect, "collect"),
    "/api/analytics/events": (NamedEvent.model_validate, ingest.from_named_event, "events"),
    "/api/analytics/metrics": (MetricIn.model_validate, ingest.from_metric, "metrics"),
}
SEGMENT_PATHS = {"/v1/track", "/v1/page", "/v1/screen", "/v1/identify", "/v1/group", "/v1/alias", "/v1/batch"}
_JSON = (b"content-type", b"application/json")
_EVENT_ID = operator.itemgetter("event_id")
_STATUS = {code: str(code) for code in (200, 202, 400, 401, 403, 413, 415, 422, 429, 500, 503)}
# Answers to browsers (requests with an Origin) carry the CORS headers; servers' requests need none.
_CORS = [(b"access-control-allow-origin", b"*"), (b"access-control-expose-headers", b"X-Request-ID, Retry-After")]
# The request headers the ingest path reads; others are not even decoded.
_READ_HEADERS = frozenset({
    b"x-api-key", b"authorization", b"content-encoding", b"user-agent", b"x-forwarded-for", b"x-request-id", b"origin",
    b"content-length",
})


class IngestFastPath:
    def __init__(self, app: ASGIApp, ingestor: Callable[[], ingest.Ingestor], service: str = "gateway") -> None:
        self.app = app
        self.ingestor = ingestor
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or scope["method"] != "POST" or not (
            path in ANALYTICS_ROUTES or path in SEGMENT_PATHS
        ):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        headers = _headers(scope)
        rid = headers.get("x-request-id", "")[:64] or new_request_id()
        token = request_id_var.set(rid)
        status, body, extra = 500, b"", []
        try:
            if int(headers.get("content-length") or 0) > ingest.MAX_REQUEST_BYTES:  # refused unread
                raise ApiError(413, f"request body over {ingest.MAX_REQUEST_BYTES // 1024} KB; send smaller batches")
            message = await receive()
            if message["type"] == "http.request" and not message.get("more_body"):
                raw = message.get("body", b"")  # the whole body in one message, as nearly always (size checked later)
            else:
                raw = await _read_body(receive, message)
            peer = scope["client"][0] if scope.get("client") else "unknown"
            gate = self.ingestor()
            try:
                status, pending, payload = start_ingest(gate, path, peer, headers, raw)
            except ingest.KeyMiss as miss:
                status, pending, payload = await start_after_key_miss(gate, miss, path, peer, headers, raw)
            await gate.publisher.acknowledged(pending)
            body = orjson.dumps(payload)
        except ApiError as exc:
            status, body = exc.status, orjson.dumps({"detail": exc.detail})
            extra = [(k.lower().encode(), v.encode()) for k, v in (exc.headers or {}).items()]
        except DependencyUnavailable as exc:
            status = 503
            body = orjson.dumps({"detail": f"{exc.what} is unavailable; retry later"})
            extra = [(b"retry-after", str(exc.retry_after).encode())]
            log.warning("dependency unavailable", dependency=exc.what)
        except Exception:
            log.exception("ingest failed")
            status, body = 500, b'{"detail":"internal error; it has been logged"}'
        finally:
            request_id_var.reset(token)
        await send({
            "type": "http.response.start", "status": status,
            "headers": [_JSON, (b"content-length", str(len(body)).encode()), (b"x-request-id", rid.encode()),
                        *(_CORS if "origin" in headers else ()), *extra],
        })
        await send({"type": "http.response.body", "body": body})
        HTTP_REQUESTS.inc((self.service, "POST", path, _STATUS.get(status) or str(status)))
        HTTP_LATENCY.observe((self.service, path), time.perf_counter() - start)


async def handle_ingest(
    gate: ingest.Ingestor, path: str, peer: str, headers: Mapping[str, str], raw: bytes
) -> tuple[int, Any]:
    """(status, JSON payload) for a POST to an ingest route once Kafka acknowledged its events: the
    one implementation behind both the fast path and the documented FastAPI routes. Raises ApiError /
    DependencyUnavailable."""
    try:
        status, pending, payload = start_ingest(gate, path, peer, headers, raw)
    except ingest.KeyMiss as miss:
        status, pending, payload = await start_after_key_miss(gate, miss, path, peer, headers, raw)
    await gate.publisher.acknowledged(pending)
    return status, payload


async def start_after_key_miss(
    gate: ingest.Ingestor, miss: ingest.KeyMiss, path: str, peer: str, headers: Mapping[str, str], raw: bytes
) -> tuple[int, ingest.Pending, dict[str, Any]]:
    """The slow path of a key this process does not know (yet), e.g. one auth has just issued: once
    the key table caught up with the key topic, start again; a key still not usable is a 401."""
    if not await gate.keys.caught_up_for(miss.key):
        raise miss
    return start_ingest(gate, path, peer, headers, raw)


def start_ingest(
    gate: ingest.Ingestor, path: str, peer: str, headers: Mapping[str, str], raw: bytes
) -> tuple[int, ingest.Pending, dict[str, Any]]:
    """Everything up to handing the events to the publisher: (status, pending events, the answer to
    send once they are acknowledged). Raises ApiError / DependencyUnavailable."""
    if gate.draining:  # the process is stopping: a 202 now could be for an event that is never stored
        raise ApiError(503, "the gateway is shutting down; send the events again in a few seconds", {"Retry-After": "5"})
    body = ingest.decode_body(raw, headers.get("content-encoding"))
    if path in ANALYTICS_ROUTES:
        validate, convert, route = ANALYTICS_ROUTES[path]
        record = ingest.authenticate(gate.keys, headers.get("x-api-key"))
        items, is_batch = ingest.split_batch(body)
        facts = gate.facts(record, peer, headers)
        facts.body_size = len(raw)
        pending = gate.accept(facts, items, is_batch, validate, convert, route)
        events = pending.events
        return 202, pending, {"accepted": len(events), "event_ids": list(map(_EVENT_ID, events)),
                              "errors": pending.errors}
    if not isinstance(body, dict):
        raise ApiError(400, "send a JSON object")
    key = basic_auth_user(headers.get("authorization")) or body.get("writeKey")
    record = ingest.authenticate(gate.keys, key if isinstance(key, str) else None,
                                 "HTTP Basic auth (write key as user name) or writeKey in the body")
    items, is_batch = segment_items(path.removeprefix("/v1/"), body)
    sent_at = parse_time(body.get("sentAt"))
    facts = gate.facts(record, peer, headers)
    facts.body_size = len(raw)
    pending = gate.accept(
        facts, items, is_batch, SegmentMessage.model_validate,
        lambda msg, facts: from_segment(msg, facts.base(msg.messageId), sent_at), "segment",
    )
    return 200, pending, {"success": True, "accepted": len(pending.events), "errors": pending.errors}


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ()) if k in _READ_HEADERS}


async def _read_body(receive: Receive, message: Message) -> bytes:
    """The rest of a body sent in several messages, `message` being the first."""
    chunks: list[bytes] = []
    size = 0
    while True:
        if message["type"] == "http.disconnect":
            raise ApiError(400, "client disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > ingest.MAX_REQUEST_BYTES:
            raise ApiError(413, f"request body over {ingest.MAX_REQUEST_BYTES // 1024} KB; send smaller batches")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
        message = await receive()
