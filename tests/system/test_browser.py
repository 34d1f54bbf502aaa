"""The browser side, in a real browser (Debian's chromium driven by Playwright): a page on another
localhost origin embeds /js/script.js and is browsed; its page views (single-page navigation too),
custom event and outbound click reach ClickHouse and the dashboard shows the numbers the query API
gives. Key management is driven end to end through the dashboard. Screenshots go to tests/artifacts/."""

from __future__ import annotations

import asyncio
import gzip
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from tests.browser import CHROMIUM, NO_CHROMIUM, NO_PLAYWRIGHT, async_playwright
from tests.conftest import PASSWORD, eventually, register_app, serving, signup_login, wait_for_key

if async_playwright is not None:
    from playwright.async_api import Browser, Page
    from playwright.async_api import expect as pw_expect

pytestmark = [
    pytest.mark.engines,
    pytest.mark.skipif(async_playwright is None, reason=NO_PLAYWRIGHT),
    pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM),
]

ARTIFACTS = Path(__file__).parents[1] / "artifacts"
# Headless Chromium says "HeadlessChrome" and is (rightly) counted as a bot; a visitor uses a real browser's UA.
DESKTOP_UA = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36")
PHONE_UA = ("Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/131.0.0.0 Mobile Safari/537.36")


SITE_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Test shop</title>
<script defer src="{live}/js/script.js" data-key="{key}" data-api="{live}"{extra}></script></head>
<body><h1 id="where">Home</h1>
<button id="to-pricing" onclick="history.pushState({{}}, '', '/pricing'); where.textContent = 'Pricing'">Pricing</button>
<button id="buy" onclick="analytics.track('signup_click', {{plan: 'pro'}})">Sign up</button>
<button id="login" onclick="analytics.identify('{user}')">Log in</button>
<a id="file" href="/files/guide.pdf" download>Download the guide</a>
<a id="out" href="{live}/healthz">Our status page</a>
</body></html>"""


@pytest.fixture(scope="module")
async def site() -> AsyncIterator[dict[str, Any]]:
    """A customer's website on its own localhost origin; pages embed the snippet with `state["key"]`."""
    state: dict[str, Any] = {}

    async def page(request: Any) -> Response:
        extra = " data-respect-dnt" if request.url.path == "/private" else ""
        return HTMLResponse(SITE_PAGE.format(live=state["live"], key=state["key"], user=state.get("user", "u"), extra=extra))

    async def early(request: Any) -> Response:
        return HTMLResponse(state["early"])

    async def pdf(request: Any) -> Response:
        return Response(b"%PDF-1.4\n%%EOF\n", media_type="application/pdf")

    app = Starlette(routes=[Route("/", page), Route("/pricing", page), Route("/private", page), Route("/early", early),
                              Route("/files/guide.pdf", pdf)])
    async with serving(app) as url:
        state["url"] = url
        yield state


async def count(client: httpx.AsyncClient, key: str, name: str | None = None) -> int:
    r = await client.get("/api/analytics/events/count", params={"event_name": name} if name else {},
                         headers={"x-api-key": key, "cache-control": "no-cache"})
    assert r.status_code == 200, r.text
    return int(r.json()["count"])


async def counts_reach(client: httpx.AsyncClient, key: str, expected: dict[str, int], timeout: float = 20) -> None:
    async def reached() -> bool:
        return all([await count(client, key, name) == n for name, n in expected.items()])

    await eventually(reached, timeout, f"events never stored as {expected}")


async def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / name), full_page=True)


# ---- the snippet ---------------------------------------------------------------------------------

async def test_the_snippet_is_small_cacheable_and_served_by_the_gateway(client: httpx.AsyncClient) -> None:
    r = await client.get("/js/script.js", headers={"accept-encoding": "gzip"})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/javascript")
    assert r.headers["content-encoding"] == "gzip"
    assert len(gzip.compress(r.content, 9)) < 3 * 1024, "the snippet must stay under 3 KB gzipped"
    assert b"sendBeacon" in r.content and b"/v1/batch" in r.content
    again = await client.get("/js/script.js", headers={"if-none-match": r.headers["etag"]})
    assert again.status_code == 304


