"""Account self-service over HTTP against the real engines: password change (other sessions end),
password reset by email (202 whatever the address, one-time token valid an hour, mailed through the
notifier to the SMTP sink), account deletion (keys refused by the gateway, events gone from
ClickHouse, the name free again), the `auth_time` claim, and the dashboard's refresh cookie."""

from __future__ import annotations

import asyncio
import hashlib
import re
import statistics
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import jwt
import orjson
import pytest
from aiokafka import TopicPartition

from libs import tokens
from libs.kafka import AGGREGATOR_GROUP, EVENTS_TOPIC, backlog, group_reader
from libs.runtime import Stack
from libs.settings import Settings
from tests.conftest import PASSWORD, eventually, signup_login, unique
from tests.services.auth.helpers import bearer, client_for, collect, mails_to, random_ip, register, wait_for_mail

pytestmark = pytest.mark.engines

NEW_PASSWORD = "An0ther!secret"
RESET_SUBJECT = "Reset your Analytics password"
RESET_ANSWER = {"status": "accepted",
                "message": "if an account has this address, a reset link is on its way (valid for an hour)"}


async def login(http: httpx.AsyncClient, username: str, password: str) -> httpx.Response:
    return await http.post("/api/user/login", json={"username": username, "password": password})


async def second_session(http: httpx.AsyncClient, user: dict[str, Any]) -> dict[str, Any]:
    r = await login(http, user["username"], PASSWORD)
    assert r.status_code == 200, r.text
    return dict(r.json())


async def signed_out(http: httpx.AsyncClient, session: dict[str, Any]) -> None:
    """Both tokens of the session are refused."""
    r = await http.get("/api/user/get_user_profile", headers=bearer(session["access_token"]))
    assert r.status_code == 401, r.text
    r = await http.post("/api/user/refresh", json={"refresh_token": session["refresh_token"]})
    assert r.status_code == 401, r.text


def claims_of(token: str) -> dict[str, Any]:
    return dict(jwt.decode(token, options={"verify_signature": False}))


# ---- password change -----------------------------------------------------------------------------


async def test_changing_the_password_ends_the_other_sessions_and_keeps_this_one(http: httpx.AsyncClient) -> None:
    user = await signup_login(http)
    other = await second_session(http, user)
    r = await http.post("/api/user/password", headers=user["headers"],
                        json={"current_password": PASSWORD, "new_password": NEW_PASSWORD})
    assert r.status_code == 204, r.text
    await signed_out(http, other)
    # This session goes on: its access token works and its refresh token rotates.
    assert (await http.get("/api/user/get_user_profile", headers=user["headers"])).status_code == 200
    r = await http.post("/api/user/refresh", json={"refresh_token": user["refresh_token"]})
    assert r.status_code == 200, r.text
    assert (await login(http, user["username"], PASSWORD)).status_code == 401
    assert (await login(http, user["username"], NEW_PASSWORD)).status_code == 200


async def test_a_wrong_current_password_is_403_and_changes_nothing(http: httpx.AsyncClient) -> None:
    user = await signup_login(http)
    other = await second_session(http, user)
    r = await http.post("/api/user/password", headers=user["headers"],
                        json={"current_password": "Wr0ng!guess", "new_password": NEW_PASSWORD})
    assert r.status_code == 403, r.text
    assert r.json()["detail"] == "the current password is wrong"
    assert (await http.get("/api/user/get_user_profile", headers=bearer(other["access_token"]))).status_code == 200
    assert (await login(http, user["username"], PASSWORD)).status_code == 200


async def test_wrong_current_passwords_count_toward_the_login_lockout(http: httpx.AsyncClient, settings: Settings) -> None:
    user = await signup_login(http)
    allowed = int(settings.auth_login_limit_per_account.split("/")[0])
    body = {"current_password": "Wr0ng!guess", "new_password": NEW_PASSWORD}
    for _ in range(allowed):
        assert (await http.post("/api/user/password", headers=user["headers"], json=body)).status_code == 403
    r = await http.post("/api/user/password", headers=user["headers"], json={**body, "current_password": PASSWORD})
    assert r.status_code == 429, r.text
    assert "Retry-After" in r.headers
    r = await login(http, user["username"], PASSWORD)  # the same account budget: locked for logins too
    assert r.status_code == 429, r.text


