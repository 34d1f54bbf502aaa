"""Sign-in through an OpenID provider, against a real one (the certified oidc-provider, run with
Node.js by tests/oidc): the authorization code flow with PKCE, and every way its answer can be wrong
(tampered state, a replayed callback, a nonce we did not send, an expired ID token, an email the
provider does not vouch for). The auth and query services serve on a real socket, as for a browser."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit, urlunsplit

import httpx
import jwt
import pytest

from libs.embedded.procs import free_port
from libs.runtime import Stack
from libs.settings import Settings
from services.auth import SERVICE as AUTH
from services.query import SERVICE as QUERY
from tests.browser import CHROMIUM, NO_CHROMIUM, NO_PLAYWRIGHT, async_playwright, chromium
from tests.conftest import PASSWORD, serving
from tests.oidc import CLIENT_ID, CLIENT_SECRET, NO_NODE, NODE, Provider, openid_provider, through_provider
from tests.services.auth.helpers import client_for, random_ip

pytestmark = [pytest.mark.engines, pytest.mark.skipif(NODE is None, reason=NO_NODE)]

PROVIDER_NAME = "Test ID"
ARTIFACTS = Path(__file__).parents[2] / "artifacts"


@dataclass(frozen=True)
class Site:
    url: str  # our services (auth, and query with the dashboard), as a browser reaches them
    provider: Provider
    stack: Stack

    @property
    def callback(self) -> str:
        return f"{self.url}/api/user/oidc/callback"


@pytest.fixture(scope="module")
async def site(engines: Settings) -> AsyncIterator[Site]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    async with openid_provider(f"{url}/api/user/oidc/callback") as provider:
        settings = engines.model_copy(update={
            "public_base_url": url, "oidc_issuer": provider.url, "oidc_client_id": CLIENT_ID,
            "oidc_client_secret": CLIENT_SECRET, "oidc_provider_name": PROVIDER_NAME,
        })
        async with Stack(settings, [AUTH, QUERY]) as stack, serving(stack.app(), port=port):
            yield Site(url, provider, stack)


def browser() -> httpx.AsyncClient:
    """A browser's cookie jar, following no redirect on its own."""
    return httpx.AsyncClient(timeout=30, headers={"accept": "application/json"})


async def new_account(site: Site, verified: bool = True, email: str | None = None) -> tuple[str, str]:
    login = f"person-{uuid.uuid4().hex[:10]}"
    email = email or f"{login}@example.org"
    await site.provider.account(login, email, verified)
    return login, email


async def answer(http: httpx.AsyncClient, site: Site, login: str) -> str:
    """Start a sign-in at our /oidc/login and go through the provider: its answer, our callback URL."""
    return await through_provider(http, f"{site.url}/api/user/oidc/login", login, stop_at=site.callback)


async def signed_in(http: httpx.AsyncClient, site: Site, callback: str) -> dict[str, object]:
    """Visit the callback as the browser does, then pick the session up as the dashboard does."""
    r = await http.get(callback)
    assert r.status_code == 302, r.text
    assert r.headers["location"] == "/dashboard#/oidc"
    pair = await http.post(f"{site.url}/api/user/oidc/session")
    assert pair.status_code == 200, pair.text
    tokens: dict[str, object] = pair.json()
    return tokens


async def profile(site: Site, tokens: dict[str, object]) -> dict[str, object]:
    async with httpx.AsyncClient() as http:
        r = await http.get(f"{site.url}/api/user/get_user_profile", headers={"authorization": f"Bearer {tokens['access_token']}"})
    assert r.status_code == 200, r.text
    me: dict[str, object] = r.json()
    return me


def refused_without_session(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    assert "oidc_handoff" not in r.headers.get("set-cookie", ""), "a refused sign-in must not leave a session to pick up"
    detail: str = r.json()["detail"]
    return detail


def with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    return urlunsplit(parts._replace(query=urlencode({**query, **changes})))


async def test_the_dashboard_learns_whether_and_how_provider_sign_in_is_offered(site: Site) -> None:
    async with browser() as http:
        r = await http.get(f"{site.url}/api/user/oidc/config")
    assert r.status_code == 200
    assert r.json() == {"enabled": True, "provider_name": PROVIDER_NAME, "login_url": "/api/user/oidc/login"}


async def test_login_sends_the_browser_to_the_provider_with_pkce_state_and_nonce_bound_to_a_cookie(site: Site) -> None:
    async with browser() as http:
        r = await http.get(f"{site.url}/api/user/oidc/login")
    assert r.status_code == 302
    to = urlsplit(r.headers["location"])
    assert f"{to.scheme}://{to.netloc}" == site.provider.url
    query = {k: v[0] for k, v in parse_qs(to.query).items()}
    assert query["client_id"] == CLIENT_ID and query["response_type"] == "code"
    assert query["redirect_uri"] == site.callback
    assert set(query["scope"].split()) >= {"openid", "email"}
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) >= 43
    assert len(query["state"]) >= 20 and len(query["nonce"]) >= 20
    assert query["max_age"] == str(30 * 86400), "max_age makes the provider say when the person authenticated"
    cookie = r.headers["set-cookie"].lower()
    assert cookie.startswith("oidc_flow=") and "httponly" in cookie and "samesite=lax" in cookie
    assert "path=/api/user/oidc" in cookie and "max-age=600" in cookie


