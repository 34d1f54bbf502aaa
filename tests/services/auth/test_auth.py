"""The auth service as its users see it: accounts, sessions, apps and API keys, over HTTP against
the real engines (Postgres, Redis, Kafka, the SMTP sink), with the gateway learning of key changes
through auth.api-keys.v1."""

from __future__ import annotations

import asyncio
import base64
import re
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest

from libs.runtime import Stack
from libs.settings import Settings
from tests.conftest import PASSWORD, eventually, signup_login, unique
from tests.services.auth.helpers import KeyTopicReader, bearer, client_for, collect, random_ip, register

pytestmark = pytest.mark.engines

KEY_FORMAT = {"api_key": re.compile(r"^sk_[A-Za-z0-9_-]{43}$"), "write_key": re.compile(r"^wk_[A-Za-z0-9_-]{43}$")}


# ---- accounts --------------------------------------------------------------------------------


async def test_signup_answers_201_with_the_id_and_the_email_in_lower_case(http: httpx.AsyncClient) -> None:
    name = unique("Ada")
    r = await http.post(
        "/api/user/signup", json={"username": name, "email": f"{name}@Example.COM", "password": PASSWORD}
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert set(body) == {"id", "email", "message"}
    uuid.UUID(body["id"])
    assert body["email"] == f"{name.lower()}@example.com"
    assert PASSWORD not in r.text


@pytest.mark.parametrize(
    ("password", "missing"),
    [
        pytest.param("Sh0rt!", ["at least 8 characters"], id="too-short"),
        pytest.param("lowercase1!", ["an uppercase letter"], id="no-upper"),
        pytest.param("UPPERCASE1!", ["a lowercase letter"], id="no-lower"),
        pytest.param("NoDigits!!", ["a digit"], id="no-digit"),
        pytest.param("NoSpecial12", ["a special character"], id="no-special"),
        pytest.param(
            "abc",
            ["at least 8 characters", "an uppercase letter", "a digit", "a special character"],
            id="many-missing",
        ),
    ],
)
async def test_a_weak_password_is_refused_with_400_saying_what_is_missing(
    http: httpx.AsyncClient, password: str, missing: list[str]
) -> None:
    name = unique("weak")
    r = await http.post("/api/user/signup", json={"username": name, "email": f"{name}@example.com", "password": password})
    assert r.status_code == 400, r.text
    detail = r.json()["detail"]
    for problem in missing:
        assert problem in detail
    assert password not in r.text
    # and no account was made
    r = await http.post("/api/user/login", json={"username": name, "password": password})
    assert r.status_code == 401


@pytest.mark.parametrize(
    ("username", "email", "clash"),
    [
        pytest.param("{name}", "other-{name}@example.com", "username", id="same-username"),
        pytest.param("{NAME}", "other-{name}@example.com", "username", id="username-other-case"),
        pytest.param("other{name}", "{name}@example.com", "email", id="same-email"),
        pytest.param("other{name}", "{NAME}@EXAMPLE.com", "email", id="email-other-case"),
    ],
)
async def test_a_taken_username_or_email_is_409_whatever_its_case(
    http: httpx.AsyncClient, username: str, email: str, clash: str
) -> None:
    name = unique("taken")
    first = await http.post("/api/user/signup", json={"username": name, "email": f"{name}@example.com", "password": PASSWORD})
    assert first.status_code == 201
    fill = {"name": name, "NAME": name.upper()}
    r = await http.post(
        "/api/user/signup",
        json={"username": username.format(**fill), "email": email.format(**fill), "password": PASSWORD},
    )
    assert r.status_code == 409, r.text
    assert clash in r.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"username": "ok_name", "email": "not-an-email", "password": PASSWORD}, id="bad-email"),
        pytest.param({"username": "a b", "email": "ab@example.com", "password": PASSWORD}, id="bad-username"),
        pytest.param({"username": "x", "email": "x@example.com", "password": PASSWORD}, id="short-username"),
        pytest.param({"email": "nouser@example.com", "password": PASSWORD}, id="missing-username"),
    ],
)
async def test_signup_with_malformed_fields_is_422_and_never_echoes_the_password(
    http: httpx.AsyncClient, body: dict[str, str]
) -> None:
    r = await http.post("/api/user/signup", json=body)
    assert r.status_code == 422, r.text
    assert "detail" in r.json()
    assert PASSWORD not in r.text


