"""Paths (issue #20): the most common steps after or before a page or an event, per visit, over HTTP
from events sent through the gateway. A small known history on day D (three days ago, UTC):

  alice  10:00 /, 10:05 /pricing, 10:06 signup_click, 10:07 signed_up, 10:10 /     visit 1
         10:50 /pricing, 10:52 /   (40 minutes later: visit 2)
  bob    10:00 /blog (from www.google.com), 10:01 /pricing, 10:02 signup_click
  carol  11:00 /pricing   (a bounce)
  dave   12:00 /, 12:01 /blog, 12:02 /pricing, 12:03 /pricing (a reload), 12:04 /
  erin   13:00 /pricing, 13:01 signup_click, 13:02 signed_up

After /pricing (depth 2), from each visit's first /pricing: alice 1 [signup_click, signed_up],
alice 2 [/], bob [signup_click], carol [], dave [/pricing, /], erin [signup_click, signed_up].
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest

from tests.conftest import signup_login
from tests.services.query.test_query import DAY, D, app_with_history, at

pytestmark = pytest.mark.engines


def step(hh: int, mm: int, what: str, who: dict[str, Any]) -> dict[str, Any]:
    if what.startswith("/"):
        return {"event": "page_view", "url": f"https://shop.test{what}", "timestamp": at(D, hh, mm), **who}
    return {"event": what, "url": "https://shop.test/x", "timestamp": at(D, hh, mm), **who}


ALICE, BOB, CAROL = {"userId": "alice"}, {"userId": "bob"}, {"sessionId": "s-carol"}
DAVE, ERIN = {"sessionId": "s-dave"}, {"sessionId": "s-erin"}
HISTORY = [
    step(10, 0, "/", ALICE), step(10, 5, "/pricing", ALICE), step(10, 6, "signup_click", ALICE),
    step(10, 7, "signed_up", ALICE), step(10, 10, "/", ALICE), step(10, 50, "/pricing", ALICE), step(10, 52, "/", ALICE),
    {**step(10, 0, "/blog", BOB), "referrer": "https://www.google.com/"}, step(10, 1, "/pricing", BOB),
    step(10, 2, "signup_click", BOB),
    step(11, 0, "/pricing", CAROL),
    step(12, 0, "/", DAVE), step(12, 1, "/blog", DAVE), step(12, 2, "/pricing", DAVE), step(12, 3, "/pricing", DAVE),
    step(12, 4, "/", DAVE),
    step(13, 0, "/pricing", ERIN), step(13, 1, "signup_click", ERIN), step(13, 2, "signed_up", ERIN),
]


@pytest.fixture(scope="module")
async def shop(client: httpx.AsyncClient) -> dict[str, Any]:
    return await app_with_history(client, "paths shop", HISTORY)


async def paths(client: httpx.AsyncClient, shop: dict[str, Any], **params: Any) -> dict[str, Any]:
    r = await client.get("/api/analytics/paths", params={"period": "custom", "date": DAY, **params},
                         headers={"x-api-key": shop["api_key"]})
    assert r.status_code == 200, r.text
    return r.json()


async def test_the_steps_after_a_page_per_visit_from_its_first_view(client, shop) -> None:
    body = await paths(client, shop, start="/pricing", direction="after", depth=2)
    assert (body["start"], body["direction"], body["depth"], body["visits"]) == ("/pricing", "after", 2, 6)
    assert body["paths"] == [
        {"steps": ["signup_click", "signed_up"], "visits": 2},
        {"steps": ["/pricing", "/"], "visits": 1},
        {"steps": ["/"], "visits": 1},
        {"steps": ["signup_click"], "visits": 1},
        {"steps": [], "visits": 1},
    ]
    assert body["links"] == [
        {"level": 1, "from": "/pricing", "to": "signup_click", "visits": 3},
        {"level": 1, "from": "/pricing", "to": "/", "visits": 1},
        {"level": 1, "from": "/pricing", "to": "/pricing", "visits": 1},
        {"level": 2, "from": "signup_click", "to": "signed_up", "visits": 2},
        {"level": 2, "from": "/pricing", "to": "/", "visits": 1},
    ]
    assert body["period"] == {"start": f"{D}T00:00:00Z", "end": f"{D + timedelta(days=1)}T00:00:00Z"}


async def test_the_steps_before_a_page_nearest_first(client, shop) -> None:
    body = await paths(client, shop, start="/pricing", direction="before", depth=2)
    assert body["visits"] == 6
    assert body["paths"] == [
        {"steps": [], "visits": 3},
        {"steps": ["/blog", "/"], "visits": 1},
        {"steps": ["/"], "visits": 1},
        {"steps": ["/blog"], "visits": 1},
    ]
    assert body["links"] == [
        {"level": 1, "from": "/pricing", "to": "/blog", "visits": 2},
        {"level": 1, "from": "/pricing", "to": "/", "visits": 1},
        {"level": 2, "from": "/blog", "to": "/", "visits": 1},
    ]


async def test_an_event_name_starts_a_path_and_depth_and_limit_cut_it(client, shop) -> None:
    body = await paths(client, shop, start="signup_click", depth=1)
    assert body["visits"] == 3
    assert body["paths"] == [{"steps": ["signed_up"], "visits": 2}, {"steps": [], "visits": 1}]
    assert body["links"] == [{"level": 1, "from": "signup_click", "to": "signed_up", "visits": 2}]
    top = await paths(client, shop, start="/pricing", depth=1, limit=1)
    assert top["paths"] == [{"steps": ["signup_click"], "visits": 3}]
    assert top["links"] == [{"level": 1, "from": "/pricing", "to": "signup_click", "visits": 3}]


async def test_a_page_and_an_event_of_the_same_name_are_different_starts(client, shop) -> None:
    assert (await paths(client, shop, start="signed_up"))["visits"] == 2
    assert (await paths(client, shop, start="/signed_up"))["visits"] == 0


async def test_filters_narrow_the_visits_and_an_unseen_start_has_no_paths(client, shop) -> None:
    body = await paths(client, shop, start="/pricing", source="google.com")
    assert body["visits"] == 1
    assert body["paths"] == [{"steps": ["signup_click"], "visits": 1}]
    empty = await paths(client, shop, start="/nowhere")
    assert (empty["visits"], empty["paths"], empty["links"]) == (0, [], [])


@pytest.mark.parametrize(("params", "hint"), [
    ({"start": "/", "depth": 6}, "less than or equal to 5"),
    ({"start": "/", "depth": 0}, "greater than or equal to 1"),
    ({"start": "/", "direction": "sideways"}, "'after' or 'before'"),
    ({}, "start"),
    ({"start": "/", "period": "week"}, "send one of"),
])
async def test_bad_parameters_answer_422(client, shop, params, hint) -> None:
    r = await client.get("/api/analytics/paths", params=params, headers={"x-api-key": shop["api_key"]})
    assert r.status_code == 422, r.text
    assert hint in r.text, r.text


async def test_a_viewer_token_reads_paths_and_another_users_token_is_refused(client, shop) -> None:
    r = await client.get("/api/analytics/paths", params={"app_id": shop["app_id"], "start": "/", "period": "custom",
                                                         "date": DAY}, headers=shop["owner"]["headers"])
    assert r.status_code == 200 and r.json()["visits"] == 3, r.text
    stranger = await signup_login(client)
    r = await client.get("/api/analytics/paths", params={"app_id": shop["app_id"], "start": "/"}, headers=stranger["headers"])
    assert r.status_code == 403, r.text


async def test_a_segment_keeps_only_its_visitors_visits(client, shop) -> None:
    """The visitors who signed up (alice and erin): alice's two visits and erin's one reach /pricing."""
    r = await client.post("/api/analytics/segments", headers={"x-api-key": shop["api_key"]},
                          json={"name": "signed up", "events": [{"event": "signed_up", "min_count": 1, "days": 30}]})
    assert r.status_code == 201, r.text
    body = await paths(client, shop, start="/pricing", direction="after", depth=2, segment_id=r.json()["id"])
    assert body["visits"] == 3
    assert body["paths"] == [{"steps": ["signup_click", "signed_up"], "visits": 2}, {"steps": ["/"], "visits": 1}]
    r = await client.get("/api/analytics/paths", params={"start": "/pricing", "segment_id": "no-such-segment"},
                         headers={"x-api-key": shop["api_key"]})
    assert r.status_code == 404, r.text
