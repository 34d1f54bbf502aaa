"""The answers of the `/api/analytics` reads, for the OpenAPI document: the routes build their JSON
themselves (cached as bytes, libs/query cache), so these describe it, with examples, and check nothing.
Times are text: ISO 8601 in `period`, ClickHouse's `2026-01-31 12:00:00+00:00` in rows."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from services.query.csv_export import CSV_CONTENT

Number = int | float


def _example(**example: Any) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [example]})


class DefinitionIn(BaseModel):
    """What every saved definition of an app (a goal, a segment, a funnel) is created with."""

    model_config = ConfigDict(extra="forbid")
    app_id: str | None = Field(None, max_length=64, description="the app (or app_id= in the query; a secret key names its own)")
    name: str = Field(min_length=1, max_length=120)


class Period(BaseModel):
    model_config = _example(start="2026-01-01T00:00:00Z", end="2026-01-31T00:00:00Z")
    start: str = Field(description="ISO 8601, UTC, inclusive")
    end: str = Field(description="ISO 8601, UTC, exclusive")


class Event(BaseModel):
    """One stored event, as every read returns it (properties exactly as sent)."""

    model_config = _example(
        event_id="01JF3Q6Y8Z2N4K7M9P1R3T5V7X", type="track", event_name="signup_click", event_category="",
        source="collect", source_kind="browser", user_id="u_42", anonymous_id="", session_id="s_1",
        url="https://example.com/pricing", path="/pricing", referrer="", referrer_host="", utm_source="",
        utm_medium="", utm_campaign="", device_type="desktop", browser="Firefox", os="Linux", screen_size="1920x1080",
        country="DE", ip="203.0.113.7", properties={"plan": "pro"}, timestamp="2026-01-31 12:00:00.123000+00:00",
        received_at="2026-01-31 12:00:00.200000+00:00", is_bot=False,
    )
    event_id: str
    type: str
    event_name: str
    event_category: str
    source: str
    source_kind: str
    user_id: str
    anonymous_id: str
    session_id: str
    url: str
    path: str
    referrer: str
    referrer_host: str
    utm_source: str
    utm_medium: str
    utm_campaign: str
    device_type: str
    browser: str
    os: str
    screen_size: str
    country: str
    ip: str
    properties: dict[str, Any]
    timestamp: str
    received_at: str
    is_bot: bool | int


class EventSummary(BaseModel):
    model_config = _example(event="signup_click", count=42, uniqueUsers=17, deviceData={"desktop": 30, "mobile": 12},
                            startDate="2026-01-01T00:00:00+00:00", endDate="2026-01-31T00:00:00+00:00")
    event: str | None = Field(description="the event asked for; null: every event")
    count: int
    uniqueUsers: int
    deviceData: dict[str, int] = Field(description="events per device type")
    startDate: str
    endDate: str


class DeviceDetails(BaseModel):
    browser: str
    os: str
    device: str


class UserStats(BaseModel):
    model_config = _example(userId="u_42", totalEvents=12, deviceDetails={"browser": "Firefox", "os": "Linux", "device": "desktop"},
                            ipAddress="203.0.113.7", firstSeen="2026-01-02 09:00:00+00:00", lastSeen="2026-01-31 12:00:00+00:00",
                            recentEvents=[])
    userId: str
    totalEvents: int
    deviceDetails: DeviceDetails
    ipAddress: str
    firstSeen: str
    lastSeen: str
    recentEvents: list[Event] = Field(description="newest first")


class EventList(BaseModel):
    model_config = _example(events=[], page=1, limit=50, total=0)
    events: list[Event] = Field(description="newest first")
    page: int
    limit: int
    total: int = Field(description="events matching the filters, on every page")


class EventCount(BaseModel):
    model_config = _example(count=42)
    count: int


class SeriesPoint(BaseModel):
    bucket: str = Field(description="the start of the hour or day")
    count: int
    unique_users: int


class EventSeries(BaseModel):
    model_config = _example(interval="day", timezone="UTC",
                            series=[{"bucket": "2026-01-31 00:00:00+00:00", "count": 42, "unique_users": 17}])
    interval: str
    timezone: str
    series: list[SeriesPoint]


class Group(BaseModel):
    key: str
    count: int
    unique_users: int


class EventGroups(BaseModel):
    model_config = _example(by="event_name", groups=[{"key": "pageview", "count": 120, "unique_users": 40}])
    by: str
    groups: list[Group]


class ActiveUsers(BaseModel):
    model_config = _example(range="week", activeUsers=40)
    range: str
    activeUsers: int


class MetricSummary(BaseModel):
    metric_name: str
    unit: str
    count: int
    sum: Number | None
    avg: Number | None
    min: Number | None
    max: Number | None
    p50: Number | None
    p95: Number | None


class MetricSummaries(BaseModel):
    model_config = _example(metrics=[{"metric_name": "page_load_ms", "unit": "ms", "count": 3, "sum": 1200.0, "avg": 400.0,
                                      "min": 300.0, "max": 500.0, "p50": 400.0, "p95": 490.0}])
    metrics: list[MetricSummary]


class MetricPoint(BaseModel):
    bucket: str
    count: int
    sum: Number | None
    avg: Number | None
    min: Number | None
    max: Number | None


class MetricSeries(BaseModel):
    model_config = _example(metric_name="page_load_ms", interval="day", timezone="UTC",
                            series=[{"bucket": "2026-01-31 00:00:00+00:00", "count": 3, "sum": 1200.0, "avg": 400.0,
                                     "min": 300.0, "max": 500.0}])
    metric_name: str
    interval: str
    timezone: str
    series: list[MetricPoint]


class StatValue(BaseModel):
    value: Number
    change: Number | None = Field(description="percent against the previous period (compare=previous_period)")


class StatsAggregate(BaseModel):
    model_config = _example(period={"start": "2026-01-01T00:00:00Z", "end": "2026-01-31T00:00:00Z"},
                            results={"visitors": {"value": 40, "change": None}, "pageviews": {"value": 120, "change": None}},
                            bot_events_excluded=3)
    period: Period
    results: dict[str, StatValue] = Field(description="per metric asked for (visitors, visits, pageviews, ...)")
    bot_events_excluded: int


class StatsTimeseries(BaseModel):
    model_config = _example(interval="day", period={"start": "2026-01-01T00:00:00Z", "end": "2026-01-31T00:00:00Z"},
                            results=[{"date": "2026-01-01", "visitors": 4, "pageviews": 9}])
    interval: str
    period: Period
    results: list[dict[str, Number | str]] = Field(description="one per bucket, every bucket present: its `date` and each metric")


class StatsBreakdown(BaseModel):
    model_config = _example(property="page", period={"start": "2026-01-01T00:00:00Z", "end": "2026-01-31T00:00:00Z"},
                            results=[{"page": "/pricing", "visitors": 12, "pageviews": 30}])
    property: str
    period: Period
    results: list[dict[str, Any]] = Field(description="one per value of the property: the value, then each metric")


class Realtime(BaseModel):
    model_config = _example(visitors=3)
    visitors: int


class FunnelStep(BaseModel):
    name: str
    visitors: int
    conversion_rate: float = Field(description="percent of the first step")
    step_conversion_rate: float = Field(description="percent of the step before")


class Funnel(BaseModel):
    model_config = _example(period={"start": "2026-01-01T00:00:00Z", "end": "2026-01-31T00:00:00Z"}, window=86400,
                            steps=[{"name": "pageview", "visitors": 40, "conversion_rate": 100.0, "step_conversion_rate": 100.0},
                                   {"name": "signup", "visitors": 10, "conversion_rate": 25.0, "step_conversion_rate": 25.0}])
    period: Period
    window: int = Field(description="seconds")
    steps: list[FunnelStep]


class Cohort(BaseModel):
    cohort: str = Field(description="its first day (YYYY-MM-DD)")
    size: int
    retained: list[int] = Field(description="visitors back in each interval since, the cohort itself first")
    rates: list[float] = Field(description="the same, as percent of the size")


class Retention(BaseModel):
    model_config = _example(interval="week", cohorts=[{"cohort": "2026-01-05", "size": 10, "retained": [10, 4], "rates": [100.0, 40.0]}])
    interval: str
    cohorts: list[Cohort] = Field(description="oldest first")


class UserRow(BaseModel):
    userId: str
    events: int
    firstSeen: str
    lastSeen: str
    device: str
    browser: str
    os: str
    country: str


class UserList(BaseModel):
    model_config = _example(users=[{"userId": "u_42", "events": 12, "firstSeen": "2026-01-02 09:00:00+00:00",
                                     "lastSeen": "2026-01-31 12:00:00+00:00", "device": "desktop", "browser": "Firefox",
                                     "os": "Linux", "country": "DE"}], page=1, limit=50, total=1)
    users: list[UserRow] = Field(description="most recently seen first")
    page: int
    limit: int
    total: int


class Deleted(BaseModel):
    model_config = _example(deleted=12)
    deleted: int = Field(description="events deleted")


def answer(model: type[BaseModel], description: str = "the answer (X-Cache: HIT or MISS when cached); with "
           "format=csv its rows as CSV", csv: bool = True) -> dict[int | str, dict[str, Any]]:
    """`responses=` of a read whose route returns its JSON itself (and its CSV form, services/query/csv_export.py)."""
    return {200: {"model": model, "description": description, **({"content": CSV_CONTENT} if csv else {})}}


EXPORT: dict[int | str, dict[str, Any]] = {200: {"description": "JSON lines, one event (as in Event) per line", "content": {
    "application/x-ndjson": {"schema": {"type": "string"}, "example": '{"event_id": "01JF3Q6Y8Z2N4K7M9P1R3T5V7X", ...}\n'}}}}
