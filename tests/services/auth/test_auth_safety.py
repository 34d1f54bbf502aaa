"""Auth's safety properties: no secret at rest or in the logs, the emails owners get, keys that keep
working at the gateway while Postgres is unreachable, and the periodic key-expiry check."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from libs.embedded.procs import free_port
from libs.runtime import Stack
from libs.settings import Settings
from services.auth import SERVICE as AUTH
from services.gateway import SERVICE as GATEWAY
from tests.conftest import PASSWORD, eventually, signup_login, unique
from tests.services.auth.helpers import (
    KeyTopicReader,
    PostgresProxy,
    captured_logs,
    client_for,
    collect,
    mails_to,
    random_ip,
    register,
    wait_for_mail,
)

pytestmark = pytest.mark.engines


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(stack, random_ip()) as client:
        yield client


async def a_user_with_everything(http: httpx.AsyncClient) -> tuple[dict, dict, list[str]]:
    """Sign up (first with a weak password), log in (also wrongly), refresh, reuse, log in again, register, regenerate.

    Returns the user, the app and every secret that went over the wire."""
    name = unique("secretive")
    await http.post("/api/user/signup", json={"username": name, "email": f"{name}@example.com", "password": "weakpass"})
    user = await signup_login(http, name)
    wrong = "Wr0ng!Guess"
    await http.post("/api/user/login", json={"username": name, "password": wrong})
    pair = (await http.post("/api/user/refresh", json={"refresh_token": user["refresh_token"]})).json()
    await http.post("/api/user/refresh", json={"refresh_token": user["refresh_token"]})  # reuse
    login = (await http.post("/api/user/login", json={"username": name, "password": PASSWORD})).json()
    user["headers"] = {"authorization": f"Bearer {login['access_token']}"}
    app = await register(http, user)
    r = await http.post("/api/auth/regenerate", json={"app_id": app["app_id"]}, headers=user["headers"])
    new = r.json()
    await http.get("/api/auth/api-key", params={"app_id": app["app_id"]}, headers=user["headers"])
    await collect(http, new["api_key"])
    secrets = [
        PASSWORD, wrong, "weakpass",
        user["access_token"], user["refresh_token"], pair["access_token"], pair["refresh_token"],
        login["access_token"], login["refresh_token"],
        app["api_key"], app["write_key"], new["api_key"], new["write_key"],
    ]
    return user, app, secrets


async def test_no_secret_is_stored_in_the_database(http: httpx.AsyncClient, engines: Settings) -> None:
    user, app, secrets = await a_user_with_everything(http)
    conn = await asyncpg.connect(engines.database_url)
    try:
        rows = {
            "users": await conn.fetch("SELECT t::text AS row, password_hash FROM users t WHERE id = $1", user["id"]),
            "refresh_tokens": await conn.fetch("SELECT t::text AS row FROM refresh_tokens t WHERE user_id = $1", user["id"]),
            "apps": await conn.fetch("SELECT t::text AS row FROM apps t WHERE owner_id = $1", user["id"]),
            "api_keys": await conn.fetch("SELECT t::text AS row FROM api_keys t WHERE app_id = $1", app["app_id"]),
        }
    finally:
        await conn.close()
    assert len(rows["users"]) == 1 and len(rows["refresh_tokens"]) == 3 and len(rows["api_keys"]) == 4
    assert rows["users"][0]["password_hash"].startswith("$argon2id$")
    for table, found in rows.items():
        for row in found:
            for secret in secrets:
                assert secret not in row["row"], f"a secret is stored in clear in {table}"


async def test_no_secret_appears_in_the_logs(http: httpx.AsyncClient) -> None:
    with captured_logs() as out:
        _, _, secrets = await a_user_with_everything(http)
        await asyncio.sleep(0.5)  # the notifier and key consumers log as they go
    text = out.getvalue()
    assert '"path": "/api/user/login"' in text and '"path": "/api/auth/regenerate"' in text  # logs were captured
    assert "refresh token reuse detected" in text
    for secret in secrets:
        assert secret not in text


async def test_owners_get_emails_on_signup_new_keys_and_revocation(http: httpx.AsyncClient, engines: Settings) -> None:
    user = await signup_login(http)
    welcome = await wait_for_mail(engines, user["email"], f"Welcome to Analytics, {user['username']}")
    assert user["email"] in welcome["To"]
    app = await register(http, user, "newsletter")
    created = await wait_for_mail(engines, user["email"], "New API keys for newsletter")
    body = created.get_body(("plain",)).get_content()
    assert app["api_key"][:11] in body  # the prefix tells which key, the key itself is never mailed
    assert app["api_key"] not in created.as_string() and app["write_key"] not in created.as_string()
    await http.post("/api/auth/revoke", json={"app_id": app["app_id"]}, headers=user["headers"])
    await wait_for_mail(engines, user["email"], "API keys revoked for newsletter")
    # nobody else got them
    other = await signup_login(http)
    await wait_for_mail(engines, other["email"], f"Welcome to Analytics, {other['username']}")
    assert [m["Subject"] for m in mails_to(engines, other["email"])] == [f"Welcome to Analytics, {other['username']}"]


async def test_a_gateway_keeps_accepting_valid_keys_while_postgres_is_unreachable(
    http: httpx.AsyncClient, engines: Settings
) -> None:
    user = await signup_login(http)
    kept = await register(http, user, "kept")
    gone = await register(http, user, "gone")
    await http.post("/api/auth/revoke", json={"app_id": gone["app_id"]}, headers=user["headers"])

    # this gateway can only learn keys from auth.api-keys.v1
    async with Stack(
        engines.model_copy(update={"database_url": "postgresql://nobody:nothing@127.0.0.1:9/none"}), [GATEWAY]
    ) as lone, client_for(lone, random_ip()) as gateway:
        with pytest.raises(OSError):
            await asyncpg.connect(lone.settings.database_url, timeout=2)
        assert (await collect(gateway, kept["api_key"])).status_code == 202
        assert (await collect(gateway, kept["write_key"])).status_code == 202
        assert (await collect(gateway, gone["api_key"])).status_code == 401

        # it keeps following the topic: a key made now is accepted, a key revoked now refused in 1 s
        fresh = await register(http, user, "fresh")

        async def accepted(key: str) -> bool:
            return (await collect(gateway, key)).status_code == 202

        deadline = time.monotonic() + 2
        while not await accepted(fresh["api_key"]):
            assert time.monotonic() < deadline, "the unreachable-Postgres gateway never learnt the new key"
            await asyncio.sleep(0.05)
        await http.post("/api/auth/revoke", json={"app_id": kept["app_id"]}, headers=user["headers"])
        revoked = time.monotonic()
        while await accepted(kept["api_key"]):
            assert time.monotonic() - revoked < 1.0, "the revoked key was still accepted after 1 s"
            await asyncio.sleep(0.02)


async def test_the_expiry_check_warns_owners_and_announces_expired_keys(
    http: httpx.AsyncClient, engines: Settings
) -> None:
    user = await signup_login(http)
    expires = datetime.now(UTC) + timedelta(seconds=4)
    async with KeyTopicReader(engines) as topic:
        app = await register(http, user, "expiring", expires_at=expires.isoformat())
        meta = (await http.get("/api/auth/api-key", params={"app_id": app["app_id"]}, headers=user["headers"])).json()
        key_ids = {k["key_id"] for k in meta["keys"]}
        # a second auth replica that checks keys every 0.3 s
        checking = engines.model_copy(update={"auth_expiry_check_interval_s": 0.3})
        async with Stack(checking, [AUTH]):
            mail = await wait_for_mail(engines, user["email"], "API keys for expiring expire soon")
            text = mail.get_body(("plain",)).get_content()
            assert app["api_key"][:11] in text and app["write_key"][:11] in text
            expired = await topic.wait_for(lambda m: m["type"] == "expired" and m["key_id"] in key_ids, count=2)
            assert datetime.now(UTC) >= expires
            # the same job copied the keys' last uses (the gateway notes them in Redis) to Postgres
            conn = await asyncpg.connect(engines.database_url)
            try:
                stored = await conn.fetch("SELECT last_used_at FROM api_keys WHERE app_id = $1", app["app_id"])
            finally:
                await conn.close()
            assert all(row["last_used_at"] is not None for row in stored)
            await topic.drain(1.0)  # a few more checks: each key is warned about and announced once
    assert [m["Subject"] for m in mails_to(engines, user["email"])].count("API keys for expiring expire soon") == 1
    assert len([m for m, _ in topic.seen if m["type"] == "expired" and m["key_id"] in key_ids]) == 2
    assert {m["key_id"] for m, _ in expired} == key_ids
    assert (await collect(http, app["api_key"])).status_code == 401


@asynccontextmanager
async def auth_behind_a_proxy(engines: Settings) -> AsyncIterator[tuple[PostgresProxy, Stack, httpx.AsyncClient]]:
    """An auth replica whose only way to Postgres is a proxy the test can cut or hang."""
    proxy = PostgresProxy(engines.database_url)
    await proxy.up()
    try:
        async with Stack(engines.model_copy(update={"database_url": proxy.dsn}), [AUTH]) as lone, client_for(
            lone, random_ip()
        ) as auth:
            yield proxy, lone, auth
    finally:
        proxy.resume()
        await proxy.down()


async def logs_in_again(auth: httpx.AsyncClient, user: dict, message: str) -> None:
    async def back() -> bool:
        r = await auth.post("/api/user/login", json={"username": user["username"], "password": PASSWORD})
        return r.status_code == 200

    await eventually(back, 10, message)


async def test_auth_answers_503_with_retry_after_while_postgres_is_down_and_recovers(engines: Settings) -> None:
    async with auth_behind_a_proxy(engines) as (proxy, lone, auth):
        user = await signup_login(auth)
        await proxy.down()
        name = unique("outage")
        calls = {
            "signup": auth.post(
                "/api/user/signup", json={"username": name, "email": f"{name}@example.com", "password": PASSWORD}
            ),
            "login": auth.post("/api/user/login", json={"username": user["username"], "password": PASSWORD}),
            "refresh": auth.post("/api/user/refresh", json={"refresh_token": user["refresh_token"]}),
            "profile": auth.get("/api/user/get_user_profile", headers=user["headers"]),
            "register": auth.post("/api/auth/register", json={"name": "x"}, headers=user["headers"]),
            "apps": auth.get("/api/auth/apps", headers=user["headers"]),
        }
        for what, call in calls.items():
            r = await call
            assert r.status_code == 503, (what, r.status_code, r.text)
            assert int(r.headers["retry-after"]) >= 1, what
            assert "Postgres" in r.json()["detail"], what
        await proxy.up()
        await logs_in_again(auth, user, "auth did not recover once Postgres was back")
        # the refresh token that could not be spent during the outage still works
        r = await auth.post("/api/user/refresh", json={"refresh_token": user["refresh_token"]})
        assert r.status_code == 200, r.text
        assert not lone.failures, lone.failing  # the background key job survived the outage


async def test_auth_republishes_every_keys_state_periodically(http: httpx.AsyncClient, engines: Settings) -> None:
    """So that a gateway rebuilding its table from the topic alone still finds old keys."""
    user = await signup_login(http)
    app = await register(http, user, "old")
    await http.post("/api/auth/revoke", json={"app_id": app["app_id"]}, headers=user["headers"])
    often = engines.model_copy(update={"auth_expiry_check_interval_s": 0.2, "auth_key_snapshot_interval_s": 0.5})
    async with KeyTopicReader(engines) as topic, Stack(often, [AUTH]):
        found = await topic.wait_for(lambda m: m["type"] == "snapshot" and m["app_id"] == app["app_id"], count=4)
    # the start-up snapshot and at least one periodic one, for both keys, with their current state
    assert all(m["revoked_at"] is not None for m, _ in found)
    assert len({m["key_id"] for m, _ in found}) == 2


async def test_auth_answers_503_within_two_seconds_while_postgres_hangs(engines: Settings) -> None:
    """A database that accepts connections but never answers (hung, SIGSTOPped) must not hold a login
    for the pool's 10 s command timeout: the auth request path gives up after its own short timeouts."""
    async with auth_behind_a_proxy(engines) as (proxy, _, auth):
        user = await signup_login(auth)
        proxy.hang()
        for attempt in range(2):  # the second finds the connection the first gave up on replaced
            started = time.monotonic()
            r = await auth.post("/api/user/login", json={"username": user["username"], "password": PASSWORD})
            elapsed = time.monotonic() - started
            assert r.status_code == 503, (attempt, r.status_code, r.text)
            assert int(r.headers["retry-after"]) >= 1
            assert "Postgres" in r.json()["detail"]
            assert elapsed < 2.5, f"attempt {attempt}: 503 after {elapsed:.1f} s"
        proxy.resume()
        await logs_in_again(auth, user, "auth did not recover once Postgres answered again")


