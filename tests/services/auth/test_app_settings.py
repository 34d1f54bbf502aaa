"""An app's name and site settings (`PATCH /api/auth/apps/{app_id}`), as its owner sees them over HTTP,
and how they reach the gateways and the query service: on auth.apps.v1, into each process's app
directory, with no read of auth's tables."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from libs.apps import AppDirectory
from libs.kafka import APPS_TOPIC
from libs.runtime import Stack
from libs.settings import Settings
from tests.conftest import eventually, signup_login
from tests.services.auth.helpers import KeyTopicReader, client_for, random_ip, register

pytestmark = pytest.mark.engines


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(stack, random_ip()) as client:
        yield client


def directory(stack: Stack) -> AppDirectory:
    found: AppDirectory = stack.runtime.shared["app_directory"]
    return found


async def listed(http: httpx.AsyncClient, user: dict[str, Any], app_id: str) -> dict[str, Any]:
    r = await http.get("/api/auth/apps", headers=user["headers"])
    assert r.status_code == 200, r.text
    return next(a for a in r.json() if a["app_id"] == app_id)


async def test_a_new_app_has_utc_no_excluded_ips_and_any_origin(http: httpx.AsyncClient) -> None:
    user = await signup_login(http)
    app = await register(http, user)
    shown = await listed(http, user, app["app_id"])
    assert shown["timezone"] == "UTC"
    assert shown["excluded_ips"] == [] and shown["allowed_origins"] == []


async def test_the_owner_changes_name_time_zone_excluded_ips_and_origins(http: httpx.AsyncClient, stack: Stack) -> None:
    user = await signup_login(http)
    app = await register(http, user, "old name")
    r = await http.patch(f"/api/auth/apps/{app['app_id']}", headers=user["headers"], json={
        "name": "Shop", "timezone": "America/Los_Angeles",
        "excluded_ips": ["203.0.113.7", "10.1.2.3/8", "2001:DB8::/32"],
        "allowed_origins": ["https://Shop.Example.com/", "https://*.example.com", "http://localhost:3000"],
    })
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["name"] == "Shop" and body["timezone"] == "America/Los_Angeles"
    assert body["excluded_ips"] == ["203.0.113.7", "10.0.0.0/8", "2001:db8::/32"]  # normalised
    assert body["allowed_origins"] == ["https://shop.example.com", "https://*.example.com", "http://localhost:3000"]
    assert body["domain"] == app["domain"]  # not sent: unchanged
    assert await listed(http, user, app["app_id"]) == body
    # Gateways and the query service of this process know it within moments, from the apps topic.
    await eventually(lambda: _known(stack, app["app_id"], "America/Los_Angeles"), timeout=5)
    record = directory(stack).get(app["app_id"])
    assert record is not None
    assert record.excluded_ips == ("203.0.113.7", "10.0.0.0/8", "2001:db8::/32")
    assert record.name == "Shop" and record.role_of(user["id"]) == "owner"

    # Only what is sent changes; a domain can be cleared.
    r = await http.patch(f"/api/auth/apps/{app['app_id']}", headers=user["headers"], json={"domain": None})
    assert r.status_code == 200, r.text
    assert r.json()["domain"] is None and r.json()["timezone"] == "America/Los_Angeles"


async def _known(stack: Stack, app_id: str, timezone: str) -> bool:
    record = directory(stack).get(app_id)
    return record is not None and record.timezone == timezone


@pytest.mark.parametrize(
    ("body", "says"),
    [
        pytest.param({"timezone": "Mars/Olympus"}, "unknown time zone", id="time-zone"),
        pytest.param({"timezone": "../../etc/passwd"}, "unknown time zone", id="time-zone-path"),
        pytest.param({"excluded_ips": ["300.1.1.1"]}, "not an IP address or CIDR", id="ip"),
        pytest.param({"excluded_ips": ["10.0.0.0/33"]}, "not an IP address or CIDR", id="cidr"),
        pytest.param({"allowed_origins": ["https://example.com/path"]}, "not an origin", id="origin-path"),
        pytest.param({"allowed_origins": ["javascript:alert(1)"]}, "not an origin", id="origin-scheme"),
        pytest.param({}, "at least one of", id="empty"),
        pytest.param({"name": None}, "name cannot be null", id="null-name"),
        pytest.param({"name": ""}, "at least 1", id="empty-name"),
        pytest.param({"owner_id": str(uuid.uuid4())}, "Extra inputs are not permitted", id="unknown-field"),
        pytest.param({"excluded_ips": ["10.0.0.1"] * 201}, "at most 200", id="too-many-ips"),
    ],
)
async def test_bad_settings_are_422_saying_what_is_wrong_and_change_nothing(
    http: httpx.AsyncClient, body: dict[str, Any], says: str
) -> None:
    user = await signup_login(http)
    app = await register(http, user)
    before = await listed(http, user, app["app_id"])
    r = await http.patch(f"/api/auth/apps/{app['app_id']}", headers=user["headers"], json=body)
    assert r.status_code == 422, r.text
    assert says in r.text
    assert await listed(http, user, app["app_id"]) == before


async def test_settings_of_another_users_app_are_403_a_missing_app_404_no_token_401(http: httpx.AsyncClient) -> None:
    owner, other = await signup_login(http), await signup_login(http)
    app = await register(http, owner)
    change = {"timezone": "Asia/Kolkata"}
    r = await http.patch(f"/api/auth/apps/{app['app_id']}", headers=other["headers"], json=change)
    assert r.status_code == 403, r.text
    for missing in (str(uuid.uuid4()), "not-a-uuid"):
        r = await http.patch(f"/api/auth/apps/{missing}", headers=owner["headers"], json=change)
        assert r.status_code == 404, r.text
    r = await http.patch(f"/api/auth/apps/{app['app_id']}", json=change)
    assert r.status_code == 401, r.text
    assert (await listed(http, owner, app["app_id"]))["timezone"] == "UTC"


async def test_every_app_change_is_published_on_the_apps_topic_newer_version_each_time(
    http: httpx.AsyncClient, engines: Settings
) -> None:
    async with KeyTopicReader(engines, APPS_TOPIC) as reader:
        user = await signup_login(http)
        app = await register(http, user)
        r = await http.patch(f"/api/auth/apps/{app['app_id']}", headers=user["headers"], json={"timezone": "Asia/Kolkata"})
        assert r.status_code == 200, r.text
        states = await reader.wait_for(lambda m: m["app_id"] == app["app_id"], count=2)
    first, second = (m for m, _ in states)
    assert first["owner_id"] == user["id"] and first["timezone"] == "UTC" and not first["deleted"]
    assert second["timezone"] == "Asia/Kolkata" and second["version"] > first["version"]
    assert app["api_key"] not in str(states) and app["write_key"] not in str(states)


async def test_a_new_app_is_readable_with_a_bearer_token_at_once(http: httpx.AsyncClient) -> None:
    """Read-your-writes: the query service learns of the app from the apps topic, catching up on a miss.
    Each read follows its 201 at once (no wait for the keys, as `register` does)."""
    user = await signup_login(http)
    for i in range(5):
        r = await http.post("/api/auth/register", json={"name": f"site {i}"}, headers=user["headers"])
        assert r.status_code == 201, r.text
        r = await http.get("/api/analytics/events/count", params={"app_id": r.json()["app_id"]}, headers=user["headers"])
        assert r.status_code == 200, r.text
        assert r.json()["count"] == 0