def readme_snippet(live: str, key: str) -> str:
    """The snippet README.md tells site owners to paste (the queue stub, then the tag), for this host and key."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    blocks = re.findall(r"```html\n(.*?)\n```", readme, re.S)
    snippet = next(b for b in blocks if "window.analytics" in b and "/js/script.js" in b)
    return snippet.replace("http://127.0.0.1:8000", live).replace("wk_...", key)


EARLY_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Early calls</title>
{snippet}
<script>analytics.track("early_signup", {{plan: "pro", coupon: null}}); analytics.identify("{user}");</script>
</head><body><h1>Calls made before the snippet loaded</h1></body></html>"""


async def test_calls_made_before_the_deferred_snippet_loads_are_queued_and_replayed_in_order(
    client: httpx.AsyncClient, live_url: str, site: dict[str, Any], browser: Browser
) -> None:
    app = await register_app(client, await signup_login(client), "Early calls")
    user = f"early-{uuid.uuid4().hex[:6]}"
    site["early"] = EARLY_PAGE.format(snippet=readme_snippet(live_url, app["write_key"]), user=user)
    visitor = await browser.new_context(user_agent=DESKTOP_UA)
    errors: list[str] = []
    try:
        page = await visitor.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(f"{site['url']}/early", wait_until="load")
        await page.wait_for_function("window.analytics && !Array.isArray(window.analytics)")
        await counts_reach(client, app["api_key"], {"early_signup": 1, "identify": 1, "page_view": 1})
    finally:
        await visitor.close()
    assert errors == []
    r = await client.get("/api/analytics/events", headers={"x-api-key": app["api_key"]})
    by_name = {e["event_name"]: e for e in r.json()["events"]}
    # Replayed in order: the track call before identify (no user yet), the automatic page view after it.
    assert (by_name["early_signup"]["properties"], by_name["early_signup"]["user_id"]) == (
        {"plan": "pro", "coupon": None}, "")
    assert (by_name["identify"]["user_id"], by_name["page_view"]["user_id"]) == (user, user)
    assert by_name["page_view"]["source_kind"] == "browser"


