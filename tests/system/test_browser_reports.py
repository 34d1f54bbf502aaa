"""The reports of issue #20 in a real browser (Chromium via Playwright): CSV downloads, annotations on
the chart, the chart's axis labels and its stop at the current hour, breakdown tabs (entry/exit pages,
UTM tags, outbound links and downloads), the referrer drill-down, the realtime view, the paths flow and
user cards that keep their text inside. Every number shown is compared with what the API answers."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.browser import CHROMIUM, NO_CHROMIUM, NO_PLAYWRIGHT, async_playwright
from tests.conftest import register_app, signup_login
from tests.services.query.test_query import send, wait_stored
from tests.system.test_browser import assert_labelled, dashboard_login, shot

if async_playwright is not None:
    from playwright.async_api import Browser, Page
    from playwright.async_api import expect as pw_expect

pytestmark = [
    pytest.mark.engines,
    pytest.mark.skipif(async_playwright is None, reason=NO_PLAYWRIGHT),
    pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM),
]


LONG_USER = "customer-" + "x" * 110


def events_now() -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    at = lambda minutes: (now - timedelta(minutes=minutes)).strftime("%Y-%m-%dT%H:%M:%S.000Z")  # noqa: E731
    ann = {"userId": LONG_USER}
    ben = {"userId": "ben"}
    return [
        {"event": "page_view", "url": "https://shop.test/", "timestamp": at(9), **ann},
        {"event": "page_view", "url": "https://shop.test/pricing", "timestamp": at(8), **ann},
        {"event": "signup_click", "url": "https://shop.test/pricing", "timestamp": at(7), **ann},
        {"event": "Outbound Link: Click", "url": "https://shop.test/pricing", "timestamp": at(6),
         "properties": {"url": "https://github.com/x"}, **ann},
        {"event": "File Download", "url": "https://shop.test/pricing", "timestamp": at(5),
         "properties": {"url": "https://shop.test/guide.pdf"}, **ann},
        {"event": "page_view", "url": "https://shop.test/pricing?utm_source=news&utm_medium=email", "timestamp": at(4),
         "referrer": "https://www.google.com/search", **ben},
        {"event": "page_view", "url": "https://shop.test/", "timestamp": at(3), **ben},
    ]


OVERLAPS = """(selector) => {
  const boxes = [...document.querySelectorAll(selector)].map((el) => el.getBoundingClientRect());
  const svg = document.querySelector('#timeseries svg').getBoundingClientRect();
  const out = [];
  boxes.forEach((a, i) => {
    const outside = a.left < svg.left - 0.5 || a.right > svg.right + 0.5 || a.top < svg.top - 0.5 || a.bottom > svg.bottom + 0.5;
    if (outside) out.push(`clipped ${i}`);
    boxes.slice(i + 1).forEach((b, j) => {
      if (a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom) out.push(`overlap ${i} ${i + j + 1}`);
    });
  });
  return {count: boxes.length, problems: out};
}"""


async def labels_fit(page: Page) -> None:
    for selector in ("#timeseries .xlabel", "#timeseries .ylabel"):
        found = await page.evaluate(OVERLAPS, selector)
        assert found["count"] >= 2 and found["problems"] == [], (selector, found)


async def api_csv(client: httpx.AsyncClient, user: dict[str, Any], path: str, params: dict[str, Any]) -> str:
    r = await client.get(path, params={**params, "format": "csv"}, headers=user["headers"])
    assert r.status_code == 200, r.text
    return r.text


async def test_reports_in_the_dashboard(client: httpx.AsyncClient, live_url: str, browser: Browser) -> None:
    user = await signup_login(client)
    app = await register_app(client, user, "Report shop")
    events = events_now()
    await send(client, app, events)
    await wait_stored(client, app, len(events))
    app_id, tz = app["app_id"], "UTC"
    stats = {"app_id": app_id, "period": "day", "tz": tz}

    # The browser is in New York, the site in UTC: the dashboard shows the site's days and hours.
    owner = await browser.new_context(viewport={"width": 1280, "height": 900}, timezone_id="America/New_York",
                                      accept_downloads=True)
    try:
        page = await owner.new_page()
        await dashboard_login(page, live_url, user["username"])
        await page.goto(f"{live_url}/dashboard#/app/{app_id}/overview?period=day")
        await pw_expect(page.locator("#timeseries svg")).to_be_visible()

        # Today's hourly chart stops at the current hour: one point per hour so far, per series.
        hour = datetime.now(UTC).hour
        await pw_expect(page.locator("#timeseries circle.point")).to_have_count(2 * (hour + 1))
        await labels_fit(page)

        # A note added in the dashboard is stored and drawn on the chart.
        await page.get_by_text("Add a note to the chart").click()
        await page.get_by_role("textbox", name="Note").fill("Launched pricing")
        await page.get_by_role("button", name="Add note").click()
        await pw_expect(page.locator("#timeseries line.annotation")).to_have_count(1)
        await pw_expect(page.locator("#timeseries .notes")).to_contain_text("Launched pricing")
        r = await client.get("/api/analytics/annotations", params=stats, headers=user["headers"])
        assert [n["text"] for n in r.json()["annotations"]] == ["Launched pricing"]
        flag = await page.locator("#timeseries circle.annotation-flag").get_attribute("cx")
        points = page.locator("#timeseries circle.point")
        assert flag == await points.nth(0).get_attribute("cx")  # today's note: at the day's first hour

        # Every panel downloads its CSV: the same rows the API gives.
        await pw_expect(page.locator("#top-page tbody tr")).to_have_count(2)
        async with page.expect_download() as info:
            await page.locator("#top-page").get_by_role("button", name="Download Top pages as CSV").click()
        download = await info.value
        assert download.suggested_filename == "stats-breakdown.csv"
        saved = Path(await download.path()).read_bytes().decode()
        expected = await api_csv(client, user, "/api/analytics/stats/breakdown",
                                 {**stats, "property": "page", "metrics": "visitors,pageviews", "limit": 10})
        assert saved == expected
        assert list(csv.reader(io.StringIO(saved)))[1:] == [["/", "2", "2"], ["/pricing", "2", "2"]]
        for panel in ("summary", "timeseries", "top-source", "top-device", "top-event_name", "top-outbound_link"):
            await pw_expect(page.locator(f"#{panel} button.download")).to_have_count(1)

        # Tabs: entry and exit pages, UTM tags, outbound links and downloads.
        await page.locator("#top-page").get_by_role("button", name="Entry pages", exact=True).click()
        await pw_expect(page.locator("#top-page thead")).to_contain_text("Entry page")
        await pw_expect(page.locator("#top-page tbody tr")).to_have_count(2)
        await page.locator("#top-page").get_by_role("button", name="Exit pages", exact=True).click()
        await pw_expect(page.locator("#top-page thead")).to_contain_text("Exit page")
        await page.locator("#top-source").get_by_role("button", name="UTM medium").click()
        await pw_expect(page.locator("#top-source tbody")).to_contain_text("email")
        await pw_expect(page.locator("#top-outbound_link tbody")).to_contain_text("https://github.com/x")
        await page.locator("#top-outbound_link").get_by_role("button", name="File downloads").click()
        await pw_expect(page.locator("#top-outbound_link tbody")).to_contain_text("https://shop.test/guide.pdf")
        await shot(page, "reports-overview.png")
        await assert_labelled(page)

        # Referrer drill-down: a source, then its full referrer URLs.
        await page.locator("#top-source").get_by_role("button", name="Top sources", exact=True).click()
        await page.locator("#top-source").get_by_role("button", name="google.com", exact=True).click()
        await pw_expect(page.locator("#top-referrer")).to_contain_text("https://www.google.com/search")

        # The realtime view.
        detail = (await client.get("/api/analytics/stats/realtime/detail", params={"app_id": app_id},
                                   headers={**user["headers"], "cache-control": "no-cache"})).json()
        assert detail["visitors"] == 2
        await page.get_by_role("link", name="Realtime", exact=True).click()
        await pw_expect(page.locator("#rt-visitors")).to_have_text("2 visitors in the last 30 minutes")
        await pw_expect(page.locator(".minutes li")).to_have_count(30)
        await pw_expect(page.locator("#rt-pages tbody tr")).to_have_count(len(detail["pages"]))
        await pw_expect(page.locator("#rt-sources")).to_contain_text("google.com")
        await assert_labelled(page)

        # Paths: the flow from /pricing, as the API counts it.
        await page.get_by_role("link", name="Paths", exact=True).click()
        await page.get_by_label("Start: a page (/pricing) or an event name").fill("/pricing")
        await page.get_by_role("button", name="Show paths").click()
        flow = (await client.get("/api/analytics/paths", params={"app_id": app_id, "period": "30d", "tz": tz,
                                                                 "start": "/pricing", "depth": 3, "limit": 10},
                                 headers=user["headers"])).json()
        assert flow["visits"] == 2
        assert flow["paths"] == [{"steps": ["signup_click", "Outbound Link: Click", "File Download"], "visits": 1},
                                 {"steps": ["/"], "visits": 1}]
        await pw_expect(page.locator("#paths-visits")).to_have_text("2 visits reached /pricing")
        level1 = page.locator(".flowcol[data-level='1'] .flownode")
        await pw_expect(level1).to_have_count(2)
        await pw_expect(page.locator(".flowcol[data-level='1'] .flownode[data-step='signup_click'] .flowcount")).to_have_text("1")
        await pw_expect(page.locator(".flowcol[data-level='3'] .flownode[data-step='File Download']")).to_have_count(1)
        await pw_expect(page.locator("#paths-table tbody tr")).to_have_count(2)
        await shot(page, "paths.png")
        await assert_labelled(page)

        # The events, users, funnel and retention views download theirs too: the raw events of the view.
        await page.get_by_role("link", name="Events", exact=True).click()
        async with page.expect_download() as info:
            await page.get_by_role("button", name="Download these events as CSV").click()
        rows = list(csv.reader(io.StringIO(Path(await (await info.value).path()).read_bytes().decode())))
        assert len(rows) == 1 + len(events) and rows[0][:3] == ["event_id", "type", "event_name"]
        assert sorted(r[2] for r in rows[1:]) == sorted(e["event"] for e in events)
        for view, what in (("users", "these users"), ("retention", "retention")):
            await page.goto(f"{live_url}/dashboard#/app/{app_id}/{view}")
            await pw_expect(page.get_by_role("button", name=f"Download {what} as CSV")).to_have_count(1)
        await page.goto(f"{live_url}/dashboard#/app/{app_id}/funnels?steps=page_view,signup_click")
        async with page.expect_download() as info:
            await page.get_by_role("button", name="Download the funnel as CSV").click()
        rows = list(csv.reader(io.StringIO(Path(await (await info.value).path()).read_bytes().decode())))
        assert rows == [["name", "visitors", "conversion_rate", "step_conversion_rate"],
                        ["page_view", "2", "100.0", "100.0"], ["signup_click", "1", "50.0", "50.0"]]

        # A user card keeps a long id and dates inside its box.
        await page.goto(f"{live_url}/dashboard#/app/{app_id}/users/{LONG_USER}")
        await pw_expect(page.get_by_role("heading", name=f"User {LONG_USER}")).to_be_visible()
        for width in (1280, 390):
            await page.set_viewport_size({"width": width, "height": 900})
            spill = await page.evaluate("""() => [...document.querySelectorAll('dl.metrics .metric')]
              .filter((card) => card.scrollWidth > card.clientWidth + 1 || [...card.children].some((c) =>
                 c.getBoundingClientRect().right > card.getBoundingClientRect().right + 1)).map((c) => c.textContent)""")
            assert spill == [], (width, spill)
            heading = await page.evaluate("""() => [document.querySelector('#user-title').getBoundingClientRect().right,
              document.querySelector('#user-title').closest('section').getBoundingClientRect().right]""")
            assert heading[0] <= heading[1] + 1, (width, heading)
            assert await page.evaluate("document.documentElement.scrollWidth") <= width

        # A phone-sized chart keeps its labels apart and inside too.
        await page.goto(f"{live_url}/dashboard#/app/{app_id}/overview?period=30d")
        await page.reload()
        await pw_expect(page.locator("#timeseries svg")).to_be_visible()
        await labels_fit(page)
    finally:
        await owner.close()
