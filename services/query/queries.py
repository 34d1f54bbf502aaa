"""SQL of the query service. Values are always bound (`{name:Type}`); names of columns come only from
the fixed maps below, never from a request."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from datetime import time as dt_time
from typing import Any

from libs.clickhouse import ClickHouse
from services.query import frozen
from services.query.periods import utc_days_aligned

GROUPABLE = {"event_name": "event_name", "event_category": "event_category", "source": "source"}


def ts_param(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


@dataclass
class Where:
    """A WHERE clause built from fixed fragments, with its bound values."""

    app_id: str
    start: datetime | None = None
    end: datetime | None = None
    clauses: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.clauses.append("app_id = {app_id:String}")
        self.params["app_id"] = self.app_id
        if self.start is not None:
            self.clauses.append("timestamp >= {start:DateTime64(3, 'UTC')}")
            self.params["start"] = ts_param(self.start)
        if self.end is not None:
            self.clauses.append("timestamp < {end:DateTime64(3, 'UTC')}")
            self.params["end"] = ts_param(self.end)

    def equals(self, column: str, name: str, value: str | None) -> Where:
        if value is not None and value != "":
            self.clauses.append(f"{column} = {{{name}:String}}")
            self.params[name] = value
        return self

    def sql(self) -> str:
        return " AND ".join(self.clauses)


VISITORS_MERGE = "uniqCombined64Merge(15)"
VISITORS_MERGE_STATE = "uniqCombined64MergeState(15)"
# Day rows (see over_day_rows) read from the events table: per (UTC day, event name, device), the
# distinct event ids (a copy of an event adds nothing, so no FINAL is needed) and the visitor state, as
# the rollup and the frozen days (frozen.py) hold them.
RAW_DAY_ROWS = (
    "SELECT toDate(timestamp) AS day, event_name, device_type, uniqExact(cityHash64(event_id)) AS n, "
    "uniqCombined64State(15)(visitor_id) AS v FROM events WHERE {where} GROUP BY day, event_name, device_type"
)


def whole_days(where: Where) -> tuple[date, date] | None:
    """The UTC days wholly inside the range (read from frozen days or the rollup), or None."""
    if where.start is None or where.end is None:
        return None
    first = where.start.date() + (timedelta(days=1) if where.start.time() != dt_time() else timedelta())
    last = where.end.date()  # exclusive
    return (first, last) if first < last else None


async def over_day_rows(
    ch: ClickHouse, where: Where, outer: Callable[[str], str], params: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Run `outer(rows)`, a query over rows (day, event_name, device_type, n, v) covering the range of
    `where`: n the group's distinct event ids, v its visitor state, which callers add up and merge
    under their own key. Whole UTC days come from frozen exact counts, else the events_daily rollup
    (frozen.py: the closed days of the range are frozen first), the partial days at either end from
    events. Only app, range and event_name filters take that path; any other filter reads events."""
    params = {**where.params, **(params or {})}
    names = [n for n in ("event", "event_name") if n in where.params]
    extra = f" AND event_name = {{{names[0]}:String}}" if names else ""
    supported = set(where.params) <= {"app_id", "start", "end", "event", "event_name"}
    days = whole_days(where) if supported else None
    if days is None:
        return await ch.query(outer(RAW_DAY_ROWS.format(where=where.sql())), params)
    plan = await frozen.plan(ch, where.app_id, *days)
    params.update(plan.params(), d0=days[0].isoformat(), d1=days[1].isoformat())
    edges = ("app_id = {app_id:String} AND ((timestamp >= {start:DateTime64(3, 'UTC')} "
             "AND timestamp < toDateTime64({d0:String}, 3, 'UTC')) "
             "OR (timestamp >= toDateTime64({d1:String}, 3, 'UTC') AND timestamp < {end:DateTime64(3, 'UTC')}))" + extra)
    rows = [r for r in (plan.rows(extra), RAW_DAY_ROWS.format(where=edges)) if r]
    return await ch.query(outer(" UNION ALL ".join(rows)), params)


