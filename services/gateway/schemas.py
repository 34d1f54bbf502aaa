"""Inbound event shapes of the gateway's `/api/analytics/*` routes. Limits: libs/limits.py."""

from __future__ import annotations

from typing import Annotated, Any, Required

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, with_config
from typing_extensions import TypedDict

from libs.limits import ID_CHARS, NAME_CHARS, SHORT_CHARS, URL_CHARS, EventTime, FiniteFloat

Text40 = Annotated[str | None, Field(max_length=SHORT_CHARS)]
Text64 = Annotated[str | None, Field(max_length=64)]
Text128 = Annotated[str | None, Field(max_length=ID_CHARS)]
Text200 = Annotated[str | None, Field(max_length=NAME_CHARS)]
Text4096 = Annotated[str | None, Field(max_length=URL_CHARS)]
Name = Annotated[str, Field(min_length=1, max_length=NAME_CHARS)]


# The `/api/analytics/collect` event is validated into a plain dict (a TypedDict): the most frequent
# request of all, and pydantic validates a TypedDict faster than it builds the two model instances.
# Same validation, same error messages.
@with_config(ConfigDict(extra="allow"))
class CollectMetadata(TypedDict, total=False):
    browser: Text200
    os: Text200
    screenSize: Text40


@with_config(ConfigDict(extra="forbid"))
class CollectEvent(TypedDict, total=False):
    """An event of `POST /api/analytics/collect` (camelCase fields: `event`, `userId`, ...)."""

    event: Required[Name]  # "login_form_cta_click"
    url: Text4096
    referrer: Text4096
    device: Text40  # "mobile", "desktop", "tablet"
    ipAddress: Text64
    timestamp: EventTime | None
    metadata: CollectMetadata | None
    userId: Text200
    sessionId: Text200
    event_id: Text128  # idempotency key for retries
    properties: dict[str, Any] | None


COLLECT_EVENT = TypeAdapter(CollectEvent)


class NamedEvent(BaseModel):
    """An event of `POST /api/analytics/events` (snake_case fields: `event_name`, `user_id`, ...)."""

    model_config = ConfigDict(extra="forbid")
    event_name: Name
    event_category: Text200 = None
    source: Text200 = None
    user_id: Text200 = None
    session_id: Text200 = None
    metadata: dict[str, Any] | None = None
    timestamp: EventTime | None = None
    event_id: Text128 = None


class MetricIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metric_name: Name
    value: FiniteFloat
    unit: Text40 = None
    tags: dict[str, str] | None = None
    timestamp: EventTime | None = None
    event_id: Text128 = None


class Accepted(BaseModel):
    accepted: int
    event_ids: list[str] = Field(default_factory=list)
    errors: list[dict[str, Any]] = Field(default_factory=list, description="rejected events, by index")
