"""HTTP routes of the auth service: users (`/api/user/*`), apps and keys (`/api/auth/*`), email.
The logic is in accounts.py and keys.py."""

from __future__ import annotations

from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Path, Query, Request, Response

from libs.access import client_ip
from libs.apikeys import KeyRecord
from libs.http import ApiError
from libs.openapi import errors
from libs.settings import Settings
from services.auth import schemas as s
from services.auth.context import AuthCtx, User

users = APIRouter(prefix="/api/user", tags=["account"], responses=errors(401, 422, 503))
apps = APIRouter(prefix="/api/auth", tags=["apps"], responses=errors(401, 403, 404, 422, 503))
email = APIRouter(prefix="/api/email", tags=["notifications"], responses=errors(401, 403, 422, 429, 503))


# The dashboard's session: its refresh token in a cookie script cannot read (httpOnly), sent only to the
# refresh route and only by pages of this site (SameSite=Strict). The access token stays in page memory.
REFRESH_COOKIE = "analytics_refresh"
REFRESH_PATH = "/api/user/refresh"


def _secure(request: Request, settings: Settings) -> bool:
    return request.url.scheme == "https" or settings.public_base_url.startswith("https://")


def _set_session_cookie(response: Response, request: Request, settings: Settings, pair: dict[str, Any]) -> None:
    response.set_cookie(
        REFRESH_COOKIE, pair["refresh_token"], max_age=settings.jwt_refresh_expires, path=REFRESH_PATH,
        httponly=True, samesite="strict", secure=_secure(request, settings),
    )


def _clear_session_cookie(response: Response, request: Request, settings: Settings) -> None:
    response.delete_cookie(REFRESH_COOKIE, path=REFRESH_PATH, httponly=True, samesite="strict",
                           secure=_secure(request, settings))


def _json_body(request: Request) -> bool:
    return request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/json"


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
async def login(body: s.LoginIn, request: Request, response: Response, ctx: AuthCtx) -> dict[str, object]:
    pair = await ctx.accounts.login(body.username, body.password, client_ip(request, ctx.proxies))
    _set_session_cookie(response, request, ctx.accounts.settings, pair)
    return pair


@users.post("/refresh", operation_id="refreshTokens", response_model=s.TokenPair,
            summary="Rotate a refresh token (from the body, or the dashboard's session cookie) for a new pair")
async def refresh(body: s.RefreshIn, request: Request, response: Response, ctx: AuthCtx) -> dict[str, object]:
    settings = ctx.accounts.settings
    token = body.refresh_token
    if token is None:
        # The cookie only with a JSON body: a page of another site cannot send one without the browser
        # asking first (CORS), on top of the cookie being SameSite=Strict.
        token = request.cookies.get(REFRESH_COOKIE) if _json_body(request) else None
        if not token:
            raise ApiError(422, "refresh_token is required (or the session cookie, with a JSON body)")
        try:
            pair = await ctx.accounts.refresh(token)
        except ApiError as exc:  # the cookie's session is over: the browser may forget it
            cleared = Response()
            _clear_session_cookie(cleared, request, settings)
            raise ApiError(exc.status, exc.detail, {**(exc.headers or {}), "set-cookie": cleared.headers["set-cookie"]}) from exc
    else:
        pair = await ctx.accounts.refresh(token)
    _set_session_cookie(response, request, settings, pair)
    return pair


@users.post("/logout", operation_id="logOut", status_code=204, summary="End this session (refresh family and access token)")
async def logout(user: User, request: Request, ctx: AuthCtx) -> Response:
    await ctx.accounts.logout(user)
    response = Response(status_code=204)
    _clear_session_cookie(response, request, ctx.accounts.settings)
    return response


@users.post("/password", operation_id="changePassword", status_code=204, responses=errors(400, 403, 429),
            summary="Change your password; every other session of yours ends")