NUL = "\u0000"


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        pytest.param("post", "/api/user/signup", {"username": f"ada{NUL}x", "email": "a@example.com"}, "username",
                     id="signup-username-nul"),
        pytest.param("post", "/api/user/signup", {"username": "ada\n", "email": "a@example.com"}, "username",
                     id="signup-username-newline"),
        pytest.param("post", "/api/user/signup", {"username": "ada", "email": f"a{NUL}@example.com"}, "email",
                     id="signup-email-nul"),
        pytest.param("post", "/api/user/login", {"username": f"ada{NUL}"}, "username", id="login-username-nul"),
        pytest.param("post", "/api/user/refresh", {"refresh_token": f"x{NUL}y"}, "refresh_token", id="refresh-nul"),
        pytest.param("post", "/api/auth/register", {"name": f"blog{NUL}"}, "name", id="register-name-nul"),
        pytest.param("post", "/api/auth/register", {"name": "blog", "domain": f"a{NUL}.example"}, "domain",
                     id="register-domain-nul"),
        pytest.param("post", "/api/auth/revoke", {"key_id": f"k{NUL}"}, "key_id", id="revoke-key-id-nul"),
        pytest.param("post", "/api/auth/regenerate", {"app_id": f"a{NUL}"}, "app_id", id="regenerate-app-id-nul"),
        pytest.param("post", "/api/email/notification", {"subject": f"hi{NUL}", "body": "x"}, "subject",
                     id="notification-subject-nul"),
        pytest.param("post", "/api/email/notification", {"subject": "hi\r\nBcc: x@example.com", "body": "x"},
                     "subject", id="notification-subject-header-injection"),
        pytest.param("post", "/api/email/notification", {"subject": "hi", "body": f"line{NUL}"}, "body",
                     id="notification-body-nul"),
        pytest.param("post", "/api/email/reports", {"app_id": f"a{NUL}"}, "app_id", id="report-app-id-nul"),
    ],
)
async def test_control_characters_in_text_fields_are_422_naming_the_field(
    http: httpx.AsyncClient, method: str, path: str, body: dict[str, str], field: str
) -> None:
    """NUL cannot be stored in Postgres text (it was a 500) and a line break has no place in a name or
    a mail subject: refused at validation, saying which field."""
    user = await signup_login(http)
    if path in ("/api/user/signup", "/api/user/login"):
        body = {**body, "password": PASSWORD}
    r = await getattr(http, method)(path, json=body, headers=user["headers"])
    assert r.status_code == 422, r.text
    problems = r.json()["detail"]
    assert any(p["loc"][-1] == field and "control character" in p["msg"] for p in problems), problems


async def test_line_breaks_and_tabs_stay_allowed_in_a_notification_body(http: httpx.AsyncClient) -> None:
    user = await signup_login(http)
    r = await http.post("/api/email/notification", json={"subject": "two lines", "body": "one\n\ttwo\r\n"},
                        headers=user["headers"])
    assert r.status_code == 202, r.text


async def test_login_accepts_the_username_or_the_email_in_any_case(http: httpx.AsyncClient) -> None:
    user = await signup_login(http)
    for login in (user["username"], user["username"].upper(), user["email"], user["email"].upper()):
        r = await http.post("/api/user/login", json={"username": login, "password": PASSWORD})
        assert r.status_code == 200, (login, r.text)
        body = r.json()
        assert body["token_type"] == "bearer"
        assert body["access_token"] and body["refresh_token"]
        assert body["expires_in"] == 14400


async def test_wrong_password_and_unknown_user_get_the_same_401(http: httpx.AsyncClient) -> None:
    user = await signup_login(http)
    wrong = await http.post("/api/user/login", json={"username": user["username"], "password": "Wr0ng!pass"})
    unknown = await http.post("/api/user/login", json={"username": unique("nobody"), "password": PASSWORD})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()


