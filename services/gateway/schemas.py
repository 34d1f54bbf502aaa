"""Inbound event shapes the gateway accepts (the seeds' field names)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class CollectMetadata(BaseModel):
    model_config = ConfigDict(extra="allow")
    browser: str | None = Field(default=None, max_length=200)
    os: str | None = Field(default=None, max_length=200)
    screenSize: str | None = Field(default=None, max_length=40)


class CollectEvent(BaseModel):
    """The second seed's event (`POST /api/analytics/collect`)."""

    model_config = ConfigDict(extra="forbid")
    event: str = Field(min_length=1, max_length=200, examples=["login_form_cta_click"])
    url: str | None = Field(default=None, max_length=4096, examples=["https://example.com/page"])
    referrer: str | None = Field(default=None, max_length=4096, examples=["https://google.com"])
    device: str | None = Field(default=None, max_length=40, examples=["mobile"])
    ipAddress: str | None = Field(default=None, max_length=64)
    timestamp: datetime | None = None
    metadata: CollectMetadata | None = None
    userId: str | None = Field(default=None, max_length=200)
    sessionId: str | None = Field(default=None, max_length=200)
    event_id: str | None = Field(default=None, max_length=128, description="idempotency key for retries")
    properties: dict[str, Any] | None = None

    def client_event_id(self) -> str | None:
        return self.event_id


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

    def client_event_id(self) -> str | None:
        return self.event_id


class MetricIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metric_name: str = Field(min_length=1, max_length=200)
    value: float
    unit: str | None = Field(default=None, max_length=40)
    tags: dict[str, str] | None = None
    timestamp: datetime | None = None
    event_id: str | None = Field(default=None, max_length=128)

    def client_event_id(self) -> str | None:
        return self.event_id


class Accepted(BaseModel):
    accepted: int
    event_ids: list[str] = Field(default_factory=list)
    errors: list[dict[str, Any]] = Field(default_factory=list, description="rejected events, by index")
