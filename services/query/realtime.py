# ruff: noqa: S608 - SQL from fixed fragments only; every value is a bind parameter
"""The realtime view: visitors per minute over the last 30 minutes, and the top pages and sources now.

Counted as stats.py counts (web events, no bots). The 30 minutes are whole minutes: the current one
(so far) and the 29 before it. A visitor's source is that of their first event in the window.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from libs.clickhouse import ClickHouse
from services.query.queries import ts_param
from services.query.stats import VISIT_PROPS, WEB_TYPES

MINUTES = 30
TOP = 10


def window(now: datetime) -> tuple[datetime, datetime, list[datetime]]:
    """[start, end) of the last 30 minutes and each minute's start, oldest first."""
    current = now.astimezone(UTC).replace(second=0, microsecond=0)
    minutes = [current - timedelta(minutes=n) for n in range(MINUTES - 1, -1, -1)]
    return minutes[0], now + timedelta(seconds=1), minutes


async def detail(ch: ClickHouse, app_id: str, now: datetime) -> dict[str, Any]:
    start, end, minutes = window(now)
    params = {"app_id": app_id, "start": ts_param(start), "end": ts_param(end), "top": TOP}
    where = f"""app_id = {{app_id:String}} AND timestamp >= {{start:DateTime64(3, 'UTC')}}
                AND timestamp < {{end:DateTime64(3, 'UTC')}} AND NOT is_bot AND {WEB_TYPES}"""
    per_minute = await ch.query(
        f"""SELECT formatDateTime(toStartOfMinute(timestamp), '%Y-%m-%dT%H:%i:00Z', 'UTC') AS minute,
                   uniqExact(visitor_id) AS visitors
            FROM events FINAL WHERE {where} GROUP BY minute""", params)
    totals = await ch.query(f"SELECT uniqExact(visitor_id) AS visitors FROM events FINAL WHERE {where}", params)
    pages = await ch.query(
        f"""SELECT path AS page, uniqExact(visitor_id) AS visitors FROM events FINAL
            WHERE {where} AND type = 'page' GROUP BY page ORDER BY visitors DESC, page LIMIT {{top:UInt32}}""", params)
    sources = await ch.query(
        f"""SELECT source, count() AS visitors FROM (
                SELECT visitor_id, argMin({VISIT_PROPS["source"]}, timestamp) AS source
                FROM events FINAL WHERE {where} GROUP BY visitor_id
            ) GROUP BY source ORDER BY visitors DESC, source LIMIT {{top:UInt32}}""", params)
    found = {r["minute"]: int(r["visitors"]) for r in per_minute}
    keys = [m.strftime("%Y-%m-%dT%H:%M:00Z") for m in minutes]
    return {
        "visitors": int(totals[0]["visitors"]) if totals else 0,
        "minutes": [{"minute": k, "visitors": found.get(k, 0)} for k in keys],
        "pages": [{"page": r["page"], "visitors": int(r["visitors"])} for r in pages],
        "sources": [{"source": r["source"], "visitors": int(r["visitors"])} for r in sources],
    }