async def test_a_weak_new_password_is_400_saying_what_it_lacks(http: httpx.AsyncClient) -> None:
    user = await signup_login(http)
    r = await http.post("/api/user/password", headers=user["headers"],
                        json={"current_password": PASSWORD, "new_password": "short"})
    assert r.status_code == 400, r.text
    assert "at least 8 characters" in r.json()["detail"]


async def test_changing_the_password_needs_a_signed_in_user(http: httpx.AsyncClient) -> None:
    r = await http.post("/api/user/password", json={"current_password": PASSWORD, "new_password": NEW_PASSWORD})
    assert r.status_code == 401, r.text


# ---- password reset ---------------------------------------------------------------------------------


def reset_token(mail: Any) -> str:
    text = mail.get_body(("plain",)).get_content()
    found = re.search(r"(https?://\S+)/dashboard#/reset\?token=([A-Za-z0-9_%-]+)", text)
    assert found, text
    return found.group(2)


async def ask_reset(http: httpx.AsyncClient, email: str) -> httpx.Response:
    return await http.post("/api/user/password-reset", json={"email": email})


async def test_a_reset_mail_arrives_and_its_token_sets_a_new_password_once(
    http: httpx.AsyncClient, settings: Settings
) -> None:
    user = await signup_login(http)
    other = await second_session(http, user)
    r = await ask_reset(http, user["email"].upper())
    assert r.status_code == 202, r.text
    assert r.json() == RESET_ANSWER
    mail = await wait_for_mail(settings, user["email"], RESET_SUBJECT)
    assert f"{settings.public_base_url}/dashboard#/reset?token=" in mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    token = reset_token(mail)
    r = await http.post("/api/user/password-reset/confirm", json={"token": token, "new_password": NEW_PASSWORD})
    assert r.status_code == 204, r.text
    await signed_out(http, user)  # every session ends, this one too: whoever reset it may not be its owner
    await signed_out(http, other)
    assert (await login(http, user["username"], PASSWORD)).status_code == 401
    assert (await login(http, user["username"], NEW_PASSWORD)).status_code == 200
    r = await http.post("/api/user/password-reset/confirm", json={"token": token, "new_password": "Th1rd!secret"})
    assert r.status_code == 410, r.text
    assert r.json()["detail"] == "this reset link was already used; ask for a new one"
    assert (await login(http, user["username"], NEW_PASSWORD)).status_code == 200


async def test_an_unknown_address_gets_the_same_answer_and_no_mail(http: httpx.AsyncClient, settings: Settings) -> None:
    known = await signup_login(http)
    nobody = f"{unique('nobody')}@example.com"
    answers = [await ask_reset(http, address) for address in (nobody, known["email"])]
    assert [a.status_code for a in answers] == [202, 202]
    assert answers[0].content == answers[1].content
    await wait_for_mail(settings, known["email"], RESET_SUBJECT)  # the mail that was sent has arrived...
    await asyncio.sleep(1)
    assert mails_to(settings, nobody) == []  # ...and none to the unknown address


async def test_the_answer_takes_as_long_for_an_unknown_address(stack: Stack) -> None:
    async with client_for(stack, random_ip()) as http:
        known = await signup_login(http)
        timings: dict[str, list[float]] = {"known": [], "unknown": []}
        for i in range(3):  # within both budgets (3 per address, 20 per client an hour)
            for kind, address in (("known", known["email"]), ("unknown", f"{unique('nobody')}{i}@example.com")):
                started = time.perf_counter()
                assert (await ask_reset(http, address)).status_code == 202
                timings[kind].append(time.perf_counter() - started)
    known_s, unknown_s = statistics.median(timings["known"]), statistics.median(timings["unknown"])
    assert abs(known_s - unknown_s) < 0.05, timings


