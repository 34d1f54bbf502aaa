"""Alerts: made at auth, checked by the query service on the real ClickHouse every second (the tests'
ALERTS_CHECK_INTERVAL_S), delivered by email (the notifier, into the embedded SMTP sink) and by webhook
(a receiver the test runs). Numbers are computed by hand from the events each test sends."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from libs.alerts import STATS_FILTERS, STATS_METRICS
from libs.apps import AppRecord
from libs.embedded.smtp_sink import read_inbox
from libs.kafka import APPS_TOPIC, make_producer, publish
from libs.settings import Settings
from services.query import stats
from tests.conftest import eventually, register_app, signup_login
from tests.services.auth.test_webhooks import add_hook, deliveries, receiver, verify

pytestmark = pytest.mark.engines


def test_alerts_know_every_stats_metric_and_filter() -> None:
    assert STATS_METRICS == stats.METRICS
    assert set(STATS_FILTERS) == set(stats.FILTERS)


async def send(client: httpx.AsyncClient, app: dict[str, Any], events: list[dict[str, Any]]) -> None:
    r = await client.post("/api/analytics/collect", json={"events": events}, headers={"x-api-key": app["write_key"]})
    assert r.status_code == 202, r.text


async def stored(client: httpx.AsyncClient, app: dict[str, Any], count: int) -> None:
    async def there() -> bool:
        since = (datetime.now(UTC) - timedelta(days=9)).date().isoformat()
        r = await client.get("/api/analytics/events/count", params={"start_date": since}, headers={"x-api-key": app["api_key"]})
        return r.json()["count"] == count

    await eventually(there, 15, f"the {count} events were not stored")


async def add_alert(client: httpx.AsyncClient, user: dict[str, Any], app_id: str, **body: Any) -> dict[str, Any]:
    r = await client.post(f"/api/auth/apps/{app_id}/alerts", json=body, headers=user["headers"])
    assert r.status_code == 201, r.text
    return r.json()


async def delete_alerts(client: httpx.AsyncClient, user: dict[str, Any], app_id: str) -> None:
    """Stop the test's alerts: the checker checks every alert every second for the rest of the session."""
    for alert in (await alerts_of(client, user, app_id)).values():
        r = await client.delete(f"/api/auth/apps/{app_id}/alerts/{alert['id']}", headers=user["headers"])
        assert r.status_code == 204


async def alerts_of(client: httpx.AsyncClient, user: dict[str, Any], app_id: str) -> dict[str, dict[str, Any]]:
    r = await client.get(f"/api/auth/apps/{app_id}/alerts", headers=user["headers"])
    assert r.status_code == 200, r.text
    return {a["name"]: a for a in r.json()}


async def test_above_below_and_spike_fire_with_the_numbers_they_saw(client: httpx.AsyncClient, engines: Settings) -> None:
    owner = await signup_login(client)
    app = await register_app(client, owner, "Watched")
    week_ago = datetime.now(UTC) - timedelta(days=7, minutes=30)  # inside last week's copy of the 1h window
    # Now: 3 events of 3 visitors (u1 twice on /pricing pages), 1 of them a pageview. A week ago: 2 events.
    await send(client, app, [
        {"event": "signup", "userId": "u1"}, {"event": "signup", "userId": "u2"},
        {"event": "pageview", "userId": "u3", "url": "https://shop.example/pricing"},
        {"event": "signup", "userId": "w1", "timestamp": week_ago.isoformat()},
        {"event": "signup", "userId": "w2", "timestamp": (week_ago + timedelta(minutes=1)).isoformat()},
    ])
    await stored(client, app, 5)
    async with receiver() as got:
        hook = await add_hook(client, owner, app["app_id"], got.url, ["alert.fired"])
        common = {"window": "1h", "channels": ["webhook"]}
        await add_alert(client, owner, app["app_id"], name="many", metric="events", condition="above", threshold=2, **common)
        await add_alert(client, owner, app["app_id"], name="few", metric="visitors", condition="below", threshold=5, **common)
        await add_alert(client, owner, app["app_id"], name="rise", metric="events", condition="spike", threshold=40, **common)
        # These do not hold: 3 is not above 3, 3 visitors are not below 3, +50% is under +60%, and a signup filter
        # leaves 2 events (not above 2).
        await add_alert(client, owner, app["app_id"], name="not-above", metric="events", condition="above", threshold=3, **common)
        await add_alert(client, owner, app["app_id"], name="not-below", metric="visitors", condition="below", threshold=3, **common)
        await add_alert(client, owner, app["app_id"], name="not-rise", metric="events", condition="spike", threshold=60, **common)
        await add_alert(client, owner, app["app_id"], name="filtered", metric="events", condition="above", threshold=2,
                        filters={"event_name": "signup"}, **common)

        async def three() -> bool:
            return len(got.got) >= 3

        await eventually(three, 20, "the three alerts that hold did not all fire")
        listed = await alerts_of(client, owner, app["app_id"])
    fired = {orjson.loads(body)["data"]["name"]: (headers, body) for headers, body in got.got}
    assert sorted(fired) == ["few", "many", "rise"]
    data = {name: orjson.loads(body)["data"] for name, (_, body) in fired.items()}
    assert (data["many"]["value"], data["many"]["threshold"], data["many"]["condition"]) == (3.0, 2.0, "above")
    assert (data["few"]["value"], data["few"]["threshold"], data["few"]["condition"]) == (3.0, 5.0, "below")
    assert (data["rise"]["current"], data["rise"]["baseline"], data["rise"]["value"]) == (3.0, 2.0, 50.0)
    assert data["many"]["window"] == "1h" and data["many"]["app_id"] == app["app_id"]
    for headers, body in fired.values():
        assert verify(hook["secret"], headers, body)
        assert orjson.loads(body)["type"] == "alert.fired"
    assert {n for n, a in listed.items() if a["firing"]} == {"few", "many", "rise"}
    assert listed["rise"]["last_value"] == 50.0 and listed["many"]["last_fired_at"] is not None
    assert [d["event_type"] for d in await deliveries(client, owner, app["app_id"], hook["id"])] == ["alert.fired"] * 3
    await delete_alerts(client, owner, app["app_id"])


