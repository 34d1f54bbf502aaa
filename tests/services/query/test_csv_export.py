"""CSV export (issue #20): `format=csv` on the reports and the raw events of a range, over HTTP, from
the known history of test_query.py (day D: 4 visitors, 5 visits, 7 pageviews, 10 events)."""

from __future__ import annotations

import csv
import io
from datetime import timedelta
from typing import Any

import httpx
import pytest

from libs.runtime import Stack
from tests.conftest import register_app, signup_login
from tests.services.query.test_query import DAY, HISTORY, NEXT, D, at, send, site, wait_stored

pytestmark = pytest.mark.engines
__all__ = ["site"]  # the fixture, shared with test_query.py


async def csv_of(client: httpx.AsyncClient, app: dict[str, Any], path: str, **params: Any) -> tuple[httpx.Response, list[list[str]]]:
    r = await client.get(f"/api/analytics/{path}", params={**params, "format": "csv"}, headers={"x-api-key": app["api_key"]})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "text/csv; charset=utf-8"
    return r, list(csv.reader(io.StringIO(r.text)))


async def test_a_breakdown_as_csv_has_the_rows_of_its_json_answer(client, site) -> None:
    r, rows = await csv_of(client, site, "stats/breakdown", property="page", period="custom", date=DAY)
    assert rows == [["page", "visitors", "pageviews"], ["/pricing", "3", "3"], ["/", "2", "3"], ["/blog", "1", "1"]]
    assert r.headers["content-disposition"] == 'attachment; filename="stats-breakdown.csv"'
    assert r.headers["x-row-cap"] == "1000000"
    assert r.text.endswith("\r\n") and "\r\n/pricing,3,3\r\n" in r.text


async def test_the_aggregate_as_csv_is_one_row_per_metric(client, site) -> None:
    _, rows = await csv_of(client, site, "stats/aggregate", period="custom", date=DAY, metrics="visitors,visits,bounce_rate")
    assert rows == [["name", "value", "change"], ["visitors", "4", ""], ["visits", "5", ""], ["bounce_rate", "60.0", ""]]


async def test_series_funnels_retention_summary_and_users_as_csv(client, site) -> None:
    _, rows = await csv_of(client, site, "stats/timeseries", period="custom", date=f"{D},{NEXT}", interval="day")
    assert rows == [["date", "visitors", "pageviews"], [str(D), "4", "7"], [str(NEXT), "1", "1"]]
    _, rows = await csv_of(client, site, "funnels", steps="page_view,signup_click", period="custom", date=DAY)
    assert rows == [["name", "visitors", "conversion_rate", "step_conversion_rate"],
                    ["page_view", "4", "100.0", "100.0"], ["signup_click", "2", "50.0", "50.0"]]
    _, rows = await csv_of(client, site, "event-summary", startDate=str(D), endDate=str(D))
    assert rows[0][:3] == ["event", "count", "uniqueUsers"]
    summary = dict(zip(rows[0], rows[1], strict=True))
    assert (summary["count"], summary["uniqueUsers"], summary["deviceData.desktop"], summary["deviceData.mobile"]) == (
        "10", "4", "6", "4")
    _, rows = await csv_of(client, site, "users")
    assert [r[0] for r in rows] == ["userId", "alice", "bob"]
    _, rows = await csv_of(client, site, "paths", start="/pricing", depth=1, period="custom", date=DAY)
    assert rows == [["steps.0", "visits"], ["signup_click", "2"], ["", "1"]]


async def test_the_raw_events_of_a_range_stream_oldest_first_with_their_properties(client, site) -> None:
    r, rows = await csv_of(client, site, "events", start_date=str(D), end_date=str(D))
    header, body = rows[0], rows[1:]
    assert header[:3] == ["event_id", "type", "event_name"] and "properties" in header
    on_d = [e for e in HISTORY if e["timestamp"].startswith(str(D))]
    assert len(body) == len(on_d) == 10
    col = {name: n for n, name in enumerate(header)}
    assert [row[col["event_name"]] for row in body] == [e["event"] for e in sorted(on_d, key=lambda e: e["timestamp"])]
    assert [row[col["user_id"]] for row in body[:2]] == ["alice", "alice"]
    assert r.headers["content-disposition"] == 'attachment; filename="events.csv"'
    _, rows = await csv_of(client, site, "events", start_date=str(D), end_date=str(D), event_name="signup_click")
    assert len(rows) == 3


async def test_formula_cells_are_defused_and_the_row_cap_ends_the_export_with_a_note(client, stack: Stack, monkeypatch) -> None:
    app = await register_app(client, await signup_login(client), "csv tricks")
    events = [{"event": name, "url": "https://shop.test/a", "timestamp": at(D, 9, n), "userId": "u1",
               "properties": {"note": '=1+1, "quoted"'}}
              for n, name in enumerate(["=HYPERLINK(\"http://evil\")", "+cmd", "-2", "@sum", "plain, with comma"])]
    await send(client, app, events)
    await wait_stored(client, app, len(events))
    _, rows = await csv_of(client, app, "events", start_date=str(D), end_date=str(D))
    col = rows[0].index("event_name")
    assert [r[col] for r in rows[1:]] == ["'=HYPERLINK(\"http://evil\")", "'+cmd", "'-2", "'@sum", "plain, with comma"]
    assert rows[1][rows[0].index("properties")] == '{"note":"=1+1, \\"quoted\\""}'
    _, rows = await csv_of(client, app, "stats/breakdown", property="event_name", period="custom", date=DAY,
                           metrics="events")
    assert sorted(r[0] for r in rows[1:]) == sorted(["'=HYPERLINK(\"http://evil\")", "'+cmd", "'-2", "'@sum",
                                                     "plain, with comma"])
    assert [r[1] for r in rows[1:]] == ["1"] * 5

    monkeypatch.setattr(stack.settings, "query_csv_max_rows", 2)
    r, rows = await csv_of(client, app, "events", start_date=str(D), end_date=str(D))
    assert r.headers["x-row-cap"] == "2"
    assert len(rows) == 4 and rows[-1][0].startswith("# row cap of 2 rows reached")
    _, rows = await csv_of(client, app, "stats/breakdown", property="event_name", period="custom", date=DAY)
    assert len(rows) == 4 and rows[-1][0].startswith("# row cap of 2 rows reached")


@pytest.mark.parametrize(("method", "path", "params", "hint"), [
    ("GET", "stats/aggregate", {"format": "xml"}, "'json' or 'csv'"),
    ("DELETE", "users/nobody", {"format": "csv"}, "no CSV form"),
])
async def test_a_format_the_route_has_not_is_refused(client, site, method, path, params, hint) -> None:
    r = await client.request(method, f"/api/analytics/{path}", params=params, headers=site["key"])
    assert r.status_code == 422, r.text
    assert hint in r.json()["detail"] if isinstance(r.json()["detail"], str) else hint in r.text


async def test_another_apps_key_cannot_export_this_apps_events(client, site) -> None:
    other = await register_app(client, await signup_login(client), "stranger")
    r = await client.get("/api/analytics/events", params={"format": "csv", "app_id": site["app_id"],
                                                          "start_date": str(D - timedelta(days=1))},
                         headers={"x-api-key": other["api_key"]})
    assert r.status_code == 403, r.text
