"""Users and their sessions: sign-up, login (with brute-force limits), refresh-token rotation, logout,
profile, and emails a user sends to themselves. No HTTP here; errors are ApiError."""

from __future__ import annotations

import ipaddress
import uuid
from typing import Any

import asyncpg
from limits import RateLimitItem
from limits import parse as parse_limit
from redis.exceptions import RedisError

from libs import tokens
from libs.http import ApiError, DependencyUnavailable
from libs.logs import get_logger
from libs.notifications import EmailMessage, queue_email
from services.auth import passwords
from services.auth import repository as repo
from services.auth.store import AuthStore

log = get_logger(__name__)

NOTIFICATION_LIMIT = "10/hour"


class Accounts(AuthStore):
    """Users, and their sessions: a family of refresh tokens and the access tokens issued with them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Parsed now so that a malformed AUTH_LOGIN_LIMIT_* stops the start, not a login.
        self.login_limits = (
            (parse_limit(self.settings.auth_login_limit_per_account), "acct"),
            (parse_limit(self.settings.auth_login_limit_per_ip), "ip"),
        )

    async def signup(self, username: str, email: str, password: str) -> asyncpg.Record:
        problems = passwords.policy_problems(password)
        if problems:
            raise ApiError(400, "password needs " + ", ".join(problems))
        async with self.db() as conn:
            clash = await repo.taken(conn, username, email)
        if clash:
            raise ApiError(409, f"{' and '.join(clash)} already registered")
        password_hash = await passwords.hash_password(password)  # slow on purpose: not holding a connection
        async with self.db() as conn:
            try:
                user = await repo.insert_user(conn, username, email.lower(), password_hash)
            except asyncpg.UniqueViolationError as exc:
                raise ApiError(409, "username or email already registered") from exc
        await self._email_quietly(EmailMessage(to=user["email"], template="welcome", data={"username": username}))
        log.info("user signed up", user_id=str(user["id"]))
        return user

    async def login(self, login: str, password: str, client_ip: str) -> dict[str, Any]:
        """Brute force is limited by failed attempts, per account and per client IP.

        Every attempt takes one from both budgets before the password is checked (atomically, in
        Redis), so concurrent guesses cannot all pass a check made before any of them is counted;
        a right password gives them back, so only failures count and people behind one NAT who
        type their password right are never locked out. Once either budget is spent, every
        attempt is refused (429) before the password is even checked, until the moving window
        frees one. When Redis cannot count the attempt, the login is refused (503): guessing must
        not get easier by making Redis slow.
        """
        async with self.db() as conn:
            user = await repo.user_by_login(conn, login)
        # One budget per account, whether it is named by username or by email.
        idents = {"acct": str(user["id"]) if user else login.lower(), "ip": address_bucket(client_ip)}
        counted: list[tuple[RateLimitItem, str, str]] = []  # (limit, scope, identity) hit so far
        for limit, scope in self.login_limits:
            retry_after = await self.limiter.hit_or_refuse(limit, "login-failures", scope, idents[scope])
            if retry_after is not None:
                await self._refund_attempt(counted)  # not checked, so not a failure
                raise ApiError(
                    429, f"too many failed login attempts; retry in {retry_after}s", {"Retry-After": str(retry_after)}
                )
            counted.append((limit, scope, idents[scope]))
        if not await passwords.verify_password(user["password_hash"] if user else None, password):
            raise ApiError(401, "wrong username or password", {"WWW-Authenticate": "Bearer"})
        assert user is not None
        await self._refund_attempt(counted)
        return await self.sign_in(str(user["id"]))

    async def _refund_attempt(self, counted: list[tuple[RateLimitItem, str, str]]) -> None:
        for limit, scope, ident in counted:
            await self.limiter.refund(limit, "login-failures", scope, ident)

    async def sign_in(self, user_id: str, auth_time: int | None = None) -> dict[str, Any]:
        """A new session for a user who proved who they are (a password, an OpenID provider): the
        token pair the login route answers. `auth_time`: when they signed in, if not now."""
        return await self._issue_pair(user_id, family=str(uuid.uuid4()), auth_time=auth_time)

    async def _issue_pair(self, user_id: str, family: str, auth_time: int | None = None) -> dict[str, Any]:
        access, _ = tokens.issue(self.settings, user_id, "access", family, auth_time)
        refresh, claims = tokens.issue(self.settings, user_id, "refresh", family, auth_time)
        async with self.db() as conn:
            await repo.insert_refresh(conn, claims.jti, family, user_id, claims.expires_at)
        return {
            "access_token": access,
            "refresh_token": refresh,
            "token_type": "bearer",
            "expires_in": self.settings.jwt_access_expires,
        }

    async def refresh(self, refresh_token: str) -> dict[str, Any]:
        try:
            claims = tokens.decode(self.settings, refresh_token, "refresh")
        except tokens.InvalidToken as exc:
            raise ApiError(401, str(exc)) from exc
        async with self.db() as conn, conn.transaction():
            row = await repo.spend_refresh(conn, claims.jti)
            if row is None or row["revoked_at"] is not None:
                raise ApiError(401, "refresh token revoked; log in again")
            if row["used_at"] is not None:
                # A spent token came back: someone holds a stolen copy. End the whole session.
                await repo.revoke_family(conn, str(row["family_id"]))
                log.warning("refresh token reuse detected; family revoked", user_id=claims.sub)
                reused = True
            else:
                reused = False
        if reused:
            await self._deny_session(str(row["family_id"]))
            raise ApiError(401, "refresh token already used; the session was ended for safety, log in again")
        return await self._issue_pair(claims.sub, claims.family, claims.auth_time)

    async def logout(self, access: tokens.TokenClaims) -> None:
        """End the session: its refresh tokens (Postgres), then its access tokens (Redis denylist).

        Either store unreachable is a 503 and no success is claimed: the access token then still
        works, so the client can simply retry (both steps are idempotent).
        """
        async with self.db() as conn:
            await repo.revoke_family(conn, access.family)
        try:
            await tokens.denylist(self.redis, access)
            await tokens.denylist_family(self.redis, access.family, self.settings.jwt_access_expires)
        except (RedisError, OSError) as exc:
            log.warning("logout not recorded: redis unavailable", error=repr(exc))
            raise DependencyUnavailable("the session store (Redis)", retry_after=2) from exc

    async def _deny_session(self, family: str) -> None:
        """Refuse the session's access tokens too (Redis; best effort, they expire on their own)."""
        try:
            await tokens.denylist_family(self.redis, family, self.settings.jwt_access_expires)
        except Exception as exc:  # noqa: BLE001 - Redis down: refresh tokens are revoked in Postgres anyway
            log.warning("session access tokens not denylisted", error=repr(exc))

    async def profile(self, user_id: str) -> asyncpg.Record:
        async with self.db() as conn:
            user = await repo.user_by_id(conn, user_id)
        if user is None:
            raise ApiError(401, "user no longer exists")
        return user

    async def send_notification(self, user_id: str, subject: str, body: str, to: str | None) -> str:
        user = await self.profile(user_id)
        if to is not None and to.lower() != user["email"].lower():
            raise ApiError(403, "notifications go only to your own address")
        retry_after = await self.limiter.hit(NOTIFICATION_LIMIT, "notify", user_id)
        if retry_after is not None:
            raise ApiError(429, f"too many notifications; retry in {retry_after}s", {"Retry-After": str(retry_after)})
        message = EmailMessage(
            to=user["email"], template="notification",
            data={"username": user["username"], "subject": subject, "body": body},
        )
        return await queue_email(self.producer, message)


def address_bucket(client_ip: str) -> str:
    """The unit a per-IP limit counts: the address, or for IPv6 its /64 (one host gets a whole /64)."""
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return client_ip
    if address.version == 6 and address.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(getattr(address, "ipv4_mapped", None) or address)  # IPv4 addresses have no ipv4_mapped