async def test_profile_shows_the_signed_in_user_and_nothing_secret(http: httpx.AsyncClient) -> None:
    user = await signup_login(http)
    r = await http.get("/api/user/get_user_profile", headers=user["headers"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == user["id"]
    assert body["username"] == user["username"]
    assert body["email"] == user["email"]
    assert "password" not in r.text and "argon2" not in r.text


async def test_profile_refuses_missing_forged_and_wrong_type_tokens_with_401(
    http: httpx.AsyncClient, engines: Settings
) -> None:
    user = await signup_login(http)
    claims = jwt.decode(user["access_token"], options={"verify_signature": False})
    forged_secret = jwt.encode(claims, "not-the-secret-" * 3, algorithm="HS256")
    header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    alg_none = header + "." + user["access_token"].split(".")[1] + "."
    expired = jwt.encode(
        {**claims, "iat": int(time.time()) - 100, "exp": int(time.time()) - 10}, engines.jwt_secret, algorithm="HS256"
    )
    no_jti = jwt.encode({k: v for k, v in claims.items() if k != "jti"}, engines.jwt_secret, algorithm="HS256")
    cases = {
        "none": {},
        "garbage": bearer("not.a.jwt"),
        "other secret": bearer(forged_secret),
        "alg none": bearer(alg_none),
        "expired": bearer(expired),
        "no jti": bearer(no_jti),
        "refresh token as access": bearer(user["refresh_token"]),
    }
    for name, headers in cases.items():
        r = await http.get("/api/user/get_user_profile", headers=headers)
        assert r.status_code == 401, (name, r.text)
        assert r.json()["detail"], name
    # and the access token is no refresh token either
    r = await http.post("/api/user/refresh", json={"refresh_token": user["access_token"]})
    assert r.status_code == 401


# ---- sessions --------------------------------------------------------------------------------


async def test_refresh_rotates_the_refresh_token_and_gives_a_working_access_token(http: httpx.AsyncClient) -> None:
    user = await signup_login(http)
    r = await http.post("/api/user/refresh", json={"refresh_token": user["refresh_token"]})
    assert r.status_code == 200, r.text
    pair = r.json()
    assert pair["refresh_token"] != user["refresh_token"]
    assert pair["access_token"] != user["access_token"]
    assert (await http.get("/api/user/get_user_profile", headers=bearer(pair["access_token"]))).status_code == 200
    # the new refresh token rotates again
    r = await http.post("/api/user/refresh", json={"refresh_token": pair["refresh_token"]})
    assert r.status_code == 200, r.text


async def test_reusing_a_spent_refresh_token_ends_the_whole_session(http: httpx.AsyncClient) -> None:
    user = await signup_login(http)
    first = (await http.post("/api/user/refresh", json={"refresh_token": user["refresh_token"]})).json()
    second = (await http.post("/api/user/refresh", json={"refresh_token": first["refresh_token"]})).json()

    # an attacker replays the first, already spent refresh token
    r = await http.post("/api/user/refresh", json={"refresh_token": user["refresh_token"]})
    assert r.status_code == 401
    assert "already used" in r.json()["detail"]

    # the whole family is revoked: even the newest refresh token no longer works ...
    r = await http.post("/api/user/refresh", json={"refresh_token": second["refresh_token"]})
    assert r.status_code == 401
    # ... and neither do the session's access tokens
    for access in (user["access_token"], first["access_token"], second["access_token"]):
        assert (await http.get("/api/user/get_user_profile", headers=bearer(access))).status_code == 401

    # another session of the same user is untouched, and a new login works
    again = await http.post("/api/user/login", json={"username": user["username"], "password": PASSWORD})
    assert again.status_code == 200
    assert (await http.get("/api/user/get_user_profile", headers=bearer(again.json()["access_token"]))).status_code == 200


async def test_logout_revokes_the_refresh_token_and_the_access_token(http: httpx.AsyncClient) -> None:
    user = await signup_login(http)
    other_session = (
        await http.post("/api/user/login", json={"username": user["username"], "password": PASSWORD})
    ).json()
    refreshed = (await http.post("/api/user/refresh", json={"refresh_token": user["refresh_token"]})).json()

    r = await http.post("/api/user/logout", headers=bearer(refreshed["access_token"]))
    assert r.status_code == 204

    assert (await http.post("/api/user/refresh", json={"refresh_token": refreshed["refresh_token"]})).status_code == 401
    for access in (user["access_token"], refreshed["access_token"]):
        assert (await http.get("/api/user/get_user_profile", headers=bearer(access))).status_code == 401
    # logging out ends this session only
    assert (await http.get("/api/user/get_user_profile", headers=bearer(other_session["access_token"]))).status_code == 200
    assert (await http.post("/api/user/refresh", json={"refresh_token": other_session["refresh_token"]})).status_code == 200


async def test_logout_also_ends_the_session_on_the_query_routes(http: httpx.AsyncClient) -> None:
    user = await signup_login(http)
    app = await register(http, user)
    refreshed = (await http.post("/api/user/refresh", json={"refresh_token": user["refresh_token"]})).json()
    params = {"app_id": app["app_id"]}
    for access in (user["access_token"], refreshed["access_token"]):
        r = await http.get("/api/analytics/events/count", params=params, headers=bearer(access))
        assert r.status_code == 200, r.text
    assert (await http.post("/api/user/logout", headers=bearer(refreshed["access_token"]))).status_code == 204
    for access in (user["access_token"], refreshed["access_token"]):
        r = await http.get("/api/analytics/events/count", params=params, headers=bearer(access))
        assert r.status_code == 401, r.text


async def test_logout_without_a_token_is_401(http: httpx.AsyncClient) -> None:
    r = await http.post("/api/user/logout")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"


async def test_refresh_with_garbage_is_401_and_without_a_body_422(http: httpx.AsyncClient) -> None:
    assert (await http.post("/api/user/refresh", json={"refresh_token": "garbage"})).status_code == 401
    assert (await http.post("/api/user/refresh", json={})).status_code == 422


# ---- brute force -----------------------------------------------------------------------------


async def test_too_many_failed_logins_for_one_account_are_429_with_retry_after(stack: Stack) -> None:
    async with client_for(stack, random_ip()) as setup:
        user = await signup_login(setup)
    # the attacker spreads the guesses over many addresses: the account's budget still runs out
    for attempt in range(10):
        async with client_for(stack, random_ip()) as attacker:
            r = await attacker.post("/api/user/login", json={"username": user["username"], "password": f"Guess{attempt}!x"})
            assert r.status_code == 401, r.text
    async with client_for(stack, random_ip()) as attacker:
        r = await attacker.post("/api/user/login", json={"username": user["email"].upper(), "password": "Guess!x1"})
        assert r.status_code == 429, r.text
        assert int(r.headers["retry-after"]) >= 1
        assert "too many" in r.json()["detail"]
        # while locked, even the right password waits
        r = await attacker.post("/api/user/login", json={"username": user["username"], "password": PASSWORD})
        assert r.status_code == 429
    # other accounts are not affected
    async with client_for(stack, random_ip()) as other:
        await signup_login(other)


async def test_too_many_failed_logins_from_one_ip_are_429_with_retry_after(stack: Stack) -> None:
    ip = random_ip()
    async with client_for(stack, ip) as attacker:
        victim = await signup_login(attacker)  # one successful login: successes do not count
        for _ in range(30):
            r = await attacker.post("/api/user/login", json={"username": unique("stuffed"), "password": "Guess!x1"})
            assert r.status_code == 401, r.text
        r = await attacker.post("/api/user/login", json={"username": victim["username"], "password": PASSWORD})
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) >= 1
    # the same account from another address signs in fine
    async with client_for(stack, random_ip()) as elsewhere:
        r = await elsewhere.post("/api/user/login", json={"username": victim["username"], "password": PASSWORD})
        assert r.status_code == 200, r.text


async def test_behind_a_trusted_proxy_failed_logins_count_per_forwarded_client(stack: Stack) -> None:
    """The edge proxy's own address is shared by every user: the limit must count the client it names."""
    attacker, bystander = random_ip(), random_ip()
    async with client_for(stack, "127.0.0.1") as via_proxy:  # 127.0.0.1 is in TRUSTED_PROXIES by default
        victim = await signup_login(via_proxy)
        for _ in range(30):
            r = await via_proxy.post("/api/user/login", json={"username": unique("stuffed"), "password": "Guess!x1"},
                                     headers={"x-forwarded-for": attacker})
            assert r.status_code == 401, r.text
        r = await via_proxy.post("/api/user/login", json={"username": victim["username"], "password": PASSWORD},
                                 headers={"x-forwarded-for": attacker})
        assert r.status_code == 429
        r = await via_proxy.post("/api/user/login", json={"username": victim["username"], "password": PASSWORD},
                                 headers={"x-forwarded-for": bystander})
        assert r.status_code == 200, r.text
    # a client that is not a trusted proxy cannot pick its address by sending the header
    async with client_for(stack, attacker) as direct:
        r = await direct.post("/api/user/login", json={"username": victim["username"], "password": PASSWORD},
                              headers={"x-forwarded-for": random_ip()})
        assert r.status_code == 429


async def test_failed_logins_from_one_ipv6_network_count_as_one_address(stack: Stack) -> None:
    network = random_ip().removesuffix("::1")
    for attempt in range(30):  # a host rotating through the addresses of its /64
        async with client_for(stack, f"{network}::{attempt + 2:x}") as attacker:
            r = await attacker.post("/api/user/login", json={"username": unique("rotating"), "password": "Guess!x1"})
            assert r.status_code == 401
    async with client_for(stack, f"{network}:ffff::1") as attacker:
        r = await attacker.post("/api/user/login", json={"username": unique("rotating"), "password": "Guess!x1"})
        assert r.status_code == 429
        assert int(r.headers["retry-after"]) >= 1


async def test_successful_logins_never_run_into_the_limit(http: httpx.AsyncClient) -> None:
    user = await signup_login(http)
    for _ in range(12):
        r = await http.post("/api/user/login", json={"username": user["username"], "password": PASSWORD})
        assert r.status_code == 200, r.text


async def test_concurrent_wrong_guesses_cannot_get_around_the_account_limit(stack: Stack) -> None:
    """The attempt is counted before the password is checked: 60 parallel guesses with the default
    10/minute get at most 10 password checks (401), the others 429 with Retry-After."""
    async with client_for(stack, random_ip()) as setup:
        user = await signup_login(setup)

    async def guess(attempt: int) -> httpx.Response:
        async with client_for(stack, random_ip()) as attacker:  # each from its own address
            return await attacker.post("/api/user/login",
                                       json={"username": user["username"], "password": f"Guess{attempt}!x"})

    answers = await asyncio.gather(*(guess(i) for i in range(60)))
    statuses = sorted(r.status_code for r in answers)
    assert set(statuses) <= {401, 429}, statuses
    assert 1 <= statuses.count(401) <= 10, statuses
    assert all(int(r.headers["retry-after"]) >= 1 for r in answers if r.status_code == 429)


# ---- apps and keys ---------------------------------------------------------------------------


async def test_register_returns_a_secret_key_and_a_write_key_shown_once(http: httpx.AsyncClient) -> None:
    user = await signup_login(http)
    r = await http.post("/api/auth/register", json={"name": "blog", "domain": "blog.example.com"}, headers=user["headers"])
    assert r.status_code == 201, r.text
    app = r.json()
    uuid.UUID(app["app_id"])
    assert app["name"] == "blog" and app["domain"] == "blog.example.com"
    for field, pattern in KEY_FORMAT.items():
        assert pattern.match(app[field]), app[field]  # a prefix by kind, 256 random bits
    expires = datetime.fromisoformat(app["expires_at"])
    assert timedelta(days=364) < expires - datetime.now(UTC) < timedelta(days=366)

    r = await http.get("/api/auth/api-key", params={"app_id": app["app_id"]}, headers=user["headers"])
    assert r.status_code == 200, r.text
    meta = r.json()
    assert meta["app_id"] == app["app_id"]
    by_kind = {k["kind"]: k for k in meta["keys"]}
    assert set(by_kind) == {"secret", "write"}
    assert by_kind["secret"]["prefix"] == app["api_key"][:11]
    assert by_kind["write"]["prefix"] == app["write_key"][:11]
    for key in meta["keys"]:
        assert {"key_id", "kind", "prefix", "created_at", "expires_at", "revoked", "last_used_at"} <= set(key)
        assert key["revoked"] is False
    # metadata only: the secrets are never shown again
    assert app["api_key"] not in r.text and app["write_key"] not in r.text


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({}, id="no-name"),
        pytest.param({"name": ""}, id="empty-name"),
        pytest.param({"name": "x", "expires_at": "2020-01-01T00:00:00Z"}, id="expiry-in-the-past"),
        pytest.param({"name": "x", "expires_at": "2099-01-01T00:00:00"}, id="expiry-without-time-zone"),
    ],
)
async def test_register_with_bad_input_is_422(http: httpx.AsyncClient, body: dict[str, Any]) -> None:
    user = await signup_login(http)
    r = await http.post("/api/auth/register", json=body, headers=user["headers"])
    assert r.status_code == 422, r.text


