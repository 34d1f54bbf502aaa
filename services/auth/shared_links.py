# ruff: noqa: S608 - SQL from fixed fragments only; every value is a bind parameter
"""Shared links (`/api/auth/apps/{app_id}/shared-links`): a URL of a read-only dashboard of an app's stats
that needs no account, made and revoked by the app's admins.

Only the SHA-256 of a link's token is stored; it is published with the app's state on `auth.apps.v1`,
so the query service knows the link (and its revocation) from its app directory, inside the transaction
that makes the change. The query service accepts a link (header `x-shared-link`) on the stats routes
only. A link with a password reads only with a short-lived token from `POST /api/auth/shared-links/unlock`
(the password checked here; the token names the link, so revoking the link ends it too)."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import asyncpg
from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from libs import tokens
from libs.access import client_ip
from libs.http import ApiError
from libs.logs import get_logger
from libs.openapi import errors
from libs.stores import PgConnection
from services.auth import passwords
from services.auth import repository as repo
from services.auth.context import AuthCtx, User
from services.auth.keys import app_record
from services.auth.schemas import Line

if TYPE_CHECKING:
    from services.auth.keys import AppKeys

log = get_logger(__name__)

MAX_LINKS_PER_APP = 50
UNLOCK_LIMIT = "20/minute"  # password guesses per link, and per client address
SHARE_PATH = "/dashboard/share/"
LINK_ID = "7c6b5a49-3827-4160-a5b4-c3d2e1f0a9b8"


class SharedLinkIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{}, {"password": "correct horse battery"}]})
    password: Line | None = Field(default=None, min_length=8, max_length=200,
                                  description="asked once by the shared dashboard (none: the URL alone reads)")


class SharedLinkOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{
        "link_id": LINK_ID, "prefix": "Xy3_a1", "created_at": "2026-01-31T12:00:00Z", "has_password": False,
        "url": "https://analytics.example.com/dashboard/share/Xy3_a1...", "token": "Xy3_a1..."}]})
    link_id: str
    prefix: str = Field(description="the token's first characters, to tell links apart")
    created_at: datetime
    has_password: bool
    url: str | None = Field(default=None, description="the read-only dashboard's URL: shown only when the link is made")
    token: str | None = Field(default=None, description="the link's token (in the URL): shown only when the link is made")


class UnlockIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"token": "Xy3_a1...", "password": "correct horse battery"}]})
    token: Line = Field(min_length=1, max_length=200, description="the shared link's token")
    password: str = Field(min_length=1, max_length=200)


class UnlockOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"access_token": "eyJ...", "expires_in": 3600}]})
    access_token: str = Field(description="send as `x-shared-link` to the stats routes")
    expires_in: int = Field(description="seconds; then the password again")


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _out(row: asyncpg.Record, base_url: str | None = None, token: str | None = None) -> SharedLinkOut:
    return SharedLinkOut(
        link_id=str(row["id"]), prefix=row["prefix"], created_at=row["created_at"], has_password=row["has_password"],
        url=f"{base_url.rstrip('/')}{SHARE_PATH}{token}" if base_url and token else None, token=token,
    )


_COLUMNS = "id, prefix, created_at, password_hash IS NOT NULL AS has_password"


async def _republish(svc: AppKeys, conn: PgConnection, app_id: uuid.UUID) -> None:
    """The app's state with its links as they are now in this transaction, announced before commit."""
    await svc.announce_apps([app_record(await repo.update_app(conn, app_id, {}))])


async def create(svc: AppKeys, user_id: str, app_id: str, password: str | None) -> SharedLinkOut:
    app = await svc.app_with_role(user_id, app_id, "admin")
    token = secrets.token_urlsafe(24)
    password_hash = await passwords.hash_password(password) if password else None
    async with svc.db() as conn, conn.transaction():
        count = await conn.fetchval("SELECT count(*) FROM shared_links WHERE app_id = $1", app["id"])
        if count >= MAX_LINKS_PER_APP:
            raise ApiError(409, f"at most {MAX_LINKS_PER_APP} shared links per app; revoke one first")
        row = await conn.fetchrow(
            f"""INSERT INTO shared_links(app_id, token_hash, prefix, password_hash, created_by)
                VALUES($1, $2, $3, $4, $5) RETURNING {_COLUMNS}""",
            app["id"], token_hash(token), token[:6], password_hash, uuid.UUID(user_id),
        )
        assert row is not None
        await _republish(svc, conn, app["id"])
    log.info("shared link created", app_id=app_id, link_id=str(row["id"]), has_password=password_hash is not None)
    return _out(row, svc.settings.public_base_url, token)