async def test_a_first_sign_in_creates_the_account_and_the_next_one_finds_it(site: Site) -> None:
    login, email = await new_account(site)
    async with browser() as http:
        before = int(time.time())
        tokens = await signed_in(http, site, await answer(http, site, login))
        me = await profile(site, tokens)
        assert me["email"] == email
        claims = jwt.decode(str(tokens["access_token"]), options={"verify_signature": False})
        assert before - 5 <= claims["auth_time"] <= int(time.time()) + 1, "the access token says when the user signed in"
        again = await http.post(f"{site.url}/api/user/oidc/session")
        assert again.status_code == 401, "the hand-off is picked up once"
    async with browser() as http:  # another browser, a second sign-in: the same account
        second = await profile(site, await signed_in(http, site, await answer(http, site, login)))
    assert second["id"] == me["id"]
    # An account made through the provider has no password to guess.
    async with client_for(site.stack, random_ip()) as api:
        r = await api.post("/api/user/login", json={"username": me["username"], "password": PASSWORD})
        assert r.status_code == 401


async def test_a_fresh_sign_in_makes_the_provider_ask_again_and_says_so_in_auth_time(site: Site) -> None:
    def auth_time(tokens: dict[str, object]) -> int:
        return int(jwt.decode(str(tokens["access_token"]), options={"verify_signature": False})["auth_time"])

    login, _ = await new_account(site)
    async with browser() as http:
        first = await signed_in(http, site, await through_provider(
            http, f"{site.url}/api/user/oidc/login", login, stop_at=site.callback, asks_to_log_in=True))
        await asyncio.sleep(1.1)
        again = await signed_in(http, site, await through_provider(  # the provider remembers the person
            http, f"{site.url}/api/user/oidc/login", login, stop_at=site.callback, asks_to_log_in=False))
        fresh = await signed_in(http, site, await through_provider(
            http, f"{site.url}/api/user/oidc/login?fresh=true", login, stop_at=site.callback, asks_to_log_in=True))
    # The provider's word on when the person authenticated: not when the dashboard got its tokens.
    assert auth_time(again) == auth_time(first) < auth_time(fresh) <= int(time.time())
    assert (await profile(site, fresh))["id"] == (await profile(site, first))["id"]


async def test_starting_sign_ins_is_limited_per_client_address(site: Site) -> None:
    async with client_for(site.stack, random_ip()) as one, client_for(site.stack, random_ip()) as other:
        answers = [(await one.get("/api/user/oidc/login")).status_code for _ in range(31)]
        assert answers == [302] * 30 + [429]
        r = await one.get("/api/user/oidc/login")
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
        assert "too many sign-ins started" in r.json()["detail"]
        assert (await other.get("/api/user/oidc/login")).status_code == 302


async def test_a_tampered_state_is_refused_and_signs_no_one_in(site: Site) -> None:
    login, _ = await new_account(site)
    async with browser() as http:
        callback = await answer(http, site, login)
        state = parse_qs(urlsplit(callback).query)["state"][0]
        detail = refused_without_session(await http.get(with_query(callback, state=state[:-2] + "xy")), 400)
        assert "does not belong to the sign-in this browser started" in detail
        # The flow is spent: the genuine answer cannot be used after that either.
        assert "start again" in refused_without_session(await http.get(callback), 400)
        assert (await http.post(f"{site.url}/api/user/oidc/session")).status_code == 401


async def test_a_callback_is_used_once_and_only_by_the_browser_that_started_the_sign_in(site: Site) -> None:
    login, _ = await new_account(site)
    async with browser() as http, browser() as other:
        callback = await answer(http, site, login)
        refused_without_session(await other.get(callback), 400)  # no flow cookie: not this browser's sign-in
        await signed_in(http, site, callback)
        assert "start again" in refused_without_session(await http.get(callback), 400)