async def test_app_routes_need_a_bearer_token(http: httpx.AsyncClient) -> None:
    some_app = str(uuid.uuid4())
    calls = [
        http.post("/api/auth/register", json={"name": "x"}),
        http.get("/api/auth/apps"),
        http.get("/api/auth/api-key", params={"app_id": some_app}),
        http.post("/api/auth/revoke", json={"app_id": some_app}),
        http.post("/api/auth/regenerate", json={"app_id": some_app}),
    ]
    for response in await asyncio.gather(*calls):
        assert response.status_code == 401, response.request.url


async def test_apps_lists_your_apps_and_only_yours(http: httpx.AsyncClient) -> None:
    alice, bob = await signup_login(http), await signup_login(http)
    a1 = await register(http, alice, "one")
    a2 = await register(http, alice, "two")
    await register(http, bob, "bobs")
    r = await http.get("/api/auth/apps", headers=alice["headers"])
    assert r.status_code == 200
    assert [(a["app_id"], a["name"]) for a in r.json()] == [(a1["app_id"], "one"), (a2["app_id"], "two")]
    assert a1["api_key"] not in r.text


OWNERSHIP_CALLS = ["api-key", "revoke-app", "revoke-key", "regenerate"]


async def _app_call(http: httpx.AsyncClient, call: str, headers: dict[str, str], app_id: str, key_id: str) -> httpx.Response:
    if call == "api-key":
        return await http.get("/api/auth/api-key", params={"app_id": app_id}, headers=headers)
    if call == "revoke-app":
        return await http.post("/api/auth/revoke", json={"app_id": app_id}, headers=headers)
    if call == "revoke-key":
        return await http.post("/api/auth/revoke", json={"key_id": key_id}, headers=headers)
    return await http.post("/api/auth/regenerate", json={"app_id": app_id}, headers=headers)


