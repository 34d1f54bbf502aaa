"""HTTP routes of the auth service: users (`/api/user/*`), apps and keys (`/api/auth/*`), email."""


from collections.abc import Callable
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from libs import tokens
from libs.access import bearer_dependency, client_ip
from libs.apikeys import KeyRecord
from libs.clientip import TrustedProxies
from libs.settings import Settings
from services.auth import schemas as s
from services.auth.service import AuthService


def _key_meta(row: object) -> s.KeyMeta:
    r = row  # a key row (mapping)
    return s.KeyMeta(
        key_id=str(r["id"]), kind=r["kind"], prefix=r["prefix"], created_at=r["created_at"],  # type: ignore[index]
        expires_at=r["expires_at"], revoked=r["revoked_at"] is not None, revoked_at=r["revoked_at"],  # type: ignore[index]
        last_used_at=r["last_used_at"],  # type: ignore[index]
    )


def build_routers(settings: Settings, svc: Callable[[], AuthService]) -> list[APIRouter]:
    current_user = bearer_dependency(settings, lambda: svc().redis)
    proxies = TrustedProxies(settings.trusted_proxies)
    User = Annotated[tokens.TokenClaims, Depends(current_user)]
    Svc = Annotated[AuthService, Depends(svc)]

    users = APIRouter(prefix="/api/user", tags=["users"])

    @users.post("/signup", status_code=201, response_model=s.SignupOut, summary="Create an account")
    async def signup(body: s.SignupIn, service: Svc) -> s.SignupOut:
        user = await service.signup(body.username, str(body.email), body.password)
        return s.SignupOut(id=str(user["id"]), email=user["email"], message="account created; a welcome email is on its way")

    @users.post("/login", response_model=s.TokenPair, summary="Exchange username (or email) and password for tokens")
    async def login(body: s.LoginIn, request: Request, service: Svc) -> dict[str, object]:
        return await service.login(body.username, body.password, client_ip(request, proxies))

    @users.post("/refresh", response_model=s.TokenPair, summary="Rotate a refresh token for a new pair")
    async def refresh(body: s.RefreshIn, service: Svc) -> dict[str, object]:
        return await service.refresh(body.refresh_token)

    @users.post("/logout", status_code=204, summary="End this session (refresh family and access token)")
    async def logout(user: User, service: Svc) -> Response:
        await service.logout(user)
        return Response(status_code=204)

    @users.get("/get_user_profile", response_model=s.UserProfile, summary="The signed-in user")
    async def profile(user: User, service: Svc) -> s.UserProfile:
        row = await service.profile(user.sub)
        return s.UserProfile(id=str(row["id"]), username=row["username"], email=row["email"], created_at=row["created_at"])

    apps = APIRouter(prefix="/api/auth", tags=["apps and API keys"])

    @apps.post("/register", status_code=201, response_model=s.RegisterAppOut, summary="Register an app and get its keys")
    async def register(body: s.RegisterAppIn, user: User, service: Svc) -> s.RegisterAppOut:
        app, issued = await service.register_app(user.sub, body.name, body.domain, body.expires_at)
        return s.RegisterAppOut(
            app_id=str(app["id"]), name=app["name"], domain=app["domain"], api_key=issued.api_key,
            write_key=issued.write_key, expires_at=issued.records[0].expires_at,
        )

    @apps.get("/apps", response_model=list[s.AppOut], summary="Your apps")
    async def list_apps(user: User, service: Svc) -> list[s.AppOut]:
        return [
            s.AppOut(app_id=str(r["id"]), name=r["name"], domain=r["domain"], created_at=r["created_at"])
            for r in await service.list_apps(user.sub)
        ]

    @apps.get("/api-key", response_model=s.KeyListOut, summary="Key metadata of an app (never the secrets)")
    async def api_key(user: User, service: Svc, app_id: Annotated[s.Line, Query(max_length=64)]) -> s.KeyListOut:
        rows = await service.key_metadata(user.sub, app_id)
        return s.KeyListOut(app_id=app_id, keys=[_key_meta(r) for r in rows])

    @apps.post("/revoke", response_model=s.RevokeOut, summary="Revoke one key, or every key of an app")
    async def revoke(body: s.RevokeIn, user: User, service: Svc) -> s.RevokeOut:
        revoked: list[KeyRecord] = await service.revoke(user.sub, body.app_id, body.key_id)
        return s.RevokeOut(revoked=[r.key_id for r in revoked])

    @apps.post("/regenerate", response_model=s.RegenerateOut, summary="Revoke an app's keys and issue new ones")
    async def regenerate(body: s.RegenerateIn, user: User, service: Svc) -> s.RegenerateOut:
        issued, revoked = await service.regenerate(user.sub, body.app_id, body.expires_at)
        return s.RegenerateOut(
            app_id=body.app_id, api_key=issued.api_key, write_key=issued.write_key,
            expires_at=issued.records[0].expires_at, revoked=[r.key_id for r in revoked],
        )

    email = APIRouter(prefix="/api/email", tags=["email"])

    @email.post("/notification", status_code=202, response_model=s.NotificationOut,
                summary="Queue an email to yourself (never to anyone else)")
    async def notification(body: s.NotificationIn, user: User, service: Svc) -> s.NotificationOut:
        message_id = await service.send_notification(user.sub, body.subject, body.body, str(body.to) if body.to else None)
        return s.NotificationOut(message_id=message_id)

    return [users, apps, email]
