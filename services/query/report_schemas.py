"""The answers of the reports added for issue #20 (paths, annotations, realtime detail), for the OpenAPI
document, beside schemas.py's: the routes build their JSON themselves, these describe it."""

from __future__ import annotations

from pydantic import BaseModel, Field

from services.query.schemas import Period, _example


class PathSequence(BaseModel):
    steps: list[str] = Field(description="the steps after (before: nearest first) the start; shorter when the visit ended")
    visits: int


class PathLink(BaseModel):
    level: int = Field(description="1: the step right after (before) the start, 2: the next, ...")
    from_: str = Field(alias="from", description="the step at level - 1 (level 1: the start)")
    to: str
    visits: int


class Paths(BaseModel):
    model_config = _example(
        start="/pricing", direction="after", depth=2, period={"start": "2026-01-01T00:00:00Z", "end": "2026-01-31T00:00:00Z"},
        visits=2, paths=[{"steps": ["signup_click", "signed_up"], "visits": 1}, {"steps": ["signup_click", "/"], "visits": 1}],
        links=[{"level": 1, "from": "/pricing", "to": "signup_click", "visits": 2},
               {"level": 2, "from": "signup_click", "to": "/", "visits": 1},
               {"level": 2, "from": "signup_click", "to": "signed_up", "visits": 1}])
    start: str = Field(description="a page path (starts with /) or an event name")
    direction: str = Field(description="after or before")
    depth: int
    period: Period
    visits: int = Field(description="visits that had the start step (each counted once, from its first)")
    paths: list[PathSequence] = Field(description="the most common step sequences, most visits first")
    links: list[PathLink] = Field(description="per level, the most taken links from a step to the next")
