"""Annotations (issue #20): notes on a day or at a moment, in the query service's own Postgres, over
HTTP; written by admins (and owners, and the app's secret key), read by viewers."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from libs.kafka import APPS_TOPIC, publish
from libs.runtime import Stack
from services.query.context import QueryContext
from tests.conftest import eventually, register_app, signup_login

pytestmark = pytest.mark.engines

D = datetime.now(UTC).date() - timedelta(days=3)
URL = "/api/analytics/annotations"


@pytest.fixture(scope="module")
async def team(client: httpx.AsyncClient, stack: Stack) -> dict[str, Any]:
    """An app, its owner, an admin and a viewer (members as auth publishes them on auth.apps.v1)."""
    owner, admin, viewer = await signup_login(client), await signup_login(client), await signup_login(client)
    app = await register_app(client, owner, "noted")
    apps = stack.runtime.contexts.get("query", QueryContext).apps
    record = await apps.lookup(app["app_id"])
    assert record is not None
    shared = dataclasses.replace(record, members={admin["id"]: "admin", viewer["id"]: "viewer"}, version=record.version + 1)
    await publish(await stack.runtime.producer(), APPS_TOPIC, shared.to_message(), key=app["app_id"])

    async def mirrored() -> bool:
        known = apps.get(app["app_id"])
        return known is not None and known.role_of(viewer["id"]) == "viewer"

    await eventually(mirrored, 20, "the query service did not see the app's members")
    return {**app, "owner": owner, "admin": admin, "viewer": viewer}


def as_(user: dict[str, Any]) -> dict[str, str]:
    return user["headers"]


async def test_notes_on_days_and_at_moments_are_listed_per_period_oldest_first(client, team) -> None:
    app_id = team["app_id"]
    r = await client.post(URL, json={"app_id": app_id, "date": str(D), "text": "Launched pricing"}, headers=as_(team["owner"]))
    assert r.status_code == 201, r.text
    launch = r.json()
    assert (launch["date"], launch["datetime"], launch["text"]) == (str(D), None, "Launched pricing")
    r = await client.post(URL, params={"app_id": app_id}, json={"datetime": f"{D}T23:30:00Z", "text": "Newsletter"},
                          headers=as_(team["admin"]))
    assert r.status_code == 201, r.text
    late = r.json()
    assert (late["date"], late["datetime"]) == (None, f"{D}T23:30:00Z")
    r = await client.post(URL, json={"datetime": f"{D - timedelta(days=1)}T08:00:00+02:00", "text": "Outage"},
                          headers={"x-api-key": team["api_key"]})
    assert r.status_code == 201, r.text
    assert r.json()["datetime"] == f"{D - timedelta(days=1)}T06:00:00Z"

    async def listed(user: dict[str, Any], **params: Any) -> list[str]:
        r = await client.get(URL, params={"app_id": app_id, **params}, headers=as_(user))
        assert r.status_code == 200, r.text
        return [a["text"] for a in r.json()["annotations"]]

    span = f"{D - timedelta(days=1)},{D}"
    assert await listed(team["viewer"], period="custom", date=span) == ["Outage", "Launched pricing", "Newsletter"]
    assert await listed(team["viewer"], period="day", date=str(D)) == ["Launched pricing", "Newsletter"]
    # 23:30 UTC is the next morning in Tokyo: the note moves to that day there.
    assert await listed(team["viewer"], period="day", date=str(D), tz="Asia/Tokyo") == ["Launched pricing"]
    assert await listed(team["viewer"], period="day", date=str(D + timedelta(days=1)), tz="Asia/Tokyo") == ["Newsletter"]

    r = await client.get(URL, params={"app_id": app_id, "period": "custom", "date": span, "format": "csv"},
                         headers=as_(team["viewer"]))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv"), r.text
    assert r.text.splitlines()[0] == "id,date,datetime,text,created_at"
    assert [line.split(",")[3] for line in r.text.splitlines()[1:]] == ["Outage", "Launched pricing", "Newsletter"]

    r = await client.delete(f"{URL}/{late['id']}", params={"app_id": app_id}, headers=as_(team["admin"]))
    assert r.status_code == 204, r.text
    assert await listed(team["owner"], period="custom", date=span) == ["Outage", "Launched pricing"]
    r = await client.delete(f"{URL}/{late['id']}", params={"app_id": app_id}, headers=as_(team["admin"]))
    assert r.status_code == 404, r.text


async def test_a_viewer_reads_but_may_not_write_and_strangers_do_neither(client, team) -> None:
    app_id = team["app_id"]
    r = await client.post(URL, json={"app_id": app_id, "date": str(D), "text": "mine"}, headers=as_(team["viewer"]))
    assert r.status_code == 403 and "admin" in r.json()["detail"], r.text
    r = await client.post(URL, json={"app_id": app_id, "date": str(D), "text": "keep"}, headers=as_(team["owner"]))
    note = r.json()["id"]
    r = await client.delete(f"{URL}/{note}", params={"app_id": app_id}, headers=as_(team["viewer"]))
    assert r.status_code == 403, r.text
    stranger = await signup_login(client)
    theirs = await register_app(client, stranger, "theirs")
    for method, url in (("GET", URL), ("DELETE", f"{URL}/{note}")):
        r = await client.request(method, url, params={"app_id": app_id}, headers=as_(stranger))
        assert r.status_code == 403, r.text
    r = await client.post(URL, json={"app_id": app_id, "date": str(D), "text": "x"}, headers=as_(stranger))
    assert r.status_code == 403, r.text
    # Another app's key neither deletes this app's note nor lists it.
    r = await client.delete(f"{URL}/{note}", headers={"x-api-key": theirs["api_key"]})
    assert r.status_code == 404, r.text
    r = await client.get(URL, params={"period": "custom", "date": f"{D},{D}"}, headers={"x-api-key": theirs["api_key"]})
    assert r.json()["annotations"] == []
    r = await client.get(URL, params={"period": "custom", "date": f"{D},{D}"}, headers={"x-api-key": team["write_key"]})
    assert r.status_code == 403, r.text


@pytest.mark.parametrize(("body", "hint"), [
    ({"date": "2026-01-01", "datetime": "2026-01-01T10:00:00Z", "text": "both"}, "either date"),
    ({"text": "neither"}, "either date"),
    ({"date": "2026-01-01", "text": ""}, "at least 1 character"),
    ({"date": "2026-01-01", "text": "   "}, "text is empty"),
    ({"date": "2026-01-01", "text": "x" * 501}, "at most 500 characters"),
    ({"date": "1800-01-01", "text": "too old"}, "1900-01-01"),
    ({"date": "2026-02-30", "text": "no such day"}, "date"),
    ({"date": "2026-01-01", "text": "x", "colour": "red"}, "Extra inputs"),
])
async def test_bad_notes_answer_422_saying_what_to_send(client, team, body, hint) -> None:
    r = await client.post(URL, json=body, headers={"x-api-key": team["api_key"]})
    assert r.status_code == 422, r.text
    assert hint in r.text, r.text


async def test_a_malformed_id_is_not_found_and_a_write_with_format_csv_is_refused(client, team) -> None:
    r = await client.delete(f"{URL}/not-a-uuid", headers={"x-api-key": team["api_key"]})
    assert r.status_code == 404, r.text
    r = await client.post(URL, params={"format": "csv"}, json={"date": str(D), "text": "x"},
                          headers={"x-api-key": team["api_key"]})
    assert r.status_code == 422 and "no CSV form" in r.text, r.text