async def test_a_bad_or_expired_reset_token_is_refused(http: httpx.AsyncClient, stack: Stack, settings: Settings) -> None:
    user = await signup_login(http)
    r = await http.post("/api/user/password-reset/confirm", json={"token": "made-up", "new_password": NEW_PASSWORD})
    assert r.status_code == 400, r.text
    assert r.json()["detail"] == "this reset link is not valid; ask for a new one"
    assert (await ask_reset(http, user["email"])).status_code == 202
    token = reset_token(await wait_for_mail(settings, user["email"], RESET_SUBJECT))
    # The hour passes: only the token's hash is stored, so the test finds the row by hashing the token.
    pg = await stack.runtime.pg()
    moved = await pg.execute("UPDATE password_resets SET expires_at = now() - interval '1 second' WHERE token_hash = $1",
                             hashlib.sha256(token.encode()).hexdigest())
    assert moved == "UPDATE 1"
    assert await pg.fetchval("SELECT count(*) FROM password_resets WHERE token_hash = $1", token) == 0
    r = await http.post("/api/user/password-reset/confirm", json={"token": token, "new_password": NEW_PASSWORD})
    assert r.status_code == 410, r.text
    assert "expired" in r.json()["detail"]
    assert (await login(http, user["username"], PASSWORD)).status_code == 200


async def test_a_weak_password_in_a_reset_is_400_and_the_token_still_works(http: httpx.AsyncClient, settings: Settings) -> None:
    user = await signup_login(http)
    assert (await ask_reset(http, user["email"])).status_code == 202
    token = reset_token(await wait_for_mail(settings, user["email"], RESET_SUBJECT))
    r = await http.post("/api/user/password-reset/confirm", json={"token": token, "new_password": "weak"})
    assert r.status_code == 400, r.text
    r = await http.post("/api/user/password-reset/confirm", json={"token": token, "new_password": NEW_PASSWORD})
    assert r.status_code == 204, r.text


async def test_reset_mails_are_limited_per_address_and_requests_per_client(stack: Stack, settings: Settings) -> None:
    async with client_for(stack, random_ip()) as http:
        user = await signup_login(http)
        for _ in range(5):
            r = await ask_reset(http, user["email"])
            assert r.status_code == 202 and r.json() == RESET_ANSWER  # beyond the budget too: nothing to learn
        await wait_for_mail(settings, user["email"], RESET_SUBJECT)
        await asyncio.sleep(2)
        assert len([m for m in mails_to(settings, user["email"]) if m["Subject"] == RESET_SUBJECT]) == 3
        for i in range(15):  # 20 requests from one client within the hour
            assert (await ask_reset(http, f"{unique('x')}{i}@example.com")).status_code == 202
        r = await ask_reset(http, f"{unique('x')}@example.com")
        assert r.status_code == 429, r.text
        assert "Retry-After" in r.headers


async def test_a_reset_request_needs_an_email_address(http: httpx.AsyncClient) -> None:
    r = await ask_reset(http, "not-an-address")
    assert r.status_code == 422, r.text


# ---- account deletion --------------------------------------------------------------------------------


async def events_of(stack: Stack, app_id: str) -> int:
    ch = await stack.runtime.clickhouse()
    rows = await ch.query("SELECT count() AS n FROM events FINAL WHERE app_id = {a:String}", {"a": app_id})
    return int(rows[0]["n"])


async def app_with_events(http: httpx.AsyncClient, stack: Stack, user: dict[str, Any], n: int = 3) -> dict[str, Any]:
    app = await register(http, user)
    for _ in range(n - 1):  # register's own check sent one event with each key
        assert (await collect(http, app["api_key"])).status_code == 202

    async def stored() -> bool:
        return await events_of(stack, app["app_id"]) >= n

    await eventually(stored, 20, "the events never reached ClickHouse")
    return app


