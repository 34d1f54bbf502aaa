"""Day, hour and week boundaries in a site's time zone (issue #19): every read that buckets or bounds by
days takes one `tz`, and its buckets are checked against hand-computed ones.

Timestamps are sent in UTC, converted by hand with fixed offsets: India is UTC+5:30 all year; Los Angeles
is PST (UTC-8) in winter and PDT (UTC-7) in summer. Its spring-forward day S (02:00 PST -> 03:00 PDT)
has 23 hours: local midnight is 08:00 UTC on S and 07:00 UTC on S+1. Its fall-back day F (02:00 PDT ->
01:00 PST) has 25 hours: 07:00 UTC on F to 08:00 UTC on F+1, and the hour 01:00 comes twice (08:00 and
09:00 UTC). S and F are the latest such days before today (found by asking when the offset changes; the
numbers below do not depend on which year they fall in).

Kolkata site, day K = three days before today in Kolkata; each row one page view (a visit):
  r1   K-1 23:40 IST = K-1 18:10 UTC        r1 again  K 00:20 IST = K-1 18:50 UTC  (40 min later, a signup: a new visit)
  k3   K 05:20 IST = K-1 23:50 UTC          k4        K 05:40 IST = K 00:10 UTC   (one local hour, two UTC days)
  k5   K 23:50 IST = K 18:20 UTC            k6        K+1 00:10 IST = K 18:40 UTC
All page views but r1's signup. In Kolkata: K-1 has 1 visitor, K 4 (r1, k3, k4, k5; 3 page views),
K+1 1. In UTC: K-1 has 3 events of 2 visitors (r1 twice, k3), K 3 of 3.

Los Angeles site:
  a1 S-1 23:50 PST = S 07:50 UTC;  a2 S 00:10 PST = 08:10;  a3 S 01:30 PST = 09:30;  a4 S 03:15 PDT = 10:15;
  a5 S 23:45 PDT = S+1 06:45 UTC;  a6 S+1 00:15 PDT = S+1 07:15 UTC
  b1 F 00:05 PDT = F 07:05 UTC;  b2 F 01:30 PDT = 08:30;  b3 F 01:20 PST = 09:20;  b4 F 23:30 PST = F+1 07:30
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from tests.conftest import eventually, register_app, signup_login

pytestmark = pytest.mark.engines

FRESH = {"cache-control": "no-cache"}
UA = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
KOLKATA, LA = "Asia/Kolkata", "America/Los_Angeles"


def _today(tz: str) -> date:
    return datetime.now(UTC).astimezone(ZoneInfo(tz)).date()


def _last_change(hours: int) -> date:
    """The latest day before today in Los Angeles that is `hours` long (23: spring, 25: fall)."""
    zone = ZoneInfo(LA)
    day = _today(LA) - timedelta(days=1)
    while True:
        start = datetime.combine(day, time(), zone).astimezone(UTC)
        end = datetime.combine(day + timedelta(days=1), time(), zone).astimezone(UTC)
        if end - start == timedelta(hours=hours):
            return day
        day -= timedelta(days=1)


K = _today(KOLKATA) - timedelta(days=3)
S = _last_change(23)
F = _last_change(25)
ONE = timedelta(days=1)


def utc(day: date, hh: int, mm: int) -> str:
    return datetime.combine(day, time(hh, mm), UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def view(visitor: str, day: date, hh: int, mm: int, event: str = "page_view") -> dict[str, Any]:
    return {"event": event, "url": "https://site.test/", "sessionId": visitor, "timestamp": utc(day, hh, mm)}


KOLKATA_EVENTS = [
    view("r1", K - ONE, 18, 10), view("r1", K - ONE, 18, 50, "signup"), view("k3", K - ONE, 23, 50),
    view("k4", K, 0, 10), view("k5", K, 18, 20), view("k6", K, 18, 40),
]
LA_EVENTS = [
    view("a1", S, 7, 50), view("a2", S, 8, 10), view("a3", S, 9, 30), view("a4", S, 10, 15),
    view("a5", S + ONE, 6, 45), view("a6", S + ONE, 7, 15),
    view("b1", F, 7, 5), view("b2", F, 8, 30), view("b3", F, 9, 20), view("b4", F + ONE, 7, 30),
]


async def _site(client: httpx.AsyncClient, name: str, events: list[dict[str, Any]]) -> dict[str, Any]:
    owner = await signup_login(client)
    app = await register_app(client, owner, name)
    r = await client.post("/api/analytics/collect", json={"events": events},
                          headers={"x-api-key": app["write_key"], "user-agent": UA})
    assert r.status_code == 202 and r.json()["accepted"] == len(events), r.text
    since = str(min(S, K) - timedelta(days=2))

    async def stored() -> bool:
        r = await client.get("/api/analytics/events/count", params={"start_date": since},
                             headers={"x-api-key": app["api_key"], **FRESH})
        return r.status_code == 200 and r.json()["count"] == len(events)

    await eventually(stored, 20, f"the aggregator did not store the {len(events)} events")
    return {**app, "owner": owner, "key": {"x-api-key": app["api_key"]}}


@pytest.fixture(scope="module")
async def kolkata(client: httpx.AsyncClient) -> dict[str, Any]:
    return await _site(client, "kolkata", KOLKATA_EVENTS)


@pytest.fixture(scope="module")
async def los_angeles(client: httpx.AsyncClient) -> dict[str, Any]:
    return await _site(client, "los angeles", LA_EVENTS)


async def get(client: httpx.AsyncClient, site: dict[str, Any], path: str, **params: Any) -> dict[str, Any]:
    r = await client.get(f"/api/analytics/{path}", params=params, headers=site["key"])
    assert r.status_code == 200, r.text
    return r.json()


def visitors(body: dict[str, Any]) -> list[tuple[str, int]]:
    return [(r["date"], r["visitors"]) for r in body["results"]]


# --- stats -----------------------------------------------------------------------------------------

async def test_kolkata_days_start_at_local_midnight_half_an_hour_off_utc(client, kolkata) -> None:
    body = await get(client, kolkata, "stats/timeseries", period="custom", date=f"{K - ONE},{K + ONE}",
                     interval="day", tz=KOLKATA, metrics="visitors,pageviews")
    assert [(r["date"], r["visitors"], r["pageviews"]) for r in body["results"]] == [
        (str(K - ONE), 1, 1), (str(K), 4, 3), (str(K + ONE), 1, 1)]
    assert body["period"] == {"start": f"{K - 2 * ONE}T18:30:00Z", "end": f"{K + ONE}T18:30:00Z"}
    in_utc = await get(client, kolkata, "stats/timeseries", period="custom", date=f"{K - ONE},{K + ONE}",
                       interval="day", metrics="visitors")
    assert visitors(in_utc) == [(str(K - ONE), 2), (str(K), 3), (str(K + ONE), 0)]
    day = await get(client, kolkata, "stats/aggregate", period="day", date=str(K), tz=KOLKATA,
                    metrics="visitors,visits,pageviews")
    assert {m: v["value"] for m, v in day["results"].items()} == {"visitors": 4, "visits": 4, "pageviews": 3}


async def test_kolkata_hours_are_local_hours_one_of_them_across_utc_midnight(client, kolkata) -> None:
    body = await get(client, kolkata, "stats/timeseries", period="day", date=str(K), tz=KOLKATA, metrics="visitors")
    hours = visitors(body)
    assert [h for h, _ in hours] == [f"{K}T{hh:02}:00:00" for hh in range(24)]  # no hour of the day before
    assert [(h, n) for h, n in hours if n] == [(f"{K}T00:00:00", 1), (f"{K}T05:00:00", 2), (f"{K}T23:00:00", 1)]


async def test_los_angeles_spring_forward_day_has_23_hours(client, los_angeles) -> None:
    days = await get(client, los_angeles, "stats/timeseries", period="custom", date=f"{S - ONE},{S + ONE}",
                     interval="day", tz=LA, metrics="visitors")
    assert visitors(days) == [(str(S - ONE), 1), (str(S), 4), (str(S + ONE), 1)]
    hours = await get(client, los_angeles, "stats/timeseries", period="day", date=str(S), tz=LA, metrics="visitors")
    assert [h for h, _ in visitors(hours)] == [f"{S}T{hh:02}:00:00" for hh in range(24) if hh != 2]
    assert [(h, n) for h, n in visitors(hours) if n] == [
        (f"{S}T00:00:00", 1), (f"{S}T01:00:00", 1), (f"{S}T03:00:00", 1), (f"{S}T23:00:00", 1)]
    assert hours["period"] == {"start": f"{S}T08:00:00Z", "end": f"{S + ONE}T07:00:00Z"}


async def test_los_angeles_fall_back_day_has_25_hours_and_01_00_twice(client, los_angeles) -> None:
    days = await get(client, los_angeles, "stats/timeseries", period="custom", date=f"{F},{F + ONE}",
                     interval="day", tz=LA, metrics="visitors")
    assert visitors(days) == [(str(F), 4), (str(F + ONE), 0)]
    hours = await get(client, los_angeles, "stats/timeseries", period="day", date=str(F), tz=LA, metrics="visitors")
    labels = [f"{F}T00:00:00", f"{F}T01:00:00", f"{F}T01:00:00"] + [f"{F}T{hh:02}:00:00" for hh in range(2, 24)]
    assert [h for h, _ in visitors(hours)] == labels
    counts = [n for _, n in visitors(hours)]
    assert counts[:3] == [1, 1, 1]  # 00:05 PDT; 01:30 PDT; 01:20 PST, the second 01:00
    assert counts[-1] == 1 and sum(counts) == 4  # 23:30 PST
    aggregate = await get(client, los_angeles, "stats/aggregate", period="day", date=str(F), tz=LA, metrics="visitors")
    assert aggregate["period"] == {"start": f"{F}T07:00:00Z", "end": f"{F + ONE}T08:00:00Z"}
    assert aggregate["results"]["visitors"]["value"] == 4


async def test_seven_days_in_kolkata_start_at_local_midnight(client) -> None:
    today = _today(KOLKATA)
    first = today - timedelta(days=6)
    # 23:50 IST the evening before the first day (excluded), 00:10 IST on it (included).
    site = await _site(client, "kolkata 7d", [view("out", first - ONE, 18, 20), view("in", first - ONE, 18, 40)])
    body = await get(client, site, "stats/aggregate", period="7d", tz=KOLKATA, metrics="visitors")
    assert body["results"]["visitors"]["value"] == 1
    assert body["period"]["start"] == f"{first - ONE}T18:30:00Z"


# --- the original event reads ------------------------------------------------------------------

async def test_event_summary_and_counts_read_dates_as_local_days(client, kolkata) -> None:
    day = await get(client, kolkata, "event-summary", startDate=str(K), endDate=str(K), tz=KOLKATA)
    assert (day["count"], day["uniqueUsers"]) == (4, 4)
    views = await get(client, kolkata, "event-summary", event="page_view", startDate=str(K), endDate=str(K), tz=KOLKATA)
    assert (views["count"], views["uniqueUsers"]) == (3, 3)
    assert day["startDate"].startswith(f"{K - ONE}T18:30:00")
    count = await get(client, kolkata, "events/count", start_date=str(K), end_date=str(K), tz=KOLKATA)
    assert count["count"] == 4
    groups = await get(client, kolkata, "events/grouped", start_date=str(K + ONE), tz=KOLKATA)
    assert [(g["key"], g["count"]) for g in groups["groups"]] == [("page_view", 1)]
    in_utc = await get(client, kolkata, "event-summary", startDate=str(K), endDate=str(K))
    assert (in_utc["count"], in_utc["uniqueUsers"]) == (3, 3)


async def test_daily_events_count_whole_local_days_frozen_utc_days_or_not(client, kolkata) -> None:
    days = (_today(KOLKATA) - K).days + 1  # K through today
    # In UTC first: its whole days are read from (and frozen into) the UTC-day rollup.
    in_utc = await get(client, kolkata, "events/daily", days=days + 1)
    assert {r["bucket"][:10]: r["count"] for r in in_utc["series"]} == {str(K - ONE): 3, str(K): 3}
    body = await get(client, kolkata, "events/daily", days=days, tz=KOLKATA)
    assert body["timezone"] == KOLKATA
    # r1's 23:40 on K-1 is before the first local day, though less than `days` x 24 hours ago. A bucket
    # is the moment its local day or hour starts (K 00:00 IST is K-1 18:30 UTC).
    assert [(r["bucket"], r["count"], r["unique_users"]) for r in body["series"]] == [
        (f"{K - ONE}T18:30:00Z", 4, 4), (f"{K}T18:30:00Z", 1, 1)]
    hours = await get(client, kolkata, "events/timeseries", interval="hour", days=days, tz=KOLKATA)
    assert [(r["bucket"], r["count"]) for r in hours["series"]] == [
        (f"{K - ONE}T18:30:00Z", 1), (f"{K - ONE}T23:30:00Z", 2), (f"{K}T17:30:00Z", 1), (f"{K}T18:30:00Z", 1)]


async def test_daily_events_in_los_angeles_across_both_dst_changes(client, los_angeles) -> None:
    days = (_today(LA) - S).days + 2
    body = await get(client, los_angeles, "events/daily", days=days, tz=LA)
    # Local midnight is 08:00 UTC in winter (PST), 07:00 UTC in summer (PDT).
    assert [(r["bucket"], r["count"]) for r in body["series"]] == [
        (f"{S - ONE}T08:00:00Z", 1), (f"{S}T08:00:00Z", 4), (f"{S + ONE}T07:00:00Z", 1), (f"{F}T07:00:00Z", 4)]


async def test_active_users_of_today_count_from_local_midnight(client) -> None:
    today = _today(KOLKATA)
    # 23:50 IST yesterday and 00:10 IST today (both may be the same UTC day).
    site = await _site(client, "kolkata dau", [view("yesterday", today - ONE, 18, 20),
                                                view("today", today - ONE, 18, 40)])
    assert (await get(client, site, "users/active", range="day", tz=KOLKATA))["activeUsers"] == 1
    assert (await get(client, site, "users/active", range="week", tz=KOLKATA))["activeUsers"] == 2


# --- funnels and retention ---------------------------------------------------------------------

async def test_funnel_of_a_local_day_counts_only_that_days_steps(client, kolkata) -> None:
    # r1 views a page at 23:40 IST and signs up 40 minutes later, on the next local day.
    body = await get(client, kolkata, "funnels", steps="page_view,signup", window=3600, period="day",
                     date=str(K - ONE), tz=KOLKATA)
    assert [s["visitors"] for s in body["steps"]] == [1, 0]
    body = await get(client, kolkata, "funnels", steps="page_view,signup", window=3600, period="day",
                     date=str(K - ONE))  # the UTC day K-1 holds both of r1's events, and k3's view
    assert [s["visitors"] for s in body["steps"]] == [2, 1]


async def test_retention_cohorts_are_local_days(client, kolkata) -> None:
    body = await get(client, kolkata, "retention", interval="day", cohorts=5, tz=KOLKATA)
    cohorts = {c["cohort"]: (c["size"], c["retained"]) for c in body["cohorts"]}
    assert cohorts == {str(K - ONE): (1, [1, 1, 0, 0, 0]), str(K): (3, [3, 0, 0, 0]),
                       str(K + ONE): (1, [1, 0, 0]), str(K + 2 * ONE): (0, [0, 0]), str(K + 3 * ONE): (0, [0])}


# --- the site's time zone ----------------------------------------------------------------------

async def set_timezone(client: httpx.AsyncClient, site: dict[str, Any], tz: str) -> None:
    r = await client.patch(f"/api/auth/apps/{site['app_id']}", headers=site["owner"]["headers"], json={"timezone": tz})
    assert r.status_code == 200 and r.json()["timezone"] == tz, r.text


async def test_the_sites_time_zone_is_the_default_of_every_read(client) -> None:
    site = await _site(client, "kolkata by default", KOLKATA_EVENTS)
    days = {"period": "custom", "date": f"{K - ONE},{K + ONE}", "interval": "day", "metrics": "visitors"}
    assert visitors(await get(client, site, "stats/timeseries", **days)) == [(str(K - ONE), 2), (str(K), 3), (str(K + ONE), 0)]
    await set_timezone(client, site, KOLKATA)

    async def local_days() -> bool:  # within the app directory's catch-up, no restart
        r = await client.get("/api/analytics/stats/timeseries", params=days, headers={**site["key"], **FRESH})
        return visitors(r.json()) == [(str(K - ONE), 1), (str(K), 4), (str(K + ONE), 1)]

    await eventually(local_days, 10, "the site's time zone never reached the query service")
    hours = await get(client, site, "stats/timeseries", period="day", date=str(K), metrics="visitors")
    assert [(h, n) for h, n in visitors(hours) if n] == [(f"{K}T00:00:00", 1), (f"{K}T05:00:00", 2), (f"{K}T23:00:00", 1)]
    day = await get(client, site, "stats/aggregate", period="day", date=str(K), metrics="visitors")
    assert day["period"] == {"start": f"{K - ONE}T18:30:00Z", "end": f"{K}T18:30:00Z"}
    summary = await get(client, site, "event-summary", startDate=str(K), endDate=str(K))
    assert (summary["count"], summary["uniqueUsers"]) == (4, 4)
    daily = await get(client, site, "events/daily", days=(_today(KOLKATA) - K).days + 1)
    assert (daily["timezone"], [(r["bucket"], r["count"]) for r in daily["series"]]) == (
        KOLKATA, [(f"{K - ONE}T18:30:00Z", 4), (f"{K}T18:30:00Z", 1)])
    funnel = await get(client, site, "funnels", steps="page_view,signup", window=3600, period="day", date=str(K - ONE))
    assert [s["visitors"] for s in funnel["steps"]] == [1, 0]
    retention = await get(client, site, "retention", interval="day", cohorts=5)
    assert retention["cohorts"][0] == {"cohort": str(K - ONE), "size": 1, "retained": [1, 1, 0, 0, 0],
                                       "rates": [100.0, 100.0, 0.0, 0.0, 0.0]}
    # A tz in the request still wins.
    assert visitors(await get(client, site, "stats/timeseries", tz="UTC", **days)) == [
        (str(K - ONE), 2), (str(K), 3), (str(K + ONE), 0)]


async def test_a_los_angeles_site_has_25_hours_on_its_fall_back_day_by_default(client) -> None:
    site = await _site(client, "los angeles by default", LA_EVENTS)
    await set_timezone(client, site, LA)

    async def local_hours() -> bool:
        r = await client.get("/api/analytics/stats/timeseries", params={"period": "day", "date": str(F)},
                             headers={**site["key"], **FRESH})
        return len(r.json()["results"]) == 25

    await eventually(local_hours, 10, "the site's time zone never reached the query service")
    hours = await get(client, site, "stats/timeseries", period="day", date=str(F), metrics="visitors")
    assert [n for _, n in visitors(hours)][:3] == [1, 1, 1] and hours["period"]["start"] == f"{F}T07:00:00Z"
    spring = await get(client, site, "stats/timeseries", period="day", date=str(S), metrics="visitors")
    assert len(spring["results"]) == 23
