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
    model_config = ConfigDict(json_schema_extra={"examples": [
        {"accepted": 1, "event_ids": ["01JF3Q6Y8Z2N4K7M9P1R3T5V7X"], "errors": []},
    ]})

    accepted: int = Field(description="events Kafka acknowledged")
    event_ids: list[str] = Field(default_factory=list, description="their ids, in the order sent")
    errors: list[dict[str, Any]] = Field(default_factory=list, description="rejected events, by index")


def inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its `$defs` put in place (its `#/$defs/...` refs would be read against
    the OpenAPI document's root)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    inlined_schema: dict[str, Any] = walk(schema)
    return inlined_schema


def one_or_batch(event: dict[str, Any], key: str, max_items: int) -> dict[str, Any]:
    """One event, or `{key: [events]}`."""
    batch = {"type": "object", "title": "Batch", "required": [key],
             "properties": {key: {"type": "array", "items": event, "minItems": 1, "maxItems": max_items}}}
    return {"anyOf": [event, batch]}


_INGEST_EXAMPLES: dict[str, dict[str, Any]] = {
    "collect": {"event": "signup_click", "url": "https://example.com/pricing", "userId": "u_42", "device": "desktop",
                "metadata": {"browser": "Firefox", "os": "Linux", "screenSize": "1920x1080"}},
    "events": {"event_name": "checkout_completed", "event_category": "shop", "user_id": "u_42",
               "metadata": {"plan": "pro", "amount": 49}},
    "metrics": {"metric_name": "page_load_ms", "value": 412.5, "unit": "ms", "tags": {"page": "/pricing"}},
}


def ingest_body(route: str, max_items: int) -> dict[str, Any]:
    """The OpenAPI media type of `POST /api/analytics/<route>`'s body: the event it validates, or a batch.
    (The route reads the body raw, gzip or a text/plain beacon too, and validates event by event.)"""
    event = COLLECT_EVENT.json_schema() if route == "collect" else (NamedEvent if route == "events" else MetricIn).model_json_schema()
    example = _INGEST_EXAMPLES[route]
    return {"schema": one_or_batch(inlined(event), "events", max_items),
            "examples": {"one": {"value": example}, "batch": {"value": {"events": [example, example]}}}}
