"""Visits at their edges (issue #21): the stats count visits the same way whichever way the query service
numbers them (one sorted array per visitor when every event of a visit counts; window functions when an
event-level filter decides which events count).

Day D = three days ago, UTC:
  gus  10:00:00.900  page /    (from a.example)                                       visit 1, a bounce
       10:30:01.100  page /b   1800.2 s later but 1801 second boundaries on: a new visit   visit 2
       11:00:01.000  page /c   1800 boundaries after the last: the same visit          visit 2 (1800 s)
  tia  12:00:00.250  page /    (from b.example)                                       visit 1
       12:00:00.750  click     the same second: no bounce, 0 s
So: 2 visitors, 3 visits, 4 pageviews, 5 events, bounce rate 33.3 %, visit duration (0 + 1800 + 0) / 3 = 600 s;
by source: a.example, Direct / None (gus's second visit has no referrer) and b.example, one visit each.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tests.services.query.test_query import FRESH, app_with_history

pytestmark = pytest.mark.engines

D = datetime.now(UTC).date() - timedelta(days=3)
DAY = f"{D},{D}"
GUS = {"userId": "gus", "device": "desktop"}
TIA = {"userId": "tia", "device": "mobile"}


def at(clock: str) -> str:
    return f"{D}T{clock}Z"


EVENTS = [
    {"event": "page_view", "url": "https://shop.test/", "timestamp": at("10:00:00.900"),
     "referrer": "https://a.example/x", **GUS},
    {"event": "page_view", "url": "https://shop.test/b", "timestamp": at("10:30:01.100"), **GUS},
    {"event": "page_view", "url": "https://shop.test/c", "timestamp": at("11:00:01.000"), **GUS},
    {"event": "page_view", "url": "https://shop.test/", "timestamp": at("12:00:00.250"),
     "referrer": "https://b.example/y", **TIA},
    {"event": "click", "url": "https://shop.test/", "timestamp": at("12:00:00.750"), **TIA},
]
METRICS = "visitors,visits,pageviews,bounce_rate,visit_duration"
EXPECTED = {"visitors": 2, "visits": 3, "pageviews": 4, "bounce_rate": 33.3, "visit_duration": 600.0}


@pytest.fixture(scope="module")
async def site(client: httpx.AsyncClient) -> dict[str, Any]:
    app = await app_with_history(client, "edges", EVENTS)
    return {"x-api-key": app["api_key"], **FRESH}


async def stats(client: httpx.AsyncClient, site: dict[str, str], path: str, **params: str) -> dict[str, Any]:
    r = await client.get(f"/api/analytics/stats/{path}", params={"period": "custom", "date": DAY, **params},
                         headers=site)
    assert r.status_code == 200, r.text
    return r.json()


async def test_visits_split_after_more_than_1800_second_boundaries_counted_alike_with_or_without_event_filter(
    client, site
) -> None:
    plain = await stats(client, site, "aggregate", metrics=METRICS)
    assert {k: v["value"] for k, v in plain["results"].items()} == EXPECTED
    # Every event is a page_view or a click of a visit that has a page_view: the same visits count.
    filtered = await stats(client, site, "aggregate", metrics=METRICS, event_name="page_view")
    assert {k: v["value"] for k, v in filtered["results"].items()} == EXPECTED


async def test_a_visit_takes_the_source_of_its_first_event_to_the_millisecond(client, site) -> None:
    body = await stats(client, site, "breakdown", property="source", metrics="visitors,visits,pageviews,bounce_rate")
    assert sorted(body["results"], key=lambda r: r["source"]) == [
        {"source": "Direct / None", "visitors": 1, "visits": 1, "pageviews": 2, "bounce_rate": 0.0},
        {"source": "a.example", "visitors": 1, "visits": 1, "pageviews": 1, "bounce_rate": 100.0},
        {"source": "b.example", "visitors": 1, "visits": 1, "pageviews": 1, "bounce_rate": 0.0},
    ]


async def test_hourly_series_counts_each_visit_in_the_hour_it_started(client, site) -> None:
    body = await stats(client, site, "timeseries", interval="hour", tz="UTC", metrics="visits,visit_duration")
    by_hour = {r["date"]: r for r in body["results"] if r["visits"]}
    assert by_hour == {
        f"{D}T10:00:00": {"date": f"{D}T10:00:00", "visits": 2, "visit_duration": 900.0},
        f"{D}T12:00:00": {"date": f"{D}T12:00:00", "visits": 1, "visit_duration": 0.0},
    }


async def test_page_breakdown_counts_visitors_and_views_of_each_page(client, site) -> None:
    body = await stats(client, site, "breakdown", property="page", metrics="visitors,pageviews")
    assert body["results"] == [
        {"page": "/", "visitors": 2, "pageviews": 2},
        {"page": "/b", "visitors": 1, "pageviews": 1},
        {"page": "/c", "visitors": 1, "pageviews": 1},
    ]
