# ruff: noqa: S608 - SQL from fixed fragments only (the column list); every value is a bind parameter
"""Alerts (`/api/auth/apps/{app_id}/alerts`): an app's admin asks to hear when a metric of the app goes
above or below a threshold, or spikes against the same window a week before, by email and/or webhook.

Auth owns the alerts (Postgres, next to apps, webhooks and the users to mail) and publishes each one's
whole definition on the compacted `auth.alerts.v1` (a null value once deleted), on every change and
again at start, as it does report subscriptions. The query service, where ClickHouse is, folds that
topic into its own table and checks every alert on a schedule (services/query/alerts.py); it
publishes each change of an alert's state on `query.alert-firings.v1`: `fired` once when the
condition becomes true (not at every check while it stays true), `recovered` when it is false again.
Auth follows that topic: it records the state for the listing, and for a firing mails the alert's
creator (through the notifier, template `alert`) and/or delivers `alert.fired` to the app's webhooks.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import asyncpg
import orjson
from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from libs.alerts import STATS_FILTERS, WINDOWS, AlertMetric, Channel, Condition, CustomStat, WindowName, window_name
from libs.contracts import AlertState
from libs.http import ApiError
from libs.kafka import ALERT_FIRINGS_GROUP, ALERT_FIRINGS_TOPIC, ALERTS_TOPIC, publish
from libs.logs import get_logger
from libs.notifications import EmailMessage
from libs.openapi import errors
from libs.statetopic import follow_state_topic
from services.auth.context import AuthCtx, User
from services.auth.schemas import Line
from services.auth.webhooks import enqueue

if TYPE_CHECKING:
    from services.auth.keys import AppKeys

log = get_logger(__name__)

MAX_ALERTS_PER_APP = 50
ALERT_EMAIL_NAMESPACE = uuid.UUID("6f1c9a3e-2b7d-4c8e-9f10-a1b2c3d4e5f6")

_EXAMPLE_IN: dict[str, Any] = {"name": "Traffic drop", "metric": "visitors", "window": "1h", "condition": "below", "threshold": 10,
               "channels": ["email", "webhook"]}


class AlertIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        _EXAMPLE_IN,
        {"name": "Signup spike", "metric": "events", "filters": {"event_name": "signup"}, "window": "1d",
         "condition": "spike", "threshold": 50, "channels": ["webhook"]},
        {"name": "Slow pages", "metric": "custom", "metric_name": "page_load_ms", "custom_stat": "avg", "window": "15m",
         "condition": "above", "threshold": 800, "channels": ["email"]}]})
    name: Line = Field(min_length=1, max_length=100)
    metric: AlertMetric = Field(description="a web stats metric (as /stats/aggregate computes it), or `custom`")
    metric_name: Line | None = Field(None, max_length=200, description="the custom metric (with metric `custom`)")
    custom_stat: CustomStat = Field("avg", description="which statistic of the custom metric's values in the window")
    filters: dict[str, Annotated[str, Field(max_length=500)]] = Field(
        default_factory=dict, description=f"web stats filters: {', '.join(STATS_FILTERS)}")
    window: WindowName = Field("1h", description="the trailing window the metric is computed over")
    condition: Condition
    threshold: float = Field(allow_inf_nan=False, description="above/below: the value; spike: the percent change "
                             "against the same window a week before (e.g. 50; a negative one watches for a drop)")
    channels: list[Channel] = Field(min_length=1, max_length=2)

    @field_validator("filters")
    @classmethod
    def _known_filters(cls, filters: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(filters) - set(STATS_FILTERS))
        if unknown:
            raise ValueError(f"unknown filter(s) {', '.join(unknown)}; known: {', '.join(STATS_FILTERS)}")
        return filters

    @model_validator(mode="after")
    def _custom_needs_a_name(self) -> AlertIn:
        if self.metric == "custom" and not self.metric_name:
            raise ValueError("metric `custom` needs metric_name (a custom metric of the app)")
        if self.metric != "custom" and self.metric_name:
            raise ValueError("metric_name goes with metric `custom` only")
        if self.metric == "custom" and self.filters:
            raise ValueError("filters apply to web stats metrics, not to custom metrics")
        self.channels = sorted(set(self.channels))
        return self


class AlertOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "7d6c5b4a-3928-4716-a5b4-c3d2e1f0a9b8", "app_id": "0b6e1f3a-2c4d-4e5f-8a9b-1c2d3e4f5a6b", **_EXAMPLE_IN,
        "metric_name": None, "custom_stat": None, "filters": {}, "firing": False, "last_fired_at": None,
        "last_value": None, "last_checked_at": None, "created_at": "2026-01-31T12:00:00Z"}]})
    id: str
    app_id: str
    name: str
    metric: str
    metric_name: str | None
    custom_stat: str | None
    filters: dict[str, str]
    window: str
    condition: str
    threshold: float
    channels: list[str]
    firing: bool = Field(description="whether the condition held at the last check that changed the state")
    last_fired_at: datetime | None
    last_value: float | None = Field(description="the value when the state last changed (spike: percent change)")
    last_checked_at: datetime | None
    created_at: datetime


_COLUMNS = """id, app_id, user_id, name, metric, metric_name, custom_stat, filters, window_s, condition, threshold,
              channels, firing, last_fired_at, last_value, last_checked_at, created_at"""


def _filters(row: asyncpg.Record) -> dict[str, str]:
    value = row["filters"]
    return orjson.loads(value) if isinstance(value, str) else dict(value)


def _out(row: asyncpg.Record) -> AlertOut:
    return AlertOut(
        id=str(row["id"]), app_id=str(row["app_id"]), name=row["name"], metric=row["metric"],
        metric_name=row["metric_name"], custom_stat=row["custom_stat"], filters=_filters(row),
        window=window_name(row["window_s"]), condition=row["condition"], threshold=row["threshold"],
        channels=list(row["channels"]), firing=row["firing"], last_fired_at=row["last_fired_at"],
        last_value=row["last_value"], last_checked_at=row["last_checked_at"], created_at=row["created_at"],
    )


def alert_state(row: asyncpg.Record) -> dict[str, Any]:
    """An alert's record on `auth.alerts.v1` (`libs.contracts.AlertState`)."""
    return AlertState(
        alert_id=str(row["id"]), app_id=str(row["app_id"]), name=row["name"], metric=row["metric"],
        metric_name=row["metric_name"], custom_stat=row["custom_stat"], filters=_filters(row),
        window_s=row["window_s"], condition=row["condition"], threshold=row["threshold"],
        channels=list(row["channels"]), created_at=row["created_at"],
    ).model_dump(mode="json", by_alias=True)