@pytest.mark.parametrize("call", OWNERSHIP_CALLS)
async def test_another_users_app_is_403_and_stays_untouched(http: httpx.AsyncClient, call: str) -> None:
    owner, intruder = await signup_login(http), await signup_login(http)
    app = await register(http, owner)
    meta = (await http.get("/api/auth/api-key", params={"app_id": app["app_id"]}, headers=owner["headers"])).json()
    key_id = meta["keys"][0]["key_id"]
    r = await _app_call(http, call, intruder["headers"], app["app_id"], key_id)
    assert r.status_code == 403, r.text
    assert app["api_key"] not in r.text
    # nothing changed for the owner
    after = (await http.get("/api/auth/api-key", params={"app_id": app["app_id"]}, headers=owner["headers"])).json()
    assert after == meta
    assert (await collect(http, app["api_key"])).status_code == 202


@pytest.mark.parametrize("call", OWNERSHIP_CALLS)
@pytest.mark.parametrize("missing", [str(uuid.uuid4()), "not-a-uuid"], ids=["unknown-uuid", "not-a-uuid"])
async def test_an_app_or_key_that_does_not_exist_is_404(http: httpx.AsyncClient, call: str, missing: str) -> None:
    user = await signup_login(http)
    r = await _app_call(http, call, user["headers"], missing, missing)
    assert r.status_code == 404, r.text