async def test_a_custom_metric_alert_fires_once_per_breach_by_email(client: httpx.AsyncClient, engines: Settings) -> None:
    """Above 20 on the average: 25 fires (one email); it stays above over the next checks without a second
    email; 25 and 5 average 15, a recovery; 25, 5 and 45 average 25: it fires again."""
    owner = await signup_login(client)
    app = await register_app(client, owner, "Oven")

    async def metric(value: float) -> None:
        r = await client.post("/api/analytics/metrics", json={"metric_name": "oven.temp", "value": value},
                              headers={"x-api-key": app["write_key"]})
        assert r.status_code == 202, r.text

    def mails() -> list[Any]:
        return [m for m in read_inbox(engines.data_dir / "mail")
                if m["To"] == owner["email"] and str(m["Subject"]).startswith('Alert "hot" for Oven')]

    await metric(25)
    alert = await add_alert(client, owner, app["app_id"], name="hot", metric="custom", metric_name="oven.temp",
                            custom_stat="avg", window="1h", condition="above", threshold=20, channels=["email"])
    assert alert["metric_name"] == "oven.temp" and alert["custom_stat"] == "avg" and alert["firing"] is False

    async def one_mail() -> bool:
        return len(mails()) == 1

    await eventually(one_mail, 20, "no alert email")
    [mail] = mails()
    assert mail["Subject"] == 'Alert "hot" for Oven: oven.temp 25.0'
    text = mail.get_body(("plain",)).get_content()
    assert "oven.temp over the last 1h: 25.0, above the threshold of 20.0." in text
    before = (await alerts_of(client, owner, app["app_id"]))["hot"]
    assert before["firing"] is True and before["last_value"] == 25.0

    # The checker goes on checking (its own table says when it last did) and, still breached, sends nothing.
    conn = await asyncpg.connect(engines.database_url)
    try:
        async def last_check() -> datetime:
            return await conn.fetchval("SELECT last_checked_at FROM query_alerts WHERE id = $1", uuid.UUID(alert["id"]))

        seen: set[datetime] = set()

        async def checked_twice_more() -> bool:
            at = await last_check()
            if at is not None:
                seen.add(at)
            return len(seen) >= 3

        await eventually(checked_twice_more, 10, "the checker stopped checking")
    finally:
        await conn.close()
    await asyncio.sleep(0.5)  # what a check might have sent has reached the sink
    assert len(mails()) == 1

    await metric(5)

    async def recovered() -> bool:
        return (await alerts_of(client, owner, app["app_id"]))["hot"]["firing"] is False

    await eventually(recovered, 20, "the alert never recovered")
    assert (await alerts_of(client, owner, app["app_id"]))["hot"]["last_value"] == 15.0
    await metric(45)

    async def two_mails() -> bool:
        return len(mails()) == 2

    await eventually(two_mails, 20, "the alert did not fire again after recovering")
    assert {m["Subject"] for m in mails()} == {'Alert "hot" for Oven: oven.temp 25.0'}
    await delete_alerts(client, owner, app["app_id"])


