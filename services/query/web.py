"""Routes of docs/query-api.md: web stats, funnels, retention, users and privacy. Thin: parameters are
checked here, SQL lives in stats.py, funnels.py and privacy.py."""


from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse, Response, StreamingResponse

from libs.clickhouse import ClickHouse
from libs.http import ApiError
from services.query import funnels, privacy, stats
from services.query.cache import QueryCache
from services.query.periods import PERIODS, Period, buckets, resolve, zone

MAX_LIMIT = 1000
MAX_FUNNEL_WINDOW_S = 90 * 86400

Cached = Callable[[str, str, dict[str, Any], bool, Callable[[], Awaitable[Any]]], Awaitable[Response]]
Text = Annotated[str | None, Query(max_length=2048)]


async def stats_filters(
    page: Text = None, entry_page: Text = None, exit_page: Text = None, source: Text = None, referrer: Text = None,
    utm_source: Text = None, utm_medium: Text = None, utm_campaign: Text = None, utm_term: Text = None,
    utm_content: Text = None, device: Text = None, browser: Text = None, os: Text = None, country: Text = None,
    event_name: Text = None,
) -> dict[str, str]:
    """Each filter is an exact match; only the names of stats.FILTERS exist."""
    given = {
        "page": page, "entry_page": entry_page, "exit_page": exit_page, "source": source, "referrer": referrer,
        "utm_source": utm_source, "utm_medium": utm_medium, "utm_campaign": utm_campaign, "utm_term": utm_term,
        "utm_content": utm_content, "device": device, "browser": browser, "os": os, "country": country,
        "event_name": event_name,
    }
    return {k: v for k, v in given.items() if v is not None and v != "" and k in stats.FILTERS}


Filters = Annotated[dict[str, str], Depends(stats_filters)]
PeriodName = Annotated[str, Query(description=" | ".join(PERIODS))]
TimeZone = Annotated[str, Query(max_length=64, description="IANA time zone")]


def period_of(period: str, date: str | None, tz: str) -> Period:
    if period not in PERIODS:
        raise ApiError(422, f"unknown period {period!r}; send one of {', '.join(PERIODS)}")
    return resolve(period, date, tz)


def metric_list(raw: str | None, default: tuple[str, ...] = stats.METRICS) -> list[str]:
    if not raw:
        return list(default)
    names = [m.strip() for m in raw.split(",") if m.strip()]
    unknown = [m for m in names if m not in stats.METRICS]
    if unknown or not names:
        raise ApiError(422, f"unknown metric(s) {', '.join(unknown) or '(none)'}; send a comma list of "
                            f"{', '.join(stats.METRICS)}")
    return list(dict.fromkeys(names))


def _change(now: float, before: float) -> float | None:
    if not before:
        return None
    return round(100 * (now - before) / before, 1)