@pytest.mark.parametrize(
    "body", [pytest.param({}, id="neither"), pytest.param({"app_id": "a", "key_id": "b"}, id="both")]
)
async def test_revoke_needs_exactly_one_of_app_id_and_key_id(http: httpx.AsyncClient, body: dict[str, str]) -> None:
    user = await signup_login(http)
    r = await http.post("/api/auth/revoke", json=body, headers=user["headers"])
    assert r.status_code == 422


async def _rejected_within(http: httpx.AsyncClient, key: str, limit: float, started: float) -> float:
    """Seconds from `started` until the gateway answered 401 for `key` (fails past `limit`)."""
    while True:
        r = await collect(http, key)
        elapsed = time.monotonic() - started
        if r.status_code == 401:
            print(f"key {key[:11]} refused {elapsed * 1000:.0f} ms after the change")  # shown with -s
            return elapsed
        assert r.status_code == 202, r.text
        assert elapsed < limit, f"key {key[:11]} still accepted {elapsed:.2f}s after it was revoked"
        await asyncio.sleep(0.02)


async def test_a_revoked_key_is_refused_by_the_gateway_within_one_second(http: httpx.AsyncClient) -> None:
    user = await signup_login(http)
    app = await register(http, user)
    meta = (await http.get("/api/auth/api-key", params={"app_id": app["app_id"]}, headers=user["headers"])).json()
    write_id = next(k["key_id"] for k in meta["keys"] if k["kind"] == "write")
    assert (await collect(http, app["write_key"])).status_code == 202

    r = await http.post("/api/auth/revoke", json={"key_id": write_id}, headers=user["headers"])
    revoked_at = time.monotonic()
    assert r.status_code == 200, r.text
    assert r.json() == {"revoked": [write_id]}
    await _rejected_within(http, app["write_key"], 1.0, revoked_at)
    # only that key: the secret key still works
    assert (await collect(http, app["api_key"])).status_code == 202
    meta = (await http.get("/api/auth/api-key", params={"app_id": app["app_id"]}, headers=user["headers"])).json()
    assert {k["kind"]: k["revoked"] for k in meta["keys"]} == {"secret": False, "write": True}
    assert next(k for k in meta["keys"] if k["kind"] == "write")["revoked_at"] is not None