async def test_page_views_custom_events_and_clicks_from_a_real_page_reach_the_dashboard(
    client: httpx.AsyncClient, live_url: str, site: dict[str, Any], browser: Browser
) -> None:
    user = await signup_login(client)
    app = await register_app(client, user, "Test shop")
    customer = f"customer-{uuid.uuid4().hex[:6]}"
    site.update(live=live_url, key=app["write_key"], user=customer)

    # A visitor browses the site: landing page (with a referrer and a campaign), SPA navigation,
    # a custom event, back (popstate), sign-in (identify), then an outbound link.
    visitor = await browser.new_context(user_agent=DESKTOP_UA, viewport={"width": 1280, "height": 800}, timezone_id="UTC")
    try:
        page = await visitor.new_page()
        await page.goto(f"{site['url']}/?utm_source=newsletter&utm_campaign=launch",
                        referer="https://news.example.com/item/1", wait_until="load")
        await page.wait_for_function("window.analytics && typeof window.analytics.track === 'function'")
        await page.click("#to-pricing")
        await pw_expect(page.locator("#where")).to_have_text("Pricing")
        await page.click("#buy")
        await page.go_back()
        await page.wait_for_url(f"{site['url']}/?utm_source=newsletter&utm_campaign=launch")
        await page.click("#login")
        async with page.expect_download():
            await page.click("#file")
        async with page.expect_navigation():
            await page.click("#out")
    finally:
        await visitor.close()

    key = app["api_key"]
    await counts_reach(client, key, {"page_view": 3, "signup_click": 1, "Outbound Link: Click": 1, "File Download": 1, "identify": 1})
    r = await client.get("/api/analytics/events", params={"event_name": "page_view", "limit": 10}, headers={"x-api-key": key})
    views = sorted(r.json()["events"], key=lambda e: e["timestamp"])
    assert [v["path"] for v in views] == ["/", "/pricing", "/"]
    first = views[0]
    assert (first["type"], first["utm_source"], first["utm_campaign"]) == ("page", "newsletter", "launch")
    assert first["referrer_host"] == "news.example.com"
    assert first["browser"] == "Chrome" and first["device_type"] == "desktop" and not first["is_bot"]
    assert first["screen_size"] == "1280x800"
    assert len({v["anonymous_id"] for v in views}) == 1 and views[0]["anonymous_id"]
    r = await client.get("/api/analytics/events", params={"event_name": "signup_click"}, headers={"x-api-key": key})
    click = r.json()["events"][0]
    assert click["properties"]["plan"] == "pro" and click["path"] == "/pricing"
    r = await client.get("/api/analytics/events", params={"event_name": "File Download"}, headers={"x-api-key": key})
    assert r.json()["events"][0]["properties"]["url"] == f"{site['url']}/files/guide.pdf"
    r = await client.get("/api/analytics/events", params={"event_name": "Outbound Link: Click"}, headers={"x-api-key": key})
    assert r.json()["events"][0]["properties"]["url"] == f"{live_url}/healthz"
    assert r.json()["events"][0]["user_id"] == customer

    # The owner signs in to the dashboard and sees what the API says.
    owner = await browser.new_context(viewport={"width": 1280, "height": 900}, timezone_id="UTC")
    try:
        page = await owner.new_page()
        await dashboard_login(page, live_url, user["username"])
        await page.get_by_role("link", name="Test shop").click()
        await pw_expect(page.get_by_role("heading", name="Test shop", level=1)).to_be_visible()

        await page.get_by_role("link", name="Events", exact=True).click()
        await pw_expect(page.locator("#events-total")).to_have_text(str(await count(client, key)))
        await page.get_by_label("Event name").fill("signup_click")
        await page.get_by_role("button", name="Filter").click()
        await pw_expect(page.locator("#events-total")).to_have_text("1")
        await pw_expect(page.locator("tbody tr[data-event='signup_click']")).to_have_count(1)
        await shot(page, "events-desktop.png")
        await assert_labelled(page)

        overview_url = f"{live_url}/dashboard#/app/{app['app_id']}/overview?period=day"
        await page.goto(overview_url)
        params = {"app_id": app["app_id"], "period": "day", "tz": "UTC"}
        r = await client.get("/api/analytics/stats/aggregate", params={**params, "compare": "previous_period"}, headers=user["headers"])
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert results["pageviews"]["value"] == 3
        for metric in ("visitors", "visits", "pageviews"):
            card = page.locator(f"[data-metric='{metric}'] .value")
            await pw_expect(card).to_have_text(f"{results[metric]['value']:,}")
        await pw_expect(page.locator("#top-page")).to_contain_text("/pricing")
        await pw_expect(page.locator("#top-source")).to_contain_text("news.example.com")
        await pw_expect(page.locator("#top-event_name")).to_contain_text("signup_click")
        await pw_expect(page.locator("#top-browser")).to_contain_text("Chrome")
        await pw_expect(page.locator("#timeseries svg")).to_be_visible()
        r = await client.get("/api/analytics/stats/realtime", params={"app_id": app["app_id"]},
                             headers={**user["headers"], "cache-control": "no-cache"})
        await pw_expect(page.locator("#realtime")).to_contain_text(f"{r.json()['visitors']} visitor")
        await page.wait_for_load_state("networkidle")
        await shot(page, "overview-desktop.png")
        await assert_labelled(page)
        await page.set_viewport_size({"width": 390, "height": 844})
        await page.reload()
        await pw_expect(page.locator("[data-metric='pageviews'] .value")).not_to_have_text("—")
        await page.wait_for_load_state("networkidle")
        await shot(page, "overview-phone.png")
        width = await page.evaluate("document.documentElement.scrollWidth")
        assert width <= 400, f"the overview scrolls sideways on a phone ({width}px wide)"
        await page.set_viewport_size({"width": 1280, "height": 900})

        # Users: the visitor who signed in on the site (analytics.identify), and their detail.
        r = await client.get("/api/analytics/users", params={"app_id": app["app_id"]}, headers=user["headers"])
        assert [u["userId"] for u in r.json()["users"]] == [customer]
        await page.get_by_role("link", name="Users", exact=True).click()
        await pw_expect(page.locator("#users-title")).to_have_text(f"{r.json()['total']} users")
        await page.get_by_role("link", name=customer).click()
        await pw_expect(page.get_by_role("heading", name=f"User {customer}")).to_be_visible()
        await pw_expect(page.locator("#recent-title + .tablewrap tbody tr")).to_have_count(r.json()["users"][0]["events"])
        await pw_expect(page.locator("#recent-title + .tablewrap")).to_contain_text("Outbound Link: Click")

        # Funnel and retention views show what their routes answer.
        await page.get_by_role("link", name="Funnels", exact=True).click()
        await page.get_by_role("textbox", name="Steps").fill("page_view, signup_click")
        await page.get_by_role("button", name="Show funnel").click()
        r = await client.get("/api/analytics/funnels", params={"app_id": app["app_id"], "steps": "page_view,signup_click",
                                                               "window": 86400, "period": "30d"}, headers=user["headers"])
        steps = r.json()["steps"]
        assert [st["visitors"] for st in steps][-1] == 1
        funnel = page.locator("ol.funnel li")
        await pw_expect(funnel).to_have_count(2)
        for n, st in enumerate(steps):
            await pw_expect(funnel.nth(n)).to_contain_text(f"{st['name']} — {st['visitors']} visitor")
        await shot(page, "funnel.png")
        await assert_labelled(page)
        await page.get_by_role("link", name="Retention", exact=True).click()
        await pw_expect(page.locator("table.heat tbody tr").last).to_contain_text("100%")
        await assert_labelled(page)
        await shot(page, "retention.png")
    finally:
        await owner.close()


