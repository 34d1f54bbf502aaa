"""Users and their sessions: sign-up, login (with brute-force limits), refresh-token rotation, logout,
password change and reset, account deletion, profile, and emails a user sends to themselves. No HTTP
here; errors are ApiError."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import secrets
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from services.auth.keys import AppKeys

log = get_logger(__name__)

NOTIFICATION_LIMIT = "10/hour"
RESET_TOKEN_LIFETIME = timedelta(hours=1)
# Reset mails: a few per address (beyond them the request is still answered 202, and nothing is sent),
# more per client address (beyond them 429: that reveals nothing about any account).
RESET_LIMIT_PER_EMAIL = "3/hour"
RESET_LIMIT_PER_IP = "20/hour"
FRESH_SIGN_IN_S = 300  # deleting an account without a password needs a sign-in this recent


class Accounts(AuthStore):
    """Users, and their sessions: a family of refresh tokens and the access tokens issued with them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._background: set[asyncio.Task[None]] = set()  # reset mails being looked up and queued
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
        if not await self._password_matches(user, login, password, client_ip):
            raise ApiError(401, "wrong username or password", {"WWW-Authenticate": "Bearer"})
        assert user is not None
        return await self.sign_in(str(user["id"]))

    async def sign_in(self, user_id: str) -> dict[str, Any]:
        """A new session of a user who has just proved who they are (password, or an OpenID provider):
        the one place tokens are issued after a sign-in, with `auth_time` now."""
        return await self._issue_pair(user_id, family=str(uuid.uuid4()), auth_time=int(time.time()))

    async def _password_matches(
        self, user: asyncpg.Record | None, login: str, password: str, client_ip: str
    ) -> bool:
        """Check a password under the brute-force budgets (see `login`): 429 when one is spent. A
        failure counts against the account and the client address; a success gives its hit back."""
        # One budget per account, whether it is named by username or by email.
        idents = {"acct": str(user["id"]) if user else login.lower(), "ip": _address_bucket(client_ip)}
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
            return False
        await self._refund_attempt(counted)
        return True

    async def _refund_attempt(self, counted: list[tuple[RateLimitItem, str, str]]) -> None:
        for limit, scope, ident in counted:
            await self.limiter.refund(limit, "login-failures", scope, ident)

    async def _issue_pair(self, user_id: str, family: str, auth_time: int) -> dict[str, Any]:
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
        return await self._issue_pair(claims.sub, claims.family, claims.auth_time)  # the sign-in's time, unchanged

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

    async def _deny_sessions_or_fail(self, families: list[str]) -> None:
        """Refuse these sessions' access tokens (Redis). Unreachable: 503, and the caller's transaction
        (which revoked their refresh tokens) is rolled back, so nothing is claimed that did not happen."""
        try:
            await tokens.denylist_families(self.redis, families, self.settings.jwt_access_expires)
        except (RedisError, OSError) as exc:
            log.warning("sessions not ended: redis unavailable", error=repr(exc))
            raise DependencyUnavailable("the session store (Redis)", retry_after=2) from exc

    async def change_password(self, access: tokens.TokenClaims, current: str, new: str, client_ip: str) -> None:
        """Set a new password and end every other session of the user (this one stays signed in).

        A wrong current password is a failed login attempt (the same budgets, so the route cannot be
        used to guess around the login limits) and answers 403."""
        user = await self.profile(access.sub)
        if not await self._password_matches(user, user["username"], current, client_ip):
            raise ApiError(403, "the current password is wrong")
        new_hash = await self._new_password_hash(new)
        async with self.db() as conn, conn.transaction():
            await repo.set_password(conn, access.sub, new_hash)
            ended = await repo.revoke_user_families(conn, access.sub, keep=access.family)
            await self._deny_sessions_or_fail(ended)
        log.info("password changed", user_id=access.sub, sessions_ended=len(ended))

    async def _new_password_hash(self, password: str) -> str:
        problems = passwords.policy_problems(password)
        if problems:
            raise ApiError(400, "new password needs " + ", ".join(problems))
        return await passwords.hash_password(password)

    async def request_password_reset(self, email: str, client_ip: str) -> None:
        """Mail a one-time reset link if an account has this address. The caller's answer is the same
        either way, and comes before the account is even looked up: the lookup, the token and the mail
        happen in the background, so neither the answer nor its timing tells whether the account exists."""
        # Both limits hold as the login's do: Redis unable to count is a 503 here, and no mail below.
        retry_after = await self.limiter.hit_or_refuse(RESET_LIMIT_PER_IP, "password-reset", "ip", _address_bucket(client_ip))
        if retry_after is not None:
            raise ApiError(429, f"too many password reset requests; retry in {retry_after}s", {"Retry-After": str(retry_after)})
        task = asyncio.create_task(self._mail_reset_link(email.lower()))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _mail_reset_link(self, email: str) -> None:
        try:
            if await self.limiter.hit_or_refuse(RESET_LIMIT_PER_EMAIL, "password-reset", "email", email) is not None:
                log.info("password reset not mailed: too many for this address")
                return
            token = secrets.token_urlsafe(32)
            async with self.db() as conn:
                user = await repo.user_by_email(conn, email)
                if user is None:
                    return
                await repo.insert_password_reset(
                    conn, _token_hash(token), str(user["id"]), datetime.now(UTC) + RESET_TOKEN_LIFETIME
                )
            await queue_email(self.producer, EmailMessage(
                to=user["email"], template="password_reset",
                data={"username": user["username"], "token": token,
                      "valid_minutes": int(RESET_TOKEN_LIFETIME.total_seconds() // 60)},
            ))
            log.info("password reset mailed", user_id=str(user["id"]))
        except Exception as exc:  # noqa: BLE001 - in the background: nobody to answer, so say it in the log
            log.error("password reset not mailed", error=repr(exc))

    async def confirm_password_reset(self, token: str, new_password: str) -> None:
        """Set the password named by a mailed token (once, within the hour) and end every session."""
        new_hash = await self._new_password_hash(new_password)
        async with self.db() as conn, conn.transaction():
            reset = await repo.claim_password_reset(conn, _token_hash(token))
            if reset is None:
                raise ApiError(400, "this reset link is not valid; ask for a new one")
            if reset["used_at"] is not None:
                raise ApiError(410, "this reset link was already used; ask for a new one")
            if reset["expires_at"] <= datetime.now(UTC):
                raise ApiError(410, "this reset link has expired (links work for an hour); ask for a new one")
            user_id = str(reset["user_id"])
            await repo.set_password(conn, user_id, new_hash)
            await repo.spend_password_resets(conn, user_id)  # every other link mailed to the user too
            ended = await repo.revoke_user_families(conn, user_id, keep=None)
            await self._deny_sessions_or_fail(ended)
        log.info("password reset", user_id=user_id, sessions_ended=len(ended))

    async def delete_account(
        self, access: tokens.TokenClaims, password: str | None, client_ip: str, keys: AppKeys
    ) -> None:
        """Delete the user: their apps' keys revoked (announced, so gateways refuse them at once), their
        apps' events deleted by the query service (announced on auth.app-deletions.v1), every session
        ended, and the row removed (apps, keys, subscriptions go with it), so the username and email
        are free again. Confirmed with the password, or, for an account without one, by a sign-in in
        the last five minutes."""
        user = await self.profile(access.sub)
        if password is not None:
            if not await self._password_matches(user, user["username"], password, client_ip):
                raise ApiError(403, "wrong password")
        elif user["password_hash"] is not None:
            raise ApiError(403, "confirm with your password to delete the account")
        elif time.time() - access.auth_time > FRESH_SIGN_IN_S:
            raise ApiError(403, "sign in again to delete the account (a sign-in in the last 5 minutes is needed)")
        async with self.db() as conn, conn.transaction():
            if not await repo.lock_user(conn, access.sub):
                raise ApiError(401, "user no longer exists")
            apps = await keys.retire_apps(conn, [r["id"] for r in await repo.apps_of(conn, access.sub)], "account_deleted")
            await keys.stop_reports_of(conn, access.sub)
            ended = await repo.revoke_user_families(conn, access.sub, keep=None)
            await self._deny_sessions_or_fail([*ended, access.family])
            await repo.delete_user(conn, access.sub)
        log.info("account deleted", user_id=access.sub, apps=len(apps))

    async def profile(self, user_id: str) -> asyncpg.Record:
        """The user's row (with the password hash, never to be answered), or 401."""
        async with self.db() as conn:
            user = await repo.user_auth_by_id(conn, user_id)
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


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _address_bucket(client_ip: str) -> str:
    """The unit a per-IP limit counts: the address, or for IPv6 its /64 (one host gets a whole /64)."""
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return client_ip
    if address.version == 6 and address.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(getattr(address, "ipv4_mapped", None) or address)  # IPv4 addresses have no ipv4_mapped