async def test_revoking_an_app_refuses_all_its_keys_within_one_second(http: httpx.AsyncClient) -> None:
    user = await signup_login(http)
    app = await register(http, user)
    r = await http.post("/api/auth/revoke", json={"app_id": app["app_id"]}, headers=user["headers"])
    revoked_at = time.monotonic()
    assert r.status_code == 200
    assert len(r.json()["revoked"]) == 2
    for key in (app["api_key"], app["write_key"]):
        await _rejected_within(http, key, 1.0, revoked_at)
    # revoking again is harmless: nothing left to revoke
    r = await http.post("/api/auth/revoke", json={"app_id": app["app_id"]}, headers=user["headers"])
    assert r.status_code == 200 and r.json() == {"revoked": []}


async def test_regenerate_replaces_both_keys(http: httpx.AsyncClient) -> None:
    user = await signup_login(http)
    app = await register(http, user)
    r = await http.post("/api/auth/regenerate", json={"app_id": app["app_id"]}, headers=user["headers"])
    done = time.monotonic()
    assert r.status_code == 200, r.text
    new = r.json()
    assert new["app_id"] == app["app_id"]
    assert len(new["revoked"]) == 2
    for field, pattern in KEY_FORMAT.items():
        assert pattern.match(new[field]) and new[field] != app[field]
    for key in (app["api_key"], app["write_key"]):
        await _rejected_within(http, key, 1.0, done)

    async def new_keys_work() -> bool:
        return all([(await collect(http, new[k])).status_code == 202 for k in ("api_key", "write_key")])

    await eventually(new_keys_work, 5, "the regenerated keys were not accepted")
    meta = (await http.get("/api/auth/api-key", params={"app_id": app["app_id"]}, headers=user["headers"])).json()
    assert sorted(k["revoked"] for k in meta["keys"]) == [False, False, True, True]


