"""Outbound link targets and file downloads (issue #20): the `url` of the snippet's automatic
`Outbound Link: Click` and `File Download` events as breakdowns, over HTTP."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import register_app, signup_login
from tests.services.query.test_query import DAY, D, at, send, wait_stored

pytestmark = pytest.mark.engines


def click(name: str, url: str, mm: int, who: str, **extra: Any) -> dict[str, Any]:
    return {"event": name, "url": "https://shop.test/", "timestamp": at(D, 10, mm), "userId": who,
            "properties": {"url": url}, **extra}


OUT, FILE = "Outbound Link: Click", "File Download"
HISTORY = [
    {"event": "page_view", "url": "https://shop.test/", "timestamp": at(D, 9, 0), "userId": "ann",
     "referrer": "https://www.google.com/"},
    click(OUT, "https://github.com/x", 1, "ann"), click(OUT, "https://github.com/x", 2, "ann"),
    click(OUT, "https://docs.example.org/", 3, "ann"),
    click(OUT, "https://github.com/x", 4, "ben"),
    click(FILE, "https://shop.test/guide.pdf", 5, "ben"), click(FILE, "https://shop.test/guide.pdf", 6, "cat"),
    click(FILE, "https://shop.test/price-list.xlsx", 7, "cat"),
]


@pytest.fixture(scope="module")
async def shop(client: httpx.AsyncClient) -> dict[str, Any]:
    app = await register_app(client, await signup_login(client), "links shop")
    await send(client, app, HISTORY)
    await wait_stored(client, app, len(HISTORY))
    return app


async def breakdown(client: httpx.AsyncClient, shop: dict[str, Any], **params: Any) -> list[dict[str, Any]]:
    r = await client.get("/api/analytics/stats/breakdown", params={"period": "custom", "date": DAY, **params},
                         headers={"x-api-key": shop["api_key"]})
    assert r.status_code == 200, r.text
    return r.json()["results"]


async def test_outbound_link_targets_and_file_downloads_by_visitors_and_clicks(client, shop) -> None:
    assert await breakdown(client, shop, property="outbound_link") == [
        {"outbound_link": "https://github.com/x", "visitors": 2, "events": 3},
        {"outbound_link": "https://docs.example.org/", "visitors": 1, "events": 1},
    ]
    assert await breakdown(client, shop, property="file_download", metrics="events") == [
        {"file_download": "https://shop.test/guide.pdf", "events": 2},
        {"file_download": "https://shop.test/price-list.xlsx", "events": 1},
    ]
    # Filters choose the visitors: ann came from Google (ties in visitors: by URL).
    assert await breakdown(client, shop, property="outbound_link", source="google.com") == [
        {"outbound_link": "https://docs.example.org/", "visitors": 1, "events": 1},
        {"outbound_link": "https://github.com/x", "visitors": 1, "events": 2},
    ]
    assert await breakdown(client, shop, property="outbound_link", limit=1, page=2) == [
        {"outbound_link": "https://docs.example.org/", "visitors": 1, "events": 1}]


async def test_a_page_metric_for_links_is_refused(client, shop) -> None:
    r = await client.get("/api/analytics/stats/breakdown", params={"property": "file_download", "metrics": "pageviews"},
                         headers={"x-api-key": shop["api_key"]})
    assert r.status_code == 422 and "metrics=visitors,events" in r.text, r.text
