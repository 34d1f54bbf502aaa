"""JWT access and refresh tokens (pyjwt): issued by auth, verified by every HTTP service.

The algorithm is pinned from settings; `type`, `jti`, `sub`, `exp` and `iat` are required, so an
access token cannot stand in for a refresh token or the reverse. `auth_time` (unix seconds) is when the
user signed in (password or OIDC), carried unchanged across refreshes: a route that needs a recent
sign-in (deleting an account without a password) reads it. A logged-out access token's `jti`
is kept in Redis until it expires (`denylisted`), and so is the family (session) id of a logged-out
or hijacked session, which refuses every access token of that session.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import jwt
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from libs.settings import Settings

TokenType = Literal["access", "refresh"]
ISSUER = "analytics-auth"
DENYLIST_PREFIX = "auth:denied-jti:"
FAMILY_DENYLIST_PREFIX = "auth:denied-family:"


class InvalidToken(Exception):
    """Missing, malformed, expired, of the wrong type, or revoked."""


@dataclass(frozen=True)
class TokenClaims:
    sub: str
    jti: str
    family: str
    type: TokenType
    expires_at: datetime
    auth_time: int = 0  # unix seconds of the sign-in; 0 for a token issued before the claim existed


def issue(
    settings: Settings, user_id: str, token_type: TokenType, family: str, auth_time: int
) -> tuple[str, TokenClaims]:
    now = datetime.now(UTC)
    lifetime = settings.jwt_access_expires if token_type == "access" else settings.jwt_refresh_expires
    claims = TokenClaims(
        sub=user_id, jti=str(uuid.uuid4()), family=family, type=token_type,
        expires_at=now + timedelta(seconds=lifetime), auth_time=auth_time,
    )
    token = jwt.encode(
        {
            "sub": user_id, "jti": claims.jti, "fam": family, "type": token_type, "iss": ISSUER,
            "iat": now, "exp": claims.expires_at, "auth_time": auth_time,
        },
        settings.jwt_secret,
        algorithm=settings.jwt_algorithm,
    )
    return token, claims


def decode(settings: Settings, token: str, expected: TokenType) -> TokenClaims:
    try:
        payload = jwt.decode(
            token,
            settings.jwt_secret,
            algorithms=[settings.jwt_algorithm],
            issuer=ISSUER,
            options={"require": ["sub", "jti", "type", "exp", "iat", "fam"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise InvalidToken("token expired; log in again or use your refresh token") from exc
    except jwt.InvalidTokenError as exc:
        raise InvalidToken("invalid token") from exc
    if payload["type"] != expected:
        raise InvalidToken(f"expected an {expected} token")
    return TokenClaims(
        sub=str(payload["sub"]), jti=str(payload["jti"]), family=str(payload["fam"]), type=expected,
        expires_at=datetime.fromtimestamp(payload["exp"], UTC), auth_time=_int_claim(payload.get("auth_time")),
    )


def _int_claim(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


async def denylist(redis: aioredis.Redis, claims: TokenClaims) -> None:
    ttl = int((claims.expires_at - datetime.now(UTC)).total_seconds()) + 1
    if ttl > 0:
        await redis.set(DENYLIST_PREFIX + claims.jti, b"1", ex=ttl)


async def denylist_family(redis: aioredis.Redis, family: str, access_lifetime: int) -> None:
    """Refuse every access token of a session (logout, refresh-token reuse) until the last expires."""
    await redis.set(FAMILY_DENYLIST_PREFIX + family, b"1", ex=max(1, access_lifetime + 1))


async def denylist_families(redis: aioredis.Redis, families: list[str], access_lifetime: int) -> None:
    """`denylist_family` for many sessions at once (one round trip)."""
    if families:
        async with redis.pipeline(transaction=False) as pipe:
            for family in families:
                pipe.set(FAMILY_DENYLIST_PREFIX + family, b"1", ex=max(1, access_lifetime + 1))
            await pipe.execute()


async def is_denylisted(redis: aioredis.Redis, jti: str, family: str | None = None) -> bool:
    """Fails open when Redis is down: the token's signature and expiry were still checked."""
    keys = [DENYLIST_PREFIX + jti] + ([FAMILY_DENYLIST_PREFIX + family] if family else [])
    try:
        return bool(await redis.exists(*keys))
    except (RedisError, OSError):
        return False
