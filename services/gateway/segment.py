"""The Segment HTTP Tracking API (`/v1/track|page|screen|identify|group|alias|batch`).

Unmodified Segment and RudderStack SDKs send here: HTTP Basic auth with the write key as the user
name (or `writeKey` in the body), answered `200 {"success": true}` as Segment does.
"""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from libs.http import ApiError
from libs.limits import ID_CHARS, NAME_CHARS, TIME_RANGE, EventTime, storable_time
from services.gateway import enrich
from services.gateway.schemas import inlined
from services.gateway.service import MAX_BATCH_EVENTS

CallType = Literal["track", "page", "screen", "identify", "group", "alias"]
DEFAULT_NAMES = {"page": "page_view", "screen": "screen_view", "identify": "identify", "group": "group", "alias": "alias"}


class SegmentMessage(BaseModel):
    """One Segment call. Unknown fields (integrations, etc.) are accepted and ignored."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    type: CallType
    event: str | None = Field(default=None, max_length=NAME_CHARS)
    name: str | None = Field(default=None, max_length=NAME_CHARS)
    category: str | None = Field(default=None, max_length=NAME_CHARS)
    userId: str | None = Field(default=None, max_length=NAME_CHARS)
    anonymousId: str | None = Field(default=None, max_length=NAME_CHARS)
    groupId: str | None = Field(default=None, max_length=NAME_CHARS)
    previousId: str | None = Field(default=None, max_length=NAME_CHARS)
    messageId: str | None = Field(default=None, max_length=ID_CHARS)
    timestamp: EventTime | None = None
    originalTimestamp: EventTime | None = None
    sentAt: EventTime | None = None
    properties: dict[str, Any] = Field(default_factory=dict)
    traits: dict[str, Any] = Field(default_factory=dict)
    context: dict[str, Any] = Field(default_factory=dict)

    @field_validator("userId", "anonymousId", "groupId", "previousId", mode="before")
    @classmethod
    def _ids_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) else value

    @model_validator(mode="after")
    def _required_per_type(self) -> SegmentMessage:
        if not (self.userId or self.anonymousId):
            raise ValueError("userId or anonymousId is required")
        if self.type == "track" and not self.event:
            raise ValueError("track calls need an event name")
        if self.type == "group" and not self.groupId:
            raise ValueError("group calls need a groupId")
        if self.type == "alias" and not self.previousId:
            raise ValueError("alias calls need a previousId")
        return self


def basic_auth_user(header: str | None) -> str | None:
    """The user name of an HTTP Basic Authorization header (Segment puts the write key there)."""
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.split(":", 1)[0] or None


def segment_items(call: str, body: dict[str, Any]) -> tuple[list[Any], bool]:
    """The calls of a Segment request: one for `/v1/<type>`, the `batch` list for `/v1/batch`."""
    if call != "batch":
        return [{**body, "type": call}], False
    items = body.get("batch")
    if not isinstance(items, list) or not items:
        raise ApiError(400, '/v1/batch takes {"batch": [ ...calls ]}')
    if len(items) > MAX_BATCH_EVENTS:
        raise ApiError(413, f"at most {MAX_BATCH_EVENTS} calls per batch")
    shared = body.get("context") if isinstance(body.get("context"), dict) else None
    if shared:
        items = [{**item, "context": {**shared, **(item.get("context") or {})}} if isinstance(item, dict) else item
                 for item in items]
    return items, True


def parse_time(value: Any) -> datetime | None:
    """A batch's `sentAt`: None when absent or not a time (no clock-skew correction then); a 400 when
    outside the storable range, on which no correction can be computed."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if not storable_time(moment):
        raise ApiError(400, f"sentAt {value[:40]!r} is outside {TIME_RANGE}; send the client's current time")
    return moment


def _text(value: Any, limit: int = 4096) -> str:
    return str(value)[:limit] if value not in (None, "") else ""


_NO_DICT: dict[str, Any] = {}
_UTM_FIELDS = (("source", "utm_source"), ("medium", "utm_medium"), ("name", "utm_campaign"),
               ("term", "utm_term"), ("content", "utm_content"))


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else _NO_DICT


# Segment's `channel` (RudderStack's SDKs send it) and `context.library.name` say what sent a call.
_CHANNELS = {"browser": "browser", "client": "browser", "web": "browser", "server": "server", "mobile": "mobile"}
_MOBILE_LIBRARY = frozenset({"ios", "android", "swift", "kotlin", "native", "flutter", "xamarin", "unity", "cordova",
                             "capacitor", "expo"})
_BROWSER_LIBRARY = frozenset({"js", "javascript", "next", "browser", "snippet", "web"})
_SERVER_LIBRARY = frozenset({"python", "node", "ruby", "go", "java", "php", "net", "dotnet", "csharp", "rust",
                             "elixir", "clojure", "scala", "server", "perl"})


@lru_cache(maxsize=1024)
def library_kind(name: str) -> str:
    """`mobile`, `browser` or `server` for a Segment/RudderStack library name (analytics-python,
    @segment/analytics-node, analytics.js, analytics-ios, com.rudderstack.android.sdk.core, ...), ''
    when the name does not tell."""
    words = set(re.split(r"[^a-z0-9]+", name.lower()))
    for kind, hints in (("mobile", _MOBILE_LIBRARY), ("browser", _BROWSER_LIBRARY), ("server", _SERVER_LIBRARY)):
        if words & hints:
            return kind
    return ""


