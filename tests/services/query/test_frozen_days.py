"""Frozen days (services/query/frozen.py, issue #6): whole closed UTC days of event-summary, the daily
series and events grouped by name are read from exact counts computed once per day, trusted only while
nothing changed the day since (issue #5's exactness). Events go in through the gateway and the
aggregator; what got frozen is read from ClickHouse."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import httpx
import pytest

from libs.clickhouse import ClickHouse
from libs.runtime import Stack
from services.query import frozen
from tests.conftest import eventually, register_app, signup_login

pytestmark = pytest.mark.engines

FRESH = {"cache-control": "no-cache"}
TODAY = datetime.now(UTC).date()
D = TODAY - timedelta(days=3)
PREV, NEXT = D - timedelta(days=1), D + timedelta(days=1)
WHOLE_DAYS = {"startDate": str(D - timedelta(days=2)), "endDate": str(NEXT)}  # closed days only


def event(day: date, minute: int, user: str, device: str = "desktop", name: str = "page_view",
          event_id: str | None = None) -> dict[str, Any]:
    moment = datetime.combine(day, time(10), UTC) + timedelta(minutes=minute)
    return {"event": name, "userId": user, "device": device, "timestamp": moment.isoformat(),
            "url": "https://shop.test/", "event_id": event_id or uuid.uuid4().hex}


@pytest.fixture
async def app(client: httpx.AsyncClient) -> dict[str, Any]:
    app = await register_app(client, await signup_login(client), "frozen")
    return {**app, "key": {"x-api-key": app["api_key"], **FRESH}}


@pytest.fixture
async def ch(stack: Stack) -> ClickHouse:
    return await stack.runtime.clickhouse()


async def send(client: httpx.AsyncClient, app: dict[str, Any], events: list[dict[str, Any]]) -> None:
    r = await client.post("/api/analytics/collect", json={"events": events}, headers={"x-api-key": app["write_key"]})
    assert r.status_code == 202, r.text


async def changes(ch: ClickHouse, app: dict[str, Any], day: date) -> int:
    rows = await ch.query("SELECT sum(changes) AS n FROM events_day_changes WHERE app_id = {a:String} AND day = {d:Date}",
                          {"a": app["app_id"], "d": str(day)})
    return int(rows[0]["n"]) if rows else 0


async def send_and_wait(client: httpx.AsyncClient, ch: ClickHouse, app: dict[str, Any], events: list[dict[str, Any]]) -> None:
    """Send, then wait until the aggregator stored them (a copy too: it moves the days' change counters)."""
    days = sorted({datetime.fromisoformat(e["timestamp"]).date() for e in events})
    before = [await changes(ch, app, d) for d in days]
    await send(client, app, events)

    async def stored() -> bool:
        return all([await changes(ch, app, d) > n for d, n in zip(days, before, strict=True)])

    await eventually(stored, 20, "the aggregator did not store the events")


async def freeze_of(ch: ClickHouse, app: dict[str, Any], day: date) -> tuple[int, int] | None:
    """(version, events) of the day's newest freeze, or None."""
    rows = await ch.query(
        """SELECT version, sum(events) AS n FROM events_daily_frozen FINAL WHERE app_id = {a:String} AND day = {d:Date}
           GROUP BY version ORDER BY version DESC LIMIT 1""", {"a": app["app_id"], "d": str(day)})
    return (int(rows[0]["version"]), int(rows[0]["n"])) if rows else None


async def summary(client: httpx.AsyncClient, app: dict[str, Any], **params: Any) -> dict[str, Any]:
    r = await client.get("/api/analytics/event-summary", params=params or WHOLE_DAYS, headers=app["key"])
    assert r.status_code == 200, r.text
    body = r.json()
    return {"count": body["count"], "uniqueUsers": body["uniqueUsers"], "deviceData": body["deviceData"]}


async def test_a_closed_day_is_frozen_with_each_event_counted_once_and_later_reads_keep_that_freeze(
    client: httpx.AsyncClient, ch: ClickHouse, app: dict[str, Any]
) -> None:
    first = event(D, 0, "u1", "mobile")
    await send_and_wait(client, ch, app, [first, event(D, 1, "u2"), event(D, 2, "u3"), event(PREV, 0, "u1", "mobile")])
    await asyncio.sleep(0.3)  # past the aggregator's batch age: the retry is an insert of its own
    await send_and_wait(client, ch, app, [first])  # a client retry: stored twice

    assert await summary(client, app) == {"count": 4, "uniqueUsers": 3, "deviceData": {"desktop": 2, "mobile": 2}}
    assert await freeze_of(ch, app, D) == (await changes(ch, app, D), 3)
    assert await freeze_of(ch, app, PREV) == (await changes(ch, app, PREV), 1)
    assert await freeze_of(ch, app, NEXT) is None  # no events: nothing to freeze
    assert await summary(client, app) == {"count": 4, "uniqueUsers": 3, "deviceData": {"desktop": 2, "mobile": 2}}
    assert await freeze_of(ch, app, D) == (await changes(ch, app, D), 3)  # not frozen again


async def test_a_copy_of_an_event_stored_after_its_day_was_frozen_still_counts_once(
    client: httpx.AsyncClient, ch: ClickHouse, app: dict[str, Any]
) -> None:
    first = event(D, 0, "u1")
    await send_and_wait(client, ch, app, [first, event(D, 1, "u2")])
    assert (await summary(client, app))["count"] == 2
    frozen_at = await freeze_of(ch, app, D)
    assert frozen_at is not None

    await send_and_wait(client, ch, app, [first])  # a retry, after the day was frozen

    assert await summary(client, app) == {"count": 2, "uniqueUsers": 2, "deviceData": {"desktop": 2}}
    refrozen = await freeze_of(ch, app, D)
    assert refrozen == (await changes(ch, app, D), 2)
    assert refrozen[0] > frozen_at[0]


async def test_a_new_late_event_for_a_frozen_day_is_counted(
    client: httpx.AsyncClient, ch: ClickHouse, app: dict[str, Any]
) -> None:
    await send_and_wait(client, ch, app, [event(D, 0, "u1"), event(D, 1, "u2")])
    assert await summary(client, app) == {"count": 2, "uniqueUsers": 2, "deviceData": {"desktop": 2}}

    await send_and_wait(client, ch, app, [event(D, 30, "u3", "tablet")])  # late: an offline client syncing

    assert await summary(client, app) == {"count": 3, "uniqueUsers": 3, "deviceData": {"desktop": 2, "tablet": 1}}
    assert await freeze_of(ch, app, D) == (await changes(ch, app, D), 3)


async def test_deleting_a_user_changes_the_counts_of_their_frozen_days(
    client: httpx.AsyncClient, ch: ClickHouse, app: dict[str, Any]
) -> None:
    await send_and_wait(client, ch, app, [event(D, 0, "zoe", "mobile"), event(D, 1, "zoe", "mobile"),
                                          event(D, 2, "yan"), event(PREV, 0, "zoe", "mobile")])
    assert await summary(client, app) == {"count": 4, "uniqueUsers": 2, "deviceData": {"mobile": 3, "desktop": 1}}
    assert await freeze_of(ch, app, PREV) is not None

    r = await client.delete("/api/analytics/users/zoe", headers={"x-api-key": app["api_key"]})
    assert r.json() == {"deleted": 3}

    assert await summary(client, app) == {"count": 1, "uniqueUsers": 1, "deviceData": {"desktop": 1}}
    assert await freeze_of(ch, app, D) == (await changes(ch, app, D), 1)


async def test_answers_with_and_without_frozen_days_are_the_same_on_a_history_with_copies(
    client: httpx.AsyncClient, ch: ClickHouse, app: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    days = [D - timedelta(days=2), PREV, D, NEXT, TODAY]
    history = [event(day, i, f"u{i % 4}", ("mobile", "desktop", "tablet")[i % 3], ("page_view", "signup")[i % 2])
               for day in days for i in range(6)]
    await send_and_wait(client, ch, app, history)
    await asyncio.sleep(0.3)
    await send_and_wait(client, ch, app, history[::3])  # copies of a third of them, in later inserts
    reads = [
        ("event-summary", WHOLE_DAYS),
        ("event-summary", {**WHOLE_DAYS, "event": "signup"}),
        ("event-summary", {"startDate": f"{D - timedelta(days=2)}T10:02:00Z", "endDate": f"{NEXT}T10:03:00Z"}),
        ("events/grouped", {"start_date": str(D - timedelta(days=2)), "end_date": str(NEXT)}),
        ("events/daily", {"days": 6}),
        ("events/daily", {"days": 6, "event_name": "page_view"}),
    ]

    async def answers() -> list[Any]:
        found = []
        for path, params in reads:
            r = await client.get(f"/api/analytics/{path}", params=params, headers=app["key"])
            assert r.status_code == 200, r.text
            found.append({k: v for k, v in r.json().items() if k not in ("startDate", "endDate")})
        return found

    monkeypatch.setattr(frozen, "MAX_DAYS_PER_READ", 0)
    from_rollup = await answers()
    assert all([await freeze_of(ch, app, d) is None for d in days])
    monkeypatch.undo()
    from_frozen_days = await answers()

    assert all([await freeze_of(ch, app, d) is not None for d in days[:-1]])  # every closed day, not today
    assert await freeze_of(ch, app, TODAY) is None
    assert from_frozen_days == from_rollup
    assert from_frozen_days[0]["count"] == 24  # 4 closed days x 6 events, each once
    assert {g["key"]: g["count"] for g in from_frozen_days[3]["groups"]} == {"page_view": 12, "signup": 12}
