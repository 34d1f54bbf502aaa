"""What the query service's routes share: its context (set on start) and the dependencies every
`/api/analytics` read takes: the app the caller may read, strict query parameters, the cache."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
import redis.asyncio as aioredis
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from fastapi.security import APIKeyHeader

from libs import tokens
from libs.access import ApiKeyHeader, BearerCredentials, verify_access_token
from libs.apikeys import KeyTable
from libs.apps import AppDirectory, Role, at_least
from libs.clickhouse import ClickHouse
from libs.http import ApiError
from libs.openapi import errors
from libs.runtime import context_dependency
from libs.settings import Settings
from services.query import NAME, csv_export
from services.query.cache import QueryCache, cache_key
from services.query.periods import zone


@dataclass(frozen=True)
class QueryContext:
    settings: Settings
    clickhouse: ClickHouse
    redis: aioredis.Redis
    cache: QueryCache
    keys: KeyTable
    apps: AppDirectory


QueryCtx = Annotated[QueryContext, Depends(context_dependency(NAME, QueryContext))]


def _all_query_params(dependant: Any) -> set[str]:
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _all_query_params(sub)
    return names


async def reject_unknown_params(request: Request) -> None:
    """422 for a query parameter the endpoint does not know (a typo must not be silently ignored)."""
    route = request.scope.get("route")
    if route is None:
        return
    allowed = _all_query_params(route.dependant)
    unknown = sorted(set(request.query_params) - allowed)
    if unknown:
        raise ApiError(422, f"unknown parameter(s) {', '.join(unknown)}; this endpoint takes: {', '.join(sorted(allowed))}")


_bypass_cache: ContextVar[bool] = ContextVar("bypass_cache", default=False)


async def read_cache_control(request: Request) -> None:
    """`Cache-Control: no-cache` asks for a fresh answer (which then refreshes the cache)."""
    _bypass_cache.set("no-cache" in request.headers.get("cache-control", "").lower())


async def read_format(request: Request, ctx: QueryCtx, format: csv_export.FormatParam = "json") -> None:
    """`format=csv`: the answer as CSV (services/query/csv_export.py), at most `query_csv_max_rows` rows."""
    csv_export.choose(request, format, ctx.settings.query_csv_max_rows)


def analytics_router(tag: str | None = None) -> APIRouter:
    """A router of `/api/analytics` reads: unknown parameters refused, `Cache-Control: no-cache` read,
    `format=csv` taken where the route declares CSV.
    `tag`: the OpenAPI tag of all its routes (None: each route names its own)."""
    return APIRouter(
        prefix="/api/analytics", tags=[tag] if tag else [], responses=errors(401, 403, 404, 422, 503),
        dependencies=[Depends(reject_unknown_params), Depends(read_cache_control), Depends(read_format)],
    )


async def app_access(
    ctx: QueryCtx,
    credentials: BearerCredentials,
    x_api_key: ApiKeyHeader,
    app_id: Annotated[str | None, Query(max_length=64, description="required with a Bearer token")] = None,
) -> tuple[str, Role]:
    """The app this request may read, and the caller's role on it: the secret key's own app (as its
    owner), or one the signed-in user owns or is a member of."""
    if x_api_key:
        table = ctx.keys
        key = x_api_key.strip()
        record = table.lookup(key)
        if record is None and await table.caught_up_for(key):  # a key issued a moment ago
            record = table.lookup(key)
        if record is None:
            raise ApiError(401, "invalid, revoked or expired API key")
        if record.kind != "secret":
            raise ApiError(403, "a write key can only send events; read with the secret key (sk_...)")
        if app_id and app_id != record.app_id:
            raise ApiError(403, "this key belongs to another app")
        return record.app_id, "owner"
    if credentials is not None:
        claims = await verify_access_token(ctx.settings, credentials.credentials, ctx.redis)
        if not app_id:
            raise ApiError(422, "app_id is required when reading with a Bearer token")
        app = await ctx.apps.lookup(app_id)  # caught up first when registered a moment ago
        if app is None or app.deleted:
            raise ApiError(404, "app not found")
        role = app.role_of(claims.sub)
        if not at_least(role, "viewer"):
            raise ApiError(403, "you have no access to this app")
        assert role is not None
        return app_id, role
    raise ApiError(401, "send x-api-key: <secret key>, or a Bearer token with app_id=")


async def credentials_present(credentials: BearerCredentials, x_api_key: ApiKeyHeader) -> None:
    """401 for a request with neither a key nor a Bearer token, before its body is read: a route whose
    app is named in the body (a create) would otherwise answer a bad body 422 to anyone."""
    if not x_api_key and credentials is None:
        raise ApiError(401, "send x-api-key: <secret key>, or a Bearer token with app_id=")


SignedRequest = Depends(credentials_present)


async def readable_app(access: Annotated[tuple[str, Role], Depends(app_access)]) -> str:
    """The app this request may read (see `app_access`)."""
    return access[0]


App = Annotated[str, Depends(readable_app)]

shared_link_scheme = APIKeyHeader(
    name="x-shared-link", auto_error=False, scheme_name="sharedLink",
    description="a shared link's token (from its URL), or for a link with a password the access_token of "
                "POST /api/auth/shared-links/unlock: reads the stats of its app, nothing else")
SHARE_TOKEN_FORMAT = re.compile(r"[A-Za-z0-9_\-]{32}")


async def shared_link_app(ctx: QueryContext, value: str, app_id: str | None) -> str:
    """The app a shared link reads (only the stats routes take one)."""
    if "." in value:  # the unlocked token of a link with a password: signed, naming the link
        try:
            app, link_hash = tokens.decode_share(ctx.settings, value)
        except tokens.InvalidToken as exc:
            raise ApiError(401, str(exc)) from exc
        found = await ctx.apps.lookup_link(link_hash)
        if found is None or found[0].app_id != app:
            raise ApiError(401, "this shared link was revoked")
    else:
        found = await ctx.apps.lookup_link(hashlib.sha256(value.encode()).hexdigest()) if SHARE_TOKEN_FORMAT.fullmatch(value) else None
        if found is None:
            raise ApiError(401, "invalid or revoked shared link")
        if found[1].has_password:
            raise ApiError(401, "this shared link needs its password: POST /api/auth/shared-links/unlock")
    if app_id and app_id != found[0].app_id:
        raise ApiError(403, "this shared link is for another app")
    return found[0].app_id


async def stats_access(
    ctx: QueryCtx,
    credentials: BearerCredentials,
    x_api_key: ApiKeyHeader,
    x_shared_link: Annotated[str | None, Depends(shared_link_scheme)],
    app_id: Annotated[str | None, Query(max_length=64, description="required with a Bearer token")] = None,
) -> str:
    """As `readable_app`, and a shared link reads too (the stats routes only)."""
    if x_shared_link and not x_api_key and credentials is None:
        return await shared_link_app(ctx, x_shared_link.strip(), app_id)
    return (await app_access(ctx, credentials, x_api_key, app_id))[0]


StatsApp = Annotated[str, Depends(stats_access)]


async def managed_app(access: Annotated[tuple[str, Role], Depends(app_access)]) -> str:
    """The app this request may change (deleting a user's events): an admin's or owner's (or its secret key's)."""
    app_id, role = access
    if not at_least(role, "admin"):
        raise ApiError(403, f"this needs the admin role on the app; yours is {role}")
    return app_id


AdminApp = Annotated[str, Depends(managed_app)]


def site_timezone(apps: AppDirectory, app_id: str) -> str:
    """The app's site time zone (PATCH /api/auth/apps/{app_id}), UTC when it has none."""
    record = apps.get(app_id)
    return record.timezone if record is not None and record.timezone else "UTC"


