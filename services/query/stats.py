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
# With a goal (refine.py): who completed it, how often, and the share of the period's visitors (the
# same filters without the goal) who did, in percent.
GOAL_METRICS = ("conversions", "completions", "conversion_rate")

# Over one group of visits (the `sessions` rows).
VISIT_METRICS: dict[str, str] = {
    "visitors": "uniqExact(visitor)",
    "visits": "count()",
    "pageviews": "sum(m_pageviews)",
    "events": "sum(m_events)",
    "views_per_visit": "round(if(count() = 0, 0, sum(m_pageviews) / count()), 2)",
    "bounce_rate": "round(if(count() = 0, 0, 100 * countIf(pageviews = 1 AND events = 1) / count()), 1)",
    "visit_duration": "round(if(count() = 0, 0, avg(duration)), 1)",
    "conversions": "uniqExact(visitor)",
    "completions": "sum(m_events)",
    "conversion_rate": "round(if(_base = 0, 0, 100 * uniqExact(visitor) / _base), 1)",  # see aggregate
}

# An event's properties as JSON text (as queries.EVENT_COLUMNS reads them), and one property's value:
# a string as itself, any other JSON value as its JSON text (49, true, {"a": 1}).
PROPS_JSON = "if(properties_json != '', properties_json, toJSONString(properties))"
PROP_VALUE = ("if(JSONType({j}, {k}) = 'String', JSONExtractString({j}, {k}), JSONExtractRaw({j}, {k}))")


@dataclass(frozen=True)
class Refine:
    """Conditions beyond FILTERS, built by refine.py from fixed fragments and bound values: a goal
    and custom properties (event-level, like `event_name`: a visit with a matching event counts, and
    only those events), and a segment (only its visitors)."""

    goal_sql: str = ""  # over the numbered events' type, event_name, path
    props_sql: str = ""  # over props_json
    visitor_sql: str = ""  # over the events table's visitor_id
    params: dict[str, Any] = field(default_factory=dict)
    needs_props: bool = False  # numbered events carry props_json

    def event_sql(self) -> str:
        return " AND ".join(f"({p})" for p in (self.goal_sql, self.props_sql) if p)


@dataclass(frozen=True)
class EventValue:
    """What an event-level breakdown groups by: an expression over the numbered events `n`, the events
    it reads (a condition on them) and its bound values."""

    expr: str
    where: str = "1"
    params: dict[str, Any] = field(default_factory=dict)


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
    refine: Refine = field(default_factory=Refine)

    def needs(self, name: str) -> bool:
        return name in self.filters or name in self.carry

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"app_id": self.app_id, "start": ts_param(self.start), "end": ts_param(self.end)}
        for name, value in self.filters.items():
            out[f"f_{name}"] = value
        return {**out, **self.refine.params}

    def event_match(self) -> str:
        parts = [f"{EVENT_PROPS[n]} = {{f_{n}:String}}" for n in self.filters if n in EVENT_PROPS]
        if "page" in self.filters:
            parts.append("type = 'page'")
        if self.refine.event_sql():
            parts.append(self.refine.event_sql())
        return " AND ".join(parts) if parts else "1"

    def visit_match(self) -> str:
        parts = [f"{n} = {{f_{n}:String}}" for n in self.filters if n in VISIT_PROPS or n in ENTRY_EXIT]
        if any(n in EVENT_PROPS for n in self.filters) or self.refine.event_sql():
            parts.append("m_events > 0")
        return " AND ".join(parts) if parts else "1"


def _web_events_sql(scope: Scope) -> str:
    """The web events of `scope` (visitor, timestamp, type, event_name, path and the visit properties it
    needs), unnumbered."""
    cols = "".join(f", {expr} AS {name}" for name, expr in VISIT_PROPS.items() if scope.needs(name))
    if scope.refine.needs_props:
        cols += f", {PROPS_JSON} AS props_json"
    only = f" AND {scope.refine.visitor_sql}" if scope.refine.visitor_sql else ""
    return f"""
                SELECT visitor_id AS visitor, timestamp, type, event_name, path{cols}
                FROM events FINAL
                WHERE app_id = {{app_id:String}} AND timestamp >= {{start:DateTime64(3, 'UTC')}}
                  AND timestamp < {{end:DateTime64(3, 'UTC')}} AND {"is_bot" if scope.bots else "NOT is_bot"}
                  AND {WEB_TYPES}{only}"""


def numbered_sql(scope: Scope) -> str:
    """Each web event with its visitor and the number of its visit (1, 2, ... per visitor)."""
    return f"""
        SELECT *, sum(is_new) OVER (PARTITION BY visitor ORDER BY timestamp
                                    ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS visit_no
        FROM (
            SELECT *, dateDiff('second',
                        lagInFrame(timestamp, 1, toDateTime64(0, 3, 'UTC')) OVER (PARTITION BY visitor ORDER BY timestamp
                                    ROWS BETWEEN 1 PRECEDING AND CURRENT ROW),
                        timestamp) > {VISIT_GAP_S} AS is_new
            FROM ({_web_events_sql(scope)}
            )
        )"""