async def list_links(svc: AppKeys, user_id: str, app_id: str) -> list[SharedLinkOut]:
    app = await svc.app_with_role(user_id, app_id, "admin")
    async with svc.db() as conn:
        rows = await conn.fetch(f"SELECT {_COLUMNS} FROM shared_links WHERE app_id = $1 ORDER BY created_at, id", app["id"])
    return [_out(r) for r in rows]


async def revoke(svc: AppKeys, user_id: str, app_id: str, link_id: str) -> None:
    app = await svc.app_with_role(user_id, app_id, "admin")
    try:
        link = uuid.UUID(link_id)
    except ValueError as exc:
        raise ApiError(404, "shared link not found") from exc
    async with svc.db() as conn, conn.transaction():
        deleted = await conn.fetchval("DELETE FROM shared_links WHERE id = $1 AND app_id = $2 RETURNING id", link, app["id"])
        if deleted is None:
            raise ApiError(404, "shared link not found")
        await _republish(svc, conn, app["id"])
    log.info("shared link revoked", app_id=app_id, link_id=link_id)


async def unlock(svc: AppKeys, token: str, password: str, ip: str) -> str:
    hashed = token_hash(token)
    for scope, ident in (("link", hashed), ("ip", ip)):
        retry_after = await svc.limiter.hit_or_refuse(UNLOCK_LIMIT, "share-unlock", scope, ident)  # Redis away: 503
        if retry_after is not None:
            raise ApiError(429, f"too many attempts; retry in {retry_after}s", {"Retry-After": str(retry_after)})
    async with svc.db() as conn:
        row = await conn.fetchrow("SELECT id, app_id, password_hash FROM shared_links WHERE token_hash = $1", hashed)
    if row is None:
        raise ApiError(404, "shared link not found (revoked, or never made)")
    if row["password_hash"] is None:
        raise ApiError(409, "this link has no password: send its token as x-shared-link")
    if not await passwords.verify_password(row["password_hash"], password):
        raise ApiError(401, "wrong password")
    return tokens.issue_share(svc.settings, str(row["id"]), str(row["app_id"]), hashed)


router = APIRouter(prefix="/api/auth", tags=["sharing"], responses=errors(401, 403, 404, 422, 503))
AppId = Annotated[Line, Path(max_length=64)]


@router.post("/apps/{app_id}/shared-links", operation_id="createSharedLink", status_code=201, response_model=SharedLinkOut,
             responses=errors(409), summary="A URL of a read-only dashboard of the app's stats, no account needed (admins)")
async def create_link(app_id: AppId, body: SharedLinkIn, user: User, ctx: AuthCtx) -> SharedLinkOut:
    return await create(ctx.keys, user.sub, app_id, body.password)


@router.get("/apps/{app_id}/shared-links", operation_id="listSharedLinks", response_model=list[SharedLinkOut],
            summary="The app's shared links (never their tokens)")
async def list_shared(app_id: AppId, user: User, ctx: AuthCtx) -> list[SharedLinkOut]:
    return await list_links(ctx.keys, user.sub, app_id)


@router.delete("/apps/{app_id}/shared-links/{link_id}", operation_id="revokeSharedLink", status_code=204,
               summary="Revoke a shared link (it stops working within a second)")
async def revoke_link(app_id: AppId, link_id: Annotated[Line, Path(max_length=64)], user: User, ctx: AuthCtx) -> Response:
    await revoke(ctx.keys, user.sub, app_id, link_id)
    return Response(status_code=204)


@router.post("/shared-links/unlock", operation_id="unlockSharedLink", response_model=UnlockOut, responses=errors(409, 429),
             summary="Exchange a password-protected shared link's token and password for a short-lived read token")
async def unlock_link(body: UnlockIn, request: Request, ctx: AuthCtx) -> UnlockOut:
    access = await unlock(ctx.keys, body.token, body.password, client_ip(request, ctx.proxies))
    return UnlockOut(access_token=access, expires_in=tokens.SHARE_TOKEN_LIFETIME_S)
