"""`GET /api/analytics/*` over events: summaries, one user's stats, lists and counts, series, groups,
active users, one event."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, Query
from fastapi.responses import Response

from libs.dataversions import reaches_now
from libs.http import ApiError
from services.query import csv_export
from services.query import queries as q
from services.query import schemas as s
from services.query.context import App, QueryContext, QueryCtx, Tz, analytics_router, cached, json_response
from services.query.params import MAX_PAGE_SIZE, MAX_RANGE_DAYS, check_series, date_range
from services.query.periods import last_days

router = analytics_router("events")


@router.get("/event-summary", operation_id="getEventSummary", responses=s.answer(s.EventSummary),
            summary="Count, unique users and device breakdown of an event")
async def event_summary(
    ctx: QueryCtx,
    app_id: App,
    tz: Tz,
    event: Annotated[str | None, Query(max_length=200)] = None,
    startDate: Annotated[str | None, Query()] = None,
    endDate: Annotated[str | None, Query()] = None,
) -> Response:
    start, end = date_range(startDate, endDate, "startDate", "endDate", tz)
    where = q.Where(app_id, start, end).equals("event_name", "event", event)

    async def compute() -> dict[str, Any]:
        return {"event": event, **(await q.event_summary(ctx.clickhouse, where)),
                "startDate": start.isoformat(), "endDate": end.isoformat()}

    params = {"event": event, "start": startDate, "end": endDate, "tz": tz}
    return await cached(ctx, app_id, "event-summary", params, reaches_now(end), compute)


@router.get("/user-stats", operation_id="getUserStats", responses=s.answer(s.UserStats),
            summary="Totals, device and recent events of one user")
async def user_stats(
    ctx: QueryCtx,
    app_id: App,
    userId: Annotated[str, Query(min_length=1, max_length=200)],
    recent: Annotated[int, Query(ge=1, le=100)] = 20,
) -> Response:
    where = q.Where(app_id).equals("user_id", "user_id", userId)

    async def compute() -> dict[str, Any]:
        stats = await q.user_stats(ctx.clickhouse, where, recent)
        if stats is None:  # raised, not cached: the user's first event shows up at once
            raise ApiError(404, f"no events for userId {userId!r}")
        return {"userId": userId, **stats}

    return await cached(ctx, app_id, "user-stats", {"user": userId, "recent": recent}, True, compute)


@dataclass(frozen=True)
class EventFilter:
    """The events of a name and a user (either optional) in a date range, and the range's end."""

    where: q.Where
    end: datetime
    cache_params: dict[str, str | None]


def event_filter(
    app_id: App,
    tz: Tz,
    event_name: Annotated[str | None, Query(max_length=200)] = None,
    user_id: Annotated[str | None, Query(max_length=200)] = None,
    start_date: Annotated[str | None, Query()] = None,
    end_date: Annotated[str | None, Query()] = None,
) -> EventFilter:
    start, end = date_range(start_date, end_date, "start_date", "end_date", tz)
    where = q.Where(app_id, start, end).equals("event_name", "event_name", event_name).equals("user_id", "user_id", user_id)
    return EventFilter(where, end, {"e": event_name, "u": user_id, "start": start_date, "end": end_date, "tz": tz})


Filtered = Annotated[EventFilter, Depends(event_filter)]


@router.get("/events", operation_id="listEvents", responses=s.answer(s.EventList), summary="Events, newest first, filtered and paginated")
async def list_events(
    ctx: QueryCtx,
    events: Filtered,
    page: Annotated[int, Query(ge=1, le=100000)] = 1,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description=f"at most {MAX_PAGE_SIZE}")] = 50,
) -> Response:
    if csv_export.wants_csv():  # every event of the range, oldest first (page and limit do not apply)
        return csv_export.events_csv(ctx.clickhouse, events.where)
    rows, total = await q.list_events(ctx.clickhouse, events.where, limit, (page - 1) * limit)
    return json_response({"events": rows, "page": page, "limit": limit, "total": total})