async def test_key_metadata_shows_when_each_key_was_last_used(http: httpx.AsyncClient) -> None:
    user = await signup_login(http)
    r = await http.post("/api/auth/register", json={"name": "used"}, headers=user["headers"])
    app = r.json()
    before = datetime.now(UTC)
    await eventually(lambda: _accepted(http, app["write_key"]), 5, "the write key was never accepted")

    async def last_used() -> dict[str, str | None]:
        meta = await http.get("/api/auth/api-key", params={"app_id": app["app_id"]}, headers=user["headers"])
        return {k["kind"]: k["last_used_at"] for k in meta.json()["keys"]}

    async def write_key_seen() -> bool:
        return (await last_used())["write"] is not None

    await eventually(write_key_seen, 6, "the write key's last use never showed up")
    seen = await last_used()
    assert before - timedelta(seconds=1) <= datetime.fromisoformat(seen["write"]) <= datetime.now(UTC)
    assert seen["secret"] is None  # never used


async def _accepted(http: httpx.AsyncClient, key: str) -> bool:
    return (await collect(http, key)).status_code == 202


async def test_a_write_key_can_ingest_but_not_read(http: httpx.AsyncClient) -> None:
    user = await signup_login(http)
    app = await register(http, user)
    assert (await collect(http, app["write_key"])).status_code == 202
    r = await http.get("/api/analytics/events/count", headers={"x-api-key": app["write_key"]})
    assert r.status_code == 403, r.text
    r = await http.get("/api/analytics/events/count", headers={"x-api-key": app["api_key"]})
    assert r.status_code == 200, r.text


async def test_a_key_stops_working_when_it_expires(http: httpx.AsyncClient) -> None:
    user = await signup_login(http)
    expires = datetime.now(UTC) + timedelta(seconds=3)
    r = await http.post(
        "/api/auth/register", json={"name": "short-lived", "expires_at": expires.isoformat()}, headers=user["headers"]
    )
    assert r.status_code == 201, r.text
    app = r.json()
    assert datetime.fromisoformat(app["expires_at"]) == expires

    async def accepted() -> bool:
        return (await collect(http, app["api_key"])).status_code == 202

    await eventually(accepted, 2.5, "the key was not accepted before it expired")
    await asyncio.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.05)
    for key in (app["api_key"], app["write_key"]):
        r = await collect(http, key)
        assert r.status_code == 401, r.text


async def test_regenerate_can_set_an_expiry_and_refuses_one_in_the_past(http: httpx.AsyncClient) -> None:
    user = await signup_login(http)
    app = await register(http, user)
    past = await http.post(
        "/api/auth/regenerate", json={"app_id": app["app_id"], "expires_at": "2001-01-01T00:00:00Z"}, headers=user["headers"]
    )
    assert past.status_code == 422
    when = (datetime.now(UTC) + timedelta(days=30)).replace(microsecond=0)
    r = await http.post(
        "/api/auth/regenerate", json={"app_id": app["app_id"], "expires_at": when.isoformat()}, headers=user["headers"]
    )
    assert r.status_code == 200
    assert datetime.fromisoformat(r.json()["expires_at"]) == when


async def test_every_key_change_is_published_without_the_key(http: httpx.AsyncClient, engines: Settings) -> None:
    async with KeyTopicReader(engines) as reader:
        user = await signup_login(http)
        app = await register(http, user)
        await http.post("/api/auth/regenerate", json={"app_id": app["app_id"]}, headers=user["headers"])
        mine = await reader.wait_for(lambda m: m["app_id"] == app["app_id"], count=6)
    types = sorted(m["type"] for m, _ in mine)
    assert types == ["created", "created", "created", "created", "regenerated", "regenerated"]
    for message, raw in mine:
        assert message["key_hash"] and message["version"]
        assert app["api_key"] not in raw and app["write_key"] not in raw
