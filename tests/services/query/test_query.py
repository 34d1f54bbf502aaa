"""Query service (issue #6): web stats, funnels, retention, users and privacy over HTTP, from events
sent through the gateway; the access matrix over every endpoint; every 422; the cache.

One small, known history (day D = three days ago, UTC):
  erin   D-1 12:00  page /                                   (the previous period)
  alice  D 10:00    page / (from news.example.com, utm newsletter/email/fall)    visit 1
         D 10:05    page /pricing;  D 10:06 signup_click                          visit 1 (360 s)
         D 10:50    page /   (44 minutes later: a new visit, a bounce)           visit 2
         D+1 09:00  page /   (came back the next day)                            visit 3
  bob    D 10:10    page /blog   (a bounce)
  carol  D 10:20    page /;  10:22 page /pricing;  10:23 signup_click;  10:24 signed_up  (240 s)
  dave   D 16:00    page /pricing   (a bounce; already D+1 in Tokyo)
On day D (UTC): 4 visitors, 5 visits, 7 pageviews, 10 events, 1.4 views per visit, bounce rate 60 %,
visit duration (360 + 0 + 0 + 240 + 0) / 5 = 120 s.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson
import pytest

from libs.runtime import Stack
from tests.conftest import eventually, register_app, signup_login

pytestmark = pytest.mark.engines

FRESH = {"cache-control": "no-cache"}
UA = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
D = datetime.now(UTC).date() - timedelta(days=3)
DAY = f"{D},{D}"


def at(day: date, hh: int, mm: int = 0) -> str:
    return datetime.combine(day, time(hh, mm), UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def page(day: date, hh: int, mm: int, path: str, **extra: Any) -> dict[str, Any]:
    return {"event": "page_view", "url": f"https://shop.test{path}", "timestamp": at(day, hh, mm), **extra}


ALICE = {"userId": "alice", "device": "mobile", "metadata": {"browser": "Firefox", "os": "Linux"}}
BOB = {"userId": "bob", "device": "desktop", "metadata": {"browser": "Chrome", "os": "Windows"}}
CAROL = {"sessionId": "s-carol", "device": "desktop", "metadata": {"browser": "Safari", "os": "macOS"}}
DAVE = {"sessionId": "s-dave", "device": "desktop", "metadata": {"browser": "Chrome", "os": "Windows"}}
ERIN = {"sessionId": "s-erin", "device": "mobile"}
NEXT = D + timedelta(days=1)
HISTORY = [
    page(D - timedelta(days=1), 12, 0, "/", **ERIN),
    {**page(D, 10, 0, "/?utm_source=newsletter&utm_medium=email&utm_campaign=fall", **ALICE),
     "referrer": "https://news.example.com/a"},
    page(D, 10, 5, "/pricing", **ALICE),
    {"event": "signup_click", "url": "https://shop.test/pricing", "timestamp": at(D, 10, 6), **ALICE},
    page(D, 10, 50, "/", **ALICE),
    page(NEXT, 9, 0, "/", **ALICE),
    page(D, 10, 10, "/blog", **BOB),
    {**page(D, 10, 20, "/", **CAROL), "referrer": "https://www.google.com/"},
    page(D, 10, 22, "/pricing", **CAROL),
    {"event": "signup_click", "url": "https://shop.test/pricing", "timestamp": at(D, 10, 23), **CAROL},
    {"event": "signed_up", "url": "https://shop.test/welcome", "timestamp": at(D, 10, 24), **CAROL},
    page(D, 16, 0, "/pricing", **DAVE),
]


async def send(client: httpx.AsyncClient, app: dict[str, Any], events: list[dict[str, Any]]) -> None:
    r = await client.post("/api/analytics/collect", json={"events": events},
                          headers={"x-api-key": app["write_key"], "user-agent": UA})
    assert r.status_code == 202, r.text
    assert r.json()["accepted"] == len(events), r.text


async def wait_stored(client: httpx.AsyncClient, app: dict[str, Any], n: int) -> None:
    async def stored() -> bool:
        r = await client.get("/api/analytics/events/count", params={"start_date": str(D - timedelta(days=30))},
                             headers={"x-api-key": app["api_key"], **FRESH})
        return r.status_code == 200 and r.json()["count"] == n

    await eventually(stored, 20, f"the aggregator did not store the {n} events")


async def app_with_history(client: httpx.AsyncClient, name: str, events: list[dict[str, Any]]) -> dict[str, Any]:
    """A new user's app (`owner` added) holding `events`, sent through the gateway and stored."""
    owner = await signup_login(client)
    app = await register_app(client, owner, name)
    await send(client, app, events)
    await wait_stored(client, app, len(events))
    return {**app, "owner": owner}


