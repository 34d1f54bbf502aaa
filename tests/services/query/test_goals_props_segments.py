"""Goals, custom properties and segments (issue #20, Reports), over HTTP on the real engines.

One small, known history (D = three days ago, UTC), sent through the gateway:
  u1  D 10:00 page /blog/a;  10:01 page /pricing;  10:02 purchase {plan: pro, amount: 49}
  u2  D 11:00 page /blog/b;  11:05 purchase {plan: basic, amount: 9};  11:06 purchase {plan: pro, amount: 49}
  u3  D 12:00 page /;  12:01 signup_click {button: hero}
  u4  D 13:00 page /pricing
  u5  D-2 10:00 page /;  D 15:00 page /
  identify (Segment's /v1/identify, not web events): u1 {plan: pro} at D 09:00, then {plan: enterprise,
  seats: 10} at D 14:00; u2 {plan: pro} at D 09:30; u3 {plan: pro, seats: 2} at D 09:40.
On day D: 5 visitors, 5 visits, 6 pageviews, 10 events. Goals: Blog (page /blog/*): u1, u2 -> 2 conversions, 2
completions, 2/5 = 40.0 %; Purchase (event purchase): u1, u2 -> 2 and 3, 40.0 %; Pricing (page
/pricing): u1, u4 -> 2, 2, 40.0 %; Underscore (page /pric_ng: `_` is itself, not any character) and
Never (event refund): 0.
"""

from __future__ import annotations

import base64
from dataclasses import replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import httpx
import pytest

from libs.kafka import APPS_TOPIC, publish
from libs.runtime import Stack
from services.query.context import QueryContext
from tests.conftest import PASSWORD, eventually, register_app, signup_login
from tests.services.query.test_query import FRESH, UA, send, wait_stored

pytestmark = pytest.mark.engines

D = datetime.now(UTC).date() - timedelta(days=3)
DAY = f"{D},{D}"
WEEK = f"{D - timedelta(days=3)},{D + timedelta(days=1)}"


