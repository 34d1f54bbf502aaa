"""Credentials as FastAPI dependencies: Bearer JWTs (users) and API keys (apps)."""


from typing import Annotated

import redis.asyncio as aioredis
from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBasic, HTTPBasicCredentials, HTTPBearer

from libs import tokens
from libs.clientip import TrustedProxies
from libs.http import ApiError
from libs.settings import Settings

# Each scheme is also what the OpenAPI document (and Swagger UI's Authorize button) offers, by these names.
bearer_scheme = HTTPBearer(auto_error=False, scheme_name="bearerAuth", bearerFormat="JWT",
                           description="access_token from POST /api/user/login (logIn)")
api_key_scheme = APIKeyHeader(name="x-api-key", auto_error=False, scheme_name="apiKey",
                              description="an app's secret key (sk_...) to read, or its write key (wk_...) to send events")

BearerCredentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)]
ApiKeyHeader = Annotated[str | None, Depends(api_key_scheme)]  # the x-api-key header, None when missing or empty


class WriteKeyBasic(HTTPBasic):
    """HTTP Basic with an app's write key as the user name and no password, as Segment's SDKs send it:
    documented here, read by the gateway itself (services/gateway/segment.py), so this reads nothing."""

    def __init__(self) -> None:
        super().__init__(scheme_name="writeKeyBasic", auto_error=False,
                         description="an app's write key (wk_...) as the user name, the password empty (Segment's SDKs)")

    async def __call__(self, request: Request) -> HTTPBasicCredentials | None:  # type: ignore[override]
        return None


write_key_basic = WriteKeyBasic()


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
