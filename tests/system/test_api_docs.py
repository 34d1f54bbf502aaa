"""The API's pages, /docs (Swagger UI) and /redoc, in a real browser (Debian's chromium driven by
Playwright) cut off from every host but this one: they load only files the package ships and show
every operation of the stack's OpenAPI document. Screenshots go to tests/artifacts/."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from libs.runtime import Stack
from libs.settings import Settings
from services.runner import SERVICES
from tests.browser import CHROMIUM, NO_CHROMIUM, NO_PLAYWRIGHT, async_playwright
from tests.conftest import serving

if async_playwright is not None:
    from playwright.async_api import Browser, Route

ARTIFACTS = Path(__file__).parents[1] / "artifacts"


@pytest.fixture(scope="module")
async def docs_url() -> AsyncIterator[str]:
    """The whole stack's routes, built but not started: the pages and the document need no engine."""
    stack = Stack(Settings(), list(SERVICES.values()))
    stack.build()
    async with serving(stack.app()) as url:
        yield url


async def test_the_docs_pages_load_only_their_own_files(docs_url: str) -> None:
    async with httpx.AsyncClient(base_url=docs_url) as http:
        for page in ("/docs", "/redoc"):
            r = await http.get(page)
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), page
            sources = [src for src in r.text.split('"') if src.startswith(("http://", "https://", "//"))]
            assert not sources, (page, sources)
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
            r = await http.get(f"/docs/assets/{asset}")
            assert r.status_code == 200 and len(r.content) > 100_000, asset
        r = await http.get("/docs/assets/nope.js")
        assert r.status_code == 404 and "/docs" in r.json()["detail"]


@pytest.mark.skipif(async_playwright is None, reason=NO_PLAYWRIGHT)
@pytest.mark.skipif(CHROMIUM is None, reason=NO_CHROMIUM)
async def test_swagger_ui_and_redoc_render_every_operation_offline(docs_url: str, browser: Browser) -> None:
    async with httpx.AsyncClient(base_url=docs_url) as http:
        document = (await http.get("/openapi.json")).json()
    operations = [op for item in document["paths"].values() for op in item.values()]
    context = await browser.new_context()
    blocked: list[str] = []

    async def offline(route: Route) -> None:
        if urlsplit(route.request.url).hostname in ("127.0.0.1", "localhost"):
            await route.continue_()
        else:
            blocked.append(route.request.url)
            await route.abort()

    await context.route("**/*", offline)
    page = await context.new_page()
    ARTIFACTS.mkdir(exist_ok=True)

    await page.goto(f"{docs_url}/docs")
    await page.locator(".opblock").first.wait_for(timeout=20_000)
    assert await page.locator(".opblock").count() == len(operations)
    for op in operations:  # displayOperationId: each operation shows its id
        assert await page.get_by_text(op["operationId"], exact=True).count() == 1, op["operationId"]
    await page.locator("button.authorize").click()
    dialog = page.locator(".modal-ux")
    for scheme in ("apiKey", "bearerAuth", "writeKeyBasic"):
        await dialog.get_by_text(scheme, exact=False).first.wait_for(timeout=5_000)
    await page.screenshot(path=str(ARTIFACTS / "api-docs-swagger.png"))

    await page.goto(f"{docs_url}/redoc")
    headings = page.locator("h2")  # one per operation (and tag) in ReDoc's body
    collect = document["paths"]["/api/analytics/collect"]["post"]["summary"]
    await headings.filter(has_text=collect).first.wait_for(timeout=30_000)
    shown = set(await headings.all_inner_texts())
    assert not [op["summary"] for op in operations if op["summary"] not in shown]
    await page.screenshot(path=str(ARTIFACTS / "api-docs-redoc.png"))
    await context.close()
    # Only ReDoc's "API docs by Redocly" footer logo is linked off-host (redoc.standalone.js has no option
    # against it); the pages render without it, as above.
    off_host = [url for url in blocked if url != "https://cdn.redoc.ly/redoc/logo-mini.svg"]
    assert not off_host, f"the pages asked for files off this host: {off_host[:5]}"
