"""The dashboard's management pages in Chromium: site settings, teams and members (an invitation accepted
from its email link), shared links, and the public shared dashboard that needs no account."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx
import pytest

from libs.settings import Settings
from tests.browser import CHROMIUM, NO_CHROMIUM, NO_PLAYWRIGHT, async_playwright
from tests.conftest import PASSWORD, eventually, register_app, signup_login
from tests.services.auth.helpers import mails_to

if async_playwright is not None:
    from playwright.async_api import Browser, BrowserContext, Page
    from playwright.async_api import expect as pw_expect

from tests.system.test_browser import assert_labelled, dashboard_login, shot

pytestmark = [
    pytest.mark.engines,
    pytest.mark.skipif(async_playwright is None, reason=NO_PLAYWRIGHT),
    pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM),
]


async def new_context(browser: Browser) -> BrowserContext:
    context = await browser.new_context(viewport={"width": 1100, "height": 900}, timezone_id="UTC")
    context.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    return context


async def signed_in_page(context: BrowserContext, live_url: str, user: dict[str, Any]) -> Page:
    page = await context.new_page()
    await dashboard_login(page, live_url, user["username"])
    return page


async def listed(client: httpx.AsyncClient, user: dict[str, Any], app_id: str) -> dict[str, Any]:
    r = await client.get("/api/auth/apps", headers=user["headers"])
    return dict(next(a for a in r.json() if a["app_id"] == app_id))


async def test_the_site_settings_page_saves_name_time_zone_excluded_ips_and_origins(
    client: httpx.AsyncClient, live_url: str, browser: Browser
) -> None:
    user = await signup_login(client)
    app = await register_app(client, user, "Old name")
    context = await new_context(browser)
    try:
        page = await signed_in_page(context, live_url, user)
        await page.goto(f"{live_url}/dashboard#/app/{app['app_id']}/settings")
        await pw_expect(page.get_by_role("heading", name="Site settings")).to_be_visible()
        await page.get_by_label("Site name").fill("Shop")
        await page.get_by_label("Domain").fill("shop.example.com")
        await page.get_by_label("Time zone").select_option("Asia/Kolkata")
        await page.get_by_label("Excluded IP addresses").fill("203.0.113.7\n10.1.2.3/8")
        await page.get_by_label("Allowed origins").fill("https://Shop.Example.com/")
        await page.get_by_role("button", name="Save settings").click()
        await pw_expect(page.get_by_text("Settings saved.")).to_be_visible()
        # What the server normalised is what the form shows now.
        await pw_expect(page.get_by_label("Excluded IP addresses")).to_have_value("203.0.113.7\n10.0.0.0/8")
        await pw_expect(page.get_by_label("Allowed origins")).to_have_value("https://shop.example.com")
        await assert_labelled(page)
        await shot(page, "site-settings.png")
        saved = await listed(client, user, app["app_id"])
        assert (saved["name"], saved["domain"], saved["timezone"]) == ("Shop", "shop.example.com", "Asia/Kolkata")
        assert saved["excluded_ips"] == ["203.0.113.7", "10.0.0.0/8"]
        assert saved["allowed_origins"] == ["https://shop.example.com"]

        # A bad entry is refused with the server's reason, and nothing changes.
        await page.get_by_label("Excluded IP addresses").fill("not an address")
        await page.get_by_role("button", name="Save settings").click()
        await pw_expect(page.locator("#settings-form .error")).to_contain_text("excluded_ips")
        assert (await listed(client, user, app["app_id"]))["excluded_ips"] == ["203.0.113.7", "10.0.0.0/8"]

        # Email reports of the site: subscribe weekly, see it listed, stop it.
        await page.get_by_label("Frequency").select_option("weekly")
        await page.get_by_role("button", name="Email me reports").click()
        await pw_expect(page.locator("#reports li")).to_have_count(1)
        await pw_expect(page.locator("#reports li")).to_contain_text("Weekly report, next")
        r = await client.get("/api/email/reports", headers=user["headers"])
        assert [(x["app_id"], x["frequency"]) for x in r.json()] == [(app["app_id"], "weekly")]
        await page.get_by_role("button", name="Email me reports").click()  # the same again: the server's reason
        await pw_expect(page.locator("form[aria-labelledby=reports-title] .error")).to_contain_text("already get a weekly report")
        await page.get_by_role("button", name="Stop the weekly report").click()
        await pw_expect(page.locator("#reports")).to_have_text("You get no report emails of this site.")
        assert (await client.get("/api/email/reports", headers=user["headers"])).json() == []
        await assert_labelled(page)
    finally:
        await context.close()


async def invitation_link(settings: Settings, address: str) -> str:
    def found() -> list[str]:
        texts = [m.get_body(("plain",)).get_content() for m in mails_to(settings, address) if "invited you" in str(m["Subject"])]
        return [u for t in texts for u in re.findall(r"https?://\S+/dashboard\?invitation=\S+", t)]

    async def arrived() -> bool:
        return bool(found())

    await eventually(arrived, 15, f"no invitation mailed to {address}")
    return found()[-1]


async def test_teams_and_members_pages_invite_accept_change_roles_and_remove(
    client: httpx.AsyncClient, live_url: str, browser: Browser, engines: Settings
) -> None:
    owner, bob = await signup_login(client), await signup_login(client)
    owners, bobs = await new_context(browser), await new_context(browser)
    try:
        page = await signed_in_page(owners, live_url, owner)
        await page.get_by_role("link", name="Teams").click()
        await page.get_by_label("Team name").fill("Marketing")
        await page.get_by_role("button", name="Create team").click()
        await pw_expect(page.get_by_role("heading", name="Team Marketing")).to_be_visible()
        await page.get_by_label("Email address").fill(bob["email"])
        await page.locator("#invite-role").select_option("admin")
        await page.get_by_role("button", name="Send invitation").click()
        await pw_expect(page.locator("#invitations")).to_contain_text(f"{bob['email']} as admin")
        await assert_labelled(page)

        # Bob follows the emailed link, signs in, accepts.
        link = await invitation_link(engines, bob["email"])  # on PUBLIC_BASE_URL: here, the live server instead
        link = live_url + link[link.index("/dashboard?invitation="):]
        bob_page = await bobs.new_page()
        await bob_page.goto(link)
        await pw_expect(bob_page.get_by_role("heading", name="Sign in")).to_be_visible()
        await bob_page.get_by_label("Username or email").fill(bob["username"])
        await bob_page.get_by_label("Password").fill(PASSWORD)
        await bob_page.get_by_role("button", name="Sign in").click()
        await bob_page.get_by_role("button", name="Accept the invitation").click()
        await pw_expect(bob_page.get_by_role("heading", name="Team Marketing")).to_be_visible()
        await pw_expect(bob_page.locator("#members tr[data-user]")).to_have_count(2)
        await pw_expect(bob_page.get_by_role("button", name="Leave the team")).to_be_visible()
        await shot(bob_page, "team-joined.png")

        # A site of the team; bob as admin sees its settings tab, as viewer he does not.
        r = await client.get("/api/teams", headers=owner["headers"])
        team_id = r.json()[0]["team_id"]
        r = await client.post("/api/auth/register", json={"name": "Team shop", "team_id": team_id}, headers=owner["headers"])
        app_id = r.json()["app_id"]
        await bob_page.goto(f"{live_url}/dashboard#/app/{app_id}/overview")
        await pw_expect(bob_page.get_by_role("link", name="Settings")).to_be_visible()

        await page.reload()
        await page.get_by_label(f"Role of {bob['username']}").select_option("viewer")
        await eventually(lambda: _role(client, owner, team_id, bob["username"], "viewer"), 5, "the role never changed")
        await bob_page.goto(f"{live_url}/dashboard#/apps")
        await bob_page.goto(f"{live_url}/dashboard#/app/{app_id}/overview")
        await pw_expect(bob_page.get_by_role("link", name="Overview")).to_be_visible()
        await pw_expect(bob_page.get_by_role("link", name="Settings")).to_have_count(0)
        await pw_expect(bob_page.get_by_role("link", name="Keys & snippet")).to_have_count(0)

        await page.get_by_role("button", name=f"Remove {bob['username']}").click()
        await pw_expect(page.locator("#members tr[data-user]")).to_have_count(1)
        r = await client.get(f"/api/teams/{team_id}/members", headers=owner["headers"])
        assert [m["username"] for m in r.json()["members"]] == [owner["username"]]
        await shot(page, "team-members.png")
    finally:
        await owners.close()
        await bobs.close()


async def _role(client: httpx.AsyncClient, owner: dict[str, Any], team_id: str, username: str, role: str) -> bool:
    r = await client.get(f"/api/teams/{team_id}/members", headers=owner["headers"])
    return any(m["username"] == username and m["role"] == role for m in r.json()["members"])


async def test_shared_links_page_and_the_public_shared_dashboard(
    client: httpx.AsyncClient, live_url: str, browser: Browser
) -> None:
    user = await signup_login(client)
    app = await register_app(client, user, "Shared shop")
    r = await client.post("/api/analytics/collect", headers={"x-api-key": app["write_key"]},
                          json={"event": "page_view", "url": "https://shop.test/pricing", "sessionId": "s1"})
    assert r.status_code == 202

    async def counted() -> bool:
        r = await client.get("/api/analytics/stats/aggregate", params={"period": "day"},
                             headers={"x-api-key": app["api_key"], "cache-control": "no-cache"})
        return r.json()["results"]["pageviews"]["value"] == 1

    await eventually(counted, 15, "the page view was never counted")
    owners, visitors = await new_context(browser), await new_context(browser)
    try:
        page = await signed_in_page(owners, live_url, user)
        await page.goto(f"{live_url}/dashboard#/app/{app['app_id']}/sharing")
        await page.get_by_label("Password (optional").fill("correct horse battery")
        await page.get_by_role("button", name="Create link").click()
        url = (await page.locator("#share-url").text_content() or "").strip()
        assert url.startswith(f"{live_url}/dashboard/share/")
        await pw_expect(page.locator("#links tbody tr")).to_have_count(1)
        await assert_labelled(page)
        await shot(page, "sharing.png")

        # A visitor with no account: the password once, then the stats, and nothing else.
        visitor = await visitors.new_page()
        await visitor.goto(url)
        await pw_expect(visitor.get_by_role("heading", name="This dashboard needs a password")).to_be_visible()
        await visitor.get_by_label("Password", exact=True).fill("wrong password")
        await visitor.get_by_role("button", name="Show the stats").click()
        await pw_expect(visitor.get_by_role("alert")).to_have_text("Wrong password.")
        await visitor.get_by_label("Password", exact=True).fill("correct horse battery")
        await visitor.get_by_role("button", name="Show the stats").click()
        await pw_expect(visitor.get_by_role("heading", name="Site stats")).to_be_visible()
        await pw_expect(visitor.locator('[data-metric="pageviews"] .value')).to_have_text("1")
        await pw_expect(visitor.locator("#top-page")).to_contain_text("/pricing")
        await shot(visitor, "shared-dashboard.png")
        await visitor.reload()  # unlocked for this tab
        await pw_expect(visitor.get_by_role("heading", name="Site stats")).to_be_visible()

        # Revoked in the dashboard, the shared page stops working.
        await page.get_by_role("button", name=re.compile("Revoke the link")).click()
        await pw_expect(page.locator("#links")).to_have_text("No shared links.")
        await visitor.reload()
        await pw_expect(visitor.get_by_role("heading", name="This link does not work")).to_be_visible()
    finally:
        await owners.close()
        await visitors.close()
