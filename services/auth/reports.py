"""Scheduled report subscriptions (`/api/email/reports`): an app's owner asks for a daily or weekly
summary email of that app. Auth owns the subscriptions (Postgres, next to users and apps); the query
service's scheduler (`services/query/reports.py`) mails them when due."""

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated

import asyncpg
from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel, Field

from libs import tokens
from libs.access import bearer_dependency
from libs.http import ApiError
from libs.notifications import ReportFrequency, next_report_at
from libs.settings import Settings
from services.auth.schemas import Line

if TYPE_CHECKING:
    from services.auth.keys import AppKeys as AuthService

MAX_SUBSCRIPTIONS_PER_USER = 50


class ReportIn(BaseModel):
    app_id: Line = Field(max_length=64)
    frequency: ReportFrequency = "weekly"
    send_now: bool = Field(False, description="also mail a report of the last period right away")


class ReportOut(BaseModel):
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


async def subscribe(svc: "AuthService", user_id: str, body: ReportIn) -> asyncpg.Record:
    app = await svc.owned_app(user_id, body.app_id)  # 404 / 403
    now = datetime.now(UTC)
    first = now if body.send_now else next_report_at(body.frequency, now)
    async with svc.db() as conn:
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
        return await conn.fetchrow(f"{_SELECT} WHERE s.id = $1", row["id"])  # type: ignore[index]


async def list_for(svc: "AuthService", user_id: str, app_id: str | None) -> list[asyncpg.Record]:
    async with svc.db() as conn:
        rows = await conn.fetch(f"{_SELECT} WHERE s.user_id = $1 ORDER BY s.created_at", uuid.UUID(user_id))
    return [r for r in rows if app_id is None or str(r["app_id"]) == app_id]


async def unsubscribe(svc: "AuthService", user_id: str, subscription_id: str) -> None:
    try:
        sub = uuid.UUID(subscription_id)
    except ValueError as exc:
        raise ApiError(404, "report subscription not found") from exc
    async with svc.db() as conn:
        deleted = await conn.fetchval(
            "DELETE FROM report_subscriptions WHERE id = $1 AND user_id = $2 RETURNING id", sub, uuid.UUID(user_id)
        )
    if deleted is None:  # someone else's subscription is as good as absent
        raise ApiError(404, "report subscription not found")


def build_reports_router(settings: Settings, svc: Callable[[], "AuthService"]) -> APIRouter:
    current_user = bearer_dependency(settings, lambda: svc().redis)
    User = Annotated[tokens.TokenClaims, Depends(current_user)]
    router = APIRouter(prefix="/api/email/reports", tags=["email"])

    @router.post("", status_code=201, response_model=ReportOut,
                 summary="Get a daily or weekly summary email of one of your apps")
    async def create(body: ReportIn, user: User) -> ReportOut:
        return _out(await subscribe(svc(), user.sub, body))

    @router.get("", response_model=list[ReportOut], summary="Your report subscriptions")
    async def list_reports(user: User, app_id: str | None = None) -> list[ReportOut]:
        return [_out(r) for r in await list_for(svc(), user.sub, app_id)]

    @router.delete("/{subscription_id}", status_code=204, summary="Stop a report")
    async def delete(subscription_id: str, user: User) -> Response:
        await unsubscribe(svc(), user.sub, subscription_id)
        return Response(status_code=204)

    return router
