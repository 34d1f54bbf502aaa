"""What every HTTP service shares: request ids, JSON errors, and the health/metrics routes."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.clickhouse import ClickHouseRejected, ClickHouseUnavailable
from libs.kafka import KafkaUnavailable
from libs.logs import REQUEST_ID_HEADER, get_logger, new_request_id, request_id_var
from libs.metrics import TalliedCounter, TalliedHistogram
from libs.redisguard import request_budget

log = get_logger("http")

Check = Callable[[], Awaitable[bool]]

HTTP_REQUESTS = TalliedCounter("http_requests_total", "HTTP requests", ["service", "method", "route", "status"])
HTTP_LATENCY = TalliedHistogram(
    "http_request_duration_seconds", "HTTP request latency", ["service", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)


class DependencyUnavailable(Exception):
    """A backing service is down: answered as 503 with Retry-After, never 500."""

    def __init__(self, what: str, retry_after: int = 1) -> None:
        super().__init__(what)
        self.what = what
        self.retry_after = retry_after


class ApiError(Exception):
    """A client-facing error raised by service logic (no HTTP imports there): status + detail."""

    def __init__(self, status: int, detail: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers


JSON_BODY_LIMIT = 64 * 1024  # every route's request body, unless its service sets its own (ingest)


class BodyTooLarge(StarletteHTTPException):
    """A request body over its route's cap: 413.

    An HTTPException so that FastAPI's body parsing passes it on as it is (it turns others into 400).
    The connection is left open: closing it with the rest of the body unread would reset it, and the
    client could lose the answer; uvicorn discards what still comes and closes the connection once
    its keep-alive timeout passes without a new request."""

    def __init__(self, cap: int) -> None:
        super().__init__(413, f"request body over the {cap // 1024} KB limit of this route; send less")


class BodyLimitMiddleware:
    """Caps request bodies before they are read, so no client can make a service hold a large body.

    A `Content-Length` over the cap is answered 413 at once, without reading the body; a body sent
    without one (chunked) is cut off with 413 as soon as it passes the cap. `limits` gives exact
    paths a cap of their own.
    """

    def __init__(self, app: ASGIApp, max_bytes: int = JSON_BODY_LIMIT, limits: Mapping[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.limits = dict(limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cap = self.limits.get(scope["path"], self.max_bytes)
        for key, value in scope.get("headers", ()):
            if key == b"content-length" and value.isdigit() and int(value) > cap:
                await _refuse(BodyTooLarge(cap), scope, receive, send)
                return
        received = 0
        watched = ResponseWatch(send)

        async def capped_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > cap:
                    raise BodyTooLarge(cap)
            return message

        try:
            await self.app(scope, capped_receive, watched.send)
        except BodyTooLarge as exc:  # read outside FastAPI's error handlers (e.g. by a middleware)
            if watched.started:
                raise
            await _refuse(exc, scope, receive, send)


class ResponseWatch:
    """An ASGI `send` that notes whether the response has begun: after that, an error can no longer be
    answered with a response of its own."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False

    async def send(self, message: Message) -> None:
        self.started = self.started or message["type"] == "http.response.start"
        await self._send(message)


async def _refuse(exc: StarletteHTTPException, scope: Scope, receive: Receive, send: Send) -> None:
    await JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)(scope, receive, send)


def route_matcher(routes: Iterable[str]) -> Callable[[str, str], bool]:
    """A test of (method, path) against routes written `"POST /api/x"` (exact) or `"GET /js/*"` (prefix)."""
    exact: set[tuple[str, str]] = set()
    prefixes: list[tuple[str, str]] = []
    for route in routes:
        method, path = route.split(" ", 1)
        if path.endswith("*"):
            prefixes.append((method, path[:-1]))
        else:
            exact.add((method, path))

    def matches(method: str, path: str) -> bool:
        return (method, path) in exact or any(method == m and path.startswith(p) for m, p in prefixes)

    return matches


class RouteCORS:
    """CORS by route: any origin on `public` routes (websites send events with the publishable write
    key and load the snippet), only the configured `origins` elsewhere (dashboards served from
    another origin; none: same-origin only). No cookies are used, so no credentials mode."""

    def __init__(self, app: ASGIApp, public: Callable[[str, str], bool], origins: Sequence[str]) -> None:
        options: dict[str, Any] = {
            "allow_methods": ["GET", "POST", "DELETE", "OPTIONS"], "allow_headers": ["*"],
            "expose_headers": ["X-Request-ID", "X-Cache", "Retry-After"], "max_age": 86400,
        }
        self.app = app
        self.public = public
        self.open = CORSMiddleware(app, allow_origins=["*"], **options)
        self.configured = CORSMiddleware(app, allow_origins=list(origins), **options)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        if method == "OPTIONS":  # a preflight asks about the method to come
            for key, value in scope.get("headers", ()):
                if key == b"access-control-request-method":
                    method = value.decode("latin-1").upper()
                    break
        cors = self.open if self.public(method, scope["path"]) else self.configured
        await cors(scope, receive, send)