def _alert_uuid(alert_id: str) -> uuid.UUID:
    try:
        return uuid.UUID(alert_id)
    except ValueError as exc:
        raise ApiError(404, "alert not found") from exc


async def create_alert(svc: AppKeys, user_id: str, app_id: str, body: AlertIn) -> asyncpg.Record:
    """Stored and published together: the row is committed only once Kafka acknowledged its state."""
    app = await svc.app_with_role(user_id, app_id, "admin")  # 404 / 403
    async with svc.db() as conn, conn.transaction():
        count = await conn.fetchval("SELECT count(*) FROM alerts WHERE app_id = $1", app["id"])
        if count >= MAX_ALERTS_PER_APP:
            raise ApiError(409, f"at most {MAX_ALERTS_PER_APP} alerts per app")
        row = await conn.fetchrow(
            f"""INSERT INTO alerts (app_id, user_id, name, metric, metric_name, custom_stat, filters, window_s,
                                   condition, threshold, channels)
               VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9, $10, $11) RETURNING {_COLUMNS}""",
            app["id"], uuid.UUID(user_id), body.name, body.metric, body.metric_name,
            body.custom_stat if body.metric == "custom" else None, orjson.dumps(body.filters).decode(),
            WINDOWS[body.window], body.condition, body.threshold, body.channels,
        )
        assert row is not None
        await publish(svc.producer, ALERTS_TOPIC, alert_state(row), key=str(row["id"]))
    log.info("alert created", app_id=app_id, alert_id=str(row["id"]), metric=body.metric, condition=body.condition)
    return row


async def list_alerts(svc: AppKeys, user_id: str, app_id: str) -> list[asyncpg.Record]:
    app = await svc.app_with_role(user_id, app_id, "admin")
    async with svc.db() as conn:
        return await conn.fetch(f"SELECT {_COLUMNS} FROM alerts WHERE app_id = $1 ORDER BY created_at", app["id"])


async def delete_alert(svc: AppKeys, user_id: str, app_id: str, alert_id: str) -> None:
    app = await svc.app_with_role(user_id, app_id, "admin")
    async with svc.db() as conn, conn.transaction():
        deleted = await conn.fetchval(
            "DELETE FROM alerts WHERE id = $1 AND app_id = $2 RETURNING id", _alert_uuid(alert_id), app["id"])
        if deleted is None:
            raise ApiError(404, "alert not found")
        await publish(svc.producer, ALERTS_TOPIC, None, key=str(deleted))


