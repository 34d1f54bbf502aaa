"""Scheduled reports: an app's owner subscribes, the query service's scheduler mails the app's numbers
(through the notifier, into the embedded sink); nobody else can subscribe to that app."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from libs.embedded.smtp_sink import read_inbox
from libs.notifications import next_report_at, report_start
from libs.settings import Settings
from services.query.reports import period_label
from tests.conftest import eventually, register_app, signup_login

pytestmark = pytest.mark.engines


def test_reports_cover_whole_days_and_weeks() -> None:
    wed = datetime(2026, 11, 18, 15, 30, tzinfo=UTC)
    assert next_report_at("daily", wed) == datetime(2026, 11, 19, tzinfo=UTC)
    assert next_report_at("weekly", wed) == datetime(2026, 11, 23, tzinfo=UTC)  # Monday
    monday = datetime(2026, 11, 23, tzinfo=UTC)
    assert next_report_at("weekly", monday) == monday + timedelta(days=7)
    assert next_report_at("daily", monday) == monday + timedelta(days=1)


def test_reports_cover_whole_local_days_and_weeks_of_the_sites_time_zone() -> None:
    """Hand-computed: Los Angeles is UTC-8 in winter, UTC-7 in summer (from 2026-03-08 02:00 to 2026-11-01
    02:00 local); Kolkata is UTC+5:30 all year."""
    wed = datetime(2026, 11, 18, 15, 30, tzinfo=UTC)  # 07:30 PST, 21:00 IST
    assert next_report_at("daily", wed, "America/Los_Angeles") == datetime(2026, 11, 19, 8, tzinfo=UTC)
    assert next_report_at("daily", wed, "Asia/Kolkata") == datetime(2026, 11, 18, 18, 30, tzinfo=UTC)
    assert next_report_at("weekly", wed, "Asia/Kolkata") == datetime(2026, 11, 22, 18, 30, tzinfo=UTC)
    # The day the clocks went back has 25 hours; the day they went forward 23.
    fall_end = datetime(2026, 11, 2, 8, tzinfo=UTC)
    assert next_report_at("daily", datetime(2026, 11, 1, 7, tzinfo=UTC), "America/Los_Angeles") == fall_end
    assert report_start("daily", fall_end, "America/Los_Angeles") == datetime(2026, 11, 1, 7, tzinfo=UTC)
    spring_end = datetime(2026, 3, 9, 7, tzinfo=UTC)
    assert report_start("daily", spring_end, "America/Los_Angeles") == datetime(2026, 3, 8, 8, tzinfo=UTC)
    assert report_start("weekly", spring_end, "America/Los_Angeles") == datetime(2026, 3, 2, 8, tzinfo=UTC)
    assert period_label(datetime(2026, 3, 8, 8, tzinfo=UTC), spring_end, "America/Los_Angeles") == "Sun 08 Mar 2026"
    assert period_label(datetime(2026, 3, 2, 8, tzinfo=UTC), spring_end, "America/Los_Angeles") == "02 Mar to 08 Mar 2026"
    # A report sent now covers the day before now, local time to local time.
    now = datetime(2026, 3, 8, 20, 15, tzinfo=UTC)  # 13:15 PDT
    assert report_start("daily", now, "America/Los_Angeles") == datetime(2026, 3, 7, 21, 15, tzinfo=UTC)  # 13:15 PST


async def test_an_owner_gets_a_report_with_the_apps_numbers(client: httpx.AsyncClient, engines: Settings) -> None:
    owner = await signup_login(client)
    app = await register_app(client, owner, "Bakery")
    events = [
        {"event": "signup", "device": "mobile", "userId": "u1"},
        {"event": "signup", "device": "desktop", "userId": "u2"},
        {"event": "signup", "device": "mobile", "userId": "u1"},
        {"event": "checkout", "device": "mobile", "userId": "u1"},
    ]
    r = await client.post("/api/analytics/collect", json={"events": events}, headers={"x-api-key": app["write_key"]})
    assert r.status_code == 202, r.text

    async def stored() -> bool:
        r = await client.get("/api/analytics/events/count", headers={"x-api-key": app["api_key"]})
        return r.json()["count"] == 4

    await eventually(stored, 15, "the events were not stored")

    r = await client.post("/api/email/reports", json={"app_id": app["app_id"], "frequency": "daily", "send_now": True},
                          headers=owner["headers"])
    assert r.status_code == 201, r.text
    sub = r.json()
    assert sub["app_name"] == "Bakery" and sub["frequency"] == "daily"

    def reports() -> list:
        return [m for m in read_inbox(engines.data_dir / "mail")
                if m["To"] == owner["email"] and str(m["Subject"]).startswith("Your daily report for Bakery")]

    async def arrived() -> bool:
        return bool(reports())

    await eventually(arrived, 30, "no report mail")
    [mail] = reports()
    assert mail["Subject"] == "Your daily report for Bakery: 2 visitors, 4 events"
    text = mail.get_body(("plain",)).get_content()
    html = mail.get_body(("html",)).get_content()
    assert "Unique visitors: 2" in text and "Events: 4" in text
    assert "- signup: 3 (2 visitors)" in text and "- checkout: 1 (1 visitors)" in text
    assert text.index("signup") < text.index("checkout")  # top events, most first
    assert "- mobile: 3" in text and "- desktop: 1" in text, text
    assert "<td>signup</td>" in html.replace('<td style="padding-right: 16px;">', "<td>")

    # The next one is due at the next UTC midnight, not again now. Auth learns of the run over
    # query.report-runs.v1, a path of its own beside the mail's: it may show a moment after the mail.
    async def run_recorded() -> bool:
        r = await client.get("/api/email/reports", headers=owner["headers"])
        return r.json()[0]["last_sent_at"] is not None

    await eventually(run_recorded, 10, "auth never recorded the report's run")
    r = await client.get("/api/email/reports", headers=owner["headers"])
    [listed] = r.json()
    assert listed["id"] == sub["id"] and listed["last_sent_at"] is not None
    assert datetime.fromisoformat(listed["next_run_at"]) == next_report_at("daily", datetime.now(UTC))
    assert len(reports()) == 1

    # Subscribing twice to the same report is a conflict; weekly is a separate subscription.
    r = await client.post("/api/email/reports", json={"app_id": app["app_id"], "frequency": "daily"},
                          headers=owner["headers"])
    assert r.status_code == 409
    r = await client.post("/api/email/reports", json={"app_id": app["app_id"], "frequency": "weekly"},
                          headers=owner["headers"])
    assert r.status_code == 201
    weekly = r.json()
    assert datetime.fromisoformat(weekly["next_run_at"]).weekday() == 0


async def test_only_the_owner_can_subscribe_to_or_stop_a_report(client: httpx.AsyncClient) -> None:
    owner, other = await signup_login(client), await signup_login(client)
    app = await register_app(client, owner)
    body = {"app_id": app["app_id"], "frequency": "weekly"}
    r = await client.post("/api/email/reports", json=body, headers=other["headers"])
    assert r.status_code == 403, r.text
    assert (await client.post("/api/email/reports", json=body)).status_code == 401
    r = await client.post("/api/email/reports", json={**body, "app_id": "00000000-0000-0000-0000-000000000000"},
                          headers=owner["headers"])
    assert r.status_code == 404
    r = await client.post("/api/email/reports", json={**body, "frequency": "hourly"}, headers=owner["headers"])
    assert r.status_code == 422

    r = await client.post("/api/email/reports", json=body, headers=owner["headers"])
    assert r.status_code == 201
    sub_id = r.json()["id"]
    assert (await client.get("/api/email/reports", headers=other["headers"])).json() == []
    assert (await client.delete(f"/api/email/reports/{sub_id}", headers=other["headers"])).status_code == 404
    assert (await client.delete(f"/api/email/reports/{sub_id}", headers=owner["headers"])).status_code == 204
    assert (await client.get("/api/email/reports", headers=owner["headers"])).json() == []


async def test_a_report_made_at_auth_is_mailed_while_auths_tables_cannot_be_read(
    client: httpx.AsyncClient, engines: Settings,
) -> None:
    """The query service mails from its own copy of the subscriptions (folded from auth's topic): with
    auth's users, apps and subscriptions locked against every reader, the report still goes out."""
    owner = await signup_login(client)
    app = await register_app(client, owner, "Locked Bakery")
    r = await client.post("/api/email/reports", json={"app_id": app["app_id"], "frequency": "weekly", "send_now": True},
                          headers=owner["headers"])
    assert r.status_code == 201, r.text
    locker = await asyncpg.connect(engines.database_url)
    try:
        async with locker.transaction():
            await locker.execute("LOCK TABLE report_subscriptions, apps, users IN ACCESS EXCLUSIVE MODE")

            async def arrived() -> bool:
                return any(m["To"] == owner["email"] and str(m["Subject"]).startswith("Your weekly report for Locked Bakery")
                           for m in read_inbox(engines.data_dir / "mail"))

            await eventually(arrived, 20, "no report mail while auth's tables were locked")
    finally:
        await locker.close()
    # Once auth's tables are free again, its listing learns of the run from the query service.
    async def listed_as_sent() -> bool:
        [listed] = (await client.get("/api/email/reports", headers=owner["headers"])).json()
        return listed["last_sent_at"] is not None

    await eventually(listed_as_sent, 10, "auth's listing never showed the report as sent")


async def test_a_sites_reports_run_at_its_local_midnight_and_say_its_time_zone(
    client: httpx.AsyncClient, engines: Settings,
) -> None:
    """Kolkata is UTC+5:30: its midnight is 18:30 UTC, its Monday starts on Sunday at 18:30 UTC."""
    owner = await signup_login(client)
    app = await register_app(client, owner, "Chai Stall")
    r = await client.patch(f"/api/auth/apps/{app['app_id']}", json={"timezone": "Asia/Kolkata"}, headers=owner["headers"])
    assert r.status_code == 200, r.text

    async def query_knows() -> bool:  # the query service's app directory has the new time zone
        r = await client.get("/api/analytics/stats/aggregate", params={"period": "day", "metrics": "visitors"},
                             headers={"x-api-key": app["api_key"], "cache-control": "no-cache"})
        return r.json()["period"]["start"].endswith("T18:30:00Z")

    await eventually(query_knows, 10, "the site's time zone never reached the query service")
    r = await client.post("/api/email/reports", json={"app_id": app["app_id"], "frequency": "weekly"},
                          headers=owner["headers"])
    assert r.status_code == 201, r.text
    weekly = datetime.fromisoformat(r.json()["next_run_at"])
    assert (weekly.astimezone(UTC).weekday(), weekly.astimezone(UTC).strftime("%H:%M")) == (6, "18:30")

    r = await client.post("/api/email/reports", json={"app_id": app["app_id"], "frequency": "daily", "send_now": True},
                          headers=owner["headers"])
    assert r.status_code == 201, r.text

    def reports() -> list:
        return [m for m in read_inbox(engines.data_dir / "mail")
                if m["To"] == owner["email"] and str(m["Subject"]).startswith("Your daily report for Chai Stall")]

    async def arrived() -> bool:
        return bool(reports())

    await eventually(arrived, 30, "no report mail")
    assert "(Asia/Kolkata):" in reports()[0].get_body(("plain",)).get_content()

    async def next_at_local_midnight() -> bool:
        listed = {s["frequency"]: s for s in (await client.get("/api/email/reports", headers=owner["headers"])).json()}
        daily = listed["daily"]
        return daily["last_sent_at"] is not None and \
            datetime.fromisoformat(daily["next_run_at"]).astimezone(UTC).strftime("%H:%M") == "18:30"

    await eventually(next_at_local_midnight, 10, "the next daily report is not due at Kolkata's midnight")