def at(day: date, hh: int, mm: int = 0) -> str:
    return datetime.combine(day, time(hh, mm), UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def page(user: str, day: date, hh: int, mm: int, path: str) -> dict[str, Any]:
    return {"event": "page_view", "url": f"https://shop.test{path}", "timestamp": at(day, hh, mm), "userId": user}


def track(user: str, hh: int, mm: int, name: str, **props: Any) -> dict[str, Any]:
    return {"event": name, "url": "https://shop.test/x", "timestamp": at(D, hh, mm), "userId": user, "properties": props}


HISTORY = [
    page("u1", D, 10, 0, "/blog/a"), page("u1", D, 10, 1, "/pricing"), track("u1", 10, 2, "purchase", plan="pro", amount=49),
    page("u2", D, 11, 0, "/blog/b"), track("u2", 11, 5, "purchase", plan="basic", amount=9),
    track("u2", 11, 6, "purchase", plan="pro", amount=49),
    page("u3", D, 12, 0, "/"), track("u3", 12, 1, "signup_click", button="hero"),
    page("u4", D, 13, 0, "/pricing"),
    page("u5", D - timedelta(days=2), 10, 0, "/"), page("u5", D, 15, 0, "/"),
]
IDENTIFY = [("u1", 9, 0, {"plan": "pro"}), ("u1", 14, 0, {"plan": "enterprise", "seats": 10}),
            ("u2", 9, 30, {"plan": "pro"}), ("u3", 9, 40, {"plan": "pro", "seats": 2})]
GOALS = [("Blog", "page", "/blog/*"), ("Purchase", "event", "purchase"), ("Pricing", "page", "/pricing"),
         ("Underscore", "page", "/pric_ng"), ("Never", "event", "refund")]


async def seeded_app(client: httpx.AsyncClient, owner: dict[str, Any]) -> dict[str, Any]:
    """A new app of `owner` holding HISTORY and IDENTIFY, stored."""
    app = await register_app(client, owner, "goals")
    await send(client, app, HISTORY)
    basic = {"authorization": "Basic " + base64.b64encode(f"{app['write_key']}:".encode()).decode(), "user-agent": UA}
    for user, hh, mm, traits in IDENTIFY:
        r = await client.post("/v1/identify", json={"userId": user, "traits": traits, "timestamp": at(D, hh, mm)},
                              headers=basic)
        assert r.status_code == 200, r.text
    await wait_stored(client, app, len(HISTORY) + len(IDENTIFY))
    return app


@pytest.fixture(scope="module")
async def shop(client: httpx.AsyncClient) -> dict[str, Any]:
    owner = await signup_login(client)
    app = await seeded_app(client, owner)
    key = {"x-api-key": app["api_key"]}
    goals = {}
    for name, kind, match in GOALS:
        r = await client.post("/api/analytics/goals", json={"name": name, "kind": kind, "match": match}, headers=key)
        assert r.status_code == 201, r.text
        goals[name] = r.json()
    return {**app, "owner": owner, "key": key, "goals": goals}


async def get(client: httpx.AsyncClient, shop: dict[str, Any], path: str, **params: Any) -> dict[str, Any]:
    r = await client.get(f"/api/analytics/{path}", params=params, headers={**shop["key"], **FRESH})
    assert r.status_code == 200, r.text
    return r.json()


async def new_segment(client: httpx.AsyncClient, shop: dict[str, Any], name: str, **spec: Any) -> str:
    r = await client.post("/api/analytics/segments", json={"name": name, **spec}, headers=shop["key"])
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def values(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v["value"] for k, v in body["results"].items()}


# --- goals ----------------------------------------------------------------------------------------

async def test_goals_are_listed_by_name_and_created_once(client, shop) -> None:
    body = await get(client, shop, "goals")
    assert [(g["name"], g["kind"], g["match"]) for g in body["goals"]] == sorted(GOALS)
    r = await client.post("/api/analytics/goals", json={"name": "Blog", "kind": "event", "match": "x"}, headers=shop["key"])
    assert r.status_code == 409 and "already" in r.json()["detail"]


async def test_aggregate_counts_a_goals_conversions_completions_and_rate(client, shop) -> None:
    metrics = "visitors,events,conversions,completions,conversion_rate"
    purchase = values(await get(client, shop, "stats/aggregate", period="custom", date=DAY, metrics=metrics, goal="Purchase"))
    assert purchase == {"visitors": 2, "events": 3, "conversions": 2, "completions": 3, "conversion_rate": 40.0}
    # By id as well as by name; a page goal with a wildcard.
    blog = values(await get(client, shop, "stats/aggregate", period="custom", date=DAY, metrics=metrics,
                            goal=shop["goals"]["Blog"]["id"]))
    assert blog == {"visitors": 2, "events": 2, "conversions": 2, "completions": 2, "conversion_rate": 40.0}
    # `_` in a page match is an underscore, not any one character.
    none = values(await get(client, shop, "stats/aggregate", period="custom", date=DAY, metrics=metrics, goal="Underscore"))
    assert none == {"visitors": 0, "events": 0, "conversions": 0, "completions": 0, "conversion_rate": 0.0}
    # The rate is of the visitors of the same other filters: of the 2 visits that left from /pricing (u1's
    # and u4's), u1's bought.
    pricing = values(await get(client, shop, "stats/aggregate", period="custom", date=DAY, exit_page="/pricing",
                               metrics="conversions,conversion_rate", goal="Purchase"))
    assert pricing == {"conversions": 1, "conversion_rate": 50.0}


async def test_goal_breakdown_has_one_row_per_goal(client, shop) -> None:
    body = await get(client, shop, "stats/breakdown", property="goal", period="custom", date=DAY)
    assert [(r["goal"], r["conversions"], r["completions"], r["conversion_rate"]) for r in body["results"]] == [
        ("Blog", 2, 2, 40.0), ("Pricing", 2, 2, 40.0), ("Purchase", 2, 3, 40.0), ("Never", 0, 0, 0.0),
        ("Underscore", 0, 0, 0.0)]
    assert body["results"][0]["goal_id"] == shop["goals"]["Blog"]["id"]


async def test_a_goal_filters_the_timeseries_and_other_breakdowns(client, shop) -> None:
    body = await get(client, shop, "stats/timeseries", period="custom", date=DAY, interval="hour", goal="Purchase",
                     metrics="visitors,events")
    assert [(r["date"][11:13], r["visitors"], r["events"]) for r in body["results"] if r["visitors"]] == [
        ("10", 1, 1), ("11", 1, 2)]
    body = await get(client, shop, "stats/breakdown", property="event_name", period="custom", date=DAY, goal="Purchase",
                     metrics="visitors,events")
    assert body["results"] == [{"event_name": "purchase", "visitors": 2, "events": 3}]


# --- custom properties ----------------------------------------------------------------------------

async def test_property_names_of_an_event_with_counts(client, shop) -> None:
    body = await get(client, shop, "properties", event_name="purchase", period="custom", date=DAY)
    assert body["properties"] == [{"name": "amount", "events": 3}, {"name": "plan", "events": 3}]
    every = await get(client, shop, "properties", period="custom", date=DAY)
    assert every["properties"] == [{"name": "amount", "events": 3}, {"name": "plan", "events": 3},
                                   {"name": "button", "events": 1}]


async def test_breakdown_by_a_custom_property_counts_its_values(client, shop) -> None:
    body = await get(client, shop, "stats/breakdown", property="props:plan", period="custom", date=DAY)
    assert body["results"] == [{"props:plan": "pro", "visitors": 2, "events": 2},
                               {"props:plan": "basic", "visitors": 1, "events": 1}]
    # A number is its JSON text; a property no event has gives no rows.
    amounts = await get(client, shop, "stats/breakdown", property="props:amount", period="custom", date=DAY)
    assert [(r["props:amount"], r["visitors"]) for r in amounts["results"]] == [("49", 2), ("9", 1)]
    assert (await get(client, shop, "stats/breakdown", property="props:nothing", period="custom", date=DAY))["results"] == []


async def test_filter_by_a_custom_property_keeps_matching_events(client, shop) -> None:
    pro = values(await get(client, shop, "stats/aggregate", period="custom", date=DAY, metrics="visitors,events",
                           props="plan==pro"))
    assert pro == {"visitors": 2, "events": 2}
    other = values(await get(client, shop, "stats/aggregate", period="custom", date=DAY, metrics="visitors,events",
                             props="plan!=pro"))
    assert other == {"visitors": 1, "events": 1}
    both = values(await get(client, shop, "stats/aggregate", period="custom", date=DAY, metrics="visitors,events",
                            props=["plan==pro", "amount==49"]))
    assert both == {"visitors": 2, "events": 2}
    # With a goal: u2's pro purchase and u1's are Purchase completions among the pro-plan events.
    rated = values(await get(client, shop, "stats/aggregate", period="custom", date=DAY, props="plan==basic",
                             metrics="completions", goal="Purchase"))
    assert rated == {"completions": 1}


# --- segments -------------------------------------------------------------------------------------

async def test_segments_restrict_stats_funnels_retention_and_users(client, shop) -> None:
    buyers = await new_segment(client, shop, "repeat buyers", events=[{"event": "purchase", "min_count": 2, "days": 30}])
    pro = await new_segment(client, shop, "pro plan", traits=[{"name": "plan", "op": "eq", "value": "pro"}])
    seats = await new_segment(client, shop, "many seats", traits=[{"name": "seats", "op": "gt", "value": 5}])
    pricing = await new_segment(client, shop, "saw pricing", filters={"page": "/pricing"})
    new = await new_segment(client, shop, "new", first_seen={"start": str(D - timedelta(days=1)), "end": str(D)})
    metrics = "visitors,pageviews,events"

    async def day(segment: str) -> dict[str, Any]:
        return values(await get(client, shop, "stats/aggregate", period="custom", date=DAY, metrics=metrics, segment_id=segment))

    assert await day(buyers) == {"visitors": 1, "pageviews": 1, "events": 3}  # u2
    assert await day(pro) == {"visitors": 2, "pageviews": 2, "events": 5}  # u2, u3 (u1's latest plan is enterprise)
    assert await day(seats) == {"visitors": 1, "pageviews": 2, "events": 3}  # u1
    assert await day(pricing) == {"visitors": 2, "pageviews": 3, "events": 4}  # u1, u4
    assert await day(new) == {"visitors": 4, "pageviews": 5, "events": 9}  # not u5 (first seen D-2)

    breakdown = await get(client, shop, "stats/breakdown", property="page", period="custom", date=DAY, segment_id=pricing)
    assert [(r["page"], r["visitors"]) for r in breakdown["results"]] == [("/pricing", 2), ("/blog/a", 1)]

    funnel = await get(client, shop, "funnels", steps="page_view,purchase", period="custom", date=WEEK)
    assert [s["visitors"] for s in funnel["steps"]] == [5, 2]
    funnel = await get(client, shop, "funnels", steps="page_view,purchase", period="custom", date=WEEK, segment_id=pro)
    assert [s["visitors"] for s in funnel["steps"]] == [2, 1]

    cohorts = {c["cohort"]: c for c in (await get(client, shop, "retention", interval="day", cohorts=8))["cohorts"]}
    assert (cohorts[str(D)]["size"], cohorts[str(D - timedelta(days=2))]["retained"][:3]) == (4, [1, 0, 1])
    cohorts = {c["cohort"]: c for c in (await get(client, shop, "retention", interval="day", cohorts=8,
                                                  segment_id=seats))["cohorts"]}
    assert (cohorts[str(D)]["size"], cohorts[str(D - timedelta(days=2))]["size"]) == (1, 0)

    users = await get(client, shop, "users", segment_id=pricing)
    assert ([u["userId"] for u in users["users"]], users["total"]) == (["u1", "u4"], 2)

    listed = await get(client, shop, "segments")
    assert [s["name"] for s in listed["segments"]] == ["many seats", "new", "pro plan", "repeat buyers", "saw pricing"]
    assert listed["segments"][0]["spec"]["traits"] == [{"name": "seats", "op": "gt", "value": 5}]


# --- saved funnels and the drop-off list ---------------------------------------------------------

async def test_saved_funnels_and_who_dropped_off_after_a_step(client, shop) -> None:
    r = await client.post("/api/analytics/funnels/saved", json={"name": "Buy", "steps": ["page_view", "purchase"],
                                                              "window": 3600}, headers=shop["key"])
    assert r.status_code == 201, r.text
    saved = r.json()
    assert saved["spec"] == {"steps": ["page_view", "purchase"], "window": 3600}
    assert [f["name"] for f in (await get(client, shop, "funnels/saved"))["funnels"]] == ["Buy"]

    # page_view then purchase: u1 and u2 bought; u3, u4 and u5 viewed a page and stopped.
    body = await get(client, shop, "funnels/dropoff", funnel_id=saved["id"], step=1, period="custom", date=WEEK)
    assert [(u["visitor"], u["last_seen"][:16]) for u in body["users"]] == [
        ("u5", f"{D}T15:00"), ("u4", f"{D}T13:00"), ("u3", f"{D}T12:01")]
    assert (body["total"], body["steps"]) == (3, ["page_view", "purchase"])
    second = await get(client, shop, "funnels/dropoff", steps="page_view,purchase", step=1, period="custom", date=WEEK,
                       limit=2, page=2)
    assert ([u["user_id"] for u in second["users"]], second["total"]) == (["u3"], 3)
    pro = await new_segment(client, shop, "pro for funnels", traits=[{"name": "plan", "value": "pro"}])
    only = await get(client, shop, "funnels/dropoff", funnel_id="Buy", step=1, period="custom", date=WEEK, segment_id=pro)
    assert [u["visitor"] for u in only["users"]] == ["u3"]
    r = await client.get("/api/analytics/funnels/dropoff", params={"funnel_id": "Buy", "step": 2}, headers=shop["key"])
    assert r.status_code == 422 and "step runs from 1 to 1" in r.json()["detail"]
    assert (await client.delete(f"/api/analytics/funnels/saved/{saved['id']}", headers=shop["key"])).status_code == 204
    assert (await get(client, shop, "funnels/saved"))["funnels"] == []
    assert (await client.delete(f"/api/analytics/segments/{pro}", headers=shop["key"])).status_code == 204


async def test_deleting_a_goal_or_segment_removes_it(client, shop) -> None:
    segment = await new_segment(client, shop, "short lived", filters={"country": "FR"})
    r = await client.post("/api/analytics/goals", json={"name": "Temp", "kind": "event", "match": "temp"}, headers=shop["key"])
    goal = r.json()["id"]
    assert (await client.delete(f"/api/analytics/segments/{segment}", headers=shop["key"])).status_code == 204
    assert (await client.delete(f"/api/analytics/goals/{goal}", headers=shop["key"])).status_code == 204
    assert (await client.delete(f"/api/analytics/goals/{goal}", headers=shop["key"])).status_code == 404
    r = await client.get("/api/analytics/stats/aggregate", params={"segment_id": segment}, headers=shop["key"])
    assert r.status_code == 404 and "segment not found" in r.json()["detail"]
    assert "Temp" not in [g["name"] for g in (await get(client, shop, "goals"))["goals"]]


async def test_a_signed_in_owner_manages_goals_with_app_id(client, shop) -> None:
    bearer = {"authorization": f"Bearer {shop['owner']['access_token']}"}
    r = await client.post("/api/analytics/goals", json={"app_id": shop["app_id"], "name": "Owner's", "kind": "page",
                                                       "match": "/"}, headers=bearer)
    assert r.status_code == 201, r.text
    r = await client.get("/api/analytics/goals", params={"app_id": shop["app_id"]}, headers=bearer)
    mine = [g["id"] for g in r.json()["goals"] if g["name"] == "Owner's"]
    assert len(mine) == 1
    r = await client.delete(f"/api/analytics/goals/{mine[0]}", params={"app_id": shop["app_id"]}, headers=bearer)
    assert r.status_code == 204


async def test_a_viewer_reads_goals_and_segments_but_only_an_admin_changes_them(client, shop, stack: Stack) -> None:
    """Roles as auth publishes them on the apps topic (libs/apps.py): a viewer and an admin member."""
    viewer, admin = await signup_login(client), await signup_login(client)
    apps = stack.runtime.contexts.get("query", QueryContext).apps
    record = await apps.lookup(shop["app_id"])
    assert record is not None
    joined = replace(record, members={viewer["id"]: "viewer", admin["id"]: "admin"}, version=record.version + 1)
    await publish(await stack.runtime.producer(), APPS_TOPIC, joined.to_message(), key=shop["app_id"])

    async def known() -> bool:
        now = apps.get(shop["app_id"])
        return now is not None and now.role_of(viewer["id"]) == "viewer"

    await eventually(known, 10, "the query service never saw the members")
    app = {"app_id": shop["app_id"]}
    r = await client.get("/api/analytics/goals", params=app, headers=viewer["headers"])
    assert r.status_code == 200 and "Blog" in [g["name"] for g in r.json()["goals"]]
    assert (await client.get("/api/analytics/segments", params=app, headers=viewer["headers"])).status_code == 200
    goal = {"name": "By a viewer", "kind": "event", "match": "x"}
    r = await client.post("/api/analytics/goals", params=app, json=goal, headers=viewer["headers"])
    assert r.status_code == 403 and "admin role" in r.json()["detail"]
    r = await client.delete(f"/api/analytics/goals/{shop['goals']['Blog']['id']}", params=app, headers=viewer["headers"])
    assert r.status_code == 403
    r = await client.post("/api/analytics/segments", params=app, json={"name": "v", "filters": {"os": "Linux"}},
                          headers=viewer["headers"])
    assert r.status_code == 403
    r = await client.post("/api/analytics/goals", json={**goal, "name": "By an admin", **app}, headers=admin["headers"])
    assert r.status_code == 201, r.text
    r = await client.delete(f"/api/analytics/goals/{r.json()['id']}", params=app, headers=admin["headers"])
    assert r.status_code == 204


async def test_another_tenant_sees_none_of_the_apps_goals_and_segments(client, shop) -> None:
    stranger = await register_app(client, await signup_login(client), "other")
    theirs = {"x-api-key": stranger["api_key"]}
    segment = await new_segment(client, shop, "private", filters={"country": "DE"})
    goal = shop["goals"]["Blog"]["id"]
    assert (await client.get("/api/analytics/goals", headers=theirs)).json() == {"goals": []}
    assert (await client.get("/api/analytics/segments", headers=theirs)).json() == {"segments": []}
    assert (await client.delete(f"/api/analytics/goals/{goal}", headers=theirs)).status_code == 404
    assert (await client.delete(f"/api/analytics/segments/{segment}", headers=theirs)).status_code == 404
    r = await client.get("/api/analytics/stats/aggregate", params={"goal": goal, "metrics": "conversions"}, headers=theirs)
    assert r.status_code == 422 and "no goal" in r.json()["detail"]
    for path in ("stats/aggregate", "funnels", "users", "retention"):
        params = {"segment_id": segment, **({"steps": "a,b"} if path == "funnels" else {})}
        assert (await client.get(f"/api/analytics/{path}", params=params, headers=theirs)).status_code == 404
    # Their key cannot write into this app either.
    r = await client.post("/api/analytics/goals", params={"app_id": shop["app_id"]},
                          json={"name": "x", "kind": "event", "match": "x"}, headers=theirs)
    assert r.status_code == 403
    assert [g["name"] for g in (await get(client, shop, "goals"))["goals"]].count("x") == 0


async def test_deleting_the_account_removes_its_apps_goals_segments_and_funnels(client, shop, stack: Stack) -> None:
    user = await signup_login(client)
    app = await register_app(client, user, "short-lived")
    key = {"x-api-key": app["api_key"]}
    for path, body in (("goals", {"name": "g", "kind": "event", "match": "x"}),
                       ("segments", {"name": "s", "filters": {"os": "Linux"}}),
                       ("funnels/saved", {"name": "f", "steps": ["a", "b"]})):
        assert (await client.post(f"/api/analytics/{path}", json=body, headers=key)).status_code == 201
    pool = await stack.runtime.pg()
    tables = ("query_goals", "query_segments", "query_saved_funnels")

    async def held(app_id: str) -> list[int]:
        return [await pool.fetchval(f"SELECT count(*) FROM {t} WHERE app_id = $1", app_id) for t in tables]

    assert await held(app["app_id"]) == [1, 1, 1]
    kept = await held(shop["app_id"])
    r = await client.request("DELETE", "/api/user/me", json={"password": PASSWORD}, headers=user["headers"])
    assert r.status_code == 204, r.text

    async def gone() -> bool:
        return await held(app["app_id"]) == [0, 0, 0]

    await eventually(gone, 30, "the deleted account's goals, segments and funnels are still stored")
    assert await held(shop["app_id"]) == kept  # another app's are untouched


BAD = [
    ("POST", "goals", {"name": "g", "kind": "click", "match": "x"}, {}, "kind"),
    ("POST", "goals", {"name": "g", "kind": "page", "match": "blog"}, {}, "starting with /"),
    ("POST", "goals", {"name": " ", "kind": "event", "match": "x"}, {}, "blank"),
    ("POST", "goals", {"name": "g", "kind": "event", "match": "x", "colour": "red"}, {}, "colour"),
    ("POST", "goals", {"name": "g\u0000", "kind": "event", "match": "x"}, {}, "NUL"),
    ("POST", "segments", {"name": "s", "filters": {"os": "a\u0000"}}, {}, "NUL"),
    ("POST", "funnels/saved", {"name": "f", "steps": ["a", "b\u0000"]}, {}, "NUL"),
    ("POST", "segments", {"name": "empty"}, {}, "at least one condition"),
    ("POST", "segments", {"name": "s", "filters": {"city": "Paris"}}, {}, "unknown filter"),
    ("POST", "segments", {"name": "s", "traits": [{"name": "plan", "op": "gt", "value": "pro"}]}, {}, "send a number"),
    ("POST", "segments", {"name": "s", "first_seen": {"start": "2026-02-01", "end": "2026-01-01"}}, {}, "before"),
    ("POST", "segments", {"name": "s", "events": [{"event": "e", "min_count": 0}]}, {}, "min_count"),
    ("GET", "stats/aggregate", None, {"metrics": "conversions"}, "send goal="),
    ("GET", "stats/aggregate", None, {"goal": "No such goal"}, "no goal"),
    ("GET", "stats/aggregate", None, {"props": "plan"}, "props=<name>==<value>"),
    ("GET", "stats/breakdown", None, {"property": "props:"}, "props:<name>"),
    ("GET", "stats/breakdown", None, {"property": "plan"}, "props:<name>"),
    ("GET", "stats/breakdown", None, {"property": "goal", "metrics": "visitors"}, "leave metrics out"),
    ("POST", "funnels/saved", {"name": "f", "steps": ["one"]}, {}, "2 to 8 steps"),
    ("POST", "funnels/saved", {"name": "f", "steps": ["a", "b"], "window": 0}, {}, "window"),
    ("GET", "funnels/dropoff", None, {"step": 1}, "one of them"),
    ("GET", "stats/aggregate", None, {"goal": "a\u0000"}, "no goal"),
    ("GET", "funnels/dropoff", None, {"step": 1, "steps": "a"}, "2 to 8 steps"),
]


@pytest.mark.parametrize(("method", "path", "body", "params", "hint"), BAD, ids=[f"{b[1]} {b[4]}" for b in BAD])
async def test_bad_input_answers_422_saying_what_is_wrong(client, shop, method, path, body, params, hint) -> None:
    r = await client.request(method, f"/api/analytics/{path}", json=body, params=params, headers=shop["key"])
    assert r.status_code == 422, r.text
    assert hint in str(r.json()["detail"]), r.text
