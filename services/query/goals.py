"""Goals: a page (a path, `*` matching any characters: `/blog/*`) or an event (its exact name) that
counts as a conversion. Stored per app (definitions.py); read by the stats as a filter (`goal=`), as
conversion metrics (`conversions`, `completions`, `conversion_rate`) and as the `goal` breakdown."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from services.query.schemas import DefinitionIn

GOAL_EXAMPLE: dict[str, Any] = {"app_id": "3f2c8a9e-6a1b-4c9d-8e2f-0a1b2c3d4e5f", "name": "Visit the blog", "kind": "page",
                "match": "/blog/*"}


class GoalIn(DefinitionIn):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        dict(GOAL_EXAMPLE), {"name": "Signup", "kind": "event", "match": "signed_up"}]})
    kind: Literal["event", "page"] = Field(description="page: a path with * wildcards; event: an event name, exactly")
    match: str = Field(min_length=1, max_length=500)

    @field_validator("name", "match")
    @classmethod
    def _trimmed(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must not be blank")
        return value

    @model_validator(mode="after")
    def _page_path(self) -> GoalIn:
        if self.kind == "page" and not self.match.startswith(("/", "*")):
            raise ValueError("a page goal's match is a path starting with / (wildcards: /blog/*)")
        return self


class Goal(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "0b7a3f52-5a1e-4f51-9d2c-2f0d8f2f7e11", **GOAL_EXAMPLE, "created_at": "2026-01-31T12:00:00+00:00"}]})
    id: str
    app_id: str
    name: str
    kind: str
    match: str
    created_at: str


class GoalList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"goals": [{
        "id": "0b7a3f52-5a1e-4f51-9d2c-2f0d8f2f7e11", **GOAL_EXAMPLE, "created_at": "2026-01-31T12:00:00+00:00"}]}]})
    goals: list[Goal] = Field(description="by name")


def like_pattern(match: str) -> str:
    """A page match as a LIKE pattern: `*` any characters, every other character itself."""
    escaped = match.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%")


def condition(goal: dict[str, Any], name: str) -> tuple[str, dict[str, Any]]:
    """The goal as a condition on an event's type, event_name and path, with its value bound as `name`."""
    if goal["kind"] == "event":
        return f"event_name = {{{name}:String}}", {name: goal["match"]}
    return f"type = 'page' AND path LIKE {{{name}:String}}", {name: like_pattern(goal["match"])}


def completed_index(goals: list[dict[str, Any]]) -> tuple[str, str, dict[str, Any]]:
    """For the `goal` breakdown: an expression giving each goal an event completes (by its index in
    `goals`, one row each: an event can complete several), the condition of completing any, and the
    bound values."""
    conditions, params = [], {}
    for i, goal in enumerate(goals):
        sql, values = condition(goal, f"gb{i}")
        conditions.append(sql)
        params.update(values)
    indexes = ", ".join(f"if({c}, {i}, -1)" for i, c in enumerate(conditions))
    expr = f"arrayJoin(arrayFilter(x -> x >= 0, [{indexes}]))"
    return expr, " OR ".join(f"({c})" for c in conditions), params
