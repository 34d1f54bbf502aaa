"""HTTP routes of the query service (`GET /api/analytics/*`)."""


from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import Response

from libs.access import BearerCredentials, verify_access_token
from libs.apikeys import KeyTable
from libs.clickhouse import ClickHouse
from libs.dataversions import reaches_now
from libs.http import ApiError
from libs.settings import Settings
from services.query import queries as q
from services.query.cache import QueryCache, cache_key
from services.query.periods import FIRST_MOMENT, readable_day, zone

MAX_RANGE_DAYS = 732
DEFAULT_RANGE_DAYS = 30
MAX_PAGE_SIZE = 1000


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


def parse_when(value: str | None, name: str, end_of_day: bool) -> datetime | None:
    """An ISO date (whole day) or datetime (naive = UTC), on a day the event store can hold (the day
    as written, periods.readable_day), as a UTC datetime."""
    if value is None or value == "":
        return None
    try:
        if len(value) == 10:
            day, moment = date.fromisoformat(value), None
        else:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
            day = moment.date()
    except ValueError as exc:
        raise ApiError(422, f"{name} must be a date (2026-01-31) or an ISO datetime (2026-01-31T12:00:00Z)") from exc
    readable_day(day, name)
    if moment is None:
        return datetime.combine(day + timedelta(days=1) if end_of_day else day, time(), UTC)
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def date_range(start_raw: str | None, end_raw: str | None, start_name: str, end_name: str) -> tuple[datetime, datetime]:
    end = parse_when(end_raw, end_name, end_of_day=True) or datetime.now(UTC) + timedelta(seconds=1)
    # The default start never reaches before what the store holds.
    start = parse_when(start_raw, start_name, end_of_day=False) or max(
        end - timedelta(days=DEFAULT_RANGE_DAYS), FIRST_MOMENT)
    if end <= start:
        raise ApiError(422, f"{end_name} must be after {start_name}")
    if end - start > timedelta(days=MAX_RANGE_DAYS):
        raise ApiError(422, f"{start_name} to {end_name} is longer than {MAX_RANGE_DAYS} days; ask for a shorter range")
    return start, end


def check_series(interval: str, days: int, tz: str) -> None:
    """422 for an unknown time zone, or an hourly series too long to read."""
    zone(tz)
    if interval == "hour" and days > 31:
        raise ApiError(422, "hourly series cover at most 31 days; ask for interval=day")