async def change_password(body: s.PasswordChangeIn, user: User, request: Request, ctx: AuthCtx) -> Response:
    await ctx.accounts.change_password(user, body.current_password, body.new_password, client_ip(request, ctx.proxies))
    return Response(status_code=204)


@users.post("/password-reset", operation_id="requestPasswordReset", status_code=202, response_model=s.PasswordResetOut,
            responses=errors(429), summary="Mail a one-time password reset link (the answer is the same for any address)")
async def password_reset(body: s.PasswordResetIn, request: Request, ctx: AuthCtx) -> s.PasswordResetOut:
    await ctx.accounts.request_password_reset(str(body.email), client_ip(request, ctx.proxies))
    return s.PasswordResetOut()


@users.post("/password-reset/confirm", operation_id="confirmPasswordReset", status_code=204, responses=errors(400, 410),
            summary="Set a new password with the mailed token; every session ends")
async def password_reset_confirm(body: s.PasswordResetConfirmIn, ctx: AuthCtx) -> Response:
    await ctx.accounts.confirm_password_reset(body.token, body.new_password)
    return Response(status_code=204)


@users.delete("/me", operation_id="deleteAccount", status_code=204, responses=errors(403, 429),
              summary="Delete your account, your apps (keys revoked) and every event of them")
async def delete_account(body: s.AccountDeleteIn, user: User, request: Request, ctx: AuthCtx) -> Response:
    await ctx.accounts.delete_account(user, body.password, client_ip(request, ctx.proxies), ctx.keys)
    response = Response(status_code=204)
    _clear_session_cookie(response, request, ctx.accounts.settings)
    return response


@users.get("/get_user_profile", operation_id="getUserProfile", response_model=s.UserProfile, summary="The signed-in user")
async def profile(user: User, ctx: AuthCtx) -> s.UserProfile:
    row = await ctx.accounts.profile(user.sub)
    return s.UserProfile(id=str(row["id"]), username=row["username"], email=row["email"], created_at=row["created_at"])


@apps.post("/register", operation_id="registerApp", status_code=201, response_model=s.RegisterAppOut,
           summary="Register an app and get its keys")
async def register(body: s.RegisterAppIn, user: User, ctx: AuthCtx) -> s.RegisterAppOut:
    app, issued = await ctx.keys.register_app(user.sub, body.name, body.domain, body.expires_at)
    return s.RegisterAppOut(
        app_id=str(app["id"]), name=app["name"], domain=app["domain"], api_key=issued.api_key,
        write_key=issued.write_key, expires_at=issued.records[0].expires_at,
    )


def _app_out(row: asyncpg.Record) -> s.AppOut:
    return s.AppOut(
        app_id=str(row["id"]), name=row["name"], domain=row["domain"], created_at=row["created_at"],
        timezone=row["timezone"], excluded_ips=list(row["excluded_ips"]), allowed_origins=list(row["allowed_origins"]),
    )


@apps.get("/apps", operation_id="listApps", response_model=list[s.AppOut], summary="Your apps")
async def list_apps(user: User, ctx: AuthCtx) -> list[s.AppOut]:
    return [_app_out(r) for r in await ctx.keys.list_apps(user.sub)]


@apps.patch("/apps/{app_id}", operation_id="updateApp", response_model=s.AppOut, responses=errors(400),
            summary="Rename an app or change its site settings (time zone, excluded IPs, allowed origins)")
async def update_app(app_id: Annotated[s.Line, Path(max_length=64)], body: s.AppSettingsIn, user: User, ctx: AuthCtx) -> s.AppOut:
    return _app_out(await ctx.keys.update_settings(user.sub, app_id, body.model_dump(exclude_unset=True)))


@apps.delete("/apps/{app_id}", operation_id="deleteApp", status_code=204,
             summary="Delete an app: its keys are revoked at once, its events deleted, its reports stopped")
async def delete_app(app_id: Annotated[s.Line, Path(max_length=64)], user: User, ctx: AuthCtx) -> Response:
    await ctx.keys.delete_app(user.sub, app_id)
    return Response(status_code=204)


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
