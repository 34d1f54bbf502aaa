"""The Kafka topic contract: one schema per topic, and the AsyncAPI document built from them.

Producers build their messages from these models' fields, and `tests/system/test_contracts.py` checks real
messages taken off the topics against the schemas, so the document cannot drift from the code.
`python -m libs.contracts > docs/asyncapi.json` regenerates the document.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from libs.alerts import AlertMetric, Channel, Condition, CustomStat
from libs.events import EnrichedEvent
from libs.kafka import (
    ALERT_FIRINGS_TOPIC,
    ALERTS_TOPIC,
    API_KEYS_TOPIC,
    APP_DELETIONS_TOPIC,
    APPS_TOPIC,
    EMAIL_DLQ_TOPIC,
    EMAIL_TOPIC,
    EVENTS_DLQ_TOPIC,
    EVENTS_TOPIC,
    REPORT_RUNS_TOPIC,
    REPORT_SUBSCRIPTIONS_TOPIC,
    TOPIC_CONFIGS,
)
from libs.notifications import EmailMessage


class ApiKeyChange(BaseModel):
    """A key's whole state after a change. Consumers keep, per key_id, the highest `version`."""

    model_config = ConfigDict(extra="allow")
    schema_: Literal["auth.api-keys.v1"] = Field(alias="schema")
    type: Literal["created", "revoked", "regenerated", "expired", "snapshot"]
    key_id: str
    app_id: str
    owner_id: str
    kind: Literal["secret", "write"]
    key_hash: str = Field(description="hex SHA-256 of the full key; the key itself is never published")
    prefix: str = Field(description="the key's first characters, for display")
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    version: int = Field(description="microseconds since the epoch of the change; only grows")
    occurred_at: datetime


class SharedLinkState(BaseModel):
    """A read-only link to an app's stats (no account needed). Only the SHA-256 of its token is published."""

    link_id: str
    token_hash: str = Field(description="hex SHA-256 of the link's token")
    has_password: bool = Field(description="true: the link reads only with a token from POST /api/auth/shared-links/unlock")


class AppState(BaseModel):
    """An app's whole state after a change: who may read it and its site settings. Published by auth
    on every change and for every app at auth's start. Consumers keep, per app_id, the highest `version`."""

    model_config = ConfigDict(extra="allow")
    schema_: Literal["auth.apps.v1"] = Field("auth.apps.v1", alias="schema")
    app_id: str
    owner_id: str
    team_id: str | None = Field(description="the team the app belongs to, if any")
    name: str
    domain: str | None
    timezone: str = Field(description="IANA time zone: the site's day boundaries")
    excluded_ips: list[str] = Field(description="addresses and CIDR blocks whose events gateways drop")
    allowed_origins: list[str] = Field(description="browser origins the app's write key accepts (empty: any)")
    members: dict[str, Literal["viewer", "admin", "owner"]] = Field(
        description="user id -> role: an app of a team has the team's members (an app of no team: none, its owner alone)")
    shared_links: list[SharedLinkState] = Field(default_factory=list, description="read-only links to the app's stats")
    deleted: bool = Field(description="true once the app is deleted (its keys are revoked too)")
    version: int = Field(description="microseconds since the epoch of the change; only grows")
    occurred_at: datetime


class ReportSubscription(BaseModel):
    """A report subscription's whole state, with what its email needs. Published by auth on every
    change and for every subscription at auth's start; a null value (tombstone) once it is stopped.
    Consumers keep the latest record per key."""

    model_config = ConfigDict(extra="allow")
    schema_: Literal["auth.report-subscriptions.v1"] = Field("auth.report-subscriptions.v1", alias="schema")
    subscription_id: str
    app_id: str
    app_name: str
    user_id: str
    username: str
    email: str = Field(description="where the report goes: the subscriber's address")
    frequency: Literal["daily", "weekly"]
    first_run_at: datetime = Field(description="when the first report is due; the schedule after it is the mailer's")
    created_at: datetime