@pytest.fixture(scope="module")
async def site(client: httpx.AsyncClient) -> dict[str, Any]:
    app = await app_with_history(client, "shop", HISTORY)
    return {**app, "key": {"x-api-key": app["api_key"]}}


async def get(client: httpx.AsyncClient, site: dict[str, Any], path: str, **params: Any) -> dict[str, Any]:
    r = await client.get(f"/api/analytics/{path}", params=params, headers=site["key"])
    assert r.status_code == 200, r.text
    return r.json()


# --- web analytics ------------------------------------------------------------------------------

async def test_aggregate_counts_visitors_visits_pageviews_bounces_and_durations_of_a_day(client, site) -> None:
    body = await get(client, site, "stats/aggregate", period="custom", date=DAY)
    values = {k: v["value"] for k, v in body["results"].items()}
    assert values == {"visitors": 4, "visits": 5, "pageviews": 7, "views_per_visit": 1.4,
                      "bounce_rate": 60.0, "visit_duration": 120.0, "events": 10}
    assert all(v["change"] is None for v in body["results"].values())
    assert body["period"] == {"start": f"{D}T00:00:00Z", "end": f"{NEXT}T00:00:00Z"}


async def test_aggregate_compares_with_the_previous_period(client, site) -> None:
    body = await get(client, site, "stats/aggregate", period="custom", date=DAY, metrics="visitors,pageviews",
                     compare="previous_period")
    # The day before: erin alone, one pageview.
    assert body["results"] == {"visitors": {"value": 4, "change": 300.0}, "pageviews": {"value": 7, "change": 600.0}}


async def test_a_page_filter_keeps_visits_that_saw_the_page_and_counts_only_its_views(client, site) -> None:
    body = await get(client, site, "stats/aggregate", period="custom", date=DAY, page="/pricing",
                     metrics="visitors,visits,pageviews")
    assert {k: v["value"] for k, v in body["results"].items()} == {"visitors": 3, "visits": 3, "pageviews": 3}


async def test_visit_filters_on_source_device_and_utm(client, site) -> None:
    async def visitors(**f: str) -> int:
        body = await get(client, site, "stats/aggregate", period="custom", date=DAY, metrics="visitors,visits", **f)
        return body["results"]["visits"]["value"]

    assert await visitors(source="news.example.com") == 1
    assert await visitors(source="google.com") == 1
    assert await visitors(source="Direct / None") == 3
    assert await visitors(device="desktop") == 3
    assert await visitors(device="desktop", browser="Chrome") == 2
    assert await visitors(utm_source="newsletter", utm_campaign="fall") == 1
    assert await visitors(entry_page="/") == 3
    assert await visitors(exit_page="/pricing") == 3


async def test_hourly_timeseries_in_new_york_has_every_hour_of_the_local_day(client, site) -> None:
    body = await get(client, site, "stats/timeseries", period="custom", date=DAY, interval="hour",
                     tz="America/New_York", metrics="visitors,visits,pageviews")
    assert body["interval"] == "hour"
    results = body["results"]
    assert len(results) == 24
    assert results[0]["date"] == f"{D}T00:00:00"
    by_hour = {r["date"]: r for r in results}
    # 10:00-10:50 UTC is 05:00-05:50 in New York in winter (06:00 in summer).
    def local(hh: int) -> str:
        return datetime.combine(D, time(hh), UTC).astimezone(ZoneInfo("America/New_York")).strftime("%Y-%m-%dT%H:00:00")

    hour = local(10)
    assert by_hour[hour] == {"date": hour, "visitors": 3, "visits": 4, "pageviews": 6}
    dave_hour = local(16)
    assert by_hour[dave_hour] == {"date": dave_hour, "visitors": 1, "visits": 1, "pageviews": 1}
    assert sum(r["pageviews"] for r in results) == 7


async def test_daily_timeseries_in_tokyo_moves_the_evening_visit_to_the_next_day(client, site) -> None:
    body = await get(client, site, "stats/timeseries", period="custom", date=f"{D},{NEXT}", interval="day",
                     tz="Asia/Tokyo", metrics="visitors,pageviews")
    assert body["results"] == [
        {"date": str(D), "visitors": 3, "pageviews": 6},  # 19:00-19:50 Tokyo
        {"date": str(NEXT), "visitors": 2, "pageviews": 2},  # dave at 01:00, alice at 18:00 Tokyo
    ]
    utc = await get(client, site, "stats/timeseries", period="custom", date=f"{D},{NEXT}", interval="day",
                    metrics="visitors")
    assert utc["results"] == [{"date": str(D), "visitors": 4}, {"date": str(NEXT), "visitors": 1}]


