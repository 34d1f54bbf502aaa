"""Credentials as FastAPI dependencies: Bearer JWTs (users) and API keys (apps)."""


from collections.abc import Awaitable, Callable
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from libs import tokens
from libs.http import ApiError
from libs.settings import Settings

bearer_scheme = HTTPBearer(auto_error=False, description="access_token from POST /api/user/login")

BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]


def bearer_dependency(
    settings: Settings, redis: Callable[[], aioredis.Redis | None]
) -> Callable[..., Awaitable[tokens.TokenClaims]]:
    """A dependency that returns the caller's access-token claims, or answers 401."""

    async def current_user(credentials: BearerCredentials) -> tokens.TokenClaims:
        if credentials is None:
            raise ApiError(401, "missing Bearer token; log in at POST /api/user/login", {"WWW-Authenticate": "Bearer"})
        try:
            claims = tokens.decode(settings, credentials.credentials, "access")
        except tokens.InvalidToken as exc:
            raise ApiError(401, str(exc), {"WWW-Authenticate": "Bearer"}) from exc
        client = redis()
        if client is not None and await tokens.is_denylisted(client, claims.jti, claims.family):
            raise ApiError(401, "token revoked (logged out); log in again", {"WWW-Authenticate": "Bearer"})
        return claims

    return current_user


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"