def add_web_routes(
    router: APIRouter,
    App: Any,
    cached: Cached,
    clickhouse: Callable[[], ClickHouse],
    cache: Callable[[], QueryCache | None],
) -> None:
    @router.get("/stats/aggregate", summary="Visitors, visits, pageviews, bounce rate, visit duration, events")
    async def aggregate(
        app_id: App, filters: Filters, period: PeriodName = "30d", date: str | None = None, tz: TimeZone = "UTC",
        metrics: Annotated[str | None, Query(max_length=200)] = None,
        compare: Annotated[Literal["previous_period"] | None, Query()] = None,
    ) -> JSONResponse:
        span = period_of(period, date, tz)
        wanted = metric_list(metrics)

        async def compute() -> dict[str, Any]:
            scope = stats.Scope(app_id, span.start, span.end, filters)
            now = await stats.aggregate(clickhouse(), scope, wanted, count_bots=True)
            before: dict[str, Any] = {}
            if compare:
                prev = span.previous()
                before = await stats.aggregate(clickhouse(), stats.Scope(app_id, prev.start, prev.end, filters), wanted)
            return {
                "period": span.as_json(),
                "results": {m: {"value": now[m], "change": _change(now[m], before[m]) if compare else None}
                            for m in wanted},
                "bot_events_excluded": now["bot_events"],
            }

        params = {"p": period, "d": date, "tz": tz, "m": wanted, "c": compare, "f": filters}
        return await cached(app_id, "stats-aggregate", params, span.live, compute)

    @router.get("/stats/timeseries", summary="Metrics per hour, day, week or month (every bucket present)")
    async def timeseries(
        app_id: App, filters: Filters, period: PeriodName = "30d", date: str | None = None, tz: TimeZone = "UTC",
        interval: Literal["hour", "day", "week", "month"] | None = None,
        metrics: Annotated[str | None, Query(max_length=200)] = None,
    ) -> JSONResponse:
        span = period_of(period, date, tz)
        interval = interval or ("hour" if period in ("realtime", "day") else "month" if period.endswith("mo") else "day")
        wanted = metric_list(metrics, ("visitors", "pageviews"))
        slots = buckets(span, interval)

        async def compute() -> dict[str, Any]:
            scope = stats.Scope(app_id, span.start, span.end, filters)
            found = await stats.timeseries(clickhouse(), scope, interval, tz, wanted)
            zero = {m: 0 for m in wanted}
            return {"interval": interval, "period": span.as_json(),
                    "results": [{"date": label, **found.get(key, zero)} for key, label in slots]}

        params = {"p": period, "d": date, "tz": tz, "i": interval, "m": wanted, "f": filters}
        return await cached(app_id, "stats-timeseries", params, span.live, compute)

    @router.get("/stats/breakdown", summary="Metrics per page, entry/exit page, source, UTM, device, browser, os, ...")
    async def breakdown(
        app_id: App, filters: Filters,
        property: Annotated[str, Query(description=", ".join(stats.PROPERTIES))] = "page",
        period: PeriodName = "30d", date: str | None = None, tz: TimeZone = "UTC",
        metrics: Annotated[str | None, Query(max_length=200)] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"at most {MAX_LIMIT}")] = 10,
    ) -> JSONResponse:
        # `page` is both the page filter (a path, starting with /) and the result page (a number).
        page_number = 1
        if filters.get("page", "").isdigit():
            raw = filters.pop("page")
            # Digits int() does not read (superscripts such as "²") are no page number either.
            page_number = int(raw) if raw.isdecimal() else 0
            if not 1 <= page_number <= 100000:
                raise ApiError(422, "page (the result page) runs from 1 to 100000; filter by a path with page=/path")
        if property not in stats.PROPERTIES:
            raise ApiError(422, f"unknown property {property!r}; send one of {', '.join(stats.PROPERTIES)}")
        span = period_of(period, date, tz)
        wanted = metric_list(metrics, ("visitors", "pageviews"))

        async def compute() -> dict[str, Any]:
            scope = stats.Scope(app_id, span.start, span.end, filters, carry=(property,))
            rows = await stats.breakdown(clickhouse(), scope, property, wanted, limit, (page_number - 1) * limit)
            return {"property": property, "period": span.as_json(), "results": rows}

        params = {"pr": property, "p": period, "d": date, "tz": tz, "m": wanted, "f": filters, "l": limit,
                  "pg": page_number}
        return await cached(app_id, "stats-breakdown", params, span.live, compute)

    @router.get("/stats/realtime", summary="Distinct visitors in the last 5 minutes")
    async def realtime(app_id: App) -> JSONResponse:
        end = datetime.now(UTC) + timedelta(seconds=1)

        async def compute() -> dict[str, Any]:
            return {"visitors": await stats.realtime(clickhouse(), app_id, end - timedelta(minutes=5), end)}

        return await cached(app_id, "stats-realtime", {}, True, compute)

    @router.get("/funnels", summary="Ordered steps within a window, with per-step conversion")
    async def funnel(
        app_id: App,
        steps: Annotated[str, Query(max_length=2000, description="2 to 8 event names, comma separated")],
        window: Annotated[int, Query(ge=1, le=MAX_FUNNEL_WINDOW_S, description="seconds")] = 86400,
        period: PeriodName = "30d", date: str | None = None, tz: TimeZone = "UTC",
    ) -> JSONResponse:
        names = [s.strip() for s in steps.split(",") if s.strip()]
        if not 2 <= len(names) <= 8:
            raise ApiError(422, f"a funnel has 2 to 8 steps; send steps=first_event,second_event,... (got {len(names)})")
        span = period_of(period, date, tz)

        async def compute() -> dict[str, Any]:
            rows = await funnels.funnel(clickhouse(), app_id, span.start, span.end, names, window)
            return {"period": span.as_json(), "window": window, "steps": rows}

        params = {"s": names, "w": window, "p": period, "d": date, "tz": tz}
        return await cached(app_id, "funnels", params, span.live, compute)

    @router.get("/retention", summary="Cohorts by first-seen day or week, and how many came back")
    async def retention(
        app_id: App,
        interval: Literal["day", "week"] = "week",
        cohorts: Annotated[int, Query(ge=1, le=52, description="how many cohorts, at most 52")] = 8,
        tz: TimeZone = "UTC",
    ) -> JSONResponse:
        local_today = datetime.now(UTC).astimezone(zone(tz)).date()
        step = timedelta(days=1 if interval == "day" else 7)
        current = local_today if interval == "day" else local_today - timedelta(days=local_today.weekday())
        starts = [current - step * i for i in range(cohorts - 1, -1, -1)]

        async def compute() -> dict[str, Any]:
            end = datetime.now(UTC) + timedelta(seconds=1)
            data = await funnels.retention(clickhouse(), app_id, interval, starts[0].isoformat(), end, tz)
            out = []
            for index, start in enumerate(starts):
                counts = data.get(start.isoformat(), {})
                size = counts.get(0, 0)
                retained = [counts.get(i, 0) for i in range(len(starts) - index)]
                out.append({"cohort": start.isoformat(), "size": size, "retained": retained,
                            "rates": [round(100 * n / size, 1) if size else 0.0 for n in retained]})
            return {"interval": interval, "cohorts": out}

        return await cached(app_id, "retention", {"i": interval, "c": cohorts, "tz": tz}, True, compute)

    @router.get("/users", summary="Users by user_id, most recently seen first")
    async def users(
        app_id: App,
        page: Annotated[int, Query(ge=1, le=100000)] = 1,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"at most {MAX_LIMIT}")] = 50,
        search: Annotated[str | None, Query(max_length=200)] = None,
    ) -> JSONResponse:
        async def compute() -> dict[str, Any]:
            rows, total = await privacy.list_users(clickhouse(), app_id, search, limit, (page - 1) * limit)
            return {"users": rows, "page": page, "limit": limit, "total": total}

        return await cached(app_id, "users", {"p": page, "l": limit, "s": search}, True, compute)

    @router.get("/users/{user_id}/export", summary="Every event of one user, as JSON lines (streamed)")
    async def export(app_id: App, user_id: str) -> StreamingResponse:
        if len(user_id) > 200:
            raise ApiError(422, "user_id is at most 200 characters")
        lines: AsyncIterator[bytes] = privacy.export_lines(clickhouse(), app_id, user_id)
        headers = {"X-Cache": "MISS", "Cache-Control": "no-store",
                   "Content-Disposition": f'attachment; filename="events-{app_id}.jsonl"'}
        return StreamingResponse(lines, media_type="application/x-ndjson", headers=headers)

    @router.delete("/users/{user_id}", summary="Delete every event of one user")
    async def delete(app_id: App, user_id: str) -> JSONResponse:
        if len(user_id) > 200:
            raise ApiError(422, "user_id is at most 200 characters")
        deleted = await privacy.delete_user(clickhouse(), app_id, user_id)
        store = cache()
        if store is not None:
            await store.bump_generation(app_id)
        return JSONResponse({"deleted": deleted})
