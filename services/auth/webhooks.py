"""Webhooks (`/api/auth/apps/{app_id}/webhooks`): an app's admin names a URL and the events it wants
(`alert.fired`, `key.created`, `key.revoked`, `key.regenerated`, `key.expired`); each event is POSTed
there, signed, retried with backoff, and every attempt is recorded (the deliveries list).

Why auth delivers: it owns the webhooks (Postgres, next to apps) and the delivery log, and it hears
of every event without reading anyone's tables: key changes from its own `auth.api-keys.v1` (a
consumer group of its own folds them into deliveries, so the key code needs no change and a key
change that Kafka took is delivered even if auth restarts right after), alert firings from the query
service's `query.alert-firings.v1` (services/auth/alerts.py). Every event becomes one row per
subscribed webhook (unique per webhook and event: an event read twice is delivered once); the
dispatcher claims due rows with `FOR UPDATE SKIP LOCKED` (several auth replicas never send the same
attempt) and sends them through the process's pooled client (libs/outbound.py), which refuses and
never connects to non-global addresses unless WEBHOOK_ALLOW_PRIVATE=true.

Signing follows the Standard Webhooks specification (as Svix does; Stripe and GitHub sign the same
way with their own header names): headers `webhook-id` (the same on every retry of a delivery),
`webhook-timestamp` (Unix seconds of this attempt) and `webhook-signature: v1,<base64 HMAC-SHA256>` over
`{webhook-id}.{webhook-timestamp}.{body}` with the secret's bytes (the base64 after `whsec_`). A
receiver recomputes it, compares in constant time and refuses timestamps far from its clock.

Retries: a delivery that got no 2xx is tried again after WEBHOOK_RETRY_BASE_S, doubling each time, up
to WEBHOOK_MAX_ATTEMPTS attempts (8 from 30 s: the last about an hour after the first); then it is
`failed`. Only an event that happened after a webhook was created is delivered to it.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Depends, Path, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from libs.http import ApiError
from libs.kafka import API_KEYS_TOPIC, WEBHOOK_KEY_EVENTS_GROUP
from libs.logs import get_logger
from libs.openapi import errors
from libs.outbound import Outbound, Sent, TargetRefused, public_target
from libs.runtime import context_dependency
from libs.statetopic import follow_state_topic
from libs.stores import PgConnection
from services.auth.context import User
from services.auth.schemas import Line

if TYPE_CHECKING:
    from services.auth.keys import AppKeys

log = get_logger(__name__)

CONTEXT = "auth-webhooks"
MAX_WEBHOOKS_PER_APP = 20
MAX_URL_CHARS = 2000
BATCH = 20
LEASE = timedelta(seconds=120)  # a claimed delivery is not claimed again for this long (timeouts are far shorter)
DELIVERIES_LISTED = 100

WebhookEvent = Literal["alert.fired", "key.created", "key.revoked", "key.regenerated", "key.expired"]
KEY_EVENTS = {"created": "key.created", "revoked": "key.revoked", "regenerated": "key.regenerated", "expired": "key.expired"}

_APP = "0b6e1f3a-2c4d-4e5f-8a9b-1c2d3e4f5a6b"
_HOOK = "5f0c2d1e-3b4a-4c5d-8e9f-0a1b2c3d4e5f"


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"url": "https://hooks.example.com/analytics", "events": ["alert.fired", "key.revoked"]}]})
    url: Line = Field(min_length=8, max_length=MAX_URL_CHARS, description="http(s) URL on the public internet")
    events: list[WebhookEvent] = Field(min_length=1, max_length=5)

    @field_validator("events")
    @classmethod
    def _unique(cls, events: list[str]) -> list[str]:
        return sorted(set(events))


class WebhookOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": _HOOK, "app_id": _APP, "url": "https://hooks.example.com/analytics",
        "events": ["alert.fired", "key.revoked"], "created_at": "2026-01-31T12:00:00Z"}]})
    id: str
    app_id: str
    url: str
    events: list[str]
    created_at: datetime


class WebhookCreated(WebhookOut):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": _HOOK, "app_id": _APP, "url": "https://hooks.example.com/analytics", "events": ["key.revoked"],
        "created_at": "2026-01-31T12:00:00Z", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}]})
    secret: str = Field(description="the signing secret, shown this once: keep it to verify `webhook-signature`")


class AttemptOut(BaseModel):
    attempt: int
    at: datetime
    status_code: int | None = Field(description="the receiver's HTTP status; null when none came")
    error: str | None = Field(description="why no status came (refused, timed out, connection failed)")
    duration_ms: int


class DeliveryOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d", "event_id": "key.revoked:1c2d:1767182400000000",
        "event_type": "key.revoked", "status": "delivered", "created_at": "2026-01-31T12:00:00Z",
        "next_attempt_at": None, "attempts": [
            {"attempt": 1, "at": "2026-01-31T12:00:00Z", "status_code": 500, "error": None, "duration_ms": 12},
            {"attempt": 2, "at": "2026-01-31T12:00:30Z", "status_code": 200, "error": None, "duration_ms": 9}]}]})
    id: str
    event_id: str
    event_type: str
    status: Literal["pending", "delivered", "failed"]
    created_at: datetime
    next_attempt_at: datetime | None = Field(description="when it is tried again (pending only)")
    attempts: list[AttemptOut]


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value of a delivery (Standard Webhooks, `v1`)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def _hook_uuid(webhook_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(webhook_id)
    except ValueError as exc:
        raise ApiError(404, "webhook not found") from exc


def _out(row: Any) -> WebhookOut:
    return WebhookOut(id=str(row["id"]), app_id=str(row["app_id"]), url=row["url"], events=list(row["events"]),
                      created_at=row["created_at"])


async def enqueue(conn: PgConnection, app_id: str, event_type: str, event_id: str, data: dict[str, Any],
                  occurred_at: datetime) -> int:
    """One delivery of the event to each webhook of the app that wants it and existed when it happened."""
    body = orjson.dumps({"type": event_type, "timestamp": occurred_at.isoformat(), "data": data}).decode()
    rows = await conn.fetch(
        """INSERT INTO webhook_deliveries (webhook_id, event_id, event_type, body)
           SELECT id, $2, $3, $4 FROM webhooks
           WHERE app_id = $1 AND $3 = ANY(events) AND created_at <= $5
           ON CONFLICT (webhook_id, event_id) DO NOTHING RETURNING id""",
        uuid.UUID(app_id), event_id, event_type, body, occurred_at,
    )
    return len(rows)


class Webhooks:
    """The webhooks of apps, their delivery, and the key-event follower."""

    def __init__(self, keys: AppKeys, outbound: Outbound) -> None:
        self.keys = keys
        self.outbound = outbound
        self.settings = keys.settings

    async def create(self, user_id: str, app_id: str, body: WebhookIn) -> WebhookCreated:
        app = await self.keys.app_with_role(user_id, app_id, "admin")  # 404 / 403
        try:
            await public_target(body.url, self.settings.webhook_allow_private)
        except TargetRefused as exc:
            raise ApiError(422, f"url refused: {exc}") from exc
        secret = new_secret()
        async with self.keys.db() as conn, conn.transaction():
            count = await conn.fetchval("SELECT count(*) FROM webhooks WHERE app_id = $1", app["id"])
            if count >= MAX_WEBHOOKS_PER_APP:
                raise ApiError(409, f"at most {MAX_WEBHOOKS_PER_APP} webhooks per app")
            row = await conn.fetchrow(
                """INSERT INTO webhooks (app_id, url, events, secret, created_by) VALUES ($1, $2, $3, $4, $5)
                   RETURNING id, app_id, url, events, created_at""",
                app["id"], body.url, body.events, secret, uuid.UUID(user_id),
            )
        assert row is not None
        log.info("webhook created", app_id=app_id, webhook_id=str(row["id"]), events=body.events)
        return WebhookCreated(**_out(row).model_dump(), secret=secret)

    async def list_for(self, user_id: str, app_id: str) -> list[WebhookOut]:
        app = await self.keys.app_with_role(user_id, app_id, "admin")
        async with self.keys.db() as conn:
            rows = await conn.fetch(
                "SELECT id, app_id, url, events, created_at FROM webhooks WHERE app_id = $1 ORDER BY created_at", app["id"])
        return [_out(r) for r in rows]

    async def delete(self, user_id: str, app_id: str, webhook_id: str) -> None:
        app = await self.keys.app_with_role(user_id, app_id, "admin")
        async with self.keys.db() as conn:
            deleted = await conn.fetchval(
                "DELETE FROM webhooks WHERE id = $1 AND app_id = $2 RETURNING id", _hook_uuid(webhook_id), app["id"])
        if deleted is None:
            raise ApiError(404, "webhook not found")

    async def deliveries(self, user_id: str, app_id: str, webhook_id: str) -> list[DeliveryOut]:
        app = await self.keys.app_with_role(user_id, app_id, "admin")
        async with self.keys.db() as conn:
            hook = await conn.fetchval(
                "SELECT id FROM webhooks WHERE id = $1 AND app_id = $2", _hook_uuid(webhook_id), app["id"])
            if hook is None:
                raise ApiError(404, "webhook not found")
            rows = await conn.fetch(
                """SELECT id, event_id, event_type, status, created_at, next_attempt_at FROM webhook_deliveries
                   WHERE webhook_id = $1 ORDER BY created_at DESC LIMIT $2""", hook, DELIVERIES_LISTED)
            attempts = await conn.fetch(
                """SELECT delivery_id, attempt, at, status_code, error, duration_ms FROM webhook_attempts
                   WHERE delivery_id = ANY($1::uuid[]) ORDER BY attempt""", [r["id"] for r in rows])
        by_delivery: dict[uuid.UUID, list[AttemptOut]] = {}
        for a in attempts:
            by_delivery.setdefault(a["delivery_id"], []).append(AttemptOut(
                attempt=a["attempt"], at=a["at"], status_code=a["status_code"], error=a["error"],
                duration_ms=a["duration_ms"]))
        return [DeliveryOut(
            id=str(r["id"]), event_id=r["event_id"], event_type=r["event_type"], status=r["status"],
            created_at=r["created_at"], next_attempt_at=r["next_attempt_at"] if r["status"] == "pending" else None,
            attempts=by_delivery.get(r["id"], []),
        ) for r in rows]

    # ---- delivering -------------------------------------------------------------------------------
    async def run(self) -> None:
        """Background job: send every due delivery, then look again every WEBHOOK_POLL_INTERVAL_S."""
        while True:
            try:
                while await self.deliver_due() == BATCH:
                    pass
            except Exception as exc:  # noqa: BLE001 - a delivery problem never stops auth
                log.warning("webhook deliveries failed; retrying at the next check", error=repr(exc))
            await asyncio.sleep(self.settings.webhook_poll_interval_s)

    async def deliver_due(self) -> int:
        """Claim up to BATCH due deliveries (leased, so no other replica takes them), send them at once."""
        async with self.keys.db() as conn:
            due = await conn.fetch(
                """UPDATE webhook_deliveries d SET next_attempt_at = now() + $2::interval
                   FROM webhooks w
                   WHERE d.webhook_id = w.id AND d.id IN (
                       SELECT id FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= now()
                       ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED)
                   RETURNING d.id, d.attempts, d.body, w.url, w.secret""", BATCH, LEASE)
        await asyncio.gather(*(self._attempt(row) for row in due))
        return len(due)

    async def _attempt(self, row: Any) -> None:
        body = row["body"].encode()
        msg_id = f"msg_{row['id'].hex}"
        timestamp = int(time.time())
        headers = {
            "content-type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(row["secret"], msg_id, timestamp, body),
        }
        sent: Sent = await self.outbound.send(row["url"], body, headers, self.settings.webhook_allow_private)
        attempt = row["attempts"] + 1
        ok = sent.status_code is not None and 200 <= sent.status_code < 300
        if ok:
            status, next_at = "delivered", datetime.now(UTC)
        elif attempt >= self.settings.webhook_max_attempts:
            status, next_at = "failed", datetime.now(UTC)
        else:
            delay = self.settings.webhook_retry_base_s * 2 ** (attempt - 1)
            status, next_at = "pending", datetime.now(UTC) + timedelta(seconds=delay)
        async with self.keys.db() as conn, conn.transaction():
            await conn.execute(
                """INSERT INTO webhook_attempts (delivery_id, attempt, status_code, error, duration_ms)
                   VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING""",
                row["id"], attempt, sent.status_code, sent.error, sent.duration_ms)
            await conn.execute(
                "UPDATE webhook_deliveries SET attempts = $2, status = $3, next_attempt_at = $4 WHERE id = $1",
                row["id"], attempt, status, next_at)
        log.info("webhook attempt", delivery_id=str(row["id"]), attempt=attempt, status_code=sent.status_code,
                 error=sent.error, outcome=status)

    # ---- key lifecycle events ---------------------------------------------------------------------
    async def follow_key_events(self) -> None:
        """Background job: each key change on `auth.api-keys.v1` (created, revoked, regenerated, expired;
        not the periodic snapshots) becomes a delivery to the app's webhooks that want it."""

        async def apply(states: Sequence[tuple[str, dict[str, Any] | None]]) -> None:
            async with self.keys.db() as conn, conn.transaction():
                for key, state in states:
                    if state is None or state.get("type") not in KEY_EVENTS:
                        continue
                    event_type = KEY_EVENTS[state["type"]]
                    data = {name: state.get(name) for name in (
                        "app_id", "key_id", "kind", "prefix", "created_at", "expires_at", "revoked_at")}
                    await enqueue(conn, state["app_id"], event_type, f"{event_type}:{key}:{state['version']}", data,
                                  datetime.fromisoformat(state["occurred_at"]))

        await follow_state_topic(self.settings, API_KEYS_TOPIC, WEBHOOK_KEY_EVENTS_GROUP, apply)