async def test_deleting_the_account_refuses_its_keys_deletes_its_events_and_frees_its_name(
    http: httpx.AsyncClient, stack: Stack
) -> None:
    user = await signup_login(http)
    bystander = await signup_login(http)
    app = await app_with_events(http, stack, user)
    kept = await app_with_events(http, stack, bystander)
    kept_events = await events_of(stack, kept["app_id"])
    other = await second_session(http, user)
    r = await http.request("DELETE", "/api/user/me", json={"password": PASSWORD}, headers=user["headers"])
    assert r.status_code == 204, r.text
    started = time.monotonic()
    for key in (app["api_key"], app["write_key"]):
        while (await collect(http, key)).status_code != 401:
            assert time.monotonic() - started < 1, "the gateway still takes a deleted account's key"
            await asyncio.sleep(0.02)

    async def gone() -> bool:
        return await events_of(stack, app["app_id"]) == 0

    await eventually(gone, 30, "the deleted account's events are still in ClickHouse")
    assert await events_of(stack, kept["app_id"]) == kept_events  # another user's app is untouched
    assert (await collect(http, kept["api_key"])).status_code == 202
    await signed_out(http, user)
    await signed_out(http, other)
    assert (await login(http, user["username"], PASSWORD)).status_code == 401
    r = await http.post("/api/user/signup", json={"username": user["username"], "email": user["email"], "password": PASSWORD})
    assert r.status_code == 201, r.text
    assert r.json()["id"] != user["id"]


async def test_events_still_on_their_way_when_the_account_is_deleted_are_deleted_too(
    http: httpx.AsyncClient, stack: Stack
) -> None:
    user = await signup_login(http)
    app = await app_with_events(http, stack, user)
    r = await http.request("DELETE", "/api/user/me", json={"password": PASSWORD}, headers=user["headers"])
    assert r.status_code == 204, r.text

    async def gone() -> bool:
        return await events_of(stack, app["app_id"]) == 0

    await eventually(gone, 30, "the deleted account's events are still in ClickHouse")
    # An event a gateway took just before it heard of the revocation, reaching the events topic only
    # now: after the deletion ran once.
    producer = await stack.runtime.producer()
    now = datetime.now(UTC).isoformat()
    late = {"event_id": uuid.uuid4().hex, "app_id": app["app_id"], "type": "track", "event_name": "late",
            "source": "test", "user_id": "u1", "device_type": "desktop", "timestamp": now, "received_at": now}
    sent = await producer.send_and_wait(EVENTS_TOPIC, orjson.dumps(late), key=app["app_id"].encode())
    async with group_reader(stack.settings, AGGREGATOR_GROUP) as reader:
        async def stored() -> bool:
            return sum((await backlog(reader, {TopicPartition(EVENTS_TOPIC, sent.partition): sent.offset + 1})).values()) == 0

        await eventually(stored, 30, "the aggregator never stored the late event")
    await eventually(gone, 30, "an event stored after the deletion ran is still in ClickHouse")
    await asyncio.sleep(1)
    assert await events_of(stack, app["app_id"]) == 0


async def test_deleting_the_account_needs_the_right_password(http: httpx.AsyncClient, stack: Stack) -> None:
    user = await signup_login(http)
    app = await register(http, user)
    r = await http.request("DELETE", "/api/user/me", json={"password": "Wr0ng!guess"}, headers=user["headers"])
    assert r.status_code == 403, r.text
    assert r.json()["detail"] == "wrong password"
    r = await http.request("DELETE", "/api/user/me", json={}, headers=user["headers"])
    assert r.status_code == 403, r.text
    assert r.json()["detail"] == "confirm with your password to delete the account"
    assert (await http.get("/api/user/get_user_profile", headers=user["headers"])).status_code == 200
    assert (await collect(http, app["api_key"])).status_code == 202
    r = await http.request("DELETE", "/api/user/me", json={"password": PASSWORD})
    assert r.status_code == 401, r.text


