"""The event contract: one enriched event on `analytics.events.v1` (schema version 1).

Producers: the gateway. Consumers: the aggregator, and any internal team subscribed to the topic.
The JSON value has exactly the fields of `EnrichedEvent`; the key is the app id; the `request_id`
header carries the id of the HTTP request that brought the event in. Fields may be added in v1
(consumers must ignore unknown fields); renaming or removing one needs `analytics.events.v2`.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from libs.limits import APP_ID_CHARS, ID_CHARS, NAME_CHARS, EventTime, FiniteFloat, StoredProperties

SCHEMA_VERSION: Final = 1

EventType = Literal["track", "page", "screen", "identify", "group", "alias", "metric"]


class EnrichedEvent(BaseModel):
    model_config = ConfigDict(extra="ignore")

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: str = Field(min_length=1, max_length=ID_CHARS, description="client messageId, else generated")
    app_id: str = Field(min_length=1, max_length=APP_ID_CHARS)
    type: EventType = "track"
    event_name: str = Field(max_length=NAME_CHARS)
    event_category: str = ""
    source: str = Field("", description="collect | events | metrics | segment | script, or the client's own")
    source_kind: str = Field(
        "",
        description="browser | server | mobile: what sent the event, from the Segment `channel` or "
        "`context.library.name` (analytics-python, analytics-ios, ...), else the request's User-Agent "
        "(curl, requests, Go-http-client: server; okhttp, CFNetwork: mobile; browsers and crawlers: browser). "
        "Empty on events stored before it was recorded",
    )
    user_id: str = ""
    anonymous_id: str = ""
    session_id: str = ""
    url: str = ""
    path: str = ""
    referrer: str = ""
    referrer_host: str = ""
    utm_source: str = ""
    utm_medium: str = ""
    utm_campaign: str = ""
    utm_term: str = ""
    utm_content: str = ""
    device_type: str = Field("", description="mobile | tablet | desktop | bot | other")
    browser: str = ""
    os: str = ""
    screen_size: str = ""
    country: str = ""
    ip: str = ""
    user_agent: str = ""
    properties: StoredProperties = Field(
        default_factory=dict, description="the event's properties exactly as sent (null values, empty objects "
        "included), within libs/limits.py's limits")
    metric_value: FiniteFloat | None = None
    metric_unit: str = ""
    timestamp: EventTime = Field(description="when it happened (client clock, skew-corrected), UTC")
    received_at: EventTime = Field(description="when the gateway received it, UTC")
    is_bot: bool = Field(False, description="a crawler: a known bot or a headless browser posing as a visitor "
                                            "(server-side and mobile senders never are)")
    flags: list[str] = Field(default_factory=list, description="e.g. timestamp_clamped")


def json_schema() -> dict[str, Any]:
    return EnrichedEvent.model_json_schema()
