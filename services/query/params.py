"""The query parameters of the read APIs, checked: date ranges, periods, time zones, metrics, filters.
Each refusal is a 422 that says what to send instead."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Annotated

from fastapi import Depends, Query

from libs.http import ApiError
from services.query import stats
from services.query.periods import FIRST_MOMENT, PERIODS, Period, midnight, readable_day, resolve, zone

MAX_RANGE_DAYS = 732
DEFAULT_RANGE_DAYS = 30
MAX_PAGE_SIZE = 1000


def parse_when(value: str | None, name: str, end_of_day: bool, tz: str = "UTC") -> datetime | None:
    """An ISO date (the whole local day in `tz`) or datetime (naive = local time in `tz`), on a day the
    event store can hold (the day as written, periods.readable_day), as a UTC datetime."""
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
        return midnight(day + timedelta(days=1) if end_of_day else day, tz)
    return moment.replace(tzinfo=zone(tz)).astimezone(UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def date_range(
    start_raw: str | None, end_raw: str | None, start_name: str, end_name: str, tz: str = "UTC",
) -> tuple[datetime, datetime]:
    end = parse_when(end_raw, end_name, end_of_day=True, tz=tz) or datetime.now(UTC) + timedelta(seconds=1)
    # The default start never reaches before what the store holds.
    start = parse_when(start_raw, start_name, end_of_day=False, tz=tz) or max(
        end - timedelta(days=DEFAULT_RANGE_DAYS), FIRST_MOMENT)
    if end <= start:
        raise ApiError(422, f"{end_name} must be after {start_name}")
    if end - start > timedelta(days=MAX_RANGE_DAYS):
        raise ApiError(422, f"{start_name} to {end_name} is longer than {MAX_RANGE_DAYS} days; ask for a shorter range")
    return start, end


def check_series(interval: str, days: int) -> None:
    """422 for an hourly series too long to read."""
    if interval == "hour" and days > 31:
        raise ApiError(422, "hourly series cover at most 31 days; ask for interval=day")


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