async def test_breakdown_by_page_entry_exit_source_device_and_utm(client, site) -> None:
    async def rows(prop: str, metrics: str = "visitors,pageviews") -> list[dict[str, Any]]:
        body = await get(client, site, "stats/breakdown", property=prop, period="custom", date=DAY, metrics=metrics)
        assert body["property"] == prop
        return body["results"]

    assert await rows("page") == [
        {"page": "/pricing", "visitors": 3, "pageviews": 3},
        {"page": "/", "visitors": 2, "pageviews": 3},
        {"page": "/blog", "visitors": 1, "pageviews": 1},
    ]
    assert await rows("entry_page", "visitors,visits,bounce_rate") == [
        {"entry_page": "/", "visitors": 2, "visits": 3, "bounce_rate": 33.3},
        {"entry_page": "/blog", "visitors": 1, "visits": 1, "bounce_rate": 100.0},
        {"entry_page": "/pricing", "visitors": 1, "visits": 1, "bounce_rate": 100.0},
    ]
    assert await rows("exit_page", "visits") == [
        {"exit_page": "/pricing", "visits": 3}, {"exit_page": "/", "visits": 1}, {"exit_page": "/blog", "visits": 1},
    ]
    assert await rows("source", "visits") == [
        {"source": "Direct / None", "visits": 3}, {"source": "google.com", "visits": 1},
        {"source": "news.example.com", "visits": 1},
    ]
    assert await rows("device", "visitors,visits") == [
        {"device": "desktop", "visitors": 3, "visits": 3}, {"device": "mobile", "visitors": 1, "visits": 2},
    ]
    assert await rows("browser", "visitors") == [
        {"browser": "Chrome", "visitors": 2}, {"browser": "Firefox", "visitors": 1}, {"browser": "Safari", "visitors": 1},
    ]
    assert (await rows("utm_source", "visits"))[1] == {"utm_source": "newsletter", "visits": 1}
    assert await rows("event_name", "visitors,events") == [
        {"event_name": "page_view", "visitors": 4, "events": 7},
        {"event_name": "signup_click", "visitors": 2, "events": 2},
        {"event_name": "signed_up", "visitors": 1, "events": 1},
    ]


async def test_a_visit_tagged_with_utm_source_and_no_referrer_counts_under_its_utm_source(client) -> None:
    app = await register_app(client, await signup_login(client), "tagged")
    await send(client, app, [page(D, 9, 0, "/?utm_source=news&utm_medium=email", userId="reader"),
                             page(D, 9, 1, "/pricing", userId="reader")])
    await wait_stored(client, app, 2)
    key = {"x-api-key": app["api_key"]}
    r = await client.get("/api/analytics/stats/breakdown", params={"property": "source", "period": "custom", "date": DAY,
                                                                   "metrics": "visitors,visits"}, headers=key)
    assert r.json()["results"] == [{"source": "news", "visitors": 1, "visits": 1}]
    r = await client.get("/api/analytics/stats/aggregate", params={"period": "custom", "date": DAY, "source": "news",
                                                                   "metrics": "visitors"}, headers=key)
    assert r.json()["results"]["visitors"]["value"] == 1


CURL = "curl/8.5.0"
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


