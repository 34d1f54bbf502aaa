"""Scheduled report subscriptions (`/api/email/reports`): an app's owner asks for a daily or weekly
summary email of that app.

Auth owns the subscriptions (Postgres, next to users and apps) and publishes each one's whole state,
with what the email needs (recipient, app name), on the compacted topic `auth.report-subscriptions.v1`
(key: the subscription id; a null value once it is stopped), on every change and again at start. The
query service folds that topic into a table of its own and mails the reports when due; it tells when
it sent one, and when the next is due, on `query.report-runs.v1`, which auth folds back into its
table for the listing here."""

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import asyncpg
from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field

from libs.contracts import ReportSubscription
from libs.http import ApiError
from libs.kafka import REPORT_RUNS_GROUP, REPORT_RUNS_TOPIC, REPORT_SUBSCRIPTIONS_TOPIC, publish
from libs.notifications import ReportFrequency, next_report_at
from libs.openapi import errors
from libs.statetopic import follow_state_topic
from services.auth.context import AuthCtx, User
from services.auth.schemas import Line

if TYPE_CHECKING:
    from services.auth.keys import AppKeys as AuthService

MAX_SUBSCRIPTIONS_PER_USER = 50


class ReportIn(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"app_id": "0b6e1f3a-2c4d-4e5f-8a9b-1c2d3e4f5a6b", "frequency": "weekly"}]})
    app_id: Line = Field(max_length=64)
    frequency: ReportFrequency = "weekly"
    send_now: bool = Field(False, description="also mail a report of the last period right away")


class ReportOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "id": "3c2b1a09-8f7e-4d6c-5b4a-392817161514", "app_id": "0b6e1f3a-2c4d-4e5f-8a9b-1c2d3e4f5a6b", "app_name": "My blog",
        "frequency": "weekly", "next_run_at": "2026-02-02T00:00:00Z", "last_sent_at": None, "created_at": "2026-01-31T12:00:00Z"}]})
    id: str
    app_id: str
    app_name: str
    frequency: ReportFrequency
    next_run_at: datetime
    last_sent_at: datetime | None
    created_at: datetime


def _out(row: asyncpg.Record) -> ReportOut:
    return ReportOut(
        id=str(row["id"]), app_id=str(row["app_id"]), app_name=row["app_name"], frequency=row["frequency"],
        next_run_at=row["next_run_at"], last_sent_at=row["last_sent_at"], created_at=row["created_at"],
    )


_SELECT = """SELECT s.id, s.app_id, a.name AS app_name, s.frequency, s.next_run_at, s.last_sent_at, s.created_at
             FROM report_subscriptions s JOIN apps a ON a.id = s.app_id"""


_STATE = """SELECT s.id, s.app_id, a.name AS app_name, s.user_id, u.username, u.email, s.frequency, s.next_run_at,
                   s.created_at
            FROM report_subscriptions s JOIN apps a ON a.id = s.app_id JOIN users u ON u.id = s.user_id"""


def subscription_state(row: asyncpg.Record) -> dict[str, Any]:
    """A subscription's record on `auth.report-subscriptions.v1` (`libs.contracts.ReportSubscription`)."""
    return ReportSubscription(
        subscription_id=str(row["id"]), app_id=str(row["app_id"]), app_name=row["app_name"],
        user_id=str(row["user_id"]), username=row["username"], email=row["email"], frequency=row["frequency"],
        first_run_at=row["next_run_at"], created_at=row["created_at"],
    ).model_dump(mode="json", by_alias=True)


async def subscribe(svc: "AuthService", user_id: str, body: ReportIn) -> asyncpg.Record:
    """Stored and published together: the row is committed only once Kafka acknowledged its state."""
    app = await svc.owned_app(user_id, body.app_id)  # 404 / 403
    now = datetime.now(UTC)
    first = now if body.send_now else next_report_at(body.frequency, now, app["timezone"] or "UTC")  # local midnight
    async with svc.db() as conn, conn.transaction():
        count = await conn.fetchval("SELECT count(*) FROM report_subscriptions WHERE user_id = $1", uuid.UUID(user_id))
        if count >= MAX_SUBSCRIPTIONS_PER_USER:
            raise ApiError(409, f"at most {MAX_SUBSCRIPTIONS_PER_USER} report subscriptions per user")
        try:
            row = await conn.fetchrow(
                """INSERT INTO report_subscriptions (app_id, user_id, frequency, next_run_at)
                   VALUES ($1, $2, $3, $4) RETURNING id""",
                app["id"], uuid.UUID(user_id), body.frequency, first,
            )
        except asyncpg.UniqueViolationError as exc:
            raise ApiError(409, f"you already get a {body.frequency} report of this app") from exc
        assert row is not None
        state = await conn.fetchrow(f"{_STATE} WHERE s.id = $1", row["id"])
        assert state is not None  # the row inserted above, in this transaction
        await publish(svc.producer, REPORT_SUBSCRIPTIONS_TOPIC, subscription_state(state), key=str(row["id"]))
        created = await conn.fetchrow(f"{_SELECT} WHERE s.id = $1", row["id"])
        assert created is not None
        return created


