"""HTTP routes of the auth service: users (`/api/user/*`), apps and keys (`/api/auth/*`), email.
The logic is in accounts.py and keys.py."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Path, Query, Request, Response

from libs.access import client_ip
from libs.apikeys import KeyRecord
from libs.openapi import errors
from services.auth import schemas as s
from services.auth.context import AuthCtx, User

users = APIRouter(prefix="/api/user", tags=["account"], responses=errors(401, 422, 503))
apps = APIRouter(prefix="/api/auth", tags=["apps"], responses=errors(401, 403, 404, 422, 503))
email = APIRouter(prefix="/api/email", tags=["notifications"], responses=errors(401, 403, 422, 429, 503))


def _key_meta(row: object) -> s.KeyMeta:
    r = row  # a key row (mapping)
    return s.KeyMeta(
        key_id=str(r["id"]), kind=r["kind"], prefix=r["prefix"], created_at=r["created_at"],  # type: ignore[index]
        expires_at=r["expires_at"], revoked=r["revoked_at"] is not None, revoked_at=r["revoked_at"],  # type: ignore[index]
        last_used_at=r["last_used_at"],  # type: ignore[index]
    )


@users.post("/signup", operation_id="signUp", responses=errors(400, 409), status_code=201, response_model=s.SignupOut,
            summary="Create an account")
async def signup(body: s.SignupIn, ctx: AuthCtx) -> s.SignupOut:
    user = await ctx.accounts.signup(body.username, str(body.email), body.password)
    return s.SignupOut(id=str(user["id"]), email=user["email"], message="account created; a welcome email is on its way")


@users.post("/login", operation_id="logIn", responses=errors(429), response_model=s.TokenPair,
            summary="Exchange username (or email) and password for tokens")
async def login(body: s.LoginIn, request: Request, ctx: AuthCtx) -> dict[str, object]:
    return await ctx.accounts.login(body.username, body.password, client_ip(request, ctx.proxies))


@users.post("/refresh", operation_id="refreshTokens", response_model=s.TokenPair, summary="Rotate a refresh token for a new pair")
async def refresh(body: s.RefreshIn, ctx: AuthCtx) -> dict[str, object]:
    return await ctx.accounts.refresh(body.refresh_token)


@users.post("/logout", operation_id="logOut", status_code=204, summary="End this session (refresh family and access token)")
async def logout(user: User, ctx: AuthCtx) -> Response:
    await ctx.accounts.logout(user)
    return Response(status_code=204)


@users.get("/get_user_profile", operation_id="getUserProfile", response_model=s.UserProfile, summary="The signed-in user")
async def profile(user: User, ctx: AuthCtx) -> s.UserProfile:
    row = await ctx.accounts.profile(user.sub)
    return s.UserProfile(id=str(row["id"]), username=row["username"], email=row["email"], created_at=row["created_at"])


@apps.post("/register", operation_id="registerApp", status_code=201, response_model=s.RegisterAppOut,
           summary="Register an app and get its keys")
async def register(body: s.RegisterAppIn, user: User, ctx: AuthCtx) -> s.RegisterAppOut:
    app, issued = await ctx.keys.register_app(user.sub, body.name, body.domain, body.expires_at, body.team_id)
    return s.RegisterAppOut(
        app_id=str(app["id"]), name=app["name"], domain=app["domain"], api_key=issued.api_key,
        write_key=issued.write_key, expires_at=issued.records[0].expires_at,
    )


def _app_out(row: asyncpg.Record | Mapping[str, Any]) -> s.AppOut:
    return s.AppOut(
        app_id=str(row["id"]), name=row["name"], domain=row["domain"], created_at=row["created_at"],
        timezone=row["timezone"], excluded_ips=list(row["excluded_ips"]), allowed_origins=list(row["allowed_origins"]),
        team_id=str(row["team_id"]) if row["team_id"] else None, role=row["role"],
    )


@apps.get("/apps", operation_id="listApps", response_model=list[s.AppOut],
          summary="Your apps and your teams' apps, with your role on each")
async def list_apps(user: User, ctx: AuthCtx) -> list[s.AppOut]:
    return [_app_out(r) for r in await ctx.keys.list_apps(user.sub)]


@apps.patch("/apps/{app_id}", operation_id="updateApp", response_model=s.AppOut, responses=errors(400),
            summary="Rename an app or change its site settings (time zone, excluded IPs, allowed origins)")
async def update_app(app_id: Annotated[s.Line, Path(max_length=64)], body: s.AppSettingsIn, user: User, ctx: AuthCtx) -> s.AppOut:
    return _app_out(await ctx.keys.update_settings(user.sub, app_id, body.model_dump(exclude_unset=True)))


@apps.get("/api-key", operation_id="listAppKeys", response_model=s.KeyListOut, summary="Key metadata of an app (never the secrets)")
async def api_key(user: User, ctx: AuthCtx, app_id: Annotated[s.Line, Query(max_length=64)]) -> s.KeyListOut:
    rows = await ctx.keys.key_metadata(user.sub, app_id)
    return s.KeyListOut(app_id=app_id, keys=[_key_meta(r) for r in rows])


@apps.post("/revoke", operation_id="revokeKeys", response_model=s.RevokeOut, summary="Revoke one key, or every key of an app")
async def revoke(body: s.RevokeIn, user: User, ctx: AuthCtx) -> s.RevokeOut:
    revoked: list[KeyRecord] = await ctx.keys.revoke(user.sub, body.app_id, body.key_id)
    return s.RevokeOut(revoked=[r.key_id for r in revoked])


@apps.post("/regenerate", operation_id="regenerateKeys", response_model=s.RegenerateOut, summary="Revoke an app's keys and issue new ones")
async def regenerate(body: s.RegenerateIn, user: User, ctx: AuthCtx) -> s.RegenerateOut:
    issued, revoked = await ctx.keys.regenerate(user.sub, body.app_id, body.expires_at)
    return s.RegenerateOut(
        app_id=body.app_id, api_key=issued.api_key, write_key=issued.write_key,
        expires_at=issued.records[0].expires_at, revoked=[r.key_id for r in revoked],
    )


@email.post("/notification", operation_id="sendNotification", status_code=202, response_model=s.NotificationOut,
            summary="Queue an email to yourself (never to anyone else)")
async def notification(body: s.NotificationIn, user: User, ctx: AuthCtx) -> s.NotificationOut:
    message_id = await ctx.accounts.send_notification(user.sub, body.subject, body.body, str(body.to) if body.to else None)
    return s.NotificationOut(message_id=message_id)


ROUTERS = [users, apps, email]
