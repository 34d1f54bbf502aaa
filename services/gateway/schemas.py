"""Inbound event shapes the gateway accepts (the seeds' field names)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Required

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, with_config
from typing_extensions import TypedDict

Text40 = Annotated[str | None, Field(max_length=40)]
Text64 = Annotated[str | None, Field(max_length=64)]
Text128 = Annotated[str | None, Field(max_length=128)]
Text200 = Annotated[str | None, Field(max_length=200)]
Text4096 = Annotated[str | None, Field(max_length=4096)]


# The second seed's event is validated into a plain dict (a TypedDict): the most frequent request of
# all, and pydantic validates a TypedDict in half the time it takes to build the two model instances
# (about 0.9 µs against 1.7 µs). Same validation, same error messages.
@with_config(ConfigDict(extra="allow"))
class CollectMetadata(TypedDict, total=False):
    browser: Text200
    os: Text200
    screenSize: Text40


@with_config(ConfigDict(extra="forbid"))
class CollectEvent(TypedDict, total=False):
    """The second seed's event (`POST /api/analytics/collect`)."""

    event: Required[Annotated[str, Field(min_length=1, max_length=200)]]  # "login_form_cta_click"
    url: Text4096
    referrer: Text4096
    device: Text40  # "mobile", "desktop", "tablet"
    ipAddress: Text64
    timestamp: datetime | None
    metadata: CollectMetadata | None
    userId: Text200
    sessionId: Text200
    event_id: Text128  # idempotency key for retries
    properties: dict[str, Any] | None


COLLECT_EVENT = TypeAdapter(CollectEvent)


class SeedEvent(BaseModel):
    """The first seed's event (`POST /api/analytics/events`)."""

    model_config = ConfigDict(extra="forbid")
    event_name: str = Field(min_length=1, max_length=200)
    event_category: str | None = Field(default=None, max_length=200)
    source: str | None = Field(default=None, max_length=200)
    user_id: str | None = Field(default=None, max_length=200)
    session_id: str | None = Field(default=None, max_length=200)
    metadata: dict[str, Any] | None = None
    timestamp: datetime | None = None
    event_id: str | None = Field(default=None, max_length=128)


class MetricIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metric_name: str = Field(min_length=1, max_length=200)
    value: float
    unit: str | None = Field(default=None, max_length=40)
    tags: dict[str, str] | None = None
    timestamp: datetime | None = None
    event_id: str | None = Field(default=None, max_length=128)


class Accepted(BaseModel):
    accepted: int
    event_ids: list[str] = Field(default_factory=list)
    errors: list[dict[str, Any]] = Field(default_factory=list, description="rejected events, by index")