class RequestContextMiddleware:
    """Sets the request id (from X-Request-ID or new), echoes it, logs one line per request."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = None
        for key, value in scope.get("headers", ()):
            if key == b"x-request-id":
                rid = value.decode("latin-1")[:64]
                break
        rid = rid or new_request_id()
        token = request_id_var.set(rid)
        start = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (REQUEST_ID_HEADER.encode(), rid.encode())]
            await send(message)

        try:
            with request_budget():  # every Redis call of this request shares one short budget
                await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            HTTP_REQUESTS.inc((self.service, scope["method"], path, str(status)))
            HTTP_LATENCY.observe((self.service, path), elapsed)
            if path not in ("/healthz", "/readyz", "/metrics"):
                log.info(
                    "request", method=scope["method"], path=scope["path"], status=status,
                    ms=round(elapsed * 1000, 2),
                )
            request_id_var.reset(token)


class InternalErrorMiddleware:
    """An exception no handler took is a bug: logged as an error with its traceback and the request
    id, and answered `500 {"detail": "internal error", "request_id": ...}` as a normal response, so
    the keep-alive connection stays open (an exception left to the server makes it drop the
    connection). Innermost of the middlewares (added by install_error_handlers, before the others):
    the 500 still gets the request id and CORS headers of the middlewares around it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        watched = ResponseWatch(send)
        try:
            await self.app(scope, receive, watched.send)
        except Exception as exc:
            log.error("unexpected error", method=scope["method"], path=scope["path"], exc_info=exc)
            if watched.started:  # part of the answer is out: only a dropped connection tells the client it is cut short
                raise
            body = {"detail": "internal error", "request_id": request_id_var.get()}
            await JSONResponse(body, status_code=500)(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    """JSON errors: 4xx for what the client sent, 503 with Retry-After for a dependency that is down,
    500 with the request id for anything else (see InternalErrorMiddleware)."""
    app.add_middleware(InternalErrorMiddleware)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _jsonable_errors(exc.errors())}, status_code=422)

    @app.exception_handler(DependencyUnavailable)
    async def _dependency_down(_: Request, exc: DependencyUnavailable) -> JSONResponse:
        log.warning("dependency unavailable", dependency=exc.what)
        return JSONResponse(
            {"detail": f"{exc.what} is unavailable; retry later"},
            status_code=503,
            headers={"Retry-After": str(exc.retry_after)},
        )

    @app.exception_handler(KafkaUnavailable)
    async def _kafka_down(request: Request, exc: KafkaUnavailable) -> JSONResponse:
        return await _dependency_down(request, DependencyUnavailable("the event bus (Kafka)"))

    @app.exception_handler(ClickHouseUnavailable)
    async def _clickhouse_down(request: Request, exc: ClickHouseUnavailable) -> JSONResponse:
        return await _dependency_down(request, DependencyUnavailable("the analytics store (ClickHouse)"))

    @app.exception_handler(ClickHouseRejected)
    async def _clickhouse_refused(_: Request, exc: ClickHouseRejected) -> JSONResponse:
        # ClickHouse's own message names our SQL: logged, not sent.
        log.info("clickhouse refused a value of the request", code=exc.code, error=str(exc)[:500])
        detail = (f"the analytics store refused a value of this request ({exc.name}); check the dates, numbers "
                  "and text you sent, or ask for a shorter range or fewer results")
        return JSONResponse({"detail": detail}, status_code=422)


def _jsonable_errors(errors: Any) -> list[dict[str, Any]]:
    out = []
    for err in errors:
        item = {k: v for k, v in err.items() if k in ("loc", "msg", "type")}
        if "ctx" in err:
            item["ctx"] = {k: str(v) for k, v in err["ctx"].items()}
        out.append(item)
    return out


async def readiness(checks: dict[str, Check]) -> tuple[bool, dict[str, bool]]:
    """Whether every check passes, and each check's answer (what /readyz and /status report)."""
    results = {name: await check() for name, check in checks.items()}
    return all(results.values()), results


def install_health_routes(app: FastAPI, checks: dict[str, Check], warnings: Sequence[str] = ()) -> None:
    """`/healthz` (alive), `/readyz` (every dependency answers; `warnings`: insecure settings allowed
    outside production), `/metrics` (Prometheus)."""

    @app.get("/healthz", operation_id="getHealth", tags=["health"], summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    readiness_body = {"application/json": {
        "schema": {"type": "object", "required": ["status", "checks", "warnings"], "properties": {
            "status": {"type": "string", "enum": ["ready", "not ready"]},
            "checks": {"type": "object", "additionalProperties": {"type": "boolean"}, "description": "each dependency: answers"},
            "warnings": {"type": "array", "items": {"type": "string"}, "description": "insecure settings allowed here"}}},
        "example": {"status": "ready", "checks": {"kafka": True, "postgres": True}, "warnings": []}}}
    not_ready = {"description": "a dependency does not answer", "content": readiness_body,
                 "headers": {"Retry-After": {"description": "seconds to wait before asking again", "schema": {"type": "integer"}}}}

    @app.get("/readyz", operation_id="getReadiness", tags=["health"], summary="Every dependency of this service answers",
             responses={200: {"description": "ready", "content": readiness_body}, 503: not_ready})
    async def readyz() -> JSONResponse:
        ok, results = await readiness(checks)
        return JSONResponse(
            {"status": "ready" if ok else "not ready", "checks": results, "warnings": list(warnings)},
            status_code=200 if ok else 503,
            headers=None if ok else {"Retry-After": "1"},
        )

    @app.get("/metrics", operation_id="getPrometheusMetrics", tags=["health"], summary="Prometheus metrics",
             response_class=PlainTextResponse, responses={200: {"description": "Prometheus' text format"}})
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)
