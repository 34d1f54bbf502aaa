"""The email contract: what producers put on `notifications.email.v1` for the notifier to send."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from aiokafka import AIOKafkaProducer
from pydantic import BaseModel, EmailStr, Field, model_validator

from libs.kafka import EMAIL_TOPIC, publish

Template = Literal["welcome", "api_key_created", "api_key_revoked", "api_key_expiring", "notification", "report", "alert"]


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


def next_report_at(frequency: str, after: datetime) -> datetime:
    """The first period end strictly after `after`: the next UTC midnight (daily) or Monday 00:00 UTC
    (weekly), so scheduled reports cover whole days and whole weeks, as Plausible's do."""
    midnight = after.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    if frequency == "daily":
        return midnight + timedelta(days=1)
    return midnight + timedelta(days=7 - midnight.weekday())
