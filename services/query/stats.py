# ruff: noqa: S608 - SQL from fixed fragments only; every value is a bind parameter
"""Web analytics in Plausible's spirit: visits derived from events, aggregate, timeseries, breakdowns.

A visit is a visitor's run of events with no gap over 30 minutes (window functions over the
visitor's events, ordered by time). Every value is a bound parameter; every column or expression
comes from the fixed maps below.

Which events count: every page, track and screen event that is not a bot's, whatever sent it
(`source_kind` browser, server or mobile), as PostHog counts server-side and app events beside web
ones: a purchase recorded by the shop's server is an event of its visitor (its user id), in visitors,
visits and events alike (such a visit has no page views, like an app's). Bot events (crawlers,
headless browsers) are left out of every metric; `aggregate(count_bots=True)` says how many were.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from libs.clickhouse import ClickHouse
from services.query.queries import ts_param

VISIT_GAP_S = 1800
WEB_TYPES = "type IN ('page', 'track', 'screen')"
DIRECT = "Direct / None"

# Visit-level properties: what the visit's first event says (its entry).
VISIT_PROPS: dict[str, str] = {
    # The referring site, else the visit's utm_source (a tagged link opened from an email or an app sends
    # no referrer), else Direct / None.
    "source": f"if(referrer_host != '', referrer_host, if(utm_source != '', utm_source, '{DIRECT}'))",
    "referrer": f"if(referrer = '', '{DIRECT}', referrer)",
    "utm_source": "utm_source",
    "utm_medium": "utm_medium",
    "utm_campaign": "utm_campaign",
    "utm_term": "utm_term",
    "utm_content": "utm_content",
    "device": "device_type",
    "browser": "browser",
    "os": "os",
    "country": "country",
}
# Derived per visit from its pageviews.
ENTRY_EXIT = {"entry_page": "entry_page", "exit_page": "exit_page"}
# Event-level properties: a filter keeps visits with a matching event, and counts only those events.
EVENT_PROPS: dict[str, str] = {"page": "path", "event_name": "event_name"}

FILTERS = (*EVENT_PROPS, *ENTRY_EXIT, *VISIT_PROPS)
PROPERTIES = ("page", "entry_page", "exit_page", *VISIT_PROPS, "event_name")
METRICS = ("visitors", "visits", "pageviews", "views_per_visit", "bounce_rate", "visit_duration", "events")

# Over one group of visits (the `sessions` rows).
VISIT_METRICS: dict[str, str] = {
    "visitors": "uniqExact(visitor)",
    "visits": "count()",
    "pageviews": "sum(m_pageviews)",
    "events": "sum(m_events)",
    "views_per_visit": "round(if(count() = 0, 0, sum(m_pageviews) / count()), 2)",
    "bounce_rate": "round(if(count() = 0, 0, 100 * countIf(pageviews = 1 AND events = 1) / count()), 1)",
    "visit_duration": "round(if(count() = 0, 0, avg(duration)), 1)",
}

BUCKETS = {
    "hour": "toStartOfHour(started, {tz:String})",
    "day": "toStartOfDay(started, {tz:String})",
    "week": "toDateTime(toMonday(started, {tz:String}), {tz:String})",
    "month": "toDateTime(toStartOfMonth(started, {tz:String}), {tz:String})",
}


@dataclass
class Scope:
    """App, time range and filters of one stats request, with its bound values."""

    app_id: str
    start: datetime
    end: datetime
    filters: dict[str, str] = field(default_factory=dict)
    carry: tuple[str, ...] = ()  # visit properties a breakdown needs besides the filtered ones
    bots: bool = False  # read the bots' events instead of everyone else's (see aggregate)

    def needs(self, name: str) -> bool:
        return name in self.filters or name in self.carry

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"app_id": self.app_id, "start": ts_param(self.start), "end": ts_param(self.end)}
        for name, value in self.filters.items():
            out[f"f_{name}"] = value
        return out

    def event_match(self) -> str:
        parts = [f"{EVENT_PROPS[n]} = {{f_{n}:String}}" for n in self.filters if n in EVENT_PROPS]
        if "page" in self.filters:
            parts.append("type = 'page'")
        return " AND ".join(parts) if parts else "1"

    def visit_match(self) -> str:
        parts = [f"{n} = {{f_{n}:String}}" for n in self.filters if n in VISIT_PROPS or n in ENTRY_EXIT]
        if any(n in EVENT_PROPS for n in self.filters):
            parts.append("m_events > 0")
        return " AND ".join(parts) if parts else "1"


def numbered_sql(scope: Scope) -> str:
    """Each web event with its visitor and the number of its visit (1, 2, ... per visitor)."""
    cols = "".join(f", {expr} AS {name}" for name, expr in VISIT_PROPS.items() if scope.needs(name))
    return f"""
        SELECT *, sum(is_new) OVER (PARTITION BY visitor ORDER BY timestamp
                                    ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS visit_no
        FROM (
            SELECT *, dateDiff('second',
                        lagInFrame(timestamp, 1, toDateTime64(0, 3, 'UTC')) OVER (PARTITION BY visitor ORDER BY timestamp
                                    ROWS BETWEEN 1 PRECEDING AND CURRENT ROW),
                        timestamp) > {VISIT_GAP_S} AS is_new
            FROM (
                SELECT visitor_id AS visitor, timestamp, type, event_name, path{cols}
                FROM events FINAL
                WHERE app_id = {{app_id:String}} AND timestamp >= {{start:DateTime64(3, 'UTC')}}
                  AND timestamp < {{end:DateTime64(3, 'UTC')}} AND {"is_bot" if scope.bots else "NOT is_bot"}
                  AND {WEB_TYPES}
            )
        )"""


def sessions_sql(scope: Scope) -> str:
    """One row per visit that passes the filters."""
    # Only what the filters or the breakdown read: fewer columns, less work.
    firsts = "".join(f", argMin({name}, timestamp) AS {name}" for name in VISIT_PROPS if scope.needs(name))
    if scope.needs("entry_page"):
        firsts += ", argMinIf(path, timestamp, type = 'page') AS entry_page"
    if scope.needs("exit_page"):
        firsts += ", argMaxIf(path, timestamp, type = 'page') AS exit_page"
    match = scope.event_match()
    return f"""
        SELECT * FROM (
            SELECT visitor, visit_no, min(timestamp) AS started, max(timestamp) AS ended,
                   dateDiff('second', min(timestamp), max(timestamp)) AS duration,
                   countIf(type = 'page') AS pageviews, count() AS events,
                   countIf(type = 'page' AND {match}) AS m_pageviews, countIf({match}) AS m_events{firsts}
            FROM ({numbered_sql(scope)})
            GROUP BY visitor, visit_no
        ) WHERE {scope.visit_match()}"""


def _select(metrics: list[str]) -> str:
    return ", ".join(f"{VISIT_METRICS[m]} AS r_{m}" for m in metrics)


def _clean(row: dict[str, Any], metrics: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in metrics:
        value = row.get(f"r_{m}") or 0
        out[m] = int(value) if m in ("visitors", "visits", "pageviews", "events") else float(value)
    return out


async def aggregate(ch: ClickHouse, scope: Scope, metrics: list[str], count_bots: bool = False) -> dict[str, Any]:
    """The metrics of `scope`; with `count_bots`, also `bot_events`: how many bot events they left out
    (the `events` metric over the bots' visits that pass the same filters), in the same query."""
    bots = ""
    if count_bots:
        bots = f", (SELECT sum(m_events) FROM ({sessions_sql(replace(scope, bots=True))})) AS r_bot_events"
    rows = await ch.query(f"SELECT {_select(metrics)}{bots} FROM ({sessions_sql(scope)})", scope.params())
    out = _clean(rows[0] if rows else {}, metrics)
    if count_bots:
        out["bot_events"] = int(rows[0].get("r_bot_events") or 0) if rows else 0
    return out


async def timeseries(ch: ClickHouse, scope: Scope, interval: str, tz: str, metrics: list[str]) -> dict[str, dict[str, Any]]:
    """Metrics per bucket (a visit counts in the bucket where it started), keyed as periods.buckets keys
    them, `YYYY-MM-DD HH:MM:SS`: an hour by its UTC start (a 25-hour day has two local 01:00 hours), a
    day, week or month by its local start."""
    key_tz = "'UTC'" if interval == "hour" else "{tz:String}"
    rows = await ch.query(
        f"SELECT formatDateTime({BUCKETS[interval]}, '%Y-%m-%d %H:%i:%S', {key_tz}) AS bucket, {_select(metrics)} "
        f"FROM ({sessions_sql(scope)}) GROUP BY bucket ORDER BY bucket",
        {**scope.params(), "tz": tz},
    )
    return {r["bucket"]: _clean(r, metrics) for r in rows}


async def breakdown(
    ch: ClickHouse, scope: Scope, prop: str, metrics: list[str], limit: int, offset: int
) -> list[dict[str, Any]]:
    params = {**scope.params(), "limit": limit, "offset": offset}
    order = "r_visitors" if "visitors" in metrics else f"r_{metrics[0]}"
    if prop in EVENT_PROPS:
        column = EVENT_PROPS[prop]
        is_page = "type = 'page' AND " if prop == "page" else ""
        per_visit = f"""
            SELECT n.{column} AS value, n.visitor AS visitor, n.visit_no AS visit_no,
                   countIf(n.type = 'page') AS m_pageviews, count() AS m_events,
                   any(s.pageviews) AS pageviews, any(s.events) AS events, any(s.duration) AS duration
            FROM ({numbered_sql(scope)}) AS n
            INNER JOIN ({sessions_sql(scope)}) AS s ON n.visitor = s.visitor AND n.visit_no = s.visit_no
            WHERE {is_page}{scope.event_match()}
            GROUP BY value, visitor, visit_no"""
        sql = (f"SELECT value, {_select(metrics)} FROM ({per_visit}) GROUP BY value "
               f"ORDER BY {order} DESC, value LIMIT {{limit:UInt32}} OFFSET {{offset:UInt32}}")
    else:
        sql = (f"SELECT {ENTRY_EXIT.get(prop, prop)} AS value, {_select(metrics)} FROM ({sessions_sql(scope)}) "
               f"GROUP BY value ORDER BY {order} DESC, value LIMIT {{limit:UInt32}} OFFSET {{offset:UInt32}}")
    rows = await ch.query(sql, params)
    return [{prop: r["value"], **_clean(r, metrics)} for r in rows]


async def realtime(ch: ClickHouse, app_id: str, start: datetime, end: datetime) -> int:
    rows = await ch.query(
        f"""SELECT uniqExact(visitor_id) AS n FROM events FINAL
            WHERE app_id = {{app_id:String}} AND timestamp >= {{start:DateTime64(3, 'UTC')}}
              AND timestamp < {{end:DateTime64(3, 'UTC')}} AND NOT is_bot AND {WEB_TYPES}""",
        {"app_id": app_id, "start": ts_param(start), "end": ts_param(end)},
    )
    return int(rows[0]["n"]) if rows else 0
