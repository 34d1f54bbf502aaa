"""The `period`, `date` and `tz` parameters of the stats routes -> a UTC range and its buckets."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from libs.dataversions import reaches_now
from libs.http import ApiError

PERIODS = ("realtime", "day", "7d", "30d", "month", "6mo", "12mo", "custom")
MAX_DAYS = 732
MAX_HOURLY_DAYS = 31
# The days a read may name: those the event store can hold (its timestamps are DateTime64(3),
# migration 0001: 1900-01-01 to 2299-12-31). Outside them a read could only be empty, and date
# arithmetic near the years 1 and 9999 overflows; within them every computed bound (a day's end, a
# time zone's offset, the previous period of a comparison) stays a valid date and a bound value
# ClickHouse compares as it should.
FIRST_DAY = date(1900, 1, 1)
LAST_DAY = date(2299, 12, 31)
FIRST_MOMENT = datetime.combine(FIRST_DAY, time(), UTC)


def readable_day(day: date, name: str) -> date:
    """`day` itself, or 422 naming the parameter when the event store cannot hold it."""
    if not FIRST_DAY <= day <= LAST_DAY:
        raise ApiError(422, f"{name} must be a day from {FIRST_DAY} to {LAST_DAY} (what the event store holds); "
                            f"got {day}")
    return day


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ApiError(422, f"unknown time zone tz={name!r}; send an IANA name such as Europe/Berlin or UTC") from exc


@dataclass
class Period:
    name: str
    start: datetime  # UTC, inclusive
    end: datetime  # UTC, exclusive
    tz: ZoneInfo

    @property
    def live(self) -> bool:
        return reaches_now(self.end)

    def previous(self) -> Period:
        return Period(self.name, self.start - (self.end - self.start), self.start, self.tz)

    def as_json(self) -> dict[str, str]:
        return {"start": _iso(self.start), "end": _iso(self.end)}


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _midnight(day: date, tz: ZoneInfo) -> datetime:
    return datetime.combine(day, time(), tz).astimezone(UTC)


def midnight(day: date, tz_name: str) -> datetime:
    """The UTC moment a local day starts in `tz_name` (a 23- or 25-hour day included)."""
    return _midnight(day, zone(tz_name))


def local_today(tz_name: str, now: datetime | None = None) -> date:
    return (now or datetime.now(UTC)).astimezone(zone(tz_name)).date()


def last_days(days: int, tz_name: str, now: datetime | None = None) -> tuple[datetime, datetime]:
    """The last `days` local days, today included, as a UTC range [local midnight days-1 days ago, now]."""
    now = now or datetime.now(UTC)
    first = local_today(tz_name, now) - timedelta(days=days - 1)
    return max(midnight(first, tz_name), FIRST_MOMENT), now + timedelta(seconds=1)


def utc_days_aligned(start: datetime, end: datetime, tz_name: str) -> bool:
    """Whether every local midnight from `start` to `end` in `tz_name` is a UTC midnight (UTC itself, or
    a zone at offset 0 all along): only then are its days the UTC days of the daily rollup."""
    tz = zone(tz_name)
    moments = [start + timedelta(days=i) for i in range((end - start).days + 1)] + [end]
    return all(moment.astimezone(tz).utcoffset() == timedelta(0) for moment in moments)


def _parse_day(value: str, what: str) -> date:
    try:
        day = date.fromisoformat(value.strip())
    except ValueError as exc:
        raise ApiError(422, f"{what} must be a day like 2026-11-23") from exc
    return readable_day(day, what)


def _month_start(day: date, back: int = 0) -> date:
    months = day.year * 12 + day.month - 1 - back
    return date(months // 12, months % 12 + 1, 1)


def resolve(period: str, date_param: str | None, tz_name: str, now: datetime | None = None) -> Period:
    tz = zone(tz_name)
    now = now or datetime.now(UTC)
    today = now.astimezone(tz).date()
    if period == "realtime":
        return Period(period, now - timedelta(minutes=5), now + timedelta(seconds=1), tz)
    if period == "custom":
        if not date_param or date_param.count(",") != 1:
            raise ApiError(422, "period=custom needs date=YYYY-MM-DD,YYYY-MM-DD (first and last day, inclusive)")
        first, last = (_parse_day(p, "date") for p in date_param.split(","))
        if last < first:
            raise ApiError(422, f"date range ends ({last}) before it starts ({first}); send the earlier day first")
        if (last - first).days + 1 > MAX_DAYS:
            raise ApiError(422, f"a custom range covers at most {MAX_DAYS} days; ask for a shorter one")
        return Period(period, _midnight(first, tz), _midnight(last + timedelta(days=1), tz), tz)
    if date_param and period not in ("day", "month"):
        raise ApiError(422, "date is only read with period=day, month or custom; leave it out")
    anchor = today
    if date_param:
        anchor = _parse_day(date_param + ("-01" if len(date_param) == 7 else ""), "date")
    if period == "day":
        return Period(period, _midnight(anchor, tz), _midnight(anchor + timedelta(days=1), tz), tz)
    if period in ("7d", "30d"):
        days = int(period[:-1])
        return Period(period, _midnight(today - timedelta(days=days - 1), tz), _midnight(today + timedelta(days=1), tz), tz)
    back = {"month": 0, "6mo": 5, "12mo": 11}[period]
    first = _month_start(anchor, back)
    return Period(period, _midnight(first, tz), _midnight(_month_start(anchor, -1), tz), tz)


def hour_start(moment: datetime, tz: ZoneInfo) -> datetime:
    """The UTC start of the local hour holding `moment`."""
    local = moment.astimezone(tz)
    return moment - timedelta(minutes=local.minute, seconds=local.second, microseconds=local.microsecond)


def buckets(period: Period, interval: str) -> list[tuple[str, str]]:
    """Every bucket of the period as (key as the SQL formats it, label for the answer), in order."""
    if interval == "hour":
        if period.end - period.start > timedelta(days=MAX_HOURLY_DAYS):
            raise ApiError(422, f"hourly series cover at most {MAX_HOURLY_DAYS} days; ask for interval=day")
        # Each local hour that starts in the period, keyed by its UTC start (HOUR_KEY): a zone half an hour
        # off UTC (Asia/Kolkata) has hours starting at :30 UTC; a 25-hour day has 01:00 twice (two keys,
        # one label), a 23-hour day no 02:00.
        out: list[tuple[str, str]] = []
        moment = hour_start(period.start, period.tz)
        while moment < period.end:
            local = moment.astimezone(period.tz)
            out.append((moment.strftime("%Y-%m-%d %H:%M:%S"), local.strftime("%Y-%m-%dT%H:%M:%S")))
            moment = hour_start(moment + timedelta(hours=1), period.tz)
        return out
    first = period.start.astimezone(period.tz).date()
    last = (period.end - timedelta(microseconds=1)).astimezone(period.tz).date()
    if interval == "week":
        first -= timedelta(days=first.weekday())
    elif interval == "month":
        first = first.replace(day=1)
    days: list[date] = []
    day = first
    while day <= last:
        days.append(day)
        if interval == "day":
            day += timedelta(days=1)
        elif interval == "week":
            day += timedelta(days=7)
        else:
            day = _month_start(day, -1)
    return [(f"{d.isoformat()} 00:00:00", d.isoformat()) for d in days]