async def republish_all_alerts(svc: AppKeys) -> int:
    """Publish every alert's definition (at start-up), so the query service converges after a lost
    message or with an empty table; share-locked so a deletion's tombstone comes after, not before."""
    async with svc.db() as conn, conn.transaction():
        rows = await conn.fetch(f"SELECT {_COLUMNS} FROM alerts FOR SHARE")
        for row in rows:
            await publish(svc.producer, ALERTS_TOPIC, alert_state(row), key=str(row["id"]))
    return len(rows)


def _describe(alert: asyncpg.Record, firing: dict[str, Any]) -> dict[str, Any]:
    """What the email and the webhook say about a firing."""
    metric = alert["metric_name"] if alert["metric"] == "custom" else alert["metric"]
    return {
        "alert_id": str(alert["id"]), "app_id": str(alert["app_id"]), "name": alert["name"], "metric": alert["metric"],
        "metric_name": alert["metric_name"], "custom_stat": alert["custom_stat"], "label": metric,
        "filters": _filters(alert), "window": window_name(alert["window_s"]), "condition": alert["condition"],
        "threshold": alert["threshold"], "value": firing["value"], "current": firing["current"],
        "baseline": firing["baseline"], "window_start": firing["window_start"], "window_end": firing["window_end"],
        "fired_at": firing["checked_at"],
    }


async def follow_alert_firings(svc: AppKeys) -> None:
    """Background job: fold `query.alert-firings.v1` into the alerts (state for the listing); for each
    firing, mail the alert's creator and/or deliver `alert.fired` to the app's webhooks. Email message
    ids and deliveries are derived from the firing id, so a firing read twice goes out once."""

    async def apply(states: Sequence[tuple[str, dict[str, Any] | None]]) -> None:
        mails: list[EmailMessage] = []
        async with svc.db() as conn, conn.transaction():
            for _, firing in states:
                if firing is None:
                    continue
                checked_at = datetime.fromisoformat(firing["checked_at"])
                fired = firing["state"] == "fired"
                alert = await conn.fetchrow(
                    f"""UPDATE alerts SET firing = $2, last_value = $3, last_checked_at = $4,
                               last_fired_at = CASE WHEN $2 THEN $4 ELSE last_fired_at END
                        WHERE id = $1 AND (last_checked_at IS NULL OR last_checked_at <= $4)
                        RETURNING {_COLUMNS}""",
                    uuid.UUID(firing["alert_id"]), fired, firing["value"], checked_at,
                )
                if alert is None or not fired:  # deleted meanwhile, older than what is recorded, or a recovery
                    continue
                data = _describe(alert, firing)
                if "webhook" in alert["channels"]:
                    await enqueue(conn, str(alert["app_id"]), "alert.fired", f"alert.fired:{firing['firing_id']}",
                                  data, checked_at)
                if "email" in alert["channels"]:
                    user = await conn.fetchrow(
                        "SELECT u.username, u.email, a.name AS app_name FROM users u, apps a WHERE u.id = $1 AND a.id = $2",
                        alert["user_id"], alert["app_id"])
                    if user is not None:
                        mails.append(EmailMessage(
                            to=user["email"], template="alert",
                            message_id=str(uuid.uuid5(ALERT_EMAIL_NAMESPACE, firing["firing_id"])),
                            data={**data, "username": user["username"], "app_name": user["app_name"]},
                        ))
        for mail in mails:  # after the commit: the notifier drops a message id it already sent
            await svc._email_quietly(mail)

    await follow_state_topic(svc.settings, ALERT_FIRINGS_TOPIC, ALERT_FIRINGS_GROUP, apply)


AppId = Annotated[Line, Path(max_length=64)]

router = APIRouter(prefix="/api/auth/apps/{app_id}/alerts", tags=["alerts"], responses=errors(401, 403, 404, 422, 503))


@router.post("", operation_id="createAlert", status_code=201, response_model=AlertOut, responses=errors(409),
             summary="Alert when a metric of the app crosses a threshold or spikes")
async def create(app_id: AppId, body: AlertIn, user: User, ctx: AuthCtx) -> AlertOut:
    return _out(await create_alert(ctx.keys, user.sub, app_id, body))


@router.get("", operation_id="listAlerts", response_model=list[AlertOut], summary="An app's alerts and their state")
async def list_(app_id: AppId, user: User, ctx: AuthCtx) -> list[AlertOut]:
    return [_out(r) for r in await list_alerts(ctx.keys, user.sub, app_id)]


@router.delete("/{alert_id}", operation_id="deleteAlert", status_code=204, summary="Delete an alert")
async def delete(app_id: AppId, alert_id: Annotated[Line, Path(max_length=64)], user: User, ctx: AuthCtx) -> Response:
    await delete_alert(ctx.keys, user.sub, app_id, alert_id)
    return Response(status_code=204)