WebhooksCtx = Annotated[Webhooks, Depends(context_dependency(CONTEXT, Webhooks))]
AppId = Annotated[Line, Path(max_length=64)]
HookId = Annotated[Line, Path(max_length=64)]

router = APIRouter(prefix="/api/auth/apps/{app_id}/webhooks", tags=["webhooks"],
                   responses=errors(401, 403, 404, 422, 503))


@router.post("", operation_id="createWebhook", status_code=201, response_model=WebhookCreated, responses=errors(409),
             summary="Send an app's events to a URL (the signing secret is answered this once)")
async def create(app_id: AppId, body: WebhookIn, user: User, hooks: WebhooksCtx) -> WebhookCreated:
    return await hooks.create(user.sub, app_id, body)


@router.get("", operation_id="listWebhooks", response_model=list[WebhookOut], summary="An app's webhooks")
async def list_webhooks(app_id: AppId, user: User, hooks: WebhooksCtx) -> list[WebhookOut]:
    return await hooks.list_for(user.sub, app_id)


@router.delete("/{webhook_id}", operation_id="deleteWebhook", status_code=204, summary="Stop a webhook")
async def delete(app_id: AppId, webhook_id: HookId, user: User, hooks: WebhooksCtx) -> Response:
    await hooks.delete(user.sub, app_id, webhook_id)
    return Response(status_code=204)


@router.get("/{webhook_id}/deliveries", operation_id="listWebhookDeliveries", response_model=list[DeliveryOut],
            summary="A webhook's latest deliveries (newest first), each with every attempt")
async def deliveries(app_id: AppId, webhook_id: HookId, user: User, hooks: WebhooksCtx) -> list[DeliveryOut]:
    return await hooks.deliveries(user.sub, app_id, webhook_id)
