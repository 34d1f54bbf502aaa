"""The email contract: what producers put on `notifications.email.v1` for the notifier to send."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from aiokafka import AIOKafkaProducer
from pydantic import BaseModel, EmailStr, Field, model_validator

from libs.kafka import EMAIL_TOPIC, publish

Template = Literal[
    "welcome", "api_key_created", "api_key_revoked", "api_key_expiring", "notification", "report", "password_reset",
    "team_invitation", "alert",
]


class EmailMessage(BaseModel):
    """One email to send: a template with its data, or a subject and a plain-text body."""

    schema_: Literal["notifications.email.v1"] = Field("notifications.email.v1", alias="schema")
    message_id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    to: EmailStr
    template: Template | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    subject: str | None = None
    body: str | None = None
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))

    model_config = {"populate_by_name": True}

    @model_validator(mode="after")
    def _template_or_text(self) -> EmailMessage:
        if self.template is None and not (self.subject and self.body):
            raise ValueError("an email needs a template, or a subject and a body")
        return self


async def queue_email(producer: AIOKafkaProducer, message: EmailMessage) -> str:
    """Publish `message` (acknowledged by Kafka) and return its message id."""
    await publish(producer, EMAIL_TOPIC, message.model_dump(mode="json", by_alias=True), key=message.message_id)
    return message.message_id


# ---- scheduled reports (template "report") ---------------------------------------------------------
ReportFrequency = Literal["daily", "weekly"]
REPORT_PERIODS: dict[str, timedelta] = {"daily": timedelta(days=1), "weekly": timedelta(days=7)}


def next_report_at(frequency: str, after: datetime, tz: str = "UTC") -> datetime:
    """The first period end strictly after `after`: the next midnight (daily) or Monday 00:00 (weekly)
    in the site's time zone `tz`, so scheduled reports cover whole local days and weeks, as Plausible's
    do. In UTC."""
    zone = ZoneInfo(tz)
    day = after.astimezone(zone).date()
    day += timedelta(days=1) if frequency == "daily" else timedelta(days=7 - day.weekday())
    return datetime.combine(day, time(), zone).astimezone(UTC)


def report_start(frequency: str, end: datetime, tz: str = "UTC") -> datetime:
    """The start of the report period ending at `end`: the same local time one day (daily) or one week
    (weekly) before, in `tz`. A scheduled report ends at a local midnight, so it covers the whole local
    day or week before it, 23 or 25 hours long on a day the clocks change. In UTC."""
    zone = ZoneInfo(tz)
    local = end.astimezone(zone)
    day = local.date() - REPORT_PERIODS[frequency]
    return datetime.combine(day, local.time(), zone).astimezone(UTC)