async def test_alert_input_is_checked(client: httpx.AsyncClient) -> None:
    owner = await signup_login(client)
    app = await register_app(client, owner, "Strict")
    path = f"/api/auth/apps/{app['app_id']}/alerts"
    base = {"name": "a", "metric": "visitors", "condition": "above", "threshold": 1, "channels": ["email"]}
    for bad in ({"metric": "nope"}, {"metric": "custom"}, {"metric_name": "x"}, {"window": "2h"}, {"channels": []},
                {"channels": ["sms"]}, {"filters": {"planet": "mars"}}, {"condition": "sideways"},
                {"metric": "custom", "metric_name": "t", "filters": {"page": "/"}}):
        r = await client.post(path, json={**base, **bad}, headers=owner["headers"])
        assert r.status_code == 422, (bad, r.text)
        assert "detail" in r.json()


async def test_other_users_cannot_see_or_touch_an_apps_alerts(client: httpx.AsyncClient) -> None:
    owner, other = await signup_login(client), await signup_login(client)
    app = await register_app(client, owner, "Private")
    theirs = await register_app(client, other, "Theirs")
    alert = await add_alert(client, owner, app["app_id"], name="x", metric="visitors", condition="above", threshold=1e9,
                            channels=["email"])
    base = f"/api/auth/apps/{app['app_id']}/alerts"
    h = other["headers"]
    assert (await client.get(base, headers=h)).status_code == 403
    assert (await client.post(base, json={"name": "y", "metric": "visitors", "condition": "above", "threshold": 1,
                                          "channels": ["email"]}, headers=h)).status_code == 403
    assert (await client.delete(f"{base}/{alert['id']}", headers=h)).status_code == 403
    assert (await client.delete(f"/api/auth/apps/{theirs['app_id']}/alerts/{alert['id']}", headers=h)).status_code == 404
    assert [a["id"] for a in (await client.get(base, headers=owner["headers"])).json()] == [alert["id"]]
    assert (await client.delete(f"{base}/{alert['id']}", headers=owner["headers"])).status_code == 204
    assert (await client.get(base, headers=owner["headers"])).json() == []


async def test_an_alert_delivery_answered_500_is_retried_with_the_same_signed_message(client: httpx.AsyncClient) -> None:
    owner = await signup_login(client)
    app = await register_app(client, owner, "Quiet")
    async with receiver(fail_first=1) as got:
        hook = await add_hook(client, owner, app["app_id"], got.url, ["alert.fired"])
        # No visitors at all: 0 is below 1, so the first check fires.
        await add_alert(client, owner, app["app_id"], name="empty", metric="visitors", window="1h", condition="below",
                        threshold=1, channels=["webhook"])

        async def delivered() -> bool:
            listed = await deliveries(client, owner, app["app_id"], hook["id"])
            return bool(listed) and listed[0]["status"] == "delivered"

        await eventually(delivered, 20, "the alert's delivery never succeeded")
    [delivery] = await deliveries(client, owner, app["app_id"], hook["id"])
    assert delivery["event_type"] == "alert.fired"
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 200]
    (first, body1), (second, body2) = got.got
    assert first["webhook-id"] == second["webhook-id"] and body1 == body2
    assert verify(hook["secret"], first, body1) and verify(hook["secret"], second, body2)
    data = orjson.loads(body2)["data"]
    assert (data["name"], data["metric"], data["value"], data["threshold"]) == ("empty", "visitors", 0.0, 1.0)
    await delete_alerts(client, owner, app["app_id"])


async def test_the_alerts_of_an_app_deleted_are_no_longer_checked(client: httpx.AsyncClient, engines: Settings) -> None:
    """An app's deletion (auth.apps.v1, `deleted`) takes its alerts along at auth without tombstones; the
    checker, which knows apps from that topic, drops them from its own table."""
    owner = await signup_login(client)
    app = await register_app(client, owner, "Doomed")
    alert = await add_alert(client, owner, app["app_id"], name="never", metric="visitors", condition="above",
                            threshold=1e9, channels=["email"])
    conn = await asyncpg.connect(engines.database_url)
    try:
        async def checked() -> bool:
            return await conn.fetchval("SELECT last_checked_at FROM query_alerts WHERE id = $1",
                                       uuid.UUID(alert["id"])) is not None

        await eventually(checked, 15, "the alert was never checked")
        producer = make_producer(engines)
        await producer.start()
        try:
            gone = AppRecord(app_id=app["app_id"], owner_id=owner["id"], name="Doomed",
                             version=int(datetime.now(UTC).timestamp() * 1e6) + 10**9, deleted=True)
            await publish(producer, APPS_TOPIC, gone.to_message(), key=app["app_id"])
        finally:
            await producer.stop()

        async def dropped() -> bool:
            return await conn.fetchval("SELECT count(*) FROM query_alerts WHERE id = $1", uuid.UUID(alert["id"])) == 0

        await eventually(dropped, 15, "the deleted app's alert is still checked")
    finally:
        await conn.close()
