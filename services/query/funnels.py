# ruff: noqa: S608 - SQL from fixed fragments only; every value is a bind parameter
"""Funnels (ordered steps within a window, ClickHouse `windowFunnel`) and retention cohorts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from libs.clickhouse import ClickHouse
from services.query.queries import ts_param


def _and(only: tuple[str, dict[str, Any]]) -> str:
    return f" AND {only[0]}" if only[0] else ""


COHORT_UNITS = {"day": ("toStartOfDay", "day"), "week": ("toMonday", "week")}


def levels_sql(
    app_id: str, start: datetime, end: datetime, steps: list[str], window_s: int, only: tuple[str, dict[str, Any]]
) -> tuple[str, dict[str, Any]]:
    """Each visitor with a step in [start, end) and the last step they reached in order (`level`), and
    the bound values."""
    params: dict[str, Any] = {"app_id": app_id, "start": ts_param(start), "end": ts_param(end), "window": window_s,
                              **only[1]}
    conditions = []
    for i, step in enumerate(steps):
        params[f"s{i}"] = step
        conditions.append(f"event_name = {{s{i}:String}}")
    sql = f"""
        SELECT visitor_id AS visitor,
               windowFunnel({{window:UInt64}})(toDateTime(timestamp), {', '.join(conditions)}) AS level
        FROM events FINAL
        WHERE app_id = {{app_id:String}} AND timestamp >= {{start:DateTime64(3, 'UTC')}}
          AND timestamp < {{end:DateTime64(3, 'UTC')}} AND NOT is_bot
          AND event_name IN ({', '.join(f'{{s{i}:String}}' for i in range(len(steps)))}){_and(only)}
        GROUP BY visitor"""
    return sql, params


async def dropoff(
    ch: ClickHouse, app_id: str, start: datetime, end: datetime, steps: list[str], window_s: int, step: int,
    limit: int, offset: int, only: tuple[str, dict[str, Any]] = ("", {}),
) -> tuple[list[dict[str, Any]], int]:
    """Who reached step `step` (1-based) but not the next: each one's user id (else anonymous id, else
    session id) and when they were last seen (any event), most recently seen first; and how many."""
    levels, params = levels_sql(app_id, start, end, steps, window_s, only)
    dropped = f"SELECT visitor FROM ({levels}) WHERE level = {{level:UInt8}}"
    params = {**params, "level": step, "limit": limit, "offset": offset}
    rows = await ch.query(
        f"""SELECT visitor_id AS v,
                   argMax(if(user_id != '', user_id, if(anonymous_id != '', anonymous_id, session_id)), timestamp) AS who,
                   argMax(user_id, timestamp) AS uid, max(timestamp) AS last_seen
            FROM events FINAL
            WHERE app_id = {{app_id:String}} AND NOT is_bot AND visitor_id IN ({dropped})
            GROUP BY v ORDER BY last_seen DESC, who LIMIT {{limit:UInt32}} OFFSET {{offset:UInt32}}""",
        params,
    )
    total = await ch.query(f"SELECT count() AS n FROM ({dropped})", params)
    users = [{"visitor": r["who"], "user_id": r["uid"], "last_seen": r["last_seen"]} for r in rows]
    return users, int(total[0]["n"]) if total else 0


async def funnel(
    ch: ClickHouse, app_id: str, start: datetime, end: datetime, steps: list[str], window_s: int,
    only: tuple[str, dict[str, Any]] = ("", {}),
) -> list[dict[str, Any]]:
    """`only`: a condition on visitor_id with its values (segments.segment_condition), or none."""
    levels, params = levels_sql(app_id, start, end, steps, window_s, only)
    rows = await ch.query(f"SELECT level, count() AS n FROM ({levels}) WHERE level > 0 GROUP BY level", params)
    at_level = {int(r["level"]): int(r["n"]) for r in rows}
    out: list[dict[str, Any]] = []
    first = 0
    previous = 0
    for i, step in enumerate(steps, start=1):
        reached = sum(n for level, n in at_level.items() if level >= i)
        if i == 1:
            first = previous = reached
        out.append({
            "name": step,
            "visitors": reached,
            "conversion_rate": round(100 * reached / first, 1) if first else 0.0,
            "step_conversion_rate": round(100 * reached / previous, 1) if previous else 0.0,
        })
        previous = reached
    return out


async def retention(
    ch: ClickHouse, app_id: str, interval: str, first_cohort: str, end: datetime, tz: str,
    only: tuple[str, dict[str, Any]] = ("", {}),
) -> dict[str, dict[int, int]]:
    """{cohort date: {offset: visitors}}; a visitor's cohort is the first interval they were ever seen in."""
    start_fn, unit = COHORT_UNITS[interval]
    rows = await ch.query(
        # Each visitor once, with the intervals they were seen in (one hash aggregation; a window over
        # every (visitor, interval) pair took about twice as long over 10 million events).
        f"""SELECT toString(c) AS cohort, dateDiff('{unit}', c, b) AS off, count() AS n FROM (
                SELECT visitor, min(b) AS c, groupUniqArray(b) AS seen FROM (
                    SELECT visitor_id AS visitor, toDate({start_fn}(timestamp, {{tz:String}})) AS b
                    FROM events FINAL
                    WHERE app_id = {{app_id:String}} AND timestamp < {{end:DateTime64(3, 'UTC')}} AND NOT is_bot{_and(only)}
                )
                GROUP BY visitor HAVING c >= toDate({{first:String}})
            ) ARRAY JOIN seen AS b GROUP BY c, off""",
        {"app_id": app_id, "end": ts_param(end), "tz": tz, "first": first_cohort, **only[1]},
    )
    out: dict[str, dict[int, int]] = {}
    for r in rows:
        out.setdefault(r["cohort"], {})[int(r["off"])] = int(r["n"])
    return out


async def retention_cohorts(
    ch: ClickHouse, app_id: str, interval: str, cohorts: int, tz: str, only: tuple[str, dict[str, Any]] = ("", {})
) -> list[dict[str, Any]]:
    """The last `cohorts` cohorts (days or weeks starting Monday, in `tz`), oldest first: each one's size,
    how many came back in each later interval, and that as a percentage of the size."""
    local_today = datetime.now(UTC).astimezone(ZoneInfo(tz)).date()
    step = timedelta(days=1 if interval == "day" else 7)
    current = local_today if interval == "day" else local_today - timedelta(days=local_today.weekday())
    starts = [current - step * i for i in range(cohorts - 1, -1, -1)]
    end = datetime.now(UTC) + timedelta(seconds=1)
    data = await retention(ch, app_id, interval, starts[0].isoformat(), end, tz, only)
    out = []
    for index, start in enumerate(starts):
        counts = data.get(start.isoformat(), {})
        size = counts.get(0, 0)
        retained = [counts.get(i, 0) for i in range(len(starts) - index)]
        out.append({"cohort": start.isoformat(), "size": size, "retained": retained,
                    "rates": [round(100 * n / size, 1) if size else 0.0 for n in retained]})
    return out