async def test_an_account_without_a_password_is_deleted_after_a_fresh_sign_in_only(
    http: httpx.AsyncClient, stack: Stack, settings: Settings
) -> None:
    user = await signup_login(http)
    pg = await stack.runtime.pg()
    await pg.execute("UPDATE users SET password_hash = NULL WHERE id = $1", uuid.UUID(user["id"]))  # as OIDC sign-up makes it
    signed_in_long_ago = int(time.time()) - 6 * 60
    stale, _ = tokens.issue(settings, user["id"], "access", str(uuid.uuid4()), signed_in_long_ago)
    r = await http.request("DELETE", "/api/user/me", json={}, headers=bearer(stale))
    assert r.status_code == 403, r.text
    assert "sign in again" in r.json()["detail"]
    r = await http.request("DELETE", "/api/user/me", json={"password": PASSWORD}, headers=bearer(stale))
    assert r.status_code == 403, r.text  # no password is no password
    assert claims_of(user["access_token"])["auth_time"] >= time.time() - 60
    r = await http.request("DELETE", "/api/user/me", json={}, headers=user["headers"])
    assert r.status_code == 204, r.text
    assert await pg.fetchval("SELECT count(*) FROM users WHERE id = $1", uuid.UUID(user["id"])) == 0


# ---- auth_time -----------------------------------------------------------------------------------------


async def test_auth_time_is_the_sign_in_and_survives_refreshes(http: httpx.AsyncClient) -> None:
    before = int(time.time())
    user = await signup_login(http)
    signed_in_at = claims_of(user["access_token"])["auth_time"]
    assert before <= signed_in_at <= time.time()
    assert claims_of(user["refresh_token"])["auth_time"] == signed_in_at
    await asyncio.sleep(1.1)
    r = await http.post("/api/user/refresh", json={"refresh_token": user["refresh_token"]})
    assert r.status_code == 200, r.text
    assert claims_of(r.json()["access_token"])["auth_time"] == signed_in_at
    assert claims_of(r.json()["access_token"])["iat"] > signed_in_at


# ---- the dashboard's session cookie ---------------------------------------------------------------------


def set_cookie(r: httpx.Response) -> str:
    cookies = [v for k, v in r.headers.multi_items() if k.lower() == "set-cookie" and v.startswith("analytics_refresh=")]
    assert len(cookies) == 1, r.headers
    return cookies[0]


async def test_login_sets_an_httponly_strict_refresh_cookie_for_the_refresh_path(http: httpx.AsyncClient) -> None:
    user = await signup_login(http)
    r = await login(http, user["username"], PASSWORD)
    cookie = set_cookie(r)
    assert cookie.startswith(f"analytics_refresh={r.json()['refresh_token']};")
    attributes = {a.strip().split("=")[0].lower(): a.strip() for a in cookie.split(";")[1:]}
    assert attributes["path"] == "Path=/api/user/refresh"
    assert "httponly" in attributes and attributes["samesite"].lower() == "samesite=strict"
    assert "secure" not in attributes  # plain http (a local stack); over https it is Secure
    assert set(r.json()) == {"access_token", "refresh_token", "token_type", "expires_in"}


async def test_the_cookie_is_secure_over_https(stack: Stack) -> None:
    transport = httpx.ASGITransport(app=stack.app(), client=(random_ip(), 4242))
    async with httpx.AsyncClient(transport=transport, base_url="https://analytics.test") as https:
        user = await signup_login(https)
        cookie = set_cookie(await login(https, user["username"], PASSWORD))
    assert "secure" in [a.strip().lower() for a in cookie.split(";")]


async def test_refresh_takes_the_cookie_with_a_json_body_and_rotates_it(http: httpx.AsyncClient) -> None:
    user = await signup_login(http)
    first = await login(http, user["username"], PASSWORD)
    token = first.json()["refresh_token"]
    cookies = {"analytics_refresh": token}
    r = await http.post("/api/user/refresh", json={}, cookies=cookies)
    assert r.status_code == 200, r.text
    rotated = r.json()["refresh_token"]
    assert rotated != token and set_cookie(r).startswith(f"analytics_refresh={rotated};")
    assert claims_of(r.json()["access_token"])["fam"] == claims_of(token)["fam"]
    # A form post from another site cannot send JSON: without a JSON body the cookie is not taken.
    r = await http.post("/api/user/refresh", content=b"", headers={"content-type": "text/plain"},
                        cookies={"analytics_refresh": rotated})
    assert r.status_code == 422, r.text
    r = await http.post("/api/user/refresh", json={}, cookies={"analytics_refresh": rotated})
    assert r.status_code == 200, r.text