class ReportRun(BaseModel):
    """A scheduled report handed to the notifier: when, and when the next one of the subscription is due.
    Published by the query service's report scheduler; auth keeps the latest per subscription."""

    model_config = ConfigDict(extra="allow")
    schema_: Literal["query.report-runs.v1"] = Field("query.report-runs.v1", alias="schema")
    subscription_id: str
    last_sent_at: datetime
    next_run_at: datetime


AppDeletionReason = Literal["account_deleted", "app_deleted"]


class AppDeletion(BaseModel):
    """An app was deleted (with its owner's account): every event of it is to be deleted. Published by auth
    after the app's keys were announced revoked; the query service deletes the app's events, metrics and
    rollups. Compacted, keyed by app id: applying it twice is harmless."""

    model_config = ConfigDict(extra="allow")
    schema_: Literal["auth.app-deletions.v1"] = Field("auth.app-deletions.v1", alias="schema")
    app_id: str
    owner_id: str
    reason: AppDeletionReason
    requested_at: datetime


class AlertState(BaseModel):
    """An alert's whole definition. Published by auth on every change and for every alert at auth's start;
    a null value (tombstone) once it is deleted. The query service keeps the latest per key and checks it."""

    model_config = ConfigDict(extra="allow")
    schema_: Literal["auth.alerts.v1"] = Field("auth.alerts.v1", alias="schema")
    alert_id: str
    app_id: str
    name: str
    metric: AlertMetric = Field(description="a web stats metric, or `custom`: the custom metric `metric_name`")
    metric_name: str | None = Field(description="the custom metric (metric `custom` only)")
    custom_stat: CustomStat | None = Field(description="which statistic of the custom metric's values (custom only)")
    filters: dict[str, str] = Field(description="web stats filters (page, source, country, ...)")
    window_s: int = Field(description="the trailing window the metric is computed over, in seconds")
    condition: Condition
    threshold: float = Field(description="above/below: the value; spike: percent change against the same "
                                         "window a week before (negative: a drop)")
    channels: list[Channel]
    created_at: datetime


class AlertFiring(BaseModel):
    """An alert's check changed its state: `fired` (the condition became true; delivered by email and
    webhook by auth) or `recovered` (it became false again). Published by the query service's checker."""

    model_config = ConfigDict(extra="allow")
    schema_: Literal["query.alert-firings.v1"] = Field("query.alert-firings.v1", alias="schema")
    firing_id: str = Field(description="unique per state change: deliveries and emails are made once per id")
    alert_id: str
    app_id: str
    state: Literal["fired", "recovered"]
    value: float | None = Field(description="the metric over the window (spike: the percent change)")
    current: float | None = Field(description="the metric over the window")
    baseline: float | None = Field(description="spike: the metric over the same window a week before")
    window_start: datetime
    window_end: datetime
    checked_at: datetime


class DeadLetter(BaseModel):
    """The shape every dead-letter topic shares (libs/stream/deadletter.py); a topic may add fields."""

    model_config = ConfigDict(extra="allow")
    reason: str = Field(description="why the message was given up on")
    original: Any = Field(description="the original message (object), or its text when it was not JSON "
                                      "(first 100,000 characters)")
    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None = Field(description="the original message's Kafka timestamp")
    group: str | None = Field(description="the consumer group that gave up on it")
    failed_at: datetime


class EventDeadLetter(DeadLetter):
    """An event the aggregator could not store."""

    error: str = Field(description="why, e.g. 'schema violation at timestamp: ...' (the same as `reason`)")
    value: str = Field(description="the original message value (first 100,000 characters)")


class EmailDeadLetter(DeadLetter):
    """An email given up on: a permanent SMTP failure, an invalid message, or retries exhausted."""

    message_id: str | None
    to: str | None
    template: str | None