async def test_do_not_track_is_honoured_when_the_site_asks_and_fetch_keepalive_stands_in_for_sendbeacon(
    client: httpx.AsyncClient, live_url: str, site: dict[str, Any], browser: Browser
) -> None:
    user = await signup_login(client)
    app = await register_app(client, user, "Private site")
    site.update(live=live_url, key=app["write_key"])

    # A visitor whose browser asks not to be tracked: the page with data-respect-dnt sends nothing,
    # a page of a site that did not ask for it still counts the view.
    private = await browser.new_context(user_agent=DESKTOP_UA)
    await private.add_init_script("Object.defineProperty(Navigator.prototype, 'doNotTrack', {get: () => '1'})")
    try:
        page = await private.new_page()
        await page.goto(f"{site['url']}/private", wait_until="load")
        await page.wait_for_function("window.analytics && typeof window.analytics.track === 'function'")
        await page.click("#buy")
        await page.goto(f"{site['url']}/", wait_until="load")
        await page.wait_for_function("window.analytics && typeof window.analytics.track === 'function'")
    finally:
        await private.close()

    # A browser without sendBeacon: the snippet falls back to fetch(keepalive).
    old = await browser.new_context(user_agent=PHONE_UA, viewport={"width": 412, "height": 915})
    await old.add_init_script("Navigator.prototype.sendBeacon = undefined")
    sent: list[str] = []
    old.on("request", lambda request: sent.append(request.resource_type) if request.url.endswith("/v1/batch") else None)
    try:
        page = await old.new_page()
        await page.goto(f"{site['url']}/pricing", wait_until="load")
        await page.wait_for_function("window.analytics && typeof window.analytics.track === 'function'")
        await page.click("#buy")

        async def both_sent() -> bool:
            return len(sent) == 2

        await eventually(both_sent, 5, "the fallback did not send both events")
    finally:
        await old.close()
    assert set(sent) == {"fetch"}

    await counts_reach(client, app["api_key"], {"page_view": 2, "signup_click": 1})
    r = await client.get("/api/analytics/events", headers={"x-api-key": app["api_key"]})
    events = r.json()["events"]
    assert all(e["path"] != "/private" for e in events)
    assert {(e["event_name"], e["path"], e["device_type"]) for e in events} == {
        ("page_view", "/", "desktop"), ("page_view", "/pricing", "mobile"), ("signup_click", "/pricing", "mobile")}


