# ruff: noqa: S608 - SQL from fixed fragments only; every value is a bind parameter
"""Paths: what visits do after (or did before) a page or an event.

A visit's steps are its web events in time order (stats.py numbers the visits: no gap over 30
minutes), each named by its path when it is a page view and by its event name otherwise. Each visit
that has the start step counts once, from its first occurrence of it: its next `depth` steps (or the
`depth` steps before it, nearest first). The answer has the most common step sequences and, for
drawing the flow, the links between the steps of consecutive levels (level 0 is the start step)
with how many visits took each.

Visits are those that pass the stats filters (sessions_sql); a segment (`segment_id=`) would narrow
them in `_visits_clause` too, the one place that chooses which visits count.
"""

from __future__ import annotations

from typing import Any, Literal

from libs.clickhouse import ClickHouse
from services.query.stats import Scope, numbered_sql, sessions_sql

Direction = Literal["after", "before"]
MAX_DEPTH = 5
STEP = "if(type = 'page', path, event_name)"


def is_page(start: str) -> bool:
    """A start beginning with `/` is a page path; anything else an event name."""
    return start.startswith("/")


def _visits_clause(scope: Scope) -> str:
    """Which visits count: those that pass the filters (and, with segment_id=, the segment's visitors': the
    scope's `refine.visitor_sql`, which numbered_sql applies)."""
    return f"(visitor, visit_no) IN (SELECT visitor, visit_no FROM ({sessions_sql(scope)}))"


def _sequences_sql(scope: Scope, direction: Direction) -> str:
    """One row per visit that has the start step: `seq`, the steps after (before) its first start."""
    start_idx = "arrayFirstIndex((t, s) -> s = {p_start:String} AND t = {p_type:String}, kinds, steps)"
    if direction == "after":
        seq = "arraySlice(steps, i + 1, {depth:UInt8})"
    else:
        seq = "arrayReverse(arraySlice(steps, greatest(1, i - {depth:UInt8}), i - greatest(1, i - {depth:UInt8})))"
    return f"""
        SELECT {seq} AS seq FROM (
            SELECT *, {start_idx} AS i FROM (
                SELECT arrayMap(x -> x.3, ordered) AS steps, arrayMap(x -> x.2, ordered) AS kinds
                FROM (
                    SELECT arraySort(groupArray((timestamp, if(type = 'page', 'page', 'event'), {STEP}))) AS ordered
                    FROM ({numbered_sql(scope)})
                    WHERE {_visits_clause(scope)}
                    GROUP BY visitor, visit_no
                )
            )
        ) WHERE i > 0"""


async def paths(
    ch: ClickHouse, scope: Scope, start: str, direction: Direction, depth: int, limit: int,
) -> dict[str, Any]:
    """The visits that reached `start`, their `limit` most common sequences, and per level the `limit`
    most taken links."""
    params = {**scope.params(), "p_start": start, "p_type": "page" if is_page(start) else "event", "depth": depth,
              "limit": limit}
    sequences = _sequences_sql(scope, direction)
    total = await ch.query(f"SELECT count() AS n FROM ({sequences})", params)
    top = await ch.query(
        f"""SELECT seq, count() AS n FROM ({sequences}) GROUP BY seq
            ORDER BY n DESC, length(seq) DESC, toString(seq) LIMIT {{limit:UInt32}}""", params)
    links = await ch.query(
        f"""SELECT level, src, dst, count() AS n FROM (
                SELECT level, if(level = 1, {{p_start:String}}, seq[level - 1]) AS src, seq[level] AS dst
                FROM ({sequences}) ARRAY JOIN arrayEnumerate(seq) AS level
            ) GROUP BY level, src, dst
            ORDER BY level, n DESC, src, dst LIMIT {{limit:UInt32}} BY level""", params)
    return {
        "visits": int(total[0]["n"]) if total else 0,
        "paths": [{"steps": list(r["seq"]), "visits": int(r["n"])} for r in top],
        "links": [{"level": int(r["level"]), "from": r["src"], "to": r["dst"], "visits": int(r["n"])} for r in links],
    }
