"""OpenID Connect sign-in ("Sign in with Google", or any provider by configuration).

The protocol is authlib's: discovery (`/.well-known/openid-configuration`), the authorization code
flow with PKCE (S256), the token exchange, and the ID token's checks (signature against the issuer's
JWKS, `iss`, `aud`, `exp`, `iat`, `nonce`, `at_hash`). What is ours: binding a flow to the browser
that started it, and mapping the provider's (issuer, subject) to one of our users.

A flow's state, nonce and PKCE verifier stay in Redis under a random id for 10 minutes; the browser
holds only that id, in an httpOnly SameSite=Lax cookie scoped to /api/user/oidc. The callback takes
them out of Redis once (GETDEL): a replayed callback, another browser's callback or an expired flow
finds nothing. A signed-in callback leaves a one-time hand-off (60 s, another httpOnly cookie) that the
dashboard exchanges for the same tokens a password login answers (`POST /api/user/oidc/session`): no
token ever travels in a URL.
"""

from __future__ import annotations

import hmac
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx2
import orjson
from authlib.integrations.base_client import BaseApp, OAuthError
from authlib.integrations.base_client.async_app import AsyncOAuth2Mixin
from authlib.integrations.base_client.async_openid import AsyncOpenIDMixin
from authlib.integrations.httpx_client import AsyncOAuth2Client
from joserfc.errors import JoseError
from pydantic import EmailStr, TypeAdapter, ValidationError
from redis.exceptions import RedisError

from libs.http import ApiError, DependencyUnavailable
from libs.logs import get_logger
from libs.redisguard import request_budget
from services.auth import repository as repo
from services.auth.accounts import Accounts, address_bucket

log = get_logger(__name__)

CALLBACK_PATH = "/api/user/oidc/callback"
COOKIE_PATH = "/api/user/oidc"
FLOW_COOKIE = "oidc_flow"
HANDOFF_COOKIE = "oidc_handoff"
FLOW_TTL_S = 600
HANDOFF_TTL_S = 60
# How far the provider's clock may be from ours when the ID token's times are checked.
CLOCK_LEEWAY_S = 60
HTTP_TIMEOUT_S = 10
# A sign-in's Redis calls (its limit, its flow, its hand-off) are what the request is for: they get a
# second of their own rather than the 100 ms every request's Redis calls share (libs.redisguard).
REDIS_BUDGET_S = 1.0
# A provider session older than this authenticates the person again (max_age).
REAUTHENTICATE_AFTER_S = 30 * 86400
# Sign-ins started per client address (each holds a flow in Redis for 10 minutes).
START_LIMIT = "30/minute"
_FLOW_PREFIX = "auth:oidc-flow:"
_HANDOFF_PREFIX = "auth:oidc-handoff:"
_EMAIL = TypeAdapter(EmailStr)
_USERNAME_CHARS = re.compile(r"[^A-Za-z0-9_.-]+")

NOT_CONFIGURED = (
    "OpenID Connect sign-in is not configured on this server; an administrator sets OIDC_CLIENT_ID and "
    "OIDC_CLIENT_SECRET (and OIDC_ISSUER for a provider other than Google)"
)
START_AGAIN = "sign-in expired, was already used or was started in another browser; start again from the sign-in page"


@dataclass(frozen=True)
class Started:
    url: str  # where to send the browser: the provider's authorization endpoint
    flow_id: str  # the browser's FLOW_COOKIE


@dataclass(frozen=True)
class SignedIn:
    handoff: str  # the browser's HANDOFF_COOKIE
    user_id: str
    created: bool  # a new account


class _Provider(AsyncOAuth2Mixin, AsyncOpenIDMixin, BaseApp):
    """authlib's OpenID Connect client of one provider (httpx2), without a web framework's session."""

    client_cls = AsyncOAuth2Client