async def test_server_and_mobile_events_count_in_the_stats_and_left_out_bot_events_are_reported(client) -> None:
    app = await register_app(client, await signup_login(client), "kinds")
    sent = [(UA, page(D, 9, 0, "/", userId="reader")),
            (CURL, {"event": "order_completed", "userId": "buyer", "timestamp": at(D, 9, 5)}),
            ("okhttp/4.12.0", {"event": "app_open", "userId": "phone", "timestamp": at(D, 9, 6)}),
            (GOOGLEBOT, page(D, 9, 7, "/", sessionId="crawl")),
            (GOOGLEBOT, page(D, 9, 8, "/pricing", sessionId="crawl"))]
    for agent, event in sent:
        r = await client.post("/api/analytics/collect", json=event,
                              headers={"x-api-key": app["write_key"], "user-agent": agent})
        assert r.status_code == 202, r.text
    await wait_stored(client, app, len(sent))
    key = {"x-api-key": app["api_key"]}
    r = await client.get("/api/analytics/stats/aggregate", params={"period": "custom", "date": DAY,
                                                                   "metrics": "visitors,visits,pageviews,events"},
                         headers=key)
    body = r.json()
    assert {k: v["value"] for k, v in body["results"].items()} == {"visitors": 3, "visits": 3, "pageviews": 1, "events": 3}
    assert body["bot_events_excluded"] == 2
    r = await client.get("/api/analytics/stats/breakdown", params={"property": "event_name", "period": "custom",
                                                                   "date": DAY, "metrics": "visitors,events"}, headers=key)
    assert r.json()["results"] == [{"event_name": "app_open", "visitors": 1, "events": 1},
                                   {"event_name": "order_completed", "visitors": 1, "events": 1},
                                   {"event_name": "page_view", "visitors": 1, "events": 1}]
    r = await client.get("/api/analytics/stats/aggregate", params={"period": "custom", "date": DAY, "page": "/pricing",
                                                                   "metrics": "visitors"}, headers=key)
    assert (r.json()["results"]["visitors"]["value"], r.json()["bot_events_excluded"]) == (0, 1)


async def test_breakdown_pages_through_results_with_limit_and_page(client, site) -> None:
    first = await get(client, site, "stats/breakdown", property="page", period="custom", date=DAY, limit=2, page=1)
    second = await get(client, site, "stats/breakdown", property="page", period="custom", date=DAY, limit=2, page=2)
    assert [r["page"] for r in first["results"]] == ["/pricing", "/"]
    assert [r["page"] for r in second["results"]] == ["/blog"]


async def test_realtime_counts_visitors_of_the_last_five_minutes(client, site) -> None:
    assert (await get(client, site, "stats/realtime"))["visitors"] == 0
    now_app = await register_app(client, site["owner"], "live")
    await send(client, now_app, [{"event": "page_view", "url": "https://shop.test/", "userId": "now1"},
                                 {"event": "page_view", "url": "https://shop.test/", "userId": "now2"}])
    await wait_stored(client, now_app, 2)
    r = await client.get("/api/analytics/stats/realtime", headers={"x-api-key": now_app["api_key"], **FRESH})
    assert r.json() == {"visitors": 2}


# --- the original summaries (whole UTC days come from the events_daily rollup, partial days from events) --

async def test_event_summary_of_whole_days_and_of_partial_days_agree_with_the_history(client, site) -> None:
    day = await get(client, site, "event-summary", event="page_view", startDate=str(D), endDate=str(D))
    assert (day["count"], day["uniqueUsers"], day["deviceData"]) == (7, 4, {"desktop": 4, "mobile": 3})
    # Part of D-1 (after erin), all of D, part of D+1 (alice's return).
    mixed = await get(client, site, "event-summary", event="page_view", startDate=f"{D - timedelta(days=1)}T12:30:00Z",
                      endDate=f"{NEXT}T23:00:00Z")
    assert (mixed["count"], mixed["uniqueUsers"], mixed["deviceData"]) == (8, 4, {"desktop": 4, "mobile": 4})
    everything = await get(client, site, "event-summary", startDate=str(D - timedelta(days=1)), endDate=str(NEXT))
    assert (everything["count"], everything["uniqueUsers"]) == (12, 5)


async def test_events_list_newest_first_with_filters_pages_and_one_event_by_id(client, site) -> None:
    since = str(D - timedelta(days=30))
    first = await get(client, site, "events", start_date=since, limit=5)
    assert (first["total"], first["page"], first["limit"], len(first["events"])) == (12, 1, 5, 5)
    stamps = [e["timestamp"] for e in first["events"]]
    assert stamps == sorted(stamps, reverse=True) and stamps[0].startswith(f"{NEXT}T09:00")
    assert len((await get(client, site, "events", start_date=since, limit=5, page=3))["events"]) == 2
    clicks = await get(client, site, "events", start_date=since, event_name="signup_click", user_id="alice")
    assert [e["path"] for e in clicks["events"]] == ["/pricing"] and clicks["total"] == 1
    one = await get(client, site, f"events/{first['events'][0]['event_id']}")
    assert one == first["events"][0]
    r = await client.get("/api/analytics/events/no-such-event", headers=site["key"])
    assert r.status_code == 404


