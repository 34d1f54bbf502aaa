# ruff: noqa: S608 - SQL from fixed fragments only; every value is a bind parameter
"""The parameters that narrow a read beyond the fixed filters: `goal=` (a goal's id or name),
`props=<name>==<value>` (a custom event property; `!=` for any other value) and `segment_id=` (a saved
segment's visitors). Checked here (422 saying what to send, 404 for a segment the app does not have),
resolved against the app's definitions, and handed to the SQL as a stats.Refine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Query

from libs.clickhouse import ClickHouse
from libs.http import ApiError
from services.query import goals, segments
from services.query.context import App, StatsApp
from services.query.definitions import Definitions, Defs
from services.query.queries import ts_param
from services.query.stats import PROP_VALUE, PROPS_JSON, WEB_TYPES, EventValue, Refine

PROPS_PREFIX = "props:"
MAX_PROPS = 10
MAX_PROPERTY_NAME = 200


@dataclass(frozen=True)
class SegmentChoice:
    """The segment a read is restricted to (None: everyone)."""

    segment: dict[str, Any] | None = None

    def condition(self) -> tuple[str, dict[str, Any]]:
        """segments.segment_condition, or no condition."""
        return segments.segment_condition(self.segment) if self.segment else ("", {})

    def key(self) -> Any:
        return [self.segment["id"], self.segment["spec"]] if self.segment else None

    @property
    def live(self) -> bool:
        """A segment counting the last D days moves with the clock: its answers are cached briefly."""
        return bool(self.segment) and segments.window_is_relative(self.segment or {})


SegmentId = Annotated[str | None, Query(max_length=64, description="only the visitors of this saved segment")]


async def _segment(defs: Definitions, app_id: str, segment_id: str | None) -> SegmentChoice:
    if not segment_id:
        return SegmentChoice()
    found = await defs.get("segment", app_id, segment_id)
    if found is None:
        raise ApiError(404, "segment not found; GET /api/analytics/segments lists this app's")
    return SegmentChoice(found)


async def segment_choice(defs: Defs, app_id: App, segment_id: SegmentId = None) -> SegmentChoice:
    return await _segment(defs, app_id, segment_id)


async def stats_segment_choice(defs: Defs, app_id: StatsApp, segment_id: SegmentId = None) -> SegmentChoice:
    """`segment_choice` of a stats route, whose app a shared link may name too."""
    return await _segment(defs, app_id, segment_id)


SegmentParam = Annotated[SegmentChoice, Depends(segment_choice)]


@dataclass(frozen=True)
class Refinement:
    goal: dict[str, Any] | None = None
    props: tuple[tuple[str, str, str], ...] = ()  # (name, == or !=, value)
    segment: SegmentChoice = field(default_factory=SegmentChoice)

    def refine(self, needs_props: bool = False) -> Refine:
        params: dict[str, Any] = {}
        goal_sql = ""
        if self.goal:
            goal_sql, params = goals.condition(self.goal, "g_match")
        props = []
        for i, (name, op, value) in enumerate(self.props):
            params.update({f"pk{i}": name, f"pv{i}": value})
            got = PROP_VALUE.format(j="props_json", k=f"{{pk{i}:String}}")
            props.append(f"JSONHas(props_json, {{pk{i}:String}}) AND {got} {'=' if op == '==' else '!='} {{pv{i}:String}}")
        visitor_sql, seg_params = self.segment.condition()
        return Refine(goal_sql=goal_sql, props_sql=" AND ".join(props), visitor_sql=visitor_sql,
                      params={**params, **seg_params}, needs_props=needs_props or bool(self.props))

    def key(self) -> Any:
        goal = [self.goal["kind"], self.goal["match"]] if self.goal else None
        return [goal, list(self.props), self.segment.key()]

    @property
    def live(self) -> bool:
        return self.segment.live


def parse_props(raw: list[str]) -> tuple[tuple[str, str, str], ...]:
    if len(raw) > MAX_PROPS:
        raise ApiError(422, f"at most {MAX_PROPS} props= filters")
    out = []
    for item in raw:
        op = "!=" if "!=" in item and ("==" not in item or item.index("!=") < item.index("==")) else "=="
        name, sep, value = item.partition(op)
        if not sep or not name.strip() or len(name) > MAX_PROPERTY_NAME or len(value) > 2048:
            raise ApiError(422, "props filters are props=<name>==<value> (or <name>!=<value>), a name of at most "
                                f"{MAX_PROPERTY_NAME} characters; got {item[:80]!r}")
        out.append((name.strip(), op, value))
    return tuple(out)


async def refinement(
    defs: Defs, app_id: StatsApp, segment: Annotated[SegmentChoice, Depends(stats_segment_choice)],
    goal: Annotated[str | None, Query(max_length=120, description="a goal's id or name: visits that completed it")] = None,
    props: Annotated[list[str] | None, Query(
        description="<name>==<value> or <name>!=<value>: events with that custom property (repeat to AND)")] = None,
) -> Refinement:
    found = None
    if goal:
        found = await defs.get("goal", app_id, goal)
        if found is None:
            raise ApiError(422, f"no goal {goal!r} in this app; GET /api/analytics/goals lists them by id and name")
    return Refinement(found, parse_props(props or []), segment)


Refinements = Annotated[Refinement, Depends(refinement)]


def property_value(name: str) -> EventValue:
    """A custom property's value for the breakdown (`property=props:<name>`): events that have it."""
    if not name or len(name) > MAX_PROPERTY_NAME:
        raise ApiError(422, f"property=props:<name> needs a name of 1 to {MAX_PROPERTY_NAME} characters")
    return EventValue(PROP_VALUE.format(j="n.props_json", k="{bk:String}"), "JSONHas(n.props_json, {bk:String})",
                      {"bk": name})


async def property_names(ch: ClickHouse, app_id: str, event_name: str | None, start: Any, end: Any, limit: int) -> list[dict[str, Any]]:
    """The custom property names seen on the app's events (of one name, if given) in [start, end), with
    how many events carried each, most common first."""
    params: dict[str, Any] = {"app_id": app_id, "start": ts_param(start), "end": ts_param(end), "limit": limit}
    only = ""
    if event_name:
        only = " AND event_name = {event:String}"
        params["event"] = event_name
    rows = await ch.query(
        f"""SELECT name, count() AS events FROM (
                SELECT arrayJoin(JSONExtractKeys({PROPS_JSON})) AS name FROM events FINAL
                WHERE app_id = {{app_id:String}} AND timestamp >= {{start:DateTime64(3, 'UTC')}}
                  AND timestamp < {{end:DateTime64(3, 'UTC')}} AND NOT is_bot AND {WEB_TYPES}{only}
            ) GROUP BY name ORDER BY events DESC, name LIMIT {{limit:UInt32}}""",
        params,
    )
    return [{"name": r["name"], "events": int(r["events"])} for r in rows]
