# ruff: noqa: S608 - SQL from fixed fragments only; every value is a bind parameter
"""Segments: saved, named sets of visitors (custom user segmentation). A segment holds every visitor
who meets all of its conditions:

* `filters`: had an event with these values (country, device, page, utm, ... as FILTERS below);
* `events`: did event X at least N times in the last D days;
* `first_seen`: was first seen (their first event ever) between two days, inclusive (UTC);
* `traits`: their latest identify traits (the most recent identify call that set the trait) compare so.

`segment_condition(segment)` is the segment as a condition on the events table's `visitor_id` (with its
bound values, all named `sg_*`): the stats, funnels, retention, paths and the user list AND it into
their WHERE to read only the segment's visitors."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.query.queries import ts_param
from services.query.schemas import DefinitionIn
from services.query.stats import PROP_VALUE, PROPS_JSON

# Filter name: (events column, extra condition).
FILTERS: dict[str, tuple[str, str]] = {
    "page": ("path", "type = 'page'"), "event_name": ("event_name", ""), "country": ("country", ""),
    "device": ("device_type", ""), "browser": ("browser", ""), "os": ("os", ""),
    "referrer_host": ("referrer_host", ""), "utm_source": ("utm_source", ""), "utm_medium": ("utm_medium", ""),
    "utm_campaign": ("utm_campaign", ""), "utm_term": ("utm_term", ""), "utm_content": ("utm_content", ""),
}
MAX_CONDITIONS = 10
TRAITS = f"{PROPS_JSON}, 'traits'"  # an identify event's traits (the JSON path to them)
# Trait comparison: SQL over the latest value `v` (its text, as PROP_VALUE reads it) and the bound `x`.
TRAIT_OPS = {
    "eq": "{v} = {x}", "neq": "{v} != {x}", "contains": "positionCaseInsensitive({v}, {x}) > 0",
    "gt": "toFloat64OrNull({v}) > {x}", "lt": "toFloat64OrNull({v}) < {x}",
}

SEGMENT_EXAMPLE: dict[str, Any] = {
    "name": "Engaged pro users", "filters": {"country": "DE"},
    "events": [{"event": "signup_click", "min_count": 2, "days": 30}],
    "first_seen": {"start": "2026-01-01", "end": "2026-01-31"},
    "traits": [{"name": "plan", "op": "eq", "value": "pro"}],
}


class EventCondition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event: str = Field(min_length=1, max_length=200, description="an event name, exactly")
    min_count: int = Field(1, ge=1, le=1_000_000, description="at least this many times")
    days: int = Field(30, ge=1, le=3650, description="in the last this many days (from now)")


class FirstSeen(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start: date = Field(description="first day, inclusive (UTC)")
    end: date = Field(description="last day, inclusive (UTC)")

    @model_validator(mode="after")
    def _ordered(self) -> FirstSeen:
        if self.end < self.start:
            raise ValueError("first_seen.end is before first_seen.start")
        return self


class TraitCondition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200, description="an identify trait")
    op: Literal["eq", "neq", "contains", "gt", "lt"] = "eq"
    value: str | float | bool = Field(description="text as sent; numbers compare as numbers with gt and lt")

    @model_validator(mode="after")
    def _numeric(self) -> TraitCondition:
        if self.op in ("gt", "lt") and (isinstance(self.value, bool) or not isinstance(self.value, int | float)):
            raise ValueError(f"op {self.op} compares numbers; send a number as value")
        return self

    def text(self) -> str:
        """The value as PROP_VALUE reads a trait: a string as itself, anything else as its JSON text."""
        if isinstance(self.value, bool):
            return "true" if self.value else "false"
        if isinstance(self.value, float) and self.value.is_integer():
            return str(int(self.value))
        return str(self.value)


class SegmentSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    filters: dict[str, str] = Field(default_factory=dict, description=f"any of {', '.join(FILTERS)}: had an event with these values")
    events: list[EventCondition] = Field(default_factory=list, max_length=MAX_CONDITIONS)
    first_seen: FirstSeen | None = None
    traits: list[TraitCondition] = Field(default_factory=list, max_length=MAX_CONDITIONS)

    @field_validator("filters")
    @classmethod
    def _known(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(FILTERS))
        if unknown:
            raise ValueError(f"unknown filter(s) {', '.join(unknown)}; use {', '.join(FILTERS)}")
        if any(len(v) > 2048 for v in value.values()):
            raise ValueError("a filter value is at most 2048 characters")
        return value


class SegmentIn(DefinitionIn, SegmentSpec):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [SEGMENT_EXAMPLE]})

    @model_validator(mode="after")
    def _some_condition(self) -> SegmentIn:
        if not (self.filters or self.events or self.first_seen or self.traits):
            raise ValueError("a segment needs at least one condition: filters, events, first_seen or traits")
        return self

    def spec(self) -> dict[str, Any]:
        return SegmentSpec.model_validate(self.model_dump(include=set(SegmentSpec.model_fields))).model_dump(mode="json")


class Segment(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "0b7a3f52-5a1e-4f51-9d2c-2f0d8f2f7e11", "app_id": "3f2c8a9e-6a1b-4c9d-8e2f-0a1b2c3d4e5f",
        "name": SEGMENT_EXAMPLE["name"], "spec": {k: v for k, v in SEGMENT_EXAMPLE.items() if k != "name"},
        "created_at": "2026-01-31T12:00:00+00:00"}]})
    id: str
    app_id: str
    name: str
    spec: SegmentSpec
    created_at: str


class SegmentList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"segments": []}]})
    segments: list[Segment] = Field(description="by name")


def _visitors(app: str, where: str = "1", having: str = "") -> str:
    """The visitors of the app with an event where `where` (grouped, `having` on their events)."""
    group = f" GROUP BY visitor_id HAVING {having}" if having else ""
    return (f"visitor_id IN (SELECT visitor_id FROM events FINAL WHERE app_id = {{{app}:String}} AND {where}{group})")


def segment_condition(segment: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The segment (a stored row, or its `spec`) as a condition on `visitor_id`, and its bound values."""
    spec = SegmentSpec.model_validate(segment.get("spec", segment))
    params: dict[str, Any] = {"sg_app": segment["app_id"]}
    parts: list[str] = []
    if spec.filters:
        where = ["NOT is_bot"]
        for i, (name, value) in enumerate(sorted(spec.filters.items())):
            column, extra = FILTERS[name]
            where.append(f"{column} = {{sg_f{i}:String}}" + (f" AND {extra}" if extra else ""))
            params[f"sg_f{i}"] = value
        parts.append(_visitors("sg_app", " AND ".join(where)))
    for i, cond in enumerate(spec.events):
        params.update({f"sg_e{i}": cond.event, f"sg_n{i}": cond.min_count,
                       f"sg_d{i}": ts_param(datetime.now(UTC) - timedelta(days=cond.days))})
        parts.append(_visitors(
            "sg_app", f"NOT is_bot AND event_name = {{sg_e{i}:String}} AND timestamp >= {{sg_d{i}:DateTime64(3, 'UTC')}}",
            f"count() >= {{sg_n{i}:UInt32}}"))
    if spec.first_seen is not None:
        params["sg_fs0"] = ts_param(datetime.combine(spec.first_seen.start, time(), UTC))
        params["sg_fs1"] = ts_param(datetime.combine(spec.first_seen.end + timedelta(days=1), time(), UTC))
        parts.append(_visitors("sg_app", "NOT is_bot", "min(timestamp) >= {sg_fs0:DateTime64(3, 'UTC')} "
                                                      "AND min(timestamp) < {sg_fs1:DateTime64(3, 'UTC')}"))
    for i, trait in enumerate(spec.traits):
        numeric = trait.op in ("gt", "lt")
        params[f"sg_t{i}"] = trait.name
        params[f"sg_x{i}"] = trait.value if numeric else trait.text()
        latest = f"argMax({PROP_VALUE.format(j=TRAITS, k=f'{{sg_t{i}:String}}')}, timestamp)"
        test = TRAIT_OPS[trait.op].format(v=latest, x=f"{{sg_x{i}:{'Float64' if numeric else 'String'}}}")
        parts.append(_visitors("sg_app", f"type = 'identify' AND JSONHas({TRAITS}, {{sg_t{i}:String}})", test))
    return " AND ".join(parts), params


def window_is_relative(segment: dict[str, Any]) -> bool:
    """Whether the segment moves with time (its `events` conditions count the last D days)."""
    return bool(segment.get("spec", segment).get("events"))