async def test_user_stats_and_active_users(client, site) -> None:
    alice = await get(client, site, "user-stats", userId="alice")
    assert (alice["userId"], alice["totalEvents"]) == ("alice", 5)
    assert alice["deviceDetails"] == {"browser": "Firefox", "os": "Linux", "device": "mobile"}
    assert [e["timestamp"][:16] for e in alice["recentEvents"]][:2] == [f"{NEXT}T09:00", f"{D}T10:50"]
    assert (await client.get("/api/analytics/user-stats", params={"userId": "nobody"}, headers=site["key"])).status_code == 404
    active = {r: (await get(client, site, "users/active", range=r))["activeUsers"] for r in ("day", "week", "month")}
    assert active == {"day": 0, "week": 5, "month": 5}


async def test_events_grouped_by_name_count_events_and_users(client, site) -> None:
    body = await get(client, site, "events/grouped", by="event_name", start_date=str(D - timedelta(days=1)), end_date=str(NEXT))
    assert [(g["key"], g["count"], g["unique_users"]) for g in body["groups"]] == [
        ("page_view", 9, 5), ("signup_click", 2, 2), ("signed_up", 1, 1),
    ]


async def test_filter_values_with_backslashes_tabs_quotes_and_newlines_match_exactly(client) -> None:
    """A value reaches ClickHouse as a bound parameter and means itself, whatever characters it holds."""
    app = await register_app(client, await signup_login(client), "odd names")
    names = ["back\\slash\\n", "tab\there", "quote's \"double\"", "new\nline", "plain"]
    await send(client, app, [{"event": name, "url": "https://shop.test/", "userId": "u1"} for name in names])
    await wait_stored(client, app, len(names))
    for name in names:
        r = await client.get("/api/analytics/events/count", params={"event_name": name, "start_date": str(D - timedelta(days=30))},
                             headers={"x-api-key": app["api_key"], **FRESH})
        assert r.status_code == 200, (name, r.text)
        assert r.json()["count"] == 1, name
        r = await client.get("/api/analytics/event-summary", params={"event": name}, headers={"x-api-key": app["api_key"], **FRESH})
        assert r.status_code == 200 and r.json()["count"] == 1, (name, r.text)


async def test_daily_event_series_counts_events_and_users_per_utc_day(client, site) -> None:
    body = await get(client, site, "events/timeseries", interval="day", days=7)
    by_day = {row["bucket"][:10]: row for row in body["series"]}
    assert (by_day[str(D)]["count"], by_day[str(D)]["unique_users"]) == (10, 4)
    assert (by_day[str(NEXT)]["count"], by_day[str(NEXT)]["unique_users"]) == (1, 1)


async def test_custom_metrics_summary_and_series(client, site) -> None:
    for value, hh in ((120.0, 9), (80.0, 9), (100.0, 11)):
        r = await client.post("/api/analytics/metrics", headers={"x-api-key": site["write_key"], "user-agent": UA},
                              json={"metric_name": "checkout_ms", "value": value, "unit": "ms", "timestamp": at(D, hh)})
        assert r.status_code == 202, r.text

    async def stored() -> bool:
        r = await client.get("/api/analytics/metrics", params={"metric_name": "checkout_ms", "start_date": str(D)},
                             headers={**site["key"], **FRESH})
        return r.status_code == 200 and bool(r.json()["metrics"]) and r.json()["metrics"][0]["count"] == 3

    await eventually(stored, 20, "the metrics never arrived")
    summary = (await get(client, site, "metrics", metric_name="checkout_ms", start_date=str(D)))["metrics"][0]
    assert {k: summary[k] for k in ("metric_name", "unit", "count", "sum", "avg", "min", "max")} == {
        "metric_name": "checkout_ms", "unit": "ms", "count": 3, "sum": 300.0, "avg": 100.0, "min": 80.0, "max": 120.0}
    series = await get(client, site, "metrics/timeseries", metric_name="checkout_ms", interval="hour", days=7)
    assert [(row["bucket"][:13], row["count"], row["avg"]) for row in series["series"]] == [
        (f"{D}T09", 2, 100.0), (f"{D}T11", 1, 100.0)]


# --- funnels, retention, users --------------------------------------------------------------------