async def event_summary(ch: ClickHouse, where: Where) -> dict[str, Any]:
    """Count, distinct visitors and events per device, in one pass over the day rows: counts are added
    up per device (plain numbers), visitor states merged per device and once more for the total."""
    rows = await over_day_rows(ch, where, lambda day_rows: f"""
        SELECT groupArray((device, events)) AS devices, {VISITORS_MERGE}(vs) AS u
        FROM (SELECT if(device_type = '', 'unknown', device_type) AS device, sum(n) AS events,
                     {VISITORS_MERGE_STATE}(v) AS vs
              FROM ({day_rows}) GROUP BY device)""")
    devices = sorted(((str(d), int(n)) for d, n in (rows[0]["devices"] if rows else []) if n), key=lambda x: (-x[1], x[0]))
    return {
        "count": sum(n for _, n in devices),
        "uniqueUsers": int(rows[0]["u"]) if rows else 0,
        "deviceData": dict(devices),
    }


async def user_stats(ch: ClickHouse, where: Where, recent: int) -> dict[str, Any] | None:
    rows = await ch.query(
        f"""SELECT count() AS total, argMax(browser, timestamp) AS browser, argMax(os, timestamp) AS os,
                   argMax(device_type, timestamp) AS device, argMax(ip, timestamp) AS ip,
                   min(timestamp) AS first_seen, max(timestamp) AS last_seen
            FROM events FINAL WHERE {where.sql()}""",
        where.params,
    )
    if not rows or rows[0]["total"] == 0:
        return None
    events = await ch.query(
        f"SELECT {EVENT_COLUMNS} FROM events FINAL WHERE {where.sql()} ORDER BY timestamp DESC LIMIT {{n:UInt32}}",
        {**where.params, "n": recent},
    )
    row = rows[0]
    return {
        "totalEvents": row["total"],
        "deviceDetails": {"browser": row["browser"], "os": row["os"], "device": row["device"]},
        "ipAddress": row["ip"],
        "firstSeen": row["first_seen"],
        "lastSeen": row["last_seen"],
        "recentEvents": _decode_properties(events),
    }


# An event as every read returns it. Its properties are the JSON text it was sent with (properties_json),
# as the JSON column drops null values; rows stored before that column existed have only the JSON column.
EVENT_COLUMNS = (
    "event_id, type, event_name, event_category, source, source_kind, user_id, anonymous_id, session_id, url, path, "
    "referrer, referrer_host, utm_source, utm_medium, utm_campaign, device_type, browser, os, screen_size, "
    "country, ip, if(properties_json != '', properties_json, toJSONString(properties)) AS properties, timestamp, "
    "received_at, is_bot"
)