TOPICS: dict[str, tuple[str, type[BaseModel], str]] = {
    EVENTS_TOPIC: ("app id", EnrichedEvent, "One enriched event per message (gateway → aggregator, any subscriber)."),
    EVENTS_DLQ_TOPIC: ("app id", EventDeadLetter, "Events the aggregator could not store, with the error."),
    API_KEYS_TOPIC: ("key id", ApiKeyChange, "API-key state: every change carries the key's whole state. Log-compacted "
                     "(cleanup.policy=compact, keyed by key id): read from the earliest offset, it holds the "
                     "latest state of every key."),
    APPS_TOPIC: ("app id", AppState, "App state (auth → gateways, query): owner, members and roles, site settings. "
                 "Log-compacted, keyed by app id: read from the earliest offset, it holds every app's latest state."),
    EMAIL_TOPIC: ("message id", EmailMessage, "Emails to send: a template and its data, or a subject and a body."),
    EMAIL_DLQ_TOPIC: ("message id", EmailDeadLetter, "Emails that failed permanently, with the reason."),
    REPORT_SUBSCRIPTIONS_TOPIC: (
        "subscription id", ReportSubscription,
        "Report subscriptions (auth → query): each record the whole state; a null value once stopped. Compacted.",
    ),
    REPORT_RUNS_TOPIC: (
        "subscription id", ReportRun,
        "Scheduled reports sent (query → auth): the last send and the next due time. Compacted.",
    ),
    APP_DELETIONS_TOPIC: (
        "app id", AppDeletion,
        "Apps deleted (auth → query): the query service deletes every event of each. Compacted.",
    ),
    ALERTS_TOPIC: (
        "alert id", AlertState,
        "Alerts (auth → query): each record an alert's whole definition; a null value once deleted. Compacted.",
    ),
    ALERT_FIRINGS_TOPIC: (
        "alert id", AlertFiring,
        "Alert state changes (query → auth): fired (auth mails and calls webhooks) or recovered.",
    ),
}


def _topic_configuration(topic: str) -> dict[str, Any]:
    """The channel binding's `topicConfiguration`, for topics created with a configuration of their own."""
    config = TOPIC_CONFIGS.get(topic)
    if not config:
        return {}
    return {"topicConfiguration": {k: [v] if k == "cleanup.policy" else v for k, v in config.items()}}


def asyncapi() -> dict[str, Any]:
    channels: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for topic, (key, model, summary) in TOPICS.items():
        name = model.__name__
        schema = model.model_json_schema(by_alias=True, ref_template=f"#/components/schemas/{name}/$defs/{{model}}")
        channels[topic] = {
            "address": topic,
            "summary": summary,
            "messages": {name: {"$ref": f"#/components/messages/{name}"}},
            "bindings": {"kafka": {"topic": topic, **_topic_configuration(topic), "bindingVersion": "0.5.0"}},
        }
        messages[name] = {
            "name": name,
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{name}"},
            "headers": {"type": "object", "properties": {"request_id": {
                "type": "string", "description": "id of the HTTP request that caused this message"}}},
            "bindings": {"kafka": {"key": {"type": "string", "description": key}, "bindingVersion": "0.5.0"}},
        }
        operations[f"receive_{name}"] = {
            "action": "receive", "channel": {"$ref": f"#/channels/{topic.replace('.', '%2E')}"},
            "messages": [{"$ref": f"#/channels/{topic.replace('.', '%2E')}/messages/{name}"}],
        }
        messages[name]["x-schema"] = schema
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Analytics platform topics",
            "version": "1.0.0",
            "description": "The Kafka topics internal teams may subscribe to. Fields may be added within a "
                           "version (ignore unknown fields); renaming or removing one means a new topic (`.v2`).",
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": {n: {k: v for k, v in m.items() if k != "x-schema"} for n, m in messages.items()},
            "schemas": {n: m["x-schema"] for n, m in messages.items()},
        },
    }


def render() -> str:
    return json.dumps(asyncapi(), indent=2, sort_keys=False, default=str) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