async def test_funnel_counts_visitors_per_ordered_step_with_conversion_rates(client, site) -> None:
    body = await get(client, site, "funnels", steps="page_view,signup_click,signed_up", window=3600,
                     period="custom", date=f"{D - timedelta(days=1)},{NEXT}")
    assert body["steps"] == [
        {"name": "page_view", "visitors": 5, "conversion_rate": 100.0, "step_conversion_rate": 100.0},
        {"name": "signup_click", "visitors": 2, "conversion_rate": 40.0, "step_conversion_rate": 40.0},
        {"name": "signed_up", "visitors": 1, "conversion_rate": 20.0, "step_conversion_rate": 50.0},
    ]
    # Steps in the wrong order never convert.
    body = await get(client, site, "funnels", steps="signed_up,signup_click", period="30d")
    assert [s["visitors"] for s in body["steps"]] == [1, 0]


async def test_retention_cohorts_by_first_seen_day(client, site) -> None:
    body = await get(client, site, "retention", interval="day", cohorts=8)
    cohorts = {c["cohort"]: c for c in body["cohorts"]}
    assert len(body["cohorts"]) == 8
    assert cohorts[str(D)] == {"cohort": str(D), "size": 4, "retained": [4, 1, 0, 0], "rates": [100.0, 25.0, 0.0, 0.0]}
    assert cohorts[str(D - timedelta(days=1))]["retained"] == [1, 0, 0, 0, 0]
    assert body["cohorts"][-1]["retained"] == [0]


async def test_users_lists_identified_users_most_recent_first(client, site) -> None:
    body = await get(client, site, "users")
    assert body["total"] == 2 and body["page"] == 1
    assert [(u["userId"], u["events"]) for u in body["users"]] == [("alice", 5), ("bob", 1)]
    alice = body["users"][0]
    assert (alice["device"], alice["browser"], alice["os"]) == ("mobile", "Firefox", "Linux")
    assert alice["lastSeen"].startswith(f"{NEXT}T09:00:00")
    assert [u["userId"] for u in (await get(client, site, "users", search="BO"))["users"]] == ["bob"]


# --- privacy ------------------------------------------------------------------------------------

async def test_export_streams_every_event_of_a_user_and_delete_removes_them_from_every_read(client, site) -> None:
    app = await register_app(client, site["owner"], "privacy")
    key = {"x-api-key": app["api_key"]}
    events = [page(D, 8, i, f"/p{i}", userId="zoe") for i in range(3)] + [page(D, 9, 0, "/", userId="yan")]
    await send(client, app, events)
    await wait_stored(client, app, 4)
    before = await client.get("/api/analytics/stats/aggregate", params={"period": "custom", "date": DAY, "metrics": "visitors"},
                              headers=key)
    assert before.json()["results"]["visitors"]["value"] == 2
    summary_params = {"startDate": str(D - timedelta(days=1)), "endDate": str(NEXT)}
    summary = await client.get("/api/analytics/event-summary", params=summary_params, headers=key)
    assert (summary.json()["count"], summary.json()["uniqueUsers"]) == (4, 2)

    r = await client.get("/api/analytics/users/zoe/export", headers=key)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/x-ndjson")
    lines = [orjson.loads(line) for line in r.text.splitlines()]
    assert [e["path"] for e in lines] == ["/p0", "/p1", "/p2"]
    assert {e["user_id"] for e in lines} == {"zoe"}

    r = await client.delete("/api/analytics/users/zoe", headers={"authorization": site["owner"]["headers"]["authorization"]},
                            params={"app_id": app["app_id"]})
    assert r.status_code == 200, r.text
    assert r.json() == {"deleted": 3}
    after = await client.get("/api/analytics/stats/aggregate", params={"period": "custom", "date": DAY, "metrics": "visitors"},
                             headers=key)
    assert after.headers["x-cache"] == "MISS"  # the answer cached before the deletion is not served
    assert after.json()["results"]["visitors"]["value"] == 1
    summary = await client.get("/api/analytics/event-summary", params=summary_params, headers=key)
    assert (summary.json()["count"], summary.json()["uniqueUsers"]) == (1, 1)  # the daily rollup was rebuilt
    assert (await client.get("/api/analytics/users/zoe/export", headers=key)).text == ""
    assert (await client.get("/api/analytics/user-stats", params={"userId": "zoe"}, headers=key)).status_code == 404
    events_left = await client.get("/api/analytics/events", headers=key,
                                   params={"user_id": "zoe", "start_date": str(D - timedelta(days=30))})
    assert events_left.json()["total"] == 0
    assert (await client.delete("/api/analytics/users/zoe", headers=key)).json() == {"deleted": 0}


# --- access matrix ------------------------------------------------------------------------------

