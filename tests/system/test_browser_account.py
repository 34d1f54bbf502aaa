"""The dashboard's account pages in a real browser (Debian's chromium driven by Playwright): a session
that survives new tabs and reloads with no token in script-readable storage, "forgot password" with the
mail read from the SMTP sink, changing the password, and deleting the account."""

from __future__ import annotations

import asyncio
import re
import uuid

import httpx
import pytest

from libs.settings import Settings
from tests.browser import CHROMIUM, NO_CHROMIUM, NO_PLAYWRIGHT, async_playwright
from tests.conftest import PASSWORD, eventually, register_app, signup_login
from tests.services.auth.helpers import collect, wait_for_mail

if async_playwright is not None:
    from playwright.async_api import Browser, Page
    from playwright.async_api import expect as pw_expect

pytestmark = [
    pytest.mark.engines,
    pytest.mark.skipif(async_playwright is None, reason=NO_PLAYWRIGHT),
    pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM),
]

NEW_PASSWORD = "An0ther!secret"
# Everything script can read: both storages and the cookies it can see.
SCRIPT_READABLE = """() => JSON.stringify({local: {...localStorage}, session: {...sessionStorage}, cookie: document.cookie})"""


async def sign_in(page: Page, live_url: str, username: str, password: str = PASSWORD) -> None:
    await page.goto(f"{live_url}/dashboard#/login")
    await pw_expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await page.get_by_label("Username or email").fill(username)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()
    await pw_expect(page.get_by_role("heading", name="Your sites")).to_be_visible()


async def signed_in_as(page: Page, username: str) -> None:
    await pw_expect(page.get_by_role("heading", name="Your sites")).to_be_visible()
    await pw_expect(page.get_by_text(f"Signed in as {username}")).to_be_visible()


async def test_the_session_survives_new_tabs_and_reloads_with_no_token_script_can_read(
    client: httpx.AsyncClient, live_url: str, browser: Browser
) -> None:
    user = await signup_login(client)
    await register_app(client, user, "Tabbed site")
    context = await browser.new_context()
    try:
        first = await context.new_page()
        await sign_in(first, live_url, user["username"])
        second = await context.new_page()
        await second.goto(f"{live_url}/dashboard#/apps")
        await signed_in_as(second, user["username"])
        await pw_expect(second.get_by_role("link", name="Tabbed site")).to_be_visible()
        await first.reload()
        await signed_in_as(first, user["username"])
        # Both tabs reload at once: their refreshes take turns, so neither spends a token the other
        # already spent (which the server would take for a stolen token, ending the session).
        await asyncio.gather(first.reload(), second.reload())
        await signed_in_as(first, user["username"])
        await signed_in_as(second, user["username"])
        (cookie,) = [c for c in await context.cookies() if c["name"] == "analytics_refresh"]
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/api/user/refresh"
        for page in (first, second):
            readable = await page.evaluate(SCRIPT_READABLE)
            assert cookie["value"] not in readable and "eyJ" not in readable, readable  # no JWT at all
        # Signing out in one tab ends the session in the other too, at its next call or load.
        await first.get_by_role("button", name="Sign out").click()
        await pw_expect(first.get_by_role("heading", name="Sign in")).to_be_visible()
        await second.reload()
        await pw_expect(second.get_by_role("heading", name="Sign in")).to_be_visible()
    finally:
        await context.close()


async def test_forgot_password_mails_a_link_that_sets_a_new_password(
    client: httpx.AsyncClient, live_url: str, browser: Browser, settings: Settings
) -> None:
    user = await signup_login(client)
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await page.goto(f"{live_url}/dashboard#/login")
        await page.get_by_role("link", name="Forgot your password?").click()
        await page.get_by_label("Email").fill(user["email"])
        await page.get_by_role("button", name="Send the link").click()
        await pw_expect(page.locator("#forgot-sent")).to_contain_text("Check your inbox")
        mail = await wait_for_mail(settings, user["email"], "Reset your Analytics password")
        text = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
        link = re.search(r"\S+/dashboard#/reset\?token=\S+", text)
        assert link and link.group(0).startswith(f"{settings.public_base_url}/dashboard#/reset?token="), text
        # The link names PUBLIC_BASE_URL; this test's server listens elsewhere, so the same page there.
        await page.goto(link.group(0).replace(settings.public_base_url, live_url, 1))
        await pw_expect(page.get_by_role("heading", name="Choose a new password")).to_be_visible()
        await page.get_by_label("New password", exact=True).fill(NEW_PASSWORD)
        await page.get_by_label("New password again").fill("Different!1x")
        await page.get_by_role("button", name="Set the new password").click()
        await pw_expect(page.get_by_role("alert")).to_contain_text("the two passwords differ")
        await page.get_by_label("New password again").fill(NEW_PASSWORD)
        await page.get_by_role("button", name="Set the new password").click()
        await pw_expect(page.get_by_text("Your password is changed: sign in with the new one.")).to_be_visible()
        await sign_in(page, live_url, user["username"], NEW_PASSWORD)
        # The link worked once.
        await page.goto(link.group(0).replace(settings.public_base_url, live_url, 1))
        await page.get_by_label("New password", exact=True).fill("Th1rd!secret")
        await page.get_by_label("New password again").fill("Th1rd!secret")
        await page.get_by_role("button", name="Set the new password").click()
        await pw_expect(page.get_by_role("alert")).to_contain_text("already used")
    finally:
        await context.close()
    r = await client.post("/api/user/login", json={"username": user["username"], "password": NEW_PASSWORD})
    assert r.status_code == 200, r.text


async def test_changing_the_password_and_deleting_the_account_in_the_dashboard(
    client: httpx.AsyncClient, live_url: str, browser: Browser
) -> None:
    username = f"leaver{uuid.uuid4().hex[:8]}"
    user = await signup_login(client, username)
    app = await register_app(client, user, "Short-lived site")
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await sign_in(page, live_url, username)
        await page.get_by_role("link", name="Account").click()
        await pw_expect(page.get_by_role("heading", name="Your account")).to_be_visible()
        await page.get_by_label("Current password").fill("Wr0ng!guess")
        await page.get_by_label("New password").fill(NEW_PASSWORD)
        await page.get_by_role("button", name="Change password").click()
        await pw_expect(page.get_by_role("alert")).to_contain_text("the current password is wrong")
        await page.get_by_label("Current password").fill(PASSWORD)
        await page.get_by_label("New password").fill(NEW_PASSWORD)
        await page.get_by_role("button", name="Change password").click()
        await pw_expect(page.locator("#password-changed")).to_be_visible()
        # The API session (another one) ended; the dashboard's goes on.
        r = await client.get("/api/user/get_user_profile", headers=user["headers"])
        assert r.status_code == 401, r.text
        await page.reload()
        await pw_expect(page.get_by_role("heading", name="Your account")).to_be_visible()

        await page.get_by_label("Your password").fill(NEW_PASSWORD)
        await page.get_by_role("button", name="Delete my account").click()  # the box is not ticked: the browser refuses
        await pw_expect(page.get_by_role("heading", name="Your account")).to_be_visible()
        await page.get_by_label("I understand").check()
        await page.get_by_role("button", name="Delete my account").click()
        await pw_expect(page.locator("#account-deleted")).to_be_visible()
        await page.reload()
        await pw_expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    finally:
        await context.close()

    async def key_refused() -> bool:
        return (await collect(client, app["api_key"])).status_code == 401

    await eventually(key_refused, 5, "the deleted account's key still works")
    r = await client.post("/api/user/login", json={"username": username, "password": NEW_PASSWORD})
    assert r.status_code == 401, r.text
