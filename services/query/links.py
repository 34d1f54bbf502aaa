# ruff: noqa: S608 - SQL from fixed fragments only; every value is a bind parameter
"""Outbound link targets and file downloads: the URLs the tracking snippet reports on its automatic
`Outbound Link: Click` and `File Download` events (their `url` property), as breakdowns
(`stats/breakdown?property=outbound_link|file_download`), by visitors and events.

The stats filters choose the visitors: those with a visit that passes them (a visitor's clicks are
counted whichever of their visits of the range they fell in).
"""

from __future__ import annotations

from typing import Any

from libs.clickhouse import ClickHouse
from services.query.stats import WEB_TYPES, Scope, sessions_sql

EVENTS = {"outbound_link": "Outbound Link: Click", "file_download": "File Download"}
PROPERTIES = tuple(EVENTS)
METRICS = ("visitors", "events")
URL = "JSONExtractString(if(properties_json != '', properties_json, toJSONString(properties)), 'url')"


async def breakdown(ch: ClickHouse, scope: Scope, prop: str, metrics: list[str], limit: int, offset: int) -> list[dict[str, Any]]:
    visitors = f" AND visitor_id IN (SELECT visitor FROM ({sessions_sql(scope)}))" if scope.filters else ""
    select = {"visitors": "uniqExact(visitor_id) AS r_visitors", "events": "count() AS r_events"}
    order = "r_visitors" if "visitors" in metrics else f"r_{metrics[0]}"
    rows = await ch.query(
        f"""SELECT {URL} AS value, {", ".join(select[m] for m in metrics)} FROM events FINAL
            WHERE app_id = {{app_id:String}} AND timestamp >= {{start:DateTime64(3, 'UTC')}}
              AND timestamp < {{end:DateTime64(3, 'UTC')}} AND NOT is_bot AND {WEB_TYPES}
              AND event_name = {{link_event:String}}{visitors}
            GROUP BY value ORDER BY {order} DESC, value LIMIT {{limit:UInt32}} OFFSET {{offset:UInt32}}""",
        {**scope.params(), "link_event": EVENTS[prop], "limit": limit, "offset": offset},
    )
    return [{prop: r["value"], **{m: int(r[f"r_{m}"]) for m in metrics}} for r in rows]