async def test_logout_while_redis_is_unreachable_is_503_and_not_a_false_success(
    http: httpx.AsyncClient, engines: Settings
) -> None:
    """The access token can only be refused once its logout is recorded in Redis: a logout that could
    not be recorded says so (503, Retry-After), and retried once Redis answers, it ends the session."""
    user = await signup_login(http)
    nowhere = f"redis://127.0.0.1:{free_port(16379)}/0"  # nothing listens there
    async with Stack(engines.model_copy(update={"redis_url": nowhere}), [AUTH]) as lone, client_for(
        lone, random_ip()
    ) as cut_off:
        r = await cut_off.post("/api/user/logout", headers=user["headers"])
        assert r.status_code == 503, r.text
        assert int(r.headers["retry-after"]) >= 1
        assert "Redis" in r.json()["detail"]
    # the session was not claimed to be over, and it is not: the retry (Redis reachable) ends it
    assert (await http.get("/api/user/get_user_profile", headers=user["headers"])).status_code == 200
    assert (await http.post("/api/user/logout", headers=user["headers"])).status_code == 204
    assert (await http.get("/api/user/get_user_profile", headers=user["headers"])).status_code == 401



async def test_a_login_is_refused_while_redis_cannot_count_the_attempt(http: httpx.AsyncClient, engines: Settings) -> None:
    """The failed-login limit lives in Redis. If an attempt cannot be counted there, the password is not
    checked (503, Retry-After): making Redis slow or unreachable must not make guessing unlimited."""
    user = await signup_login(http)
    nowhere = f"redis://127.0.0.1:{free_port(16379)}/0"  # nothing listens there
    async with Stack(engines.model_copy(update={"redis_url": nowhere}), [AUTH]) as lone, client_for(
        lone, random_ip()
    ) as cut_off:
        for password in ("Wrong-guess1!", PASSWORD):
            r = await cut_off.post("/api/user/login", json={"username": user["username"], "password": password})
            assert r.status_code == 503, r.text
            assert int(r.headers["retry-after"]) >= 1
            assert "Redis" in r.json()["detail"]