def sender_kind(extra: dict[str, Any] | None, ctx: dict[str, Any]) -> str:
    """The kind of client that sent a Segment call, from its `channel`, else its library's name; ''
    when neither tells (the request's User-Agent then decides, in `enrich.request_template`)."""
    channel = extra.get("channel") if extra else None
    if isinstance(channel, str) and channel in _CHANNELS:
        return _CHANNELS[channel]
    library = ctx.get("library")
    name = library.get("name") if isinstance(library, dict) else None
    return library_kind(name[:200]) if isinstance(name, str) and name else ""


def from_segment(msg: SegmentMessage, base: dict[str, Any], batch_sent_at: datetime | None) -> dict[str, Any]:
    """The enriched event of one Segment call. `base` is a fresh dict for this event and is filled in.

    This runs once per event on the ingest hot path: plain dict work, no copies it does not need."""
    ctx = msg.context
    props = msg.properties
    page = _dict(ctx.get("page"))
    out = base
    url = _text(props.get("url") or page.get("url"))
    if url:
        out.update(enrich.url_facts(url))
    path = props.get("path") or page.get("path")
    if path:
        out["path"] = _text(path, 2048)
    campaign = ctx.get("campaign")
    if campaign and isinstance(campaign, dict):
        for field, column in _UTM_FIELDS:
            if campaign.get(field):
                out[column] = _text(campaign[field], 200)
    user_agent = ctx.get("userAgent")
    if user_agent:
        # The visitor's own agent, forwarded by a server or sent by analytics.js: it tells the device
        # and whether a crawler was served; the kind of sender is told below.
        user_agent = str(user_agent)
        out["browser"], out["os"], out["device_type"], _, out["is_bot"] = enrich.ua_profile(user_agent)
        out["user_agent"] = user_agent[:1000]
    kind = sender_kind(msg.model_extra, ctx)
    if kind:
        out["source_kind"] = kind
    if ctx.get("ip"):
        out["ip"] = _text(ctx["ip"], 64)
    screen = ctx.get("screen")
    if screen and isinstance(screen, dict) and screen.get("width") and screen.get("height"):
        out["screen_size"] = f"{screen['width']}x{screen['height']}"
    kind = msg.type
    properties = props
    if kind == "identify" or kind == "group":
        properties = {"traits": msg.traits or ctx.get("traits") or {}}
    if msg.groupId or msg.previousId:
        properties = dict(properties)
        if msg.groupId:
            properties["group_id"] = msg.groupId
        if msg.previousId:
            properties["previous_id"] = msg.previousId
    referrer = _text(props.get("referrer") or page.get("referrer"))
    out["type"] = kind
    out["event_name"] = (msg.event if kind == "track" else msg.name) or DEFAULT_NAMES.get(kind, kind)
    category = msg.category or props.get("category")
    out["event_category"] = _text(category, 200) if category else ""
    out["source"] = "segment"
    out["user_id"] = msg.userId or ""
    out["anonymous_id"] = msg.anonymousId or ""
    session = ctx.get("sessionId") or props.get("sessionId")
    out["session_id"] = _text(session, 200) if session else ""
    out["url"] = url
    out["referrer"] = referrer
    out["referrer_host"] = enrich.referrer_host(referrer) if referrer else ""
    out["properties"] = properties
    happened = msg.timestamp or msg.originalTimestamp
    out["timestamp"] = enrich.event_time(happened, base["received_at"], out["flags"], msg.sentAt or batch_sent_at)
    return out


class SegmentAccepted(BaseModel):
    """Segment's answer (`success`), with what was taken and what was refused."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"success": True, "accepted": 1, "errors": []}]})

    success: bool = True
    accepted: int = Field(description="calls Kafka acknowledged")
    errors: list[dict[str, Any]] = Field(default_factory=list, description="rejected calls, by index")


_SEGMENT_EXAMPLES: dict[str, dict[str, Any]] = {
    "track": {"userId": "u_42", "event": "Order Completed", "properties": {"revenue": 49}},
    "page": {"userId": "u_42", "name": "Pricing", "properties": {"url": "https://example.com/pricing"}},
    "screen": {"anonymousId": "a_7", "name": "Settings"},
    "identify": {"userId": "u_42", "traits": {"plan": "pro"}},
    "group": {"userId": "u_42", "groupId": "acme", "traits": {"employees": 40}},
    "alias": {"userId": "u_42", "previousId": "a_7"},
}
_NEEDS = {"track": ["event"], "group": ["groupId"], "alias": ["previousId"]}  # besides userId or anonymousId


def segment_body(call: str) -> dict[str, Any]:
    """The OpenAPI media type of `POST /v1/<call>`'s body (read raw and validated call by call)."""
    message = inlined(SegmentMessage.model_json_schema())
    if call == "batch":
        examples = [{**_SEGMENT_EXAMPLES["track"], "type": "track"}, {**_SEGMENT_EXAMPLES["identify"], "type": "identify"}]
        return {"schema": {"type": "object", "title": "Batch", "required": ["batch"], "properties": {
                    "batch": {"type": "array", "items": message, "minItems": 1, "maxItems": MAX_BATCH_EVENTS},
                    "context": {"type": "object", "description": "shared by every call of the batch"},
                    "writeKey": {"type": "string", "description": "instead of HTTP Basic"},
                    "sentAt": {"type": "string", "format": "date-time"}}},
                "example": {"batch": examples, "sentAt": "2026-01-31T12:00:00Z"}}
    properties = {k: v for k, v in message["properties"].items() if k != "type"}
    properties["writeKey"] = {"type": "string", "description": "instead of HTTP Basic"}
    return {"schema": {**message, "title": f"Segment {call} call", "properties": properties,
                       "required": _NEEDS.get(call, []),
                       "description": f"{message.get('description', '')} userId or anonymousId is required.".strip()},
            "example": _SEGMENT_EXAMPLES[call]}
