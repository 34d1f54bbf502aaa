"""No 500 for anything a client can send to the query service; ClickHouse's errors told apart (an
outage is a 503, a value ClickHouse refuses a 4xx, anything else a logged 500 with the request id);
an unexpected error answered as a normal JSON 500 on a connection that stays open.

Every route and every date, period, number and text parameter is tried with extreme values: days far
outside what the event store holds (its timestamps are DateTime64(3): 1900-01-01 to 2299-12-31),
huge, negative and malformed numbers, NUL characters and very long text.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request

from libs.http import RequestContextMiddleware, install_error_handlers
from libs.runtime import Stack
from services.http_protocol import OneWriteHttpToolsProtocol
from tests.conftest import register_app, serving, signup_login

pytestmark = pytest.mark.engines

OUT_OF_RANGE_DAYS = ["9999-12-31", "0001-01-01", "1899-12-31", "2300-01-01"]
MALFORMED_DAYS = ["garbage", "2026-02-30", "-1", "99999999999", "2026-01-01\x00"]
EXTREME_MOMENTS = ["9999-12-31T23:59:59Z", "0001-01-01T00:00:00+14:00", "0001-01-01T00:00:00", "1899-12-31T23:59:59Z",
                   "2300-01-01T00:00:01Z"]
BAD_DAYS = OUT_OF_RANGE_DAYS + MALFORMED_DAYS + EXTREME_MOMENTS
RANGE_ROUTES = [("event-summary", "startDate", "endDate"), ("events", "start_date", "end_date"),
                ("events/count", "start_date", "end_date"), ("events/grouped", "start_date", "end_date"),
                ("metrics", "start_date", "end_date")]
PERIOD_ROUTES = [("stats/aggregate", {}), ("stats/timeseries", {}), ("stats/breakdown", {}),
                 ("funnels", {"steps": "page_view,signup_click"})]
BAD_PERIOD_DATES = (
    [("day", d) for d in BAD_DAYS[:9]]
    + [("month", m) for m in ("9999-12", "0001-01", "1899-12", "2300-01", "2026-13", "garbage")]
    + [("custom", d) for d in ("0001-01-01,0001-01-02", "9999-12-30,9999-12-31", "2299-12-31,2300-01-01",
                               "1899-12-31,1900-01-01", "garbage,2026-01-01", ",")]
)
HUGE = "9" * 30
NUMBERS = [
    ("events", "page"), ("events", "limit"), ("users", "page"), ("users", "limit"), ("stats/breakdown", "limit"),
    ("events/grouped", "limit"), ("events/daily", "days"), ("events/timeseries", "days"), ("retention", "cohorts"),
    ("user-stats", "recent"), ("metrics/timeseries", "days"), ("funnels", "window"),
]
NEEDS = {"user-stats": {"userId": "alice"}, "metrics/timeseries": {"metric_name": "m"},
         "funnels": {"steps": "page_view,signup_click"}}
TZ_ROUTES = ["events/daily", "events/timeseries", "metrics/timeseries", "stats/aggregate", "stats/timeseries",
             "stats/breakdown", "funnels", "retention", "event-summary", "events", "events/count", "events/grouped",
             "metrics", "users/active"]
NUL = "a\x00b"
LONG = "x" * 5000


def _bad(case: str, path: str, params: dict[str, Any], name: str) -> Any:
    """A request that must be answered 422 with a detail naming `name`."""
    return pytest.param(path, params, name, id=case)


def _cases() -> list[Any]:
    out = []
    for path, start, end in RANGE_ROUTES:
        for name in (start, end):
            for value in BAD_DAYS:
                out.append(_bad(f"{path} {name}={value!r}", path, {name: value}, name))
    for path, extra in PERIOD_ROUTES:
        for period, value in BAD_PERIOD_DATES:
            out.append(_bad(f"{path} period={period} date={value!r}", path, {**extra, "period": period, "date": value},
                            "date"))
        out.append(_bad(f"{path} day 1899-12-31 in Tokyo", path, {**extra, "period": "day", "date": "1899-12-31",
                                                                   "tz": "Asia/Tokyo"}, "date"))
    for path, name in NUMBERS:
        for value in (HUGE, "-1", "0", "abc", "1e3", "1.5"):
            out.append(_bad(f"{path} {name}={value}", path, {**NEEDS.get(path, {}), name: value}, name))
    for path in TZ_ROUTES:
        for value in ("Mars/Olympus", "\x00", "../../etc/passwd", "/etc/localtime", "UTC\x00", "A" * 65):
            out.append(_bad(f"{path} tz={value[:20]!r}", path, {**NEEDS.get(path, {}), "tz": value}, "tz"))
    for value in ("²", HUGE, "0", "100001"):
        out.append(_bad(f"breakdown page={value}", "stats/breakdown", {"page": value}, "page"))
    out.append(_bad("events page past the last", "events", {"page": "100001"}, "page"))
    out.append(_bad("user-stats userId too long", "user-stats", {"userId": LONG}, "userId"))
    out.append(_bad("events event_name too long", "events", {"event_name": LONG}, "event_name"))
    out.append(_bad("stats filter too long", "stats/aggregate", {"browser": LONG}, "browser"))
    out.append(_bad("funnel steps too long", "funnels", {"steps": LONG}, "steps"))
    return out


@pytest.fixture(scope="module")
async def reader(client: httpx.AsyncClient) -> dict[str, str]:
    app = await register_app(client, await signup_login(client), "edges")
    return {"x-api-key": app["api_key"]}


@pytest.mark.parametrize(("path", "params", "name"), _cases())
async def test_extreme_parameters_answer_422_naming_the_parameter(client, reader, path, params, name) -> None:
    r = await client.get(f"/api/analytics/{path}", params=params, headers=reader)
    assert r.status_code == 422, r.text
    assert name in r.text, r.text


ACCEPTED = [
    pytest.param("event-summary", {"startDate": "2299-12-30", "endDate": "2299-12-31"}, id="summary of the last days"),
    pytest.param("event-summary", {"startDate": "1900-01-01", "endDate": "1900-01-02"}, id="summary of the first days"),
    pytest.param("events", {"end_date": "1900-01-05"}, id="events ending near the first day (default start)"),
    pytest.param("events", {"start_date": "2299-12-31T00:00:00-05:00", "end_date": "2299-12-31T23:00:00-05:00"},
                 id="events with an offset past the last UTC day"),
    pytest.param("events/count", {"start_date": "2299-12-01", "end_date": "2299-12-31T23:59:59.999Z"},
                 id="count to the last moment"),
    pytest.param("events", {"page": "100000", "limit": "1000"}, id="the last page of the largest size"),
    pytest.param("users", {"page": "100000", "limit": "1000"}, id="users: the last page"),
    pytest.param("stats/breakdown", {"page": "100000", "limit": "1000"}, id="breakdown: the last page"),
    pytest.param("stats/aggregate", {"period": "day", "date": "2299-12-31", "tz": "Pacific/Kiritimati"}, id="last day"),
    pytest.param("stats/aggregate", {"period": "day", "date": "1900-01-01", "tz": "America/New_York"}, id="first day"),
    pytest.param("stats/aggregate", {"period": "custom", "date": "1900-01-01,1900-01-31", "compare": "previous_period"},
                 id="first month compared with the month before the store begins"),
    pytest.param("stats/timeseries", {"period": "month", "date": "2299-12"}, id="timeseries of the last month"),
    pytest.param("event-summary", {"startDate": "2299-12-31", "endDate": "2299-12-31", "tz": "Pacific/Pago_Pago"},
                 id="summary of the last day, 11 hours behind UTC"),
    pytest.param("events/count", {"start_date": "1900-01-01", "end_date": "1900-01-03", "tz": "Asia/Tokyo"},
                 id="count from the first day in Tokyo"),
    pytest.param("events/grouped", {"start_date": "1900-01-01T00:00:00", "end_date": "1900-01-02", "tz": "Asia/Kolkata"},
                 id="groups from a local time on the first day"),
    pytest.param("events/daily", {"days": "732", "tz": "Pacific/Kiritimati"}, id="the longest daily series, 14 hours ahead"),
    pytest.param("stats/timeseries", {"period": "day", "date": "1900-01-01", "tz": "Asia/Kolkata"},
                 id="hourly series of the first day"),
    pytest.param("funnels", {"steps": "a,b", "period": "day", "date": "2299-12-31"}, id="funnel of the last day"),
    pytest.param("funnels", {"steps": f"{NUL},b", "period": "7d"}, id="funnel steps with NUL"),
    pytest.param("events", {"event_name": NUL, "user_id": NUL}, id="events filtered by NUL values"),
    pytest.param("stats/aggregate", {"browser": NUL, "page": "/\x00"}, id="stats filtered by NUL values"),
    pytest.param("users", {"search": NUL}, id="users searched with NUL"),
]


@pytest.mark.parametrize(("path", "params"), ACCEPTED)
async def test_values_at_the_edges_of_what_the_store_holds_are_answered(client, reader, path, params) -> None:
    r = await client.get(f"/api/analytics/{path}", params=params, headers=reader)
    assert r.status_code == 200, r.text


ODD_IDS = [pytest.param(v, id=i) for v, i in (
    ("%00", "NUL"), ("a%00b%0A", "NUL and newline"), ("x" * 5000, "very long"), ("é🙂", "unicode"), ("..", "dots"))]


@pytest.mark.parametrize("value", ODD_IDS)
async def test_odd_ids_and_user_ids_in_paths_and_parameters_are_4xx(client, reader, value) -> None:
    answers = [
        await client.get(f"/api/analytics/events/{value}", headers=reader),
        await client.get("/api/analytics/user-stats", params={"userId": value.replace("%00", NUL)}, headers=reader),
        await client.get(f"/api/analytics/users/{value}/export", headers=reader),
        await client.delete(f"/api/analytics/users/{value}", headers=reader),
    ]
    for r in answers:
        assert r.status_code < 500, (r.request.url, r.text)
    assert answers[0].status_code in (404, 422), answers[0].text
    assert answers[1].status_code in (404, 422), answers[1].text


# --- ClickHouse's errors, from the real engine ------------------------------------------------------

# (id, SQL, bound values, status the client gets)
ENGINE_CASES = [
    ("a bound value ClickHouse cannot parse", "SELECT {t:DateTime64(3, 'UTC')} AS t", {"t": "1-01-01 00:00:00.000"}, 422),
    ("an argument ClickHouse refuses", "SELECT toStartOfHour(now(), {tz:String}) AS h", {"tz": "Mars/Olympus"}, 422),
    ("a query over the time limit", "SELECT count() AS n FROM numbers_mt(1000000000000) SETTINGS max_execution_time = 0.2",
     None, 503),
    ("a query over the memory limit",
     "SELECT length(groupArray(number)) AS n FROM numbers(10000000) SETTINGS max_memory_usage = 1000000", None, 503),
    ("a bug: a table that does not exist", "SELECT * FROM no_such_table", None, 500),
]


@pytest.fixture
async def error_app(stack: Stack) -> AsyncIterator[str]:
    """An app as every service builds it (install_error_handlers + RequestContextMiddleware), whose
    routes run queries on the real chDB engine or fail unexpectedly, served by uvicorn."""
    ch = await stack.runtime.clickhouse()
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/engine/{case}")
    async def engine(case: int) -> dict[str, Any]:
        _, sql, params, _ = ENGINE_CASES[case]
        return {"rows": await ch.query(sql, params)}

    @app.get("/boom")
    async def boom() -> None:
        raise KeyError("a bug")

    @app.get("/peer")
    async def peer(request: Request) -> dict[str, Any]:
        return {"port": request.client.port if request.client else None}

    app.add_middleware(RequestContextMiddleware, service="test")
    async with serving(app, http=OneWriteHttpToolsProtocol) as url:
        yield url


def error_logged(caplog: pytest.LogCaptureFixture, request_id: str) -> dict[str, Any]:
    """The structured error line logged for the request (structlog hands logging its event dicts)."""
    for record in caplog.records:
        event = record.msg if isinstance(record.msg, dict) else {}
        if record.levelno >= logging.ERROR and event.get("request_id") == request_id:
            assert isinstance(event.get("exc_info"), BaseException), event  # the exception itself, with its traceback
            return event
    raise AssertionError(f"no error logged for request {request_id}: {[r.msg for r in caplog.records]}")


@pytest.mark.parametrize(("case", "status"), [pytest.param(i, c[3], id=c[0]) for i, c in enumerate(ENGINE_CASES)])
async def test_clickhouse_errors_are_told_apart_by_their_code(error_app, caplog, case, status) -> None:
    async with httpx.AsyncClient(base_url=error_app, timeout=30) as http:
        with caplog.at_level(logging.ERROR):
            r = await http.get(f"/engine/{case}", headers={"x-request-id": f"rid-{case}"})
    assert r.status_code == status, r.text
    body = r.json()
    if status == 503:
        assert r.headers["retry-after"] == "1"
        assert "unavailable" in body["detail"]
    elif status == 422:
        assert "refused" in body["detail"] and "Code" not in body["detail"], body  # no engine internals
    else:
        assert body == {"detail": "internal error", "request_id": f"rid-{case}"}
        assert "no_such_table" in str(error_logged(caplog, f"rid-{case}")["exc_info"])


async def test_an_unexpected_error_is_a_json_500_and_the_connection_stays_open(error_app, caplog) -> None:
    async with httpx.AsyncClient(base_url=error_app, timeout=10, limits=httpx.Limits(max_connections=1)) as http:
        before = (await http.get("/peer")).json()["port"]
        with caplog.at_level(logging.ERROR):
            r = await http.get("/boom", headers={"x-request-id": "boom-1"})
        after = (await http.get("/peer")).json()["port"]
    assert after == before, "the 500 closed the keep-alive connection"
    assert r.status_code == 500
    assert r.json() == {"detail": "internal error", "request_id": "boom-1"}
    assert r.headers["x-request-id"] == "boom-1"
    assert isinstance(error_logged(caplog, "boom-1")["exc_info"], KeyError)


async def test_chdb_and_the_server_adapter_classify_the_same_codes_alike(stack: Stack) -> None:
    """The embedded adapter on real errors, and the server adapter on clickhouse-connect's exceptions
    for the same codes (as the driver builds them from a server's answer), give the same classes."""
    from clickhouse_connect.driver._backend.httpcommon import build_http_error

    from libs.clickhouse import ClickHouseError
    from libs.clickhouse.http import classified

    ch = await stack.runtime.clickhouse()
    for _, sql, params, _ in ENGINE_CASES:
        with pytest.raises(ClickHouseError) as caught:
            await ch.query(sql, params)
        engine = caught.value
        assert engine.code is not None
        driver = build_http_error(500, str(engine.code), f"Code: {engine.code}. DB::Exception: x", True, "http://ch", False)
        assert type(classified(driver)) is type(engine), (engine, driver)
