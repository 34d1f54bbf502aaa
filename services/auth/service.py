"""Auth logic: users, token families, apps and keys. No HTTP here; errors are ApiError."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from limits import RateLimitItem
from limits import parse as parse_limit
from redis.exceptions import RedisError

from libs import tokens
from libs.apikeys import KEY_LAST_USED_HASH, KeyKind, KeyRecord, KeyTopicWatch, generate_key, hash_key, shown_prefix
from libs.http import ApiError, DependencyUnavailable
from libs.kafka import API_KEYS_TOPIC, KafkaUnavailable, publish
from libs.logs import get_logger
from libs.notifications import EmailMessage, queue_email
from libs.ratelimit import RateLimiter
from libs.settings import Settings
from services.auth import passwords
from services.auth import repository as repo

log = get_logger(__name__)

NOTIFICATION_LIMIT = "10/hour"
KEY_TOPIC_CHECK_S = 10.0  # how often auth looks whether the key topic lost its messages
# Postgres on a request's path: a hung server (accepting connections, never answering) must not hold
# a client for long, so a free connection and each statement's answer get this long; past it, 503.
PG_ACQUIRE_TIMEOUT_S = 1.5
PG_STATEMENT_TIMEOUT_S = 1.5
# Postgres down, restarting or unreachable (not a bad query): answered 503, retried by background jobs.
POSTGRES_DOWN = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
)


@dataclass
class IssuedKeys:
    api_key: str
    write_key: str
    records: list[KeyRecord]


class AuthService:
    def __init__(
        self,
        settings: Settings,
        pg: asyncpg.Pool,
        producer: AIOKafkaProducer,
        redis: aioredis.Redis,
        limiter: RateLimiter,
    ) -> None:
        self.settings = settings
        self.pg = pg
        self.producer = producer
        self.key_topic = KeyTopicWatch(settings)  # republish when the key topic lost what it held
        self.redis = redis
        self.limiter = limiter
        # Parsed now so that a malformed AUTH_LOGIN_LIMIT_* stops the start, not a login.
        self.login_limits = (
            (parse_limit(settings.auth_login_limit_per_account), "acct"),
            (parse_limit(settings.auth_login_limit_per_ip), "ip"),
        )

    @contextlib.asynccontextmanager
    async def db(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; Postgres being down, hung or unreachable becomes a 503 with Retry-After.

        A connection that timed out or broke is dropped rather than returned to the pool: resetting
        it would wait on the same unanswering server."""
        try:
            async with self.pg.acquire(timeout=PG_ACQUIRE_TIMEOUT_S) as conn:
                try:
                    yield conn
                except POSTGRES_DOWN:
                    conn.terminate()
                    raise
        except POSTGRES_DOWN as exc:
            log.warning("postgres unavailable", error=repr(exc))
            raise DependencyUnavailable("the account database (Postgres)", retry_after=2) from exc

    # ---- users -------------------------------------------------------------------------------
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
            raise ApiError(401, "wrong username or password", {"WWW-Authenticate": "Bearer"})
        assert user is not None
        await self._refund_attempt(counted)
        return await self._issue_pair(str(user["id"]), family=str(uuid.uuid4()))

    async def _refund_attempt(self, counted: list[tuple[RateLimitItem, str, str]]) -> None:
        for limit, scope, ident in counted:
            await self.limiter.refund(limit, "login-failures", scope, ident)

    async def _issue_pair(self, user_id: str, family: str) -> dict[str, Any]:
        access, _ = tokens.issue(self.settings, user_id, "access", family)
        refresh, claims = tokens.issue(self.settings, user_id, "refresh", family)
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
        return await self._issue_pair(claims.sub, claims.family)

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

    # ---- apps and keys --------------------------------------------------------------------------
    def _default_expiry(self) -> datetime | None:
        days = self.settings.api_key_ttl_days
        return datetime.now(UTC) + timedelta(days=days) if days else None

    async def register_app(
        self, owner_id: str, name: str, domain: str | None, expires_at: datetime | None
    ) -> tuple[asyncpg.Record, IssuedKeys]:
        expires_at = expires_at or self._default_expiry()
        async with self.db() as conn, conn.transaction():
            app = await repo.insert_app(conn, owner_id, name, domain)
            issued = await self._issue_keys(conn, app["id"], expires_at)
            await self._announce(issued.records, "created")
        await self._email_owner(owner_id, "api_key_created", {"app_name": name, "keys": _key_summaries(issued.records)})
        return app, issued

    async def _issue_keys(self, conn: asyncpg.Connection, app_id: uuid.UUID, expires_at: datetime | None) -> IssuedKeys:
        made: dict[KeyKind, str] = {"secret": generate_key("secret"), "write": generate_key("write")}
        records = [
            await repo.insert_key(conn, app_id, kind, shown_prefix(key), hash_key(key), expires_at)
            for kind, key in made.items()
        ]
        return IssuedKeys(api_key=made["secret"], write_key=made["write"], records=records)

    async def owned_app(self, user_id: str, app_id: str) -> asyncpg.Record:
        """The app, if `user_id` owns it: 404 when it does not exist, 403 when it is someone else's."""
        try:
            app_uuid = uuid.UUID(app_id)
        except ValueError as exc:
            raise ApiError(404, "app not found") from exc
        async with self.db() as conn:
            app = await repo.app_by_id(conn, app_uuid)
        if app is None:
            raise ApiError(404, "app not found")
        if str(app["owner_id"]) != user_id:
            raise ApiError(403, "this app belongs to another user")
        return app

    async def list_apps(self, user_id: str) -> list[asyncpg.Record]:
        async with self.db() as conn:
            return await repo.apps_of(conn, user_id)

    async def key_metadata(self, user_id: str, app_id: str) -> list[dict[str, Any]]:
        """The app's keys, with when each was last used as far as gateways told (Redis) or Postgres knows."""
        app = await self.owned_app(user_id, app_id)
        async with self.db() as conn:
            rows = [dict(r) for r in await repo.keys_of_app(conn, app["id"])]
        recent = await self._recent_key_usage([str(r["id"]) for r in rows])
        for row in rows:
            seen = recent.get(row["id"])
            if seen is not None and (row["last_used_at"] is None or seen > row["last_used_at"]):
                row["last_used_at"] = seen
        return rows

    async def _recent_key_usage(self, key_ids: list[str] | None = None) -> dict[uuid.UUID, datetime]:
        """Last uses the gateways wrote to Redis (all, or these keys); empty when Redis is down."""
        try:
            if key_ids is None:
                raw = await self.redis.hgetall(KEY_LAST_USED_HASH)
            elif key_ids:
                raw = dict(zip(key_ids, await self.redis.hmget(KEY_LAST_USED_HASH, key_ids), strict=True))
            else:
                raw = {}
        except Exception as exc:  # noqa: BLE001 - last-used times are best effort
            log.warning("api key usage not read", error=repr(exc))
            return {}
        used: dict[uuid.UUID, datetime] = {}
        for key_id, at in raw.items():
            if at is None:
                continue
            with contextlib.suppress(ValueError, TypeError):
                key = key_id.decode() if isinstance(key_id, bytes) else key_id
                used[uuid.UUID(key)] = datetime.fromtimestamp(float(at), UTC)
        return used

    async def fold_key_usage(self) -> int:
        """Copy the last uses from Redis into Postgres, so they outlive Redis."""
        used = await self._recent_key_usage()
        if used:
            async with self.db() as conn:
                await repo.fold_key_usage(conn, used)
        return len(used)

    async def revoke(self, user_id: str, app_id: str | None, key_id: str | None) -> list[KeyRecord]:
        if key_id is not None:
            try:
                key_uuid = uuid.UUID(key_id)
            except ValueError as exc:
                raise ApiError(404, "key not found") from exc
            async with self.db() as conn:
                row = await repo.key_by_id(conn, key_uuid)
            if row is None:
                raise ApiError(404, "key not found")
            app = await self.owned_app(user_id, str(row["app_id"]))
        else:
            assert app_id is not None
            app = await self.owned_app(user_id, app_id)
        async with self.db() as conn, conn.transaction():
            targets = [key_uuid] if key_id is not None else [r["id"] for r in await repo.keys_of_app(conn, app["id"])]
            revoked = await repo.revoke_keys(conn, targets)
            await self._announce(revoked, "revoked")
        if revoked:
            await self._email_owner(user_id, "api_key_revoked", {"app_name": app["name"], "keys": _key_summaries(revoked)})
        return revoked

    async def regenerate(self, user_id: str, app_id: str, expires_at: datetime | None) -> tuple[IssuedKeys, list[KeyRecord]]:
        app = await self.owned_app(user_id, app_id)
        async with self.db() as conn, conn.transaction():
            old = [r["id"] for r in await repo.keys_of_app(conn, app["id"])]
            revoked = await repo.revoke_keys(conn, old)
            issued = await self._issue_keys(conn, app["id"], expires_at or self._default_expiry())
            await self._announce(revoked, "regenerated")
            await self._announce(issued.records, "created")
        await self._email_owner(user_id, "api_key_created", {"app_name": app["name"], "keys": _key_summaries(issued.records)})
        return issued, revoked

    async def _announce(self, records: list[KeyRecord], event_type: str) -> None:
        """Tell every gateway (auth.api-keys.v1) and wait for Kafka's acknowledgement, retrying briefly.

        Callers announce inside the transaction that makes the change: a change Kafka did not take
        is rolled back (the client gets 503 and may retry) instead of being stored while gateways
        never hear of it. The reverse (announced, then the commit fails) is harmless: a created key
        nobody was shown, or a revocation the owner retries.
        """
        pending = records
        for attempt in range(3):
            failed = await self._publish_states(pending, event_type)
            if not failed:
                return
            pending = failed
            if attempt < 2:
                await asyncio.sleep(0.2 * 2**attempt)
        log.error("key change not published", key_ids=[r.key_id for r in pending], type=event_type)
        raise KafkaUnavailable(f"{len(pending)} key change(s) not acknowledged by Kafka")

    async def _publish_states(self, records: list[KeyRecord], event_type: str) -> list[KeyRecord]:
        """Publish the records concurrently; returns those Kafka did not acknowledge."""
        results = await asyncio.gather(
            *(publish(self.producer, API_KEYS_TOPIC, r.to_message(event_type), key=r.key_id) for r in records),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, KafkaUnavailable):
                raise result
            if not isinstance(result, BaseException):
                self.key_topic.note(result)
        return [r for r, result in zip(records, results, strict=True) if isinstance(result, KafkaUnavailable)]

    async def republish_all_keys(self) -> int:
        """Publish the state of every key (at start-up), so gateways converge even after a lost message."""
        async with self.db() as conn:
            records = await repo.all_keys(conn)
        for i in range(0, len(records), 500):
            failed = await self._publish_states(records[i : i + 500], "snapshot")
            if failed:
                raise KafkaUnavailable(f"{len(failed)} key states not acknowledged by Kafka at start-up")
        return len(records)

    async def republish_if_key_topic_emptied(self) -> int:
        """Publish every key again when the key topic lost what it held (KeyTopicWatch): gateways and
        query know keys only from it."""
        if not await self.key_topic.emptied():
            return 0
        published = await self.republish_all_keys()
        self.key_topic.republished()
        return published

    # ---- key expiry (periodic) -------------------------------------------------------------------
    async def check_key_expiry(self) -> tuple[int, int]:
        """Warn owners of keys that expire soon; announce keys that just expired.

        Returns (keys warned about, keys announced as expired). Each step claims its keys in a
        transaction that commits only once the emails or messages are acknowledged by Kafka.
        """
        within_s = self.settings.auth_expiry_warning_days * 86400
        async with self.db() as conn, conn.transaction():
            expiring = await repo.claim_expiring(conn, within_s)
            by_app: dict[uuid.UUID, list[asyncpg.Record]] = {}
            for row in expiring:
                by_app.setdefault(row["app_id"], []).append(row)
            for rows in by_app.values():
                first = min(rows, key=lambda r: r["expires_at"])
                owner = await repo.user_by_id(conn, str(first["owner_id"]))
                if owner is None:
                    continue
                await queue_email(self.producer, EmailMessage(
                    to=owner["email"], template="api_key_expiring",
                    data={
                        "username": owner["username"], "app_name": first["app_name"],
                        "expires_at": first["expires_at"].isoformat(),
                        "keys": [
                            {"kind": r["kind"], "prefix": r["prefix"], "expires_at": r["expires_at"].isoformat()}
                            for r in rows
                        ],
                    },
                ))
        async with self.db() as conn, conn.transaction():
            expired = await repo.claim_expired(conn)
            await self._announce(expired, "expired")
        if expiring or expired:
            log.info("api key expiry checked", warned=len(expiring), expired=len(expired))
        return len(expiring), len(expired)

    async def run_key_checks(self) -> None:
        """Background job, now and every AUTH_EXPIRY_CHECK_INTERVAL_S seconds: `check_key_expiry`
        and `fold_key_usage`; and `republish_all_keys` every AUTH_KEY_SNAPSHOT_INTERVAL_S."""
        last_snapshot = time.monotonic()  # the start-up hook has just published one
        last_checks = -math.inf
        while True:
            # The key topic, every few seconds (one offsets request); the other checks every interval.
            with contextlib.suppress(*POSTGRES_DOWN, asyncpg.PostgresError, DependencyUnavailable, KafkaUnavailable,
                                     KafkaError, OSError):
                await self.republish_if_key_topic_emptied()
            if time.monotonic() - last_checks < self.settings.auth_expiry_check_interval_s:
                await asyncio.sleep(min(KEY_TOPIC_CHECK_S, self.settings.auth_expiry_check_interval_s))
                continue
            last_checks = time.monotonic()
            checks: list[Callable[[], Awaitable[object]]] = [self.check_key_expiry, self.fold_key_usage]
            if time.monotonic() - last_snapshot >= self.settings.auth_key_snapshot_interval_s:
                last_snapshot = time.monotonic()
                checks.append(self.republish_all_keys)
            for check in checks:
                try:
                    await check()
                except (*POSTGRES_DOWN, asyncpg.PostgresError, DependencyUnavailable, KafkaUnavailable) as exc:
                    # Postgres or Kafka down: nothing was marked, the next round tries again.
                    log.warning("api key check failed; will retry", check=check.__name__, error=repr(exc))

    # ---- email -------------------------------------------------------------------------------
    async def _email_owner(self, user_id: str, template: str, data: dict[str, Any]) -> None:
        async with self.db() as conn:
            user = await repo.user_by_id(conn, user_id)
        if user is not None:
            data = {"username": user["username"], **data}
            await self._email_quietly(EmailMessage(to=user["email"], template=template, data=data))  # type: ignore[arg-type]

    async def _email_quietly(self, message: EmailMessage) -> None:
        """Emails are side effects: a broker hiccup must not fail the signup or key change."""
        try:
            await queue_email(self.producer, message)
        except KafkaUnavailable as exc:
            log.error("email not queued", template=message.template, error=repr(exc))

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


def _address_bucket(client_ip: str) -> str:
    """The unit a per-IP limit counts: the address, or for IPv6 its /64 (one host gets a whole /64)."""
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return client_ip
    if address.version == 6 and address.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(getattr(address, "ipv4_mapped", None) or address)  # IPv4 addresses have no ipv4_mapped


def _key_summaries(records: list[KeyRecord]) -> list[dict[str, Any]]:
    return [
        {"kind": r.kind, "prefix": r.prefix, "expires_at": r.expires_at.isoformat() if r.expires_at else None}
        for r in records
    ]