def _whole_visits_sql(scope: Scope) -> str | None:
    """sessions_sql's rows, computed per visitor from one sorted array of its events instead of two window
    passes over all of them (several times faster), for a scope that counts every event of a visit (no
    event-level filter, goal or property condition) and needs no entry or exit page; else None.

    Each event is one number, its time in milliseconds times two plus one for a page view, so that a
    plain sort orders a visitor's events by time; a visit starts at the first event and after every gap
    of over VISIT_GAP_S whole seconds (dateDiff('second') counts second boundaries crossed, as here). A
    visit's properties are its first event's."""
    if scope.event_match() != "1" or scope.needs("entry_page") or scope.needs("exit_page"):
        return None
    props = [name for name in VISIT_PROPS if scope.needs(name)]
    key = "toUInt64(toUnixTimestamp64Milli(timestamp)) * 2 + (type = 'page')"
    second = "intDiv(intDiv({}, 2), 1000)"  # the whole second of an event's number
    # With properties: the events' order (a permutation), so that only the visits' first events' values are
    # picked, rather than every value sorted along.
    order = ("arrayMap(i -> raw_keys[i], arraySort(i -> raw_keys[i], arrayEnumerate(raw_keys)) AS perm)"
             if props else "arraySort(raw_keys)")
    return f"""
        SELECT visitor, visit_no,
               fromUnixTimestamp64Milli(toInt64(intDiv(v[1], 2)), 'UTC') AS started,
               fromUnixTimestamp64Milli(toInt64(intDiv(v[-1], 2)), 'UTC') AS ended,
               toInt64({second.format("v[-1]")}) - toInt64({second.format("v[1]")}) AS duration,
               arrayCount(k -> k % 2 = 1, v) AS pageviews, length(v) AS events,
               pageviews AS m_pageviews, events AS m_events{"".join(f", {n}" for n in props)}
        FROM (
            SELECT visitor, {order} AS keys,
                   arrayMap((k, i) -> i = 1 OR {second.format("k")} - {second.format("keys[i - 1]")} > {VISIT_GAP_S},
                            keys, arrayEnumerate(keys)) AS starts,
                   arraySplit((k, s) -> s, keys, starts) AS visits
                   {"".join(f", arrayMap(i -> raw_{n}[i], arrayFilter((i, s) -> s, perm, starts)) AS first_{n}"
                            for n in props)}
            FROM (
                SELECT visitor, groupArray({key}) AS raw_keys{"".join(f", groupArray({n}) AS raw_{n}" for n in props)}
                FROM ({_web_events_sql(scope)})
                GROUP BY visitor
            )
        )
        ARRAY JOIN visits AS v, arrayEnumerate(visits) AS visit_no{"".join(f", first_{n} AS {n}" for n in props)}
        WHERE {scope.visit_match()}"""


def sessions_sql(scope: Scope) -> str:
    """One row per visit that passes the filters."""
    whole = _whole_visits_sql(scope)
    if whole is not None:
        return whole
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
        out[m] = int(value) if m in ("visitors", "visits", "pageviews", "events", "conversions", "completions") else float(value)
    return out


async def aggregate(ch: ClickHouse, scope: Scope, metrics: list[str], count_bots: bool = False) -> dict[str, Any]:
    """The metrics of `scope`; with `count_bots`, also `bot_events`: how many bot events they left out
    (the `events` metric over the bots' visits that pass the same filters), in the same query."""
    bots = ""
    if count_bots:
        bots = f", (SELECT sum(m_events) FROM ({sessions_sql(replace(scope, bots=True))})) AS r_bot_events"
    base = ""
    if "conversion_rate" in metrics:  # the visitors of the same filters without the goal
        without_goal = replace(scope, refine=replace(scope.refine, goal_sql=""))
        base = f"WITH (SELECT uniqExact(visitor) FROM ({sessions_sql(without_goal)})) AS _base "
    rows = await ch.query(f"{base}SELECT {_select(metrics)}{bots} FROM ({sessions_sql(scope)})", scope.params())
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
    ch: ClickHouse, scope: Scope, prop: str, metrics: list[str], limit: int, offset: int,
    value: EventValue | None = None,
) -> list[dict[str, Any]]:
    """Metrics per value of `prop`; `value`: an event-level value of refine.py's (a custom property's,
    the goals an event completes), grouped as `page` and `event_name` are."""
    if value is None and prop in EVENT_PROPS:
        value = EventValue(f"n.{EVENT_PROPS[prop]}", "type = 'page'" if prop == "page" else "1")
    params = {**scope.params(), "limit": limit, "offset": offset, **(value.params if value else {})}
    order = "r_visitors" if "visitors" in metrics else f"r_{metrics[0]}"
    per_visitor = set(metrics) <= {"visitors", "pageviews", "events"} and not any(
        n in VISIT_PROPS or n in ENTRY_EXIT for n in scope.filters)
    if value is not None and per_visitor:
        # Metrics of the matching events and their visitors only, and every visit with a matching event
        # counts: no visit needs numbering (one row per matching event adds up to the same visitors,
        # pageviews and events as one per visit).
        per_visit = f"""
            SELECT {value.expr} AS value, n.visitor AS visitor, n.type = 'page' AS m_pageviews, 1 AS m_events
            FROM ({_web_events_sql(scope)}) AS n
            WHERE ({value.where}) AND {scope.event_match()}"""
        sql = (f"SELECT value, {_select(metrics)} FROM ({per_visit}) GROUP BY value "
               f"ORDER BY {order} DESC, value LIMIT {{limit:UInt32}} OFFSET {{offset:UInt32}}")
    elif value is not None:
        per_visit = f"""
            SELECT {value.expr} AS value, n.visitor AS visitor, n.visit_no AS visit_no,
                   countIf(n.type = 'page') AS m_pageviews, count() AS m_events,
                   any(s.pageviews) AS pageviews, any(s.events) AS events, any(s.duration) AS duration
            FROM ({numbered_sql(scope)}) AS n
            INNER JOIN ({sessions_sql(scope)}) AS s ON n.visitor = s.visitor AND n.visit_no = s.visit_no
            WHERE ({value.where}) AND {scope.event_match()}
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
