"""Goals, custom properties, segments, saved funnels and the drop-off list in the dashboard, in a real
browser (Debian's chromium driven by Playwright), over the known history of
tests/services/query/test_goals_props_segments.py: each view shows what its route answers."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from tests.browser import CHROMIUM, NO_CHROMIUM, NO_PLAYWRIGHT, async_playwright
from tests.conftest import signup_login
from tests.services.query.test_goals_props_segments import seeded_app
from tests.system.test_browser import assert_labelled, dashboard_login, shot

if async_playwright is not None:
    from playwright.async_api import Browser
    from playwright.async_api import expect as pw_expect

pytestmark = [
    pytest.mark.engines,
    pytest.mark.skipif(async_playwright is None, reason=NO_PLAYWRIGHT),
    pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM),
]


async def test_goals_properties_segments_and_funnel_dropoff_in_the_dashboard(
    client: httpx.AsyncClient, live_url: str, browser: Browser
) -> None:
    owner = await signup_login(client)
    app = await seeded_app(client, owner)
    params: dict[str, Any] = {"app_id": app["app_id"], "period": "30d", "tz": "UTC"}
    context = await browser.new_context(viewport={"width": 1280, "height": 900}, timezone_id="UTC")
    context.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    try:
        page = await context.new_page()
        await dashboard_login(page, live_url, owner["username"])

        # Goals: one added through the form; its conversions as the API counts them.
        await page.goto(f"{live_url}/dashboard#/app/{app['app_id']}/goals")
        await page.get_by_label("Goal name").fill("Bought")
        await page.get_by_label("Kind").select_option("event")
        await page.get_by_label("Page path (* matches anything) or event name").fill("purchase")
        await page.get_by_role("button", name="Add goal").click()
        await pw_expect(page.locator("#goals-title + .tablewrap tr[data-goal='Bought']")).to_contain_text("purchase")
        r = await client.get("/api/analytics/stats/breakdown", params={**params, "property": "goal"}, headers=owner["headers"])
        assert r.json()["results"] == [{"goal": "Bought", "goal_id": r.json()["results"][0]["goal_id"], "conversions": 2,
                                        "completions": 3, "conversion_rate": 40.0}]
        row = page.locator("#goal-conversions tr[data-goal='Bought'] td")
        await pw_expect(row).to_have_text(["Bought", "2", "3", "40%"])

        # Custom properties: pick the event, its properties with counts, then one property's values.
        await page.get_by_label("Event", exact=True).select_option("purchase")
        await pw_expect(page.locator("#properties .chips")).to_contain_text("amount (3)")
        await page.get_by_role("button", name="plan (3)").click()
        await pw_expect(page.locator("#properties tr[data-value='pro'] td")).to_have_text(["pro", "2", "2"])
        await pw_expect(page.locator("#properties tr[data-value='basic'] td")).to_have_text(["basic", "1", "1"])
        await assert_labelled(page)
        await shot(page, "goals.png")

        # Segments: "did purchase at least twice in 30 days" is u2; the overview shows only them.
        await page.get_by_role("link", name="Segments", exact=True).click()
        await page.get_by_label("Segment name").fill("Repeat buyers")
        await page.get_by_label("Event name").fill("purchase")
        await page.get_by_label("At least (times)").fill("2")
        await page.get_by_role("button", name="Save segment").click()
        await pw_expect(page.locator("tr[data-segment='Repeat buyers']")).to_contain_text("did purchase at least 2×")
        await assert_labelled(page)
        await page.get_by_role("link", name="Overview", exact=True).click()
        await page.get_by_role("combobox", name="Segment", exact=True).select_option(label="Repeat buyers")
        await pw_expect(page.locator("[data-metric='visitors'] .value")).to_have_text("1")
        await pw_expect(page.locator("[data-metric='pageviews'] .value")).to_have_text("1")
        await page.get_by_role("combobox", name="Segment", exact=True).select_option(label="Everyone")
        await pw_expect(page.locator("[data-metric='visitors'] .value")).to_have_text("5")

        # Funnels: page_view then purchase; who dropped off after step 1; saved by name.
        await page.get_by_role("link", name="Funnels", exact=True).click()
        await page.get_by_role("textbox", name="Steps").fill("page_view, purchase")
        await page.get_by_role("button", name="Show funnel").click()
        await pw_expect(page.locator("ol.funnel li")).to_have_count(2)
        await pw_expect(page.locator("ol.funnel li").nth(1)).to_contain_text("purchase — 2 visitors")
        await page.get_by_role("link", name="Who dropped off after step 1").click()
        await pw_expect(page.locator("#dropoff-total")).to_have_text("3 visitors did page_view but not purchase")
        await pw_expect(page.locator("#dropoff tbody tr td:first-child")).to_have_text(["u5", "u4", "u3"])
        await page.get_by_label("Funnel name").fill("Buy")
        await page.get_by_role("button", name="Save funnel").click()
        await pw_expect(page.locator("li[data-funnel='Buy']")).to_contain_text("page_view → purchase")
        await assert_labelled(page)
        await shot(page, "funnel-dropoff.png")
        r = await client.get("/api/analytics/funnels/saved", params={"app_id": app["app_id"]}, headers=owner["headers"])
        assert [(f["name"], f["spec"]) for f in r.json()["funnels"]] == [("Buy", {"steps": ["page_view", "purchase"], "window": 86400})]
    finally:
        await context.close()