class OidcSignIn:
    def __init__(self, accounts: Accounts) -> None:
        self.accounts = accounts
        self.settings = accounts.settings
        self.redis = accounts.redis
        self.issuer = self.settings.oidc_issuer_url
        self.redirect_uri = self.settings.public_base_url.rstrip("/") + CALLBACK_PATH
        self.client = _Provider(
            framework=None,
            name="oidc",
            client_id=self.settings.oidc_client_id,
            client_secret=self.settings.oidc_client_secret,
            server_metadata_url=self.issuer + "/.well-known/openid-configuration",
            client_kwargs={"scope": "openid email profile", "code_challenge_method": "S256", "timeout": HTTP_TIMEOUT_S},
        )

    @property
    def enabled(self) -> bool:
        return self.settings.oidc_enabled

    @property
    def secure_cookies(self) -> bool:
        return self.settings.public_base_url.startswith("https://")

    def _require_enabled(self) -> None:
        if not self.enabled:
            raise ApiError(404, NOT_CONFIGURED)

    async def start(self, client_ip: str, fresh: bool = False) -> Started:
        """A new flow: the provider's authorization URL, and the flow's id for the browser's cookie.
        `fresh`: the provider must ask the person to authenticate again (a recent sign-in is needed)."""
        self._require_enabled()
        with request_budget(REDIS_BUDGET_S):
            retry_after = await self.accounts.limiter.hit(START_LIMIT, "oidc-start", address_bucket(client_ip))
        if retry_after is not None:
            raise ApiError(429, f"too many sign-ins started; retry in {retry_after}s", {"Retry-After": str(retry_after)})
        await self._discover()
        # A max_age makes the provider say when the person authenticated (auth_time, OpenID Connect
        # Core 2): a sign-in through a provider session of last week is not a fresh one.
        extra = {"prompt": "login", "max_age": 0} if fresh else {"max_age": REAUTHENTICATE_AFTER_S}
        try:
            created = await self.client.create_authorization_url(self.redirect_uri, **extra)
        except (httpx2.HTTPError, ValueError, RuntimeError) as exc:
            raise self._provider_down(exc) from exc
        flow_id = secrets.token_urlsafe(32)
        flow = {"state": created["state"], "nonce": created["nonce"], "code_verifier": created["code_verifier"]}
        try:
            with request_budget(REDIS_BUDGET_S):
                await self.redis.set(_FLOW_PREFIX + flow_id, orjson.dumps(flow), ex=FLOW_TTL_S)
        except (RedisError, OSError) as exc:
            raise DependencyUnavailable("the session store (Redis)", retry_after=2) from exc
        return Started(url=created["url"], flow_id=flow_id)

    async def finish(self, params: dict[str, str], flow_id: str | None) -> SignedIn:
        """The provider's answer (the callback's query): checked, exchanged, and mapped to a user."""
        self._require_enabled()
        flow = await self._take(_FLOW_PREFIX, flow_id)
        if flow is None:
            raise ApiError(400, START_AGAIN)
        if not hmac.compare_digest(str(params.get("state", "")), flow["state"]):
            log.warning("oidc callback with a state that is not this browser's flow")
            raise ApiError(400, "the sign-in answer does not belong to the sign-in this browser started; start again")
        if params.get("iss") is not None and params["iss"] != self.issuer:  # RFC 9207: mix-up attacks
            raise ApiError(400, "the sign-in answer comes from another issuer than the configured one; start again")
        if "error" in params:
            said = params.get("error_description") or params["error"]
            raise ApiError(403, f"{self.settings.oidc_name} did not sign you in: {said}"[:300])
        if not params.get("code"):
            raise ApiError(400, "the sign-in answer carries no authorization code; start again")
        claims = await self._verified_claims(params["code"], flow)
        user_id, created = await self._user_for(claims)
        handoff = secrets.token_urlsafe(32)
        auth_time = claims.get("auth_time")
        now = int(time.time())  # the provider's word on when the user authenticated, never later than now
        record = {"user_id": user_id, "auth_time": min(auth_time, now) if isinstance(auth_time, int) else now}
        try:
            with request_budget(REDIS_BUDGET_S):
                await self.redis.set(_HANDOFF_PREFIX + handoff, orjson.dumps(record), ex=HANDOFF_TTL_S)
        except (RedisError, OSError) as exc:
            raise DependencyUnavailable("the session store (Redis)", retry_after=2) from exc
        log.info("oidc sign-in", user_id=user_id, created=created)
        return SignedIn(handoff=handoff, user_id=user_id, created=created)

    async def session(self, handoff: str | None) -> dict[str, Any]:
        """The token pair of a finished sign-in, once, for the browser that holds its hand-off."""
        self._require_enabled()
        record = await self._take(_HANDOFF_PREFIX, handoff)
        if record is None:
            raise ApiError(401, "no finished sign-in to pick up (it is used once, within a minute); sign in again")
        return await self.accounts.sign_in(record["user_id"], auth_time=record["auth_time"])

    async def _take(self, prefix: str, key: str | None) -> dict[str, Any] | None:
        if not key or len(key) > 100:
            return None
        try:
            with request_budget(REDIS_BUDGET_S):
                raw = await self.redis.getdel(prefix + key)
        except (RedisError, OSError) as exc:
            raise DependencyUnavailable("the session store (Redis)", retry_after=2) from exc
        return orjson.loads(raw) if raw else None

    async def _discover(self) -> dict[str, Any]:
        """The provider's discovery document (read once per process), naming the configured issuer."""
        try:
            metadata: dict[str, Any] = await self.client.load_server_metadata()
        except (httpx2.HTTPError, ValueError) as exc:
            raise self._provider_down(exc) from exc
        if metadata.get("issuer") != self.issuer:  # OpenID Connect Discovery 4.3
            self.client.server_metadata.clear()  # read it again next time
            raise self._provider_down(ValueError(f"the discovery document names issuer {metadata.get('issuer')!r}"))
        return metadata

    async def _verified_claims(self, code: str, flow: dict[str, str]) -> dict[str, Any]:
        await self._discover()  # this process may not be the one that started the flow
        try:
            token = await self.client.fetch_access_token(
                redirect_uri=self.redirect_uri, code=code, code_verifier=flow["code_verifier"]
            )
        except OAuthError as exc:  # the provider refused the code (used, expired, PKCE mismatch)
            raise ApiError(400, f"{self.settings.oidc_name} refused the sign-in code ({exc.error}); start again") from exc
        except (httpx2.HTTPError, ValueError) as exc:
            raise self._provider_down(exc) from exc
        if "id_token" not in token:
            raise self._provider_down(RuntimeError("the token answer has no id_token: is the client set up for OpenID Connect?"))
        try:
            claims = dict(await self.client.parse_id_token(token, nonce=flow["nonce"], leeway=CLOCK_LEEWAY_S))
        except JoseError as exc:
            log.warning("oidc id token refused", error=repr(exc))
            raise ApiError(401, f"the ID token from {self.settings.oidc_name} is not valid ({exc.error}: "
                                f"{exc.description}); sign in again") from exc
        except (httpx2.HTTPError, ValueError, RuntimeError) as exc:
            raise self._provider_down(exc) from exc
        if "email" not in claims:  # Providers may give profile claims only at the userinfo endpoint.
            claims.update(await self._userinfo(token, str(claims["sub"])))
        return claims

    async def _userinfo(self, token: dict[str, Any], subject: str) -> dict[str, Any]:
        if not (await self._discover()).get("userinfo_endpoint"):
            return {}
        try:
            info = dict(await self.client.userinfo(token=token))
        except (httpx2.HTTPError, ValueError) as exc:
            raise self._provider_down(exc) from exc
        if info.get("sub") != subject:  # OpenID Connect Core 5.3.2: it must be the ID token's user
            raise ApiError(401, f"{self.settings.oidc_name} described another user than the one who signed in; sign in again")
        return {k: info[k] for k in ("email", "email_verified", "name") if k in info}

    async def _user_for(self, claims: dict[str, Any]) -> tuple[str, bool]:
        """The user of the provider's (issuer, subject): linked before, or linked now to the account
        with the same email when the provider vouches for it, or a new account."""
        subject = str(claims["sub"])
        name = self.settings.oidc_name
        async with self.accounts.db() as conn:
            known = await repo.user_by_identity(conn, self.issuer, subject)
        if known is not None:
            return str(known["user_id"]), False
        email = claims.get("email")
        if not isinstance(email, str) or not email:
            raise ApiError(403, f"{name} did not share your email address; allow it and sign in again")
        try:
            email = str(_EMAIL.validate_python(email))  # as sign-up checks it: an address mail can go to
        except ValidationError as exc:
            raise ApiError(403, f"the email address {name} gave ({email[:254]}) cannot receive mail; "
                                "sign up with another address") from exc
        if claims.get("email_verified") not in (True, "true"):
            async with self.accounts.db() as conn:
                clash = await repo.user_by_email(conn, email)
            if clash is not None:
                raise ApiError(409, f"an account with {email} exists already, and {name} does not confirm that this "
                                    "address is yours, so the two were not linked; sign in with your password instead")
            raise ApiError(403, f"{name} does not confirm that {email} is yours; verify the address with {name} "
                                "and sign in again")
        async with self.accounts.db() as conn, conn.transaction():
            user = await repo.user_by_email(conn, email)
            created = user is None
            if user is None:
                user = await self._new_user(conn, email)
            await repo.insert_identity(conn, self.issuer, subject, user["id"], email.lower())
        if not created:
            log.info("oidc identity linked to an existing account by its verified email", user_id=str(user["id"]))
        return str(user["id"]), created

    async def _new_user(self, conn: Any, email: str) -> asyncpg.Record:
        base = _USERNAME_CHARS.sub("", email.split("@", 1)[0])[:30]
        if len(base) < 3:
            base = f"user-{base}" if base else "user"
        for candidate in [base, *(f"{base}-{uuid.uuid4().hex[:6]}" for _ in range(4))]:
            try:
                async with conn.transaction():  # a savepoint: a clash on the email leaves the outer one usable
                    user = await repo.insert_user_without_password(conn, candidate, email.lower())
            except asyncpg.UniqueViolationError as exc:  # the email, taken since we looked
                raise ApiError(409, "an account with this email was created at the same moment; sign in again") from exc
            if user is not None:
                return user
        raise ApiError(409, "no free username could be found for this account; sign in again")

    def _provider_down(self, exc: Exception) -> DependencyUnavailable:
        log.warning("openid provider unavailable", issuer=self.issuer, error=repr(exc))
        return DependencyUnavailable(f"the OpenID provider ({self.settings.oidc_name})", retry_after=5)