def build_router(
    settings: Settings,
    keys: Callable[[], KeyTable],
    clickhouse: Callable[[], ClickHouse],
    cache: Callable[[], QueryCache | None],
    redis: Callable[[], Any],
) -> APIRouter:
    router = APIRouter(
        prefix="/api/analytics", tags=["query"],
        dependencies=[Depends(reject_unknown_params), Depends(read_cache_control)],
    )

    async def readable_app(
        credentials: BearerCredentials,
        x_api_key: Annotated[str | None, Header()] = None,
        app_id: Annotated[str | None, Query(max_length=64, description="required with a Bearer token")] = None,
    ) -> str:
        """The app this request may read: the secret key's own, or one the signed-in user owns."""
        table = keys()
        if x_api_key:
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
            return record.app_id
        if credentials is not None:
            claims = await verify_access_token(settings, credentials.credentials, redis())
            if not app_id:
                raise ApiError(422, "app_id is required when reading with a Bearer token")
            owner = table.app_owner.get(app_id)
            if owner is None and await table.caught_up_for_app(app_id):  # an app registered a moment ago
                owner = table.app_owner.get(app_id)
            if owner is None:
                raise ApiError(404, "app not found")
            if owner != claims.sub:
                raise ApiError(403, "this app belongs to another user")
            return app_id
        raise ApiError(401, "send x-api-key: <secret key>, or a Bearer token with app_id=")

    App = Annotated[str, Depends(readable_app)]

    async def cached(
        app_id: str, endpoint: str, params: dict[str, Any], live: bool, compute: Callable[[], Awaitable[Any]]
    ) -> Response:
        store = cache()
        # The app's data versions are part of the key: a write of new events (live ranges), of late
        # ones (closed ranges) or a deletion moves them on, so no answer computed before is served after.
        versions = await store.versions(app_id, live) if store is not None else None
        if store is None or versions is None:
            body, hit = orjson.dumps(await compute(), default=str), False
        else:
            # A live answer also expires: time passing moves its window ("the last 5 minutes").
            ttl = settings.query_cache_ttl_live_s if live else settings.query_cache_ttl_closed_s
            key = cache_key(app_id, endpoint, {**params, "_versions": versions})
            body, hit = await store.get_or_compute_json(key, ttl, compute, refresh=_bypass_cache.get())
        return Response(body, media_type="application/json", headers={"X-Cache": "HIT" if hit else "MISS"})

    @router.get("/event-summary", summary="Count, unique users and device breakdown of an event")
    async def event_summary(
        app_id: App,
        event: Annotated[str | None, Query(max_length=200)] = None,
        startDate: Annotated[str | None, Query()] = None,
        endDate: Annotated[str | None, Query()] = None,
    ) -> Response:
        start, end = date_range(startDate, endDate, "startDate", "endDate")
        where = q.Where(app_id, start, end).equals("event_name", "event", event)

        async def compute() -> dict[str, Any]:
            return {"event": event, **(await q.event_summary(clickhouse(), where)),
                    "startDate": start.isoformat(), "endDate": end.isoformat()}

        params = {"event": event, "start": startDate, "end": endDate}
        return await cached(app_id, "event-summary", params, reaches_now(end), compute)

    @router.get("/user-stats", summary="Totals, device and recent events of one user")
    async def user_stats(
        app_id: App,
        userId: Annotated[str, Query(min_length=1, max_length=200)],
        recent: Annotated[int, Query(ge=1, le=100)] = 20,
    ) -> Response:
        where = q.Where(app_id).equals("user_id", "user_id", userId)

        async def compute() -> dict[str, Any]:
            stats = await q.user_stats(clickhouse(), where, recent)
            if stats is None:  # raised, not cached: the user's first event shows up at once
                raise ApiError(404, f"no events for userId {userId!r}")
            return {"userId": userId, **stats}

        return await cached(app_id, "user-stats", {"user": userId, "recent": recent}, True, compute)

    @router.get("/events", summary="Events, newest first, filtered and paginated")
    async def list_events(
        app_id: App,
        event_name: Annotated[str | None, Query(max_length=200)] = None,
        user_id: Annotated[str | None, Query(max_length=200)] = None,
        start_date: Annotated[str | None, Query()] = None,
        end_date: Annotated[str | None, Query()] = None,
        page: Annotated[int, Query(ge=1, le=100000)] = 1,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description=f"at most {MAX_PAGE_SIZE}")] = 50,
    ) -> Response:
        start, end = date_range(start_date, end_date, "start_date", "end_date")
        where = q.Where(app_id, start, end).equals("event_name", "event_name", event_name).equals(
            "user_id", "user_id", user_id
        )
        rows, total = await q.list_events(clickhouse(), where, limit, (page - 1) * limit)
        return _json({"events": rows, "page": page, "limit": limit, "total": total})

    @router.get("/events/count", summary="Number of events matching the filters")
    async def events_count(
        app_id: App,
        event_name: Annotated[str | None, Query(max_length=200)] = None,
        user_id: Annotated[str | None, Query(max_length=200)] = None,
        start_date: Annotated[str | None, Query()] = None,
        end_date: Annotated[str | None, Query()] = None,
    ) -> Response:
        start, end = date_range(start_date, end_date, "start_date", "end_date")
        where = q.Where(app_id, start, end).equals("event_name", "event_name", event_name).equals(
            "user_id", "user_id", user_id
        )

        async def compute() -> dict[str, Any]:
            return {"count": await q.count(clickhouse(), where)}

        params = {"e": event_name, "u": user_id, "start": start_date, "end": end_date}
        return await cached(app_id, "events-count", params, reaches_now(end), compute)

    async def series(app_id: str, interval: str, days: int, tz: str, event_name: str | None) -> Response:
        check_series(interval, days, tz)
        end = datetime.now(UTC) + timedelta(seconds=1)
        start = end - timedelta(days=days)
        where = q.Where(app_id, start, end).equals("event_name", "event_name", event_name)

        async def compute() -> dict[str, Any]:
            rows = await q.timeseries(clickhouse(), where, interval, tz)
            return {"interval": interval, "timezone": tz, "series": rows}

        params = {"i": interval, "d": days, "tz": tz, "e": event_name}
        return await cached(app_id, "timeseries", params, True, compute)

    @router.get("/events/daily", summary="Events per day")
    async def events_daily(
        app_id: App,
        days: Annotated[int, Query(ge=1, le=MAX_RANGE_DAYS)] = 30,
        tz: Annotated[str, Query(max_length=64)] = "UTC",
        event_name: Annotated[str | None, Query(max_length=200)] = None,
    ) -> Response:
        return await series(app_id, "day", days, tz, event_name)

    @router.get("/events/timeseries", summary="Events per hour or day")
    async def events_timeseries(
        app_id: App,
        interval: Literal["day", "hour"] = "day",
        days: Annotated[int, Query(ge=1, le=MAX_RANGE_DAYS)] = 7,
        tz: Annotated[str, Query(max_length=64)] = "UTC",
        event_name: Annotated[str | None, Query(max_length=200)] = None,
    ) -> Response:
        return await series(app_id, interval, days, tz, event_name)

    @router.get("/events/grouped", summary="Event counts grouped by name, category or source")
    async def events_grouped(
        app_id: App,
        by: Literal["event_name", "event_category", "source"] = "event_name",
        start_date: Annotated[str | None, Query()] = None,
        end_date: Annotated[str | None, Query()] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 100,
    ) -> Response:
        start, end = date_range(start_date, end_date, "start_date", "end_date")
        where = q.Where(app_id, start, end)

        async def compute() -> dict[str, Any]:
            return {"by": by, "groups": await q.grouped(clickhouse(), where, by, limit)}

        params = {"by": by, "start": start_date, "end": end_date, "limit": limit}
        return await cached(app_id, "grouped", params, reaches_now(end), compute)

    @router.get("/users/active", summary="Active users over the last day, week or month (DAU/WAU/MAU)")
    async def users_active(app_id: App, range: Literal["day", "week", "month"] = "day") -> Response:
        days = {"day": 1, "week": 7, "month": 30}[range]
        end = datetime.now(UTC) + timedelta(seconds=1)
        where = q.Where(app_id, end - timedelta(days=days), end)

        async def compute() -> dict[str, Any]:
            return {"range": range, "activeUsers": await q.active_users(clickhouse(), where)}

        return await cached(app_id, "users-active", {"range": range}, True, compute)

    @router.get("/events/{event_id}", summary="One event by id")
    async def get_event(app_id: App, event_id: str) -> Response:
        if len(event_id) > 128:
            raise ApiError(422, "event_id is at most 128 characters")
        row = await q.get_event(clickhouse(), app_id, event_id)
        if row is None:
            raise ApiError(404, "event not found")
        return _json(row)

    @router.get("/metrics", summary="Custom metrics: count, sum, avg, min, max, p50, p95 per metric")
    async def metrics_summary(
        app_id: App,
        metric_name: Annotated[str | None, Query(max_length=200)] = None,
        start_date: Annotated[str | None, Query()] = None,
        end_date: Annotated[str | None, Query()] = None,
    ) -> Response:
        start, end = date_range(start_date, end_date, "start_date", "end_date")

        async def compute() -> dict[str, Any]:
            return {"metrics": await q.metric_summary(clickhouse(), app_id, metric_name, start, end)}

        params = {"m": metric_name, "start": start_date, "end": end_date}
        return await cached(app_id, "metrics", params, reaches_now(end), compute)

    @router.get("/metrics/timeseries", summary="One custom metric per hour or day: count, sum, avg, min, max")
    async def metric_timeseries(
        app_id: App,
        metric_name: Annotated[str, Query(min_length=1, max_length=200)],
        interval: Literal["day", "hour"] = "day",
        days: Annotated[int, Query(ge=1, le=MAX_RANGE_DAYS)] = 7,
        tz: Annotated[str, Query(max_length=64)] = "UTC",
    ) -> Response:
        check_series(interval, days, tz)
        end = datetime.now(UTC) + timedelta(seconds=1)

        async def compute() -> dict[str, Any]:
            rows = await q.metric_series(clickhouse(), app_id, metric_name, end - timedelta(days=days), end, interval, tz)
            return {"metric_name": metric_name, "interval": interval, "timezone": tz, "series": rows}

        params = {"m": metric_name, "i": interval, "d": days, "tz": tz}
        return await cached(app_id, "metric-timeseries", params, True, compute)

    from services.query.web import add_web_routes

    add_web_routes(router, App, cached, clickhouse, cache)
    return router


def _json(value: Any) -> Response:
    """Serialized once, by orjson (datetimes as ISO strings), as the cached answers are."""
    return Response(orjson.dumps(value, default=str), media_type="application/json")