async def test_a_spent_cookie_is_refused_and_cleared(http: httpx.AsyncClient) -> None:
    user = await signup_login(http)
    token = (await login(http, user["username"], PASSWORD)).json()["refresh_token"]
    assert (await http.post("/api/user/refresh", json={"refresh_token": token})).status_code == 200
    r = await http.post("/api/user/refresh", json={}, cookies={"analytics_refresh": token})
    assert r.status_code == 401, r.text
    assert "max-age=0" in set_cookie(r).lower()


async def test_refresh_without_any_token_is_422(stack: Stack) -> None:
    async with client_for(stack, random_ip()) as fresh:  # a client with no cookie
        r = await fresh.post("/api/user/refresh", json={})
    assert r.status_code == 422, r.text
    assert r.json()["detail"] == "refresh_token is required (or the session cookie, with a JSON body)"


async def test_logout_clears_the_cookie(http: httpx.AsyncClient) -> None:
    user = await signup_login(http)
    r = await login(http, user["username"], PASSWORD)
    session = r.json()
    r = await http.post("/api/user/logout", headers=bearer(session["access_token"]))
    assert r.status_code == 204, r.text
    cleared = set_cookie(r).lower()
    assert cleared.startswith('analytics_refresh="";') or cleared.startswith("analytics_refresh=;")
    assert "max-age=0" in cleared and "path=/api/user/refresh" in cleared
    r = await http.post("/api/user/refresh", json={}, cookies={"analytics_refresh": session["refresh_token"]})
    assert r.status_code == 401, r.text


# ---- app deletion ----------------------------------------------------------------------------------


async def test_deleting_an_app_refuses_its_keys_hides_it_deletes_its_events_and_leaves_the_rest(
    http: httpx.AsyncClient, stack: Stack
) -> None:
    user = await signup_login(http)
    app = await app_with_events(http, stack, user)
    kept = await app_with_events(http, stack, user)  # the same owner's other app
    kept_events = await events_of(stack, kept["app_id"])
    r = await http.delete(f"/api/auth/apps/{app['app_id']}", headers=user["headers"])
    assert r.status_code == 204, r.text
    started = time.monotonic()
    for key in (app["api_key"], app["write_key"]):
        while (await collect(http, key)).status_code != 401:
            assert time.monotonic() - started < 1, "the gateway still takes a deleted app's key"
            await asyncio.sleep(0.02)
    r = await http.get("/api/analytics/events/count", params={"app_id": app["app_id"]}, headers=user["headers"])
    assert r.status_code == 404, r.text
    listed = [a["app_id"] for a in (await http.get("/api/auth/apps", headers=user["headers"])).json()]
    assert app["app_id"] not in listed and kept["app_id"] in listed

    async def gone() -> bool:
        return await events_of(stack, app["app_id"]) == 0

    await eventually(gone, 30, "the deleted app's events are still in ClickHouse")
    assert await events_of(stack, kept["app_id"]) == kept_events
    r = await http.get("/api/analytics/events/count", params={"app_id": kept["app_id"]}, headers=user["headers"])
    assert r.status_code == 200 and r.json()["count"] == kept_events, r.text
    # Gone: deleting it again is 404.
    assert (await http.delete(f"/api/auth/apps/{app['app_id']}", headers=user["headers"])).status_code == 404


async def test_another_users_app_cannot_be_deleted(http: httpx.AsyncClient, stack: Stack) -> None:
    owner, other = await signup_login(http), await signup_login(http)
    app = await register(http, owner)
    r = await http.delete(f"/api/auth/apps/{app['app_id']}", headers=other["headers"])
    assert r.status_code == 403, r.text
    assert (await collect(http, app["write_key"])).status_code == 202
    assert (await http.delete(f"/api/auth/apps/{app['app_id']}")).status_code == 401