UNLABELLED = """() => [...document.querySelectorAll('main input, main select, main textarea, main button')]
  .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label') && !(el.textContent || '').trim())
  .map(el => el.outerHTML)"""


async def assert_labelled(page: Page) -> None:
    """Every control of the current view has a name a screen reader can say, and there is one h1."""
    assert await page.evaluate(UNLABELLED) == []
    assert await page.locator("main h1").count() == 1


async def dashboard_login(page: Page, live_url: str, username: str) -> None:
    await page.goto(f"{live_url}/dashboard")
    await pw_expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await page.get_by_label("Username or email").fill(username)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await pw_expect(page.get_by_role("heading", name="Your sites")).to_be_visible()


# ---- key management --------------------------------------------------------------------------------

async def beacon_status(client: httpx.AsyncClient, write_key: str) -> int:
    body = {"writeKey": write_key, "batch": [{"type": "track", "event": "key_check", "anonymousId": "a1"}]}
    r = await client.post("/v1/batch", json=body)
    return r.status_code


async def test_a_new_user_signs_up_adds_a_site_and_manages_its_keys_in_the_dashboard(
    client: httpx.AsyncClient, live_url: str, browser: Browser
) -> None:
    username = f"owner{uuid.uuid4().hex[:8]}"
    context = await browser.new_context(viewport={"width": 1100, "height": 900}, timezone_id="UTC")
    context.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    try:
        page = await context.new_page()
        await page.goto(f"{live_url}/dashboard")
        await page.get_by_role("link", name="Create an account").first.click()
        await page.get_by_label("Username").fill(username)
        await page.get_by_label("Email").fill(f"{username}@example.com")
        await page.get_by_label("Password").fill(PASSWORD)
        await page.get_by_role("button", name="Create account").click()
        await pw_expect(page.get_by_role("heading", name="Your sites")).to_be_visible()
        await pw_expect(page.get_by_text(f"Signed in as {username}")).to_be_visible()

        await page.get_by_label("Site name").fill("My blog")
        await page.get_by_label("Domain (optional)").fill("blog.example.com")
        await page.get_by_role("button", name="Add site").click()
        await pw_expect(page.locator("#new-keys")).to_contain_text("shown only once")
        secret = (await page.locator("#secret-key").text_content() or "").strip()
        write = (await page.locator("#write-key").text_content() or "").strip()
        assert secret.startswith("sk_") and write.startswith("wk_")
        snippet = await page.locator("#snippet").text_content() or ""
        assert snippet == readme_snippet(live_url, write)
        await shot(page, "keys-created.png")
        await assert_labelled(page)

        await wait_for_key(client, secret)
        await eventually(lambda: _is(beacon_status(client, write), 200), 5, "the new write key is refused")

        # The keys page lists both keys, shows the snippet with the write key, regenerates and revokes.
        await page.get_by_role("link", name="Keys & snippet").first.click()
        rows = page.locator("#keys-view tbody tr")
        await pw_expect(rows).to_have_count(2)
        await pw_expect(page.locator("#keys-view .key-status").first).to_have_text("Active")
        await pw_expect(page.locator("#snippet")).to_contain_text(write)

        await page.get_by_role("button", name="Regenerate keys").click()
        await pw_expect(page.locator("#new-keys")).to_contain_text("New keys issued")
        new_secret = (await page.locator("#secret-key").text_content() or "").strip()
        new_write = (await page.locator("#write-key").text_content() or "").strip()
        assert new_secret != secret and new_write != write
        await pw_expect(rows).to_have_count(4)
        await pw_expect(page.locator("#keys-view .key-status", has_text="Revoked")).to_have_count(2)
        await wait_for_key(client, new_secret)
        await eventually(lambda: _is(beacon_status(client, write), 401), 5, "the old write key still works")
        assert await beacon_status(client, new_write) == 200
        r = await client.get("/api/analytics/events/count", headers={"x-api-key": secret})
        assert r.status_code == 401

        row = rows.filter(has_text="Write").filter(has_text="Active")
        await row.get_by_role("button", name="Revoke").click()
        await pw_expect(page.locator("#keys-view .key-status", has_text="Revoked")).to_have_count(3)
        await eventually(lambda: _is(beacon_status(client, new_write), 401), 5, "the revoked write key still works")
        await shot(page, "keys-page.png")
        await assert_labelled(page)

        await page.get_by_role("button", name="Sign out").click()
        await pw_expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        await page.goto(f"{live_url}/dashboard#/apps")
        await pw_expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    finally:
        await context.close()