ENDPOINTS = [
    ("GET", "event-summary", {}), ("GET", "user-stats", {"userId": "alice"}), ("GET", "events", {}),
    ("GET", "events/{event_id}", {}), ("GET", "events/count", {}), ("GET", "events/daily", {}),
    ("GET", "events/timeseries", {}), ("GET", "events/grouped", {}), ("GET", "users/active", {}),
    ("GET", "metrics", {}), ("GET", "metrics/timeseries", {"metric_name": "checkout_ms"}),
    ("GET", "stats/aggregate", {}), ("GET", "stats/timeseries", {}),
    ("GET", "stats/breakdown", {"property": "source"}), ("GET", "stats/realtime", {}),
    ("GET", "funnels", {"steps": "page_view,signup_click"}), ("GET", "retention", {}), ("GET", "users", {}),
    ("GET", "users/{user}/export", {}), ("DELETE", "users/{user}", {}),
]
WHO = [("secret key, own app", 200), ("write key", 403), ("another app's secret key", 403),
       ("owner's token", 200), ("another user's token", 403), ("no credentials", 401)]


@pytest.fixture(scope="module")
async def strangers(client: httpx.AsyncClient) -> dict[str, Any]:
    other = await signup_login(client)
    return {"user": other, "app": await register_app(client, other, "theirs")}


@pytest.fixture(scope="module")
async def some_event_id(client: httpx.AsyncClient, site: dict[str, Any]) -> str:
    return (await get(client, site, "events", start_date=str(D - timedelta(days=30)), limit=1))["events"][0]["event_id"]


@pytest.mark.parametrize(("who", "status"), WHO, ids=[w for w, _ in WHO])
@pytest.mark.parametrize(("method", "path", "params"), ENDPOINTS, ids=[f"{m} {p}" for m, p, _ in ENDPOINTS])
async def test_access_matrix(client, site, strangers, some_event_id, method, path, params, who, status) -> None:
    headers: dict[str, str] = {}
    params = dict(params)
    if who == "secret key, own app":
        headers = site["key"]
    elif who == "write key":
        headers = {"x-api-key": site["write_key"]}
    elif who == "another app's secret key":
        headers, params["app_id"] = {"x-api-key": strangers["app"]["api_key"]}, site["app_id"]
    elif who == "owner's token":
        headers, params["app_id"] = site["owner"]["headers"], site["app_id"]
    elif who == "another user's token":
        headers, params["app_id"] = strangers["user"]["headers"], site["app_id"]
    url = "/api/analytics/" + path.format(event_id=some_event_id, user="nobody")
    r = await client.request(method, url, params=params, headers=headers)
    assert r.status_code == status, r.text
    assert "detail" in r.json() if status != 200 else True


# --- bad parameters -----------------------------------------------------------------------------

BAD = [
    ("unknown parameter", "stats/aggregate", {"perod": "7d"}, "this endpoint takes"),
    ("unknown filter", "stats/breakdown", {"pathname": "/"}, "this endpoint takes"),
    ("unknown metric", "stats/aggregate", {"metrics": "visitors,revenue"}, "send a comma list of"),
    ("unknown property", "stats/breakdown", {"property": "city"}, "send one of"),
    ("unknown period", "stats/aggregate", {"period": "week"}, "send one of"),
    ("custom without date", "stats/aggregate", {"period": "custom"}, "date=YYYY-MM-DD,YYYY-MM-DD"),
    ("custom end before start", "stats/timeseries", {"period": "custom", "date": "2026-05-02,2026-05-01"},
     "send the earlier day first"),
    ("custom range too long", "stats/aggregate", {"period": "custom", "date": "2020-01-01,2026-01-01"}, "shorter"),
    ("hourly over a long range", "stats/timeseries", {"period": "6mo", "interval": "hour"}, "interval=day"),
    ("bad time zone", "stats/timeseries", {"tz": "Mars/Olympus"}, "IANA"),
    ("bad day", "stats/aggregate", {"period": "day", "date": "yesterday"}, "2026-11-23"),
    ("breakdown limit too high", "stats/breakdown", {"limit": 5000}, "1000"),
    ("users limit too high", "users", {"limit": 5000}, "1000"),
    ("events limit too high", "events", {"limit": 5000}, "1000"),
    ("events end before start", "events", {"start_date": "2026-05-02", "end_date": "2026-05-01"}, "after"),
    ("events range too long", "events/count", {"start_date": "2020-01-01", "end_date": "2026-01-01"}, "shorter"),
    ("funnel of one step", "funnels", {"steps": "page_view"}, "steps=first_event,second_event"),
    ("funnel window too long", "funnels", {"steps": "a,b", "window": 10**9}, str(90 * 86400)),
    ("too many cohorts", "retention", {"cohorts": 500}, "52"),
    ("metric series without a name", "metrics/timeseries", {}, "metric_name"),
    ("hourly metric series over a long range", "metrics/timeseries", {"metric_name": "m", "interval": "hour", "days": 90},
     "interval=day"),
]


