"""The answers of the reports added for issue #20 (paths, annotations, realtime detail), for the OpenAPI
document, beside schemas.py's: the routes build their JSON themselves, these describe it."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

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


class AnnotationIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"app_id": "6f1c9a52-3a5e-4c5b-9a37-3c8f2f1d2a10", "date": "2026-01-15", "text": "Launched the new pricing page"},
        {"datetime": "2026-01-15T09:30:00Z", "text": "Newsletter sent"}]})
    app_id: str | None = Field(default=None, max_length=64, description="required with a Bearer token (or as app_id=)")
    date: dt.date | None = Field(default=None, description="a day (as the site shows it): an all-day note")
    datetime: dt.datetime | None = Field(default=None, description="or a moment (naive: UTC)")
    text: str = Field(min_length=1, max_length=500)


class Annotation(BaseModel):
    model_config = _example(id="2b9f6a3e-7c1d-4f0e-9a55-1d2c3b4a5e6f", date="2026-01-15", datetime=None,
                            text="Launched the new pricing page", created_at="2026-01-15T10:02:11Z")
    id: str
    date: str | None = Field(description="YYYY-MM-DD for an all-day note")
    datetime: str | None = Field(description="ISO 8601, UTC, for a note at a moment")
    text: str
    created_at: str


class Annotations(BaseModel):
    model_config = _example(period={"start": "2026-01-01T00:00:00Z", "end": "2026-01-31T00:00:00Z"}, annotations=[
        {"id": "2b9f6a3e-7c1d-4f0e-9a55-1d2c3b4a5e6f", "date": "2026-01-15", "datetime": None,
         "text": "Launched the new pricing page", "created_at": "2026-01-15T10:02:11Z"}])
    period: Period
    annotations: list[Annotation] = Field(description="oldest first")


class RealtimeMinute(BaseModel):
    minute: str = Field(description="the minute's start, ISO 8601, UTC")
    visitors: int


class RealtimeDetail(BaseModel):
    model_config = _example(visitors=3, minutes=[{"minute": "2026-01-31T11:31:00Z", "visitors": 2}],
                            pages=[{"page": "/pricing", "visitors": 2}], sources=[{"source": "google.com", "visitors": 1}])
    visitors: int = Field(description="distinct visitors in the last 30 minutes")
    minutes: list[RealtimeMinute] = Field(description="30 minutes, oldest first; the last is the current one")
    pages: list[dict[str, Any]] = Field(description="the 10 pages most visitors viewed in the 30 minutes: page, visitors")
    sources: list[dict[str, Any]] = Field(description="the 10 sources most of those visitors came from: source, visitors")