async def _is(value: Any, expected: Any) -> bool:
    return (await value) == expected


async def test_a_refused_access_token_is_refreshed_from_the_cookie_and_a_dead_cookie_signs_out(
    client: httpx.AsyncClient, live_url: str, browser: Browser
) -> None:
    user = await signup_login(client)
    await register_app(client, user, "Refreshed site")
    context = await browser.new_context()
    try:
        # The session cookie a login gave (the dashboard never sees the token: it is httpOnly).
        await context.add_cookies([{"name": "analytics_refresh", "value": user["refresh_token"], "domain": urlsplit(live_url).hostname,
                                    "path": "/api/user/refresh", "httpOnly": True, "sameSite": "Strict"}])
        page = await context.new_page()
        await page.goto(f"{live_url}/dashboard#/apps")  # loading the page refreshes from the cookie
        await pw_expect(page.get_by_role("link", name="Refreshed site")).to_be_visible()
        (cookie,) = [c for c in await context.cookies() if c["name"] == "analytics_refresh"]
        assert cookie["value"] != user["refresh_token"], "refresh tokens rotate"
        # An access token the server refuses (expired) is refreshed once and the call retried.
        refused: list[str] = []

        async def refuse_once(route: Any) -> None:
            if not refused:
                refused.append(route.request.url)
                await route.fulfill(status=401, content_type="application/json", body='{"detail": "token expired"}')
            else:
                await route.continue_()

        await page.route("**/api/auth/apps", refuse_once)
        await page.goto(f"{live_url}/dashboard#/login")
        await page.goto(f"{live_url}/dashboard#/apps")
        await pw_expect(page.get_by_role("link", name="Refreshed site")).to_be_visible()
        assert refused
        (rotated,) = [c for c in await context.cookies() if c["name"] == "analytics_refresh"]
        assert rotated["value"] != cookie["value"]
        # A session that no longer works (here: its refresh token spent elsewhere) sends the user back to sign in.
        await context.add_cookies([{"name": "analytics_refresh", "value": user["refresh_token"], "domain": urlsplit(live_url).hostname,
                                    "path": "/api/user/refresh", "httpOnly": True, "sameSite": "Strict"}])
        await page.reload()
        await pw_expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    finally:
        await context.close()