@router.get("/events/count", operation_id="countEvents", responses=s.answer(s.EventCount), summary="Number of events matching the filters")
async def events_count(ctx: QueryCtx, events: Filtered) -> Response:
    async def compute() -> dict[str, Any]:
        return {"count": await q.count(ctx.clickhouse, events.where)}

    return await cached(ctx, events.where.app_id, "events-count", events.cache_params, reaches_now(events.end), compute)


async def _series(ctx: QueryContext, app_id: str, interval: str, days: int, tz: str, event_name: str | None) -> Response:
    check_series(interval, days)
    start, end = last_days(days, tz)
    where = q.Where(app_id, start, end).equals("event_name", "event_name", event_name)

    async def compute() -> dict[str, Any]:
        rows = await q.timeseries(ctx.clickhouse, where, interval, tz)
        return {"interval": interval, "timezone": tz, "series": rows}

    params = {"i": interval, "d": days, "tz": tz, "e": event_name}
    return await cached(ctx, app_id, "timeseries", params, True, compute)


@router.get("/events/daily", operation_id="getDailyEvents", responses=s.answer(s.EventSeries), summary="Events per day")
async def events_daily(
    ctx: QueryCtx,
    app_id: App,
    tz: Tz,
    days: Annotated[int, Query(ge=1, le=MAX_RANGE_DAYS, description="the last local days, today included")] = 30,
    event_name: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    return await _series(ctx, app_id, "day", days, tz, event_name)


@router.get("/events/timeseries", operation_id="getEventTimeseries", responses=s.answer(s.EventSeries), summary="Events per hour or day")
async def events_timeseries(
    ctx: QueryCtx,
    app_id: App,
    tz: Tz,
    interval: Literal["day", "hour"] = "day",
    days: Annotated[int, Query(ge=1, le=MAX_RANGE_DAYS, description="the last local days, today included")] = 7,
    event_name: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    return await _series(ctx, app_id, interval, days, tz, event_name)


@router.get("/events/grouped", operation_id="getGroupedEvents", responses=s.answer(s.EventGroups),
            summary="Event counts grouped by name, category or source")
async def events_grouped(
    ctx: QueryCtx,
    app_id: App,
    tz: Tz,
    by: Literal["event_name", "event_category", "source"] = "event_name",
    start_date: Annotated[str | None, Query()] = None,
    end_date: Annotated[str | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 100,
) -> Response:
    start, end = date_range(start_date, end_date, "start_date", "end_date", tz)
    where = q.Where(app_id, start, end)

    async def compute() -> dict[str, Any]:
        return {"by": by, "groups": await q.grouped(ctx.clickhouse, where, by, limit)}

    params = {"by": by, "start": start_date, "end": end_date, "limit": limit, "tz": tz}
    return await cached(ctx, app_id, "grouped", params, reaches_now(end), compute)


@router.get("/users/active", operation_id="getActiveUsers", responses=s.answer(s.ActiveUsers),
            summary="Active users today, over the last 7 or 30 days (DAU/WAU/MAU)")
async def users_active(ctx: QueryCtx, app_id: App, tz: Tz, range: Literal["day", "week", "month"] = "day") -> Response:
    start, end = last_days({"day": 1, "week": 7, "month": 30}[range], tz)
    where = q.Where(app_id, start, end)

    async def compute() -> dict[str, Any]:
        return {"range": range, "activeUsers": await q.active_users(ctx.clickhouse, where)}

    return await cached(ctx, app_id, "users-active", {"range": range, "tz": tz}, True, compute)


# After every other /events/<name> route, which it would otherwise take.
@router.get("/events/{event_id}", operation_id="getEvent", responses=s.answer(s.Event), summary="One event by id")
async def get_event(ctx: QueryCtx, app_id: App, event_id: str) -> Response:
    if len(event_id) > 128:
        raise ApiError(422, "event_id is at most 128 characters")
    row = await q.get_event(ctx.clickhouse, app_id, event_id)
    if row is None:
        raise ApiError(404, "event not found")
    return json_response(row)