def _decode_properties(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    import orjson

    for row in rows:
        if isinstance(row.get("properties"), str):
            row["properties"] = orjson.loads(row["properties"])
    return rows


async def list_events(ch: ClickHouse, where: Where, limit: int, offset: int) -> tuple[list[dict[str, Any]], int]:
    rows = await ch.query(
        f"SELECT {EVENT_COLUMNS} FROM events FINAL WHERE {where.sql()} "
        "ORDER BY timestamp DESC, event_id LIMIT {limit:UInt32} OFFSET {offset:UInt32}",
        {**where.params, "limit": limit, "offset": offset},
    )
    total = await count(ch, where)
    return _decode_properties(rows), total


async def get_event(ch: ClickHouse, app_id: str, event_id: str) -> dict[str, Any] | None:
    rows = await ch.query(
        f"SELECT {EVENT_COLUMNS} FROM events FINAL WHERE app_id = {{app_id:String}} AND event_id = {{id:String}} "
        "LIMIT 1",
        {"app_id": app_id, "id": event_id},
    )
    return _decode_properties(rows)[0] if rows else None


async def count(ch: ClickHouse, where: Where) -> int:
    rows = await ch.query(f"SELECT count() AS n FROM events FINAL WHERE {where.sql()}", where.params)
    return int(rows[0]["n"]) if rows else 0


INTERVALS = {"hour": "toStartOfHour", "day": "toStartOfDay"}


async def counts_by(
    ch: ClickHouse, where: Where, name: str, key: str, order: str, limit: int = 100_000
) -> list[dict[str, Any]]:
    """Events and distinct visitors per `key`, an expression of day, event_name and device_type (a fixed
    one, from this module), over the day rows of over_day_rows()."""
    return await over_day_rows(
        ch, where,
        lambda day_rows: f"SELECT {key} AS {name}, sum(n) AS count, {VISITORS_MERGE}(v) AS unique_users "
                         f"FROM ({day_rows}) GROUP BY {name} ORDER BY {order} LIMIT {{limit:UInt32}}",
        {"limit": limit},
    )


async def timeseries(ch: ClickHouse, where: Where, interval: str, tz: str) -> list[dict[str, Any]]:
    """Events and distinct visitors per local hour or day of `tz`. Days come from the UTC-day rows
    (frozen days, the rollup) only when every local midnight of the range is a UTC midnight; a day
    that starts at another moment (18:30 UTC in Asia/Kolkata, 07:00 or 08:00 in Los Angeles) is no
    union of UTC days (nor of UTC hours, with a zone half an hour off), so it is counted from events."""
    if interval == "day" and where.start is not None and where.end is not None \
            and utc_days_aligned(where.start, where.end, tz):
        return await counts_by(ch, where, "bucket", "toDateTime(day, 'UTC')", "bucket")
    bucket = INTERVALS[interval]
    return await ch.query(
        f"""SELECT {bucket}(timestamp, {{tz:String}}) AS bucket, count() AS count,
                   uniqExact(visitor_id) AS unique_users
            FROM events FINAL WHERE {where.sql()} GROUP BY bucket ORDER BY bucket""",
        {**where.params, "tz": tz},
    )


async def grouped(ch: ClickHouse, where: Where, by: str, limit: int) -> list[dict[str, Any]]:
    column = GROUPABLE[by]
    if by == "event_name":
        return await counts_by(ch, where, "key", "event_name", "count DESC, key", limit)
    return await ch.query(
        f"""SELECT {column} AS key, count() AS count, uniqExact(visitor_id) AS unique_users
            FROM events FINAL WHERE {where.sql()} GROUP BY key ORDER BY count DESC, key LIMIT {{limit:UInt32}}""",
        {**where.params, "limit": limit},
    )


async def active_users(ch: ClickHouse, where: Where) -> int:
    rows = await ch.query(f"SELECT uniqExact(visitor_id) AS n FROM events FINAL WHERE {where.sql()}", where.params)
    return int(rows[0]["n"]) if rows else 0


async def metric_summary(ch: ClickHouse, app_id: str, name: str | None, start: datetime, end: datetime) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"app_id": app_id, "start": ts_param(start), "end": ts_param(end)}
    name_clause = ""
    if name:
        name_clause = " AND metric_name = {name:String}"
        params["name"] = name
    return await ch.query(
        f"""SELECT metric_name, any(unit) AS unit, count() AS count, sum(value) AS sum, avg(value) AS avg,
                   min(value) AS min, max(value) AS max, quantile(0.5)(value) AS p50, quantile(0.95)(value) AS p95
            FROM metrics FINAL
            WHERE app_id = {{app_id:String}} AND timestamp >= {{start:DateTime64(3, 'UTC')}}
              AND timestamp < {{end:DateTime64(3, 'UTC')}}{name_clause}
            GROUP BY metric_name ORDER BY metric_name""",
        params,
    )


async def metric_series(
    ch: ClickHouse, app_id: str, name: str, start: datetime, end: datetime, interval: str, tz: str
) -> list[dict[str, Any]]:
    bucket = INTERVALS[interval]
    return await ch.query(
        f"""SELECT {bucket}(timestamp, {{tz:String}}) AS bucket, count() AS count, sum(value) AS sum,
                   avg(value) AS avg, min(value) AS min, max(value) AS max
            FROM metrics FINAL
            WHERE app_id = {{app_id:String}} AND metric_name = {{name:String}}
              AND timestamp >= {{start:DateTime64(3, 'UTC')}} AND timestamp < {{end:DateTime64(3, 'UTC')}}
            GROUP BY bucket ORDER BY bucket""",
        {"app_id": app_id, "name": name, "start": ts_param(start), "end": ts_param(end), "tz": tz},
    )