@pytest.mark.parametrize(("case", "path", "params", "hint"), BAD, ids=[b[0] for b in BAD])
async def test_bad_parameters_answer_422_saying_what_to_send(client, site, case, path, params, hint) -> None:
    r = await client.get(f"/api/analytics/{path}", params=params, headers=site["key"])
    assert r.status_code == 422, r.text
    assert hint in r.text, r.text


# --- cache --------------------------------------------------------------------------------------

async def test_second_identical_request_is_a_cache_hit_and_no_cache_asks_again(client, site) -> None:
    params = {"period": "custom", "date": DAY, "metrics": "visits,events"}
    first = await client.get("/api/analytics/stats/aggregate", params=params, headers=site["key"])
    again = await client.get("/api/analytics/stats/aggregate", params=params, headers=site["key"])
    fresh = await client.get("/api/analytics/stats/aggregate", params=params, headers={**site["key"], **FRESH})
    assert [first.headers["x-cache"], again.headers["x-cache"], fresh.headers["x-cache"]] == ["MISS", "HIT", "MISS"]
    assert first.json() == again.json() == fresh.json()
    # The same parameters in another order are the same question.
    reordered = await client.get("/api/analytics/stats/aggregate", params=dict(reversed(list(params.items()))),
                                 headers=site["key"])
    assert reordered.headers["x-cache"] == "HIT"


async def test_closed_ranges_are_cached_long_and_ranges_reaching_now_briefly(client, site, stack: Stack) -> None:
    redis = await stack.runtime.redis()
    await client.get("/api/analytics/stats/breakdown", params={"property": "os", "period": "custom", "date": DAY},
                     headers=site["key"])
    await client.get("/api/analytics/stats/breakdown", params={"property": "os", "period": "7d"}, headers=site["key"])
    ttls = [await redis.ttl(k) async for k in redis.scan_iter(f"query:v1:{site['app_id']}:stats-breakdown:*")]
    assert any(0 < t <= stack.settings.query_cache_ttl_live_s for t in ttls)  # the 7d one
    assert any(t > 600 for t in ttls)  # the closed day


async def test_concurrent_identical_misses_run_one_clickhouse_query(client, site, stack: Stack) -> None:
    ch = await stack.runtime.clickhouse()
    seen: list[str] = []
    original = ch.query

    async def counting(sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        if params and params.get("app_id") == site["app_id"]:
            seen.append(sql)
        await asyncio.sleep(0.05)  # keep the first one in flight while the others arrive
        return await original(sql, params)

    ch.query = counting  # type: ignore[method-assign]
    try:
        params = {"period": "custom", "date": DAY, "metrics": "bounce_rate", "device": "mobile"}
        answers = await asyncio.gather(*[
            client.get("/api/analytics/stats/aggregate", params=params, headers=site["key"]) for _ in range(6)
        ])
    finally:
        del ch.query
    assert {r.status_code for r in answers} == {200}
    assert len({r.text for r in answers}) == 1
    assert len(seen) == 1


async def test_redis_down_answers_uncached_not_an_error(client, site, stack: Stack, data_dir) -> None:
    from services.query import SERVICE

    dead = stack.settings.model_copy(update={"redis_url": f"unix://{data_dir}/no-redis.sock"})
    async with Stack(dead, [SERVICE]) as down:
        transport = httpx.ASGITransport(app=down.app())
        async with httpx.AsyncClient(transport=transport, base_url="http://q.test", timeout=30) as other:
            async def readable() -> bool:
                r = await other.get("/api/analytics/stats/aggregate", params={"period": "custom", "date": DAY},
                                    headers=site["key"])
                return r.status_code != 401

            await eventually(readable, 10, "the second stack never learned the key")
            for _ in range(2):
                r = await other.get("/api/analytics/stats/aggregate",
                                    params={"period": "custom", "date": DAY, "metrics": "visitors"}, headers=site["key"])
                assert r.status_code == 200, r.text
                assert r.headers["x-cache"] == "MISS"
                assert r.json()["results"]["visitors"]["value"] == 4