async def request_tz(
    ctx: QueryCtx,
    app_id: App,
    tz: Annotated[str | None, Query(max_length=64, description="IANA time zone of days and hours; default: the "
                                    "site's time zone", examples=["Europe/Berlin"])] = None,
) -> str:
    """The one time zone of a read: where its days, weeks and hours start, and how its dates without an
    offset are read. The request's `tz`, else the site's. 422 for an unknown name."""
    return _time_zone(ctx, app_id, tz)


def _time_zone(ctx: QueryContext, app_id: str, tz: str | None) -> str:
    name = tz or site_timezone(ctx.apps, app_id)
    zone(name)
    return name


Tz = Annotated[str, Depends(request_tz)]


async def stats_tz(ctx: QueryCtx, app_id: StatsApp, tz: Annotated[str | None, Query(
    max_length=64, description="IANA time zone of days and hours; default: the site's time zone",
    examples=["Europe/Berlin"])] = None) -> str:
    """`request_tz` of a stats route, whose app a shared link may name too."""
    return _time_zone(ctx, app_id, tz)


StatsTz = Annotated[str, Depends(stats_tz)]


async def cached(
    ctx: QueryContext, app_id: str, endpoint: str, params: dict[str, Any], live: bool,
    compute: Callable[[], Awaitable[Any]],
) -> Response:
    """The answer of `compute`, from the cache when it holds one for the app's current data versions."""
    store = ctx.cache
    # The app's data versions are part of the key: a write of new events (live ranges), of late
    # ones (closed ranges) or a deletion moves them on, so no answer computed before is served after.
    versions = await store.versions(app_id, live)
    if versions is None:
        body, hit = orjson.dumps(await compute(), default=str), False
    else:
        # A live answer also expires: time passing moves its window ("the last 5 minutes").
        settings = ctx.settings
        ttl = settings.query_cache_ttl_live_s if live else settings.query_cache_ttl_closed_s
        key = cache_key(app_id, endpoint, {**params, "_versions": versions})
        body, hit = await store.get_or_compute_json(key, ttl, compute, refresh=_bypass_cache.get())
    headers = {"X-Cache": "HIT" if hit else "MISS"}
    if csv_export.wants_csv():
        return csv_export.csv_response(body, headers)
    return Response(body, media_type="application/json", headers=headers)


def json_response(value: Any) -> Response:
    """Serialized once, by orjson (datetimes as ISO strings), as the cached answers are (CSV when asked)."""
    body = orjson.dumps(value, default=str)
    if csv_export.wants_csv():
        return csv_export.csv_response(body)
    return Response(body, media_type="application/json")