async def test_an_id_token_with_a_nonce_we_did_not_send_is_refused(site: Site) -> None:
    """The authorization request is altered on its way to the provider (the nonce swapped): the code
    and PKCE still match, but the ID token answers another request than the one this browser made."""
    login, _ = await new_account(site)
    async with browser() as http:
        r = await http.get(f"{site.url}/api/user/oidc/login")
        altered = with_query(r.headers["location"], nonce="a-nonce-this-browser-never-got")
        callback = await through_provider(http, altered, login, stop_at=site.callback)
        detail = refused_without_session(await http.get(callback), 401)
    assert "ID token" in detail and "nonce" in detail


async def test_an_expired_id_token_is_refused(site: Site) -> None:
    login, _ = await new_account(site)
    async with browser() as http:
        callback = await answer(http, site, login)
        await site.provider.set_clock(-3600)  # its ID tokens expire long before they arrive
        try:
            detail = refused_without_session(await http.get(callback), 401)
        finally:
            await site.provider.set_clock(0)
    assert "ID token" in detail and "expired" in detail


async def password_account(site: Site) -> tuple[str, str, str]:
    """A user who signed up with a password: (username, email, id)."""
    username = f"pw{uuid.uuid4().hex[:10]}"
    email = f"{username}@example.com"
    async with client_for(site.stack, random_ip()) as api:
        r = await api.post("/api/user/signup", json={"username": username, "email": email, "password": PASSWORD})
        assert r.status_code == 201, r.text
    return username, email, r.json()["id"]


async def test_a_verified_email_links_the_sign_in_to_the_existing_password_account(site: Site) -> None:
    username, email, account_id = await password_account(site)
    login, _ = await new_account(site, verified=True, email=email.upper())
    async with browser() as http:
        me = await profile(site, await signed_in(http, site, await answer(http, site, login)))
    assert me["id"] == account_id and me["username"] == username
    async with client_for(site.stack, random_ip()) as api:  # the password still works
        assert (await api.post("/api/user/login", json={"username": username, "password": PASSWORD})).status_code == 200


async def test_an_unverified_email_is_never_linked_to_the_existing_account(site: Site) -> None:
    username, email, _ = await password_account(site)
    login, _ = await new_account(site, verified=False, email=email)
    async with browser() as http:
        detail = refused_without_session(await http.get(await answer(http, site, login)), 409)
        assert email in detail and "not linked" in detail and "password" in detail
    # A browser is shown the reason on a page, with the way back.
    async with browser() as http:
        r = await http.get(await answer(http, site, login), headers={"accept": "text/html"})
        assert r.status_code == 409 and r.headers["content-type"].startswith("text/html")
        assert "not linked" in r.text and 'href="/dashboard#/login"' in r.text
    # Once the provider vouches for the address, the same identity links to the account.
    await site.provider.account(login, email, True)
    async with browser() as http:
        me = await profile(site, await signed_in(http, site, await answer(http, site, login)))
    assert me["username"] == username


async def test_an_unverified_email_makes_no_new_account(site: Site) -> None:
    login, email = await new_account(site, verified=False)
    async with browser() as http:
        detail = refused_without_session(await http.get(await answer(http, site, login)), 403)
    assert email in detail and "does not confirm" in detail


async def test_a_sign_in_cancelled_at_the_provider_says_so(site: Site) -> None:
    async with browser() as http:
        r = await http.get(f"{site.url}/api/user/oidc/login")
        r = await http.get(r.headers["location"])
        assert r.status_code == 303 and "/interaction/" in r.headers["location"]
        interaction = urljoin(site.provider.url, r.headers["location"])
        # The person presses "Cancel" (the provider's abort): the provider answers error=access_denied.
        callback = await through_provider(http, f"{interaction}/abort", "nobody", stop_at=site.callback)
        assert parse_qs(urlsplit(callback).query)["error"] == ["access_denied"]
        detail = refused_without_session(await http.get(callback), 403)
    assert f"{PROVIDER_NAME} did not sign you in" in detail


async def test_garbage_callbacks_are_refused_with_400(site: Site) -> None:
    async with browser() as http:
        for query in ({}, {"code": "x"}, {"state": "s" * 5000, "code": "c"}, {"error": "server_error"}):
            refused_without_session(await http.get(site.callback, params=query), 400)
        http.cookies.set("oidc_flow", "not-a-flow-we-started", path="/api/user/oidc")
        refused_without_session(await http.get(site.callback, params={"code": "c", "state": "s"}), 400)
        http.cookies.set("oidc_handoff", "not-a-hand-off", path="/api/user/oidc")
        assert (await http.post(f"{site.url}/api/user/oidc/session")).status_code == 401


async def test_an_email_that_cannot_receive_mail_makes_no_account(site: Site) -> None:
    """Sign-up refuses such addresses (reserved names): sign-in through a provider refuses them as well."""
    login, _ = await new_account(site, verified=True, email="someone@printer.local")
    async with browser() as http:
        detail = refused_without_session(await http.get(await answer(http, site, login)), 403)
    assert "someone@printer.local" in detail and "cannot receive mail" in detail


