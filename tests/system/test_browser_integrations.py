"""The dashboard's Webhooks and Alerts tabs in a real browser (Debian's chromium driven by Playwright):
a webhook made there shows its secret once, its deliveries (to a receiver the test runs) are listed and
verify with that secret, it is deleted there; an alert made there is listed, fires, and is deleted."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from tests.browser import CHROMIUM, NO_CHROMIUM, NO_PLAYWRIGHT, async_playwright
from tests.conftest import register_app, signup_login
from tests.services.auth.test_webhooks import receiver, verify
from tests.system.test_browser import assert_labelled, dashboard_login, shot

if async_playwright is not None:
    from playwright.async_api import Browser
    from playwright.async_api import expect as pw_expect

pytestmark = [
    pytest.mark.engines,
    pytest.mark.skipif(async_playwright is None, reason=NO_PLAYWRIGHT),
    pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM),
]


async def test_webhooks_are_made_listed_and_deleted_in_the_dashboard(
    client: httpx.AsyncClient, live_url: str, browser: Browser
) -> None:
    user = await signup_login(client)
    app = await register_app(client, user, "Hooked shop")
    context = await browser.new_context(viewport={"width": 1280, "height": 900}, timezone_id="UTC")
    context.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    try:
        page = await context.new_page()
        await dashboard_login(page, live_url, user["username"])
        await page.goto(f"{live_url}/dashboard#/app/{app['app_id']}/webhooks")
        await pw_expect(page.get_by_role("heading", name="Webhooks", exact=True)).to_be_visible()
        await pw_expect(page.locator("#webhook-list")).to_have_text("No webhooks yet.")
        await assert_labelled(page)
        async with receiver() as got:
            await page.get_by_label("Endpoint URL").fill(got.url)
            await page.get_by_label("key.revoked").check()
            await page.get_by_role("button", name="Add webhook").click()
            secret_box = page.locator("#webhook-secret")
            await pw_expect(secret_box).to_contain_text("whsec_")
            secret = await secret_box.text_content()
            assert secret
            r = await client.get(f"/api/auth/apps/{app['app_id']}/webhooks", headers=user["headers"])
            [hook] = r.json()
            assert hook["url"] == got.url and hook["events"] == ["alert.fired", "key.revoked"]
            await pw_expect(page.locator(f"[data-webhook='{hook['id']}'] h3")).to_have_text(got.url)

            r = await client.post("/api/auth/revoke", json={"app_id": app["app_id"]}, headers=user["headers"])
            assert len(r.json()["revoked"]) == 2
            rows = page.locator(f"#deliveries-{hook['id']} tbody tr[data-status='delivered']")
            for _ in range(60):  # the dashboard shows what the deliveries route says, once delivered
                await page.reload()
                await pw_expect(page.get_by_role("heading", name="Webhooks", exact=True)).to_be_visible()
                if await rows.count() == 2:
                    break
                await asyncio.sleep(0.25)
            await pw_expect(rows).to_have_count(2)
            await pw_expect(rows.first.locator(".delivery-attempts")).to_have_text("200")
            await pw_expect(page.locator("#webhook-secret")).to_have_count(0)  # the secret is shown once only
        assert len(got.got) == 2
        for headers, body in got.got:  # the secret the page showed verifies what the receiver got
            assert verify(secret, headers, body) and orjson.loads(body)["type"] == "key.revoked"
        await shot(page, "webhooks.png")
        await page.get_by_role("button", name=f"Delete webhook {got.url}").click()
        await pw_expect(page.locator("#webhook-list")).to_have_text("No webhooks yet.")
        r = await client.get(f"/api/auth/apps/{app['app_id']}/webhooks", headers=user["headers"])
        assert r.json() == []
    finally:
        await context.close()


async def test_alerts_are_made_listed_and_deleted_in_the_dashboard(
    client: httpx.AsyncClient, live_url: str, browser: Browser
) -> None:
    user = await signup_login(client)
    app = await register_app(client, user, "Alerted shop")
    context = await browser.new_context(viewport={"width": 1280, "height": 900}, timezone_id="UTC")
    context.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    try:
        page = await context.new_page()
        await dashboard_login(page, live_url, user["username"])
        await page.goto(f"{live_url}/dashboard#/app/{app['app_id']}/alerts")
        await pw_expect(page.locator("#alert-list")).to_have_text("No alerts yet.")
        await assert_labelled(page)
        await page.get_by_label("Name", exact=True).fill("No visitors")
        await page.get_by_label("Metric", exact=True).select_option("visitors")
        await page.get_by_label("Over the last").select_option("1h")
        await page.get_by_label("When it").select_option("below")
        await page.get_by_label("Threshold").fill("1")
        await page.get_by_role("button", name="Add alert").click()
        row = page.locator("#alert-list tbody tr")
        await pw_expect(row).to_have_count(1)
        await pw_expect(row).to_contain_text("visitors over 1h below 1 → email")
        r = await client.get(f"/api/auth/apps/{app['app_id']}/alerts", headers=user["headers"])
        [alert] = r.json()
        assert (alert["name"], alert["metric"], alert["window"], alert["condition"], alert["threshold"], alert["channels"]) == (
            "No visitors", "visitors", "1h", "below", 1.0, ["email"])
        # No visitors at all: 0 is below 1, so it fires at its first check; the tab shows it.
        state = page.locator(f"tr[data-alert='{alert['id']}'] .alert-state")
        for _ in range(60):
            await page.reload()
            await pw_expect(row).to_have_count(1)
            if await state.text_content() != "OK":
                break
            await asyncio.sleep(0.25)
        await pw_expect(state).to_have_text("Firing (0)")
        await shot(page, "alerts.png")
        await page.get_by_role("button", name="Delete alert No visitors").click()
        await pw_expect(page.locator("#alert-list")).to_have_text("No alerts yet.")
        r = await client.get(f"/api/auth/apps/{app['app_id']}/alerts", headers=user["headers"])
        assert r.json() == []
    finally:
        await context.close()