async def list_for(svc: "AuthService", user_id: str, app_id: str | None) -> list[asyncpg.Record]:
    async with svc.db() as conn:
        rows = await conn.fetch(f"{_SELECT} WHERE s.user_id = $1 ORDER BY s.created_at", uuid.UUID(user_id))
    return [r for r in rows if app_id is None or str(r["app_id"]) == app_id]


async def unsubscribe(svc: "AuthService", user_id: str, subscription_id: str) -> None:
    """Deleted and its tombstone published together, as `subscribe` does."""
    try:
        sub = uuid.UUID(subscription_id)
    except ValueError as exc:
        raise ApiError(404, "report subscription not found") from exc
    async with svc.db() as conn, conn.transaction():
        deleted = await conn.fetchval(
            "DELETE FROM report_subscriptions WHERE id = $1 AND user_id = $2 RETURNING id", sub, uuid.UUID(user_id)
        )
        if deleted is None:  # someone else's subscription is as good as absent
            raise ApiError(404, "report subscription not found")
        await publish(svc.producer, REPORT_SUBSCRIPTIONS_TOPIC, None, key=str(deleted))


async def republish_all_reports(svc: "AuthService") -> int:
    """Publish the state of every subscription (at start-up), so the query service converges even after
    a lost message or with a new, empty table. The rows are share-locked until every state is acknowledged,
    so a subscription stopped meanwhile gets its tombstone after its republished state, not before."""
    async with svc.db() as conn, conn.transaction():
        rows = await conn.fetch(f"{_STATE} FOR SHARE OF s")
        for row in rows:
            await publish(svc.producer, REPORT_SUBSCRIPTIONS_TOPIC, subscription_state(row), key=str(row["id"]))
    return len(rows)


async def follow_report_runs(svc: "AuthService") -> None:
    """Background job: fold the query service's `query.report-runs.v1` (when a report went out, when the
    next is due) into the subscriptions, for the listing. A run older than the one recorded is ignored."""

    async def apply(states: Sequence[tuple[str, dict[str, Any] | None]]) -> None:
        runs = [(uuid.UUID(key), datetime.fromisoformat(s["next_run_at"]), datetime.fromisoformat(s["last_sent_at"]))
                for key, s in states if s is not None]
        async with svc.db() as conn:
            await conn.executemany(
                """UPDATE report_subscriptions SET next_run_at = $2, last_sent_at = $3
                   WHERE id = $1 AND (last_sent_at IS NULL OR last_sent_at <= $3)""",
                runs,
            )

    # A busy or unreachable Postgres (DependencyUnavailable from the pool) is retried by the follower.
    await follow_state_topic(svc.settings, REPORT_RUNS_TOPIC, REPORT_RUNS_GROUP, apply)


router = APIRouter(prefix="/api/email/reports", tags=["reports"], responses=errors(401, 404, 409, 422, 503))


@router.post("", operation_id="createReport", status_code=201, response_model=ReportOut,
             summary="Get a daily or weekly summary email of one of your apps")
async def create(body: ReportIn, user: User, ctx: AuthCtx) -> ReportOut:
    return _out(await subscribe(ctx.keys, user.sub, body))


@router.get("", operation_id="listReports", response_model=list[ReportOut], summary="Your report subscriptions")
async def list_reports(user: User, ctx: AuthCtx, app_id: str | None = None) -> list[ReportOut]:
    return [_out(r) for r in await list_for(ctx.keys, user.sub, app_id)]


@router.delete("/{subscription_id}", operation_id="deleteReport", status_code=204, summary="Stop a report")
async def delete(subscription_id: str, user: User, ctx: AuthCtx) -> Response:
    await unsubscribe(ctx.keys, user.sub, subscription_id)
    return Response(status_code=204)