async def test_without_configuration_provider_sign_in_is_off_and_says_so(engines: Settings) -> None:
    async with Stack(engines, [AUTH]) as lone, client_for(lone, random_ip()) as api:
        config = await api.get("/api/user/oidc/config")
        assert config.json() == {"enabled": False, "provider_name": None, "login_url": None}
        for r in (await api.get("/api/user/oidc/login"), await api.get("/api/user/oidc/callback?code=x&state=y"),
                  await api.post("/api/user/oidc/session")):
            assert r.status_code == 404, r.text
            assert "not configured" in r.json()["detail"] and "OIDC_CLIENT_ID" in r.json()["detail"]


async def log_in_at_the_provider(page: Any, login: str) -> None:
    """On the provider's own sign-in page (its development login form: any password)."""
    await page.locator('input[name="login"]').fill(login)
    await page.locator('input[name="password"]').fill("whatever the provider asks")
    await page.locator('button[type="submit"]').click()


@pytest.mark.skipif(async_playwright is None, reason=NO_PLAYWRIGHT)
@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
async def test_in_a_browser_sign_in_with_the_provider_lands_on_the_dashboard_signed_in(site: Site) -> None:
    from playwright.async_api import expect

    login, email = await new_account(site)
    async with chromium() as launched:
        page = await (await launched.new_context()).new_page()
        await page.goto(f"{site.url}/dashboard")
        button = page.get_by_role("link", name=f"Sign in with {PROVIDER_NAME}")
        await expect(button).to_be_visible()
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "oidc-sign-in-page.png"))
        await button.click()
        await log_in_at_the_provider(page, login)
        await expect(page.get_by_role("heading", name="Your sites")).to_be_visible(timeout=15000)
        assert page.url == f"{site.url}/dashboard#/apps"
        await expect(page.locator("#account")).to_contain_text("Signed in as")
        await page.locator("#app-name").fill("Shop via OIDC")
        await page.get_by_role("button", name="Add site").click()
        await expect(page.get_by_role("list", name="Sites")).to_contain_text("Shop via OIDC")
        await page.screenshot(path=str(ARTIFACTS / "oidc-signed-in.png"), full_page=True)
        # Signed out and in again: the provider remembers the person, and it is the same account.
        await page.get_by_role("button", name="Sign out").click()
        await page.get_by_role("link", name=f"Sign in with {PROVIDER_NAME}").click()
        await expect(page.get_by_role("list", name="Sites")).to_contain_text("Shop via OIDC", timeout=15000)
        # The session lives in the refresh cookie (httpOnly), as after a password login: a refresh from
        # the page gives this account's tokens.
        account = await page.evaluate("""async () => (await fetch('/api/user/refresh', {method: 'POST',
            headers: {'content-type': 'application/json'}, body: '{}'})).json()""")
    assert (await profile(site, account))["email"] == email


@pytest.mark.skipif(async_playwright is None, reason=NO_PLAYWRIGHT)
@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
async def test_in_a_browser_a_refused_sign_in_says_why_and_leads_back(site: Site) -> None:
    from playwright.async_api import expect

    login, email = await new_account(site, verified=False)
    async with chromium() as launched:
        page = await (await launched.new_context()).new_page()
        await page.goto(f"{site.url}/dashboard")
        await page.get_by_role("link", name=f"Sign in with {PROVIDER_NAME}").click()
        await log_in_at_the_provider(page, login)
        await expect(page.get_by_role("heading", name="Sign-in refused")).to_be_visible(timeout=15000)
        await expect(page.locator("#reason")).to_contain_text(f"does not confirm that {email} is yours")
        await page.get_by_role("link", name="Back to the sign-in page").click()
        await expect(page.get_by_role("link", name=f"Sign in with {PROVIDER_NAME}")).to_be_visible()


async def test_a_provider_that_cannot_be_reached_or_names_another_issuer_is_503(engines: Settings, site: Site) -> None:
    client = {"oidc_client_id": CLIENT_ID, "oidc_client_secret": CLIENT_SECRET, "public_base_url": site.url}
    nowhere = f"http://127.0.0.1:{free_port()}"
    # The same provider under another name: its discovery document names its own issuer, not this one.
    renamed = site.provider.url.replace("127.0.0.1", "localhost")
    for issuer in (nowhere, renamed):
        settings = engines.model_copy(update={**client, "oidc_issuer": issuer})
        async with Stack(settings, [AUTH]) as lone, client_for(lone, random_ip()) as api:
            r = await api.get("/api/user/oidc/login")
            assert r.status_code == 503, (issuer, r.text)
            assert "OpenID provider" in r.json()["detail"] and int(r.headers["retry-after"]) >= 1
