"""Credentials as FastAPI dependencies: Bearer JWTs (users) and API keys (apps)."""


from collections.abc import Awaitable, Callable
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from libs import tokens
from libs.clientip import TrustedProxies
from libs.http import ApiError
from libs.settings import Settings

bearer_scheme = HTTPBearer(auto_error=False, description="access_token from POST /api/user/login")

BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]


def bearer_dependency(
    settings: Settings, redis: Callable[[], aioredis.Redis | None]
) -> Callable[..., Awaitable[tokens.TokenClaims]]:
    """A dependency that returns the caller's access-token claims, or answers 401."""

    async def current_user(credentials: BearerCredentials) -> tokens.TokenClaims:
        return await signed_in(settings, credentials, redis())

    return current_user


async def signed_in(
    settings: Settings, credentials: HTTPAuthorizationCredentials | None, redis: aioredis.Redis | None
) -> tokens.TokenClaims:
    """The claims of the request's Bearer access token; 401 without one, or with one not valid."""
    if credentials is None:
        raise ApiError(401, "missing Bearer token; log in at POST /api/user/login", {"WWW-Authenticate": "Bearer"})
    return await verify_access_token(settings, credentials.credentials, redis)


async def verify_access_token(settings: Settings, token: str, redis: aioredis.Redis | None) -> tokens.TokenClaims:
    """The claims of a valid, not logged-out access token; else ApiError 401."""
    try:
        claims = tokens.decode(settings, token, "access")
    except tokens.InvalidToken as exc:
        raise ApiError(401, str(exc), {"WWW-Authenticate": "Bearer"}) from exc
    if redis is not None and await tokens.is_denylisted(redis, claims.jti, claims.family):
        raise ApiError(401, "token revoked (logged out); log in again", {"WWW-Authenticate": "Bearer"})
    return claims


def peer_ip(request: Request) -> str:
    """The socket peer's address (a proxy's, when there is one in front)."""
    return request.client.host if request.client else "unknown"


def client_ip(request: Request, proxies: TrustedProxies) -> str:
    """The client's address: the peer's, or X-Forwarded-For's when the peer is a trusted proxy."""
    return proxies.client_ip(peer_ip(request), request.headers.get("x-forwarded-for"))
