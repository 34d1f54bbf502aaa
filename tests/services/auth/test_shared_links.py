"""Shared links over HTTP: an admin makes a read-only link to an app's stats (optionally with a password),
lists and revokes it; the query service reads the stats through it (header `x-shared-link`) and through
nothing else: every other route of the stack refuses it. Revoked, it stops working within a second."""

from __future__ import annotations

import hashlib
import re
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from libs.apps import AppDirectory
from libs.runtime import Stack
from tests.conftest import eventually, signup_login
from tests.services.auth.helpers import client_for, random_ip, register

pytestmark = pytest.mark.engines

STATS = ["/api/analytics/stats/aggregate", "/api/analytics/stats/timeseries", "/api/analytics/stats/breakdown",
         "/api/analytics/stats/realtime", "/api/analytics/stats/realtime/detail"]


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(stack, random_ip()) as client:
        yield client


async def make_link(http: httpx.AsyncClient, user: dict[str, Any], app_id: str, **body: Any) -> dict[str, Any]:
    r = await http.post(f"/api/auth/apps/{app_id}/shared-links", json=body, headers=user["headers"])
    assert r.status_code == 201, r.text
    return dict(r.json())


async def seen_visits(http: httpx.AsyncClient, app: dict[str, Any]) -> None:
    r = await http.post("/api/analytics/collect", headers={"x-api-key": app["write_key"]},
                        json={"event": "page_view", "url": "https://shop.test/", "sessionId": "s1"})
    assert r.status_code == 202, r.text

    async def stored() -> bool:
        r = await http.get("/api/analytics/stats/aggregate", params={"period": "day"}, headers={"x-api-key": app["api_key"],
                                                                                                "cache-control": "no-cache"})
        return bool(r.json()["results"]["pageviews"]["value"])

    await eventually(stored, 15, "the page view was never counted")


async def test_a_shared_link_reads_the_stats_without_an_account(http: httpx.AsyncClient, stack: Stack) -> None:
    owner = await signup_login(http)
    app = await register(http, owner, "Shop")
    await seen_visits(http, app)
    link = await make_link(http, owner, app["app_id"])
    token = link["token"]
    assert link["has_password"] is False and link["prefix"] == token[:6]
    assert link["url"].endswith(f"/dashboard/share/{token}")
    # Only the token's hash is kept and published.
    directory: AppDirectory = stack.runtime.shared["app_directory"]
    await eventually(lambda: _known(directory, app["app_id"]), 5)
    record = directory.get(app["app_id"])
    assert record is not None and [x.token_hash for x in record.shared_links] == [hashlib.sha256(token.encode()).hexdigest()]

    for path in STATS:
        r = await http.get(path, params={"period": "day"} if "realtime" not in path else {}, headers={"x-shared-link": token})
        assert r.status_code == 200, (path, r.text)
    r = await http.get(STATS[0], params={"period": "day"}, headers={"x-shared-link": token})
    assert r.json()["results"]["pageviews"]["value"] == 1
    # Naming its own app is fine; another app is not.
    r = await http.get(STATS[0], params={"app_id": app["app_id"]}, headers={"x-shared-link": token})
    assert r.status_code == 200, r.text
    r = await http.get(STATS[0], params={"app_id": str(uuid.uuid4())}, headers={"x-shared-link": token})
    assert r.status_code == 403 and set(r.json()) == {"detail"}
    for wrong in ("x" * 32, "nonsense", token[:-1]):
        r = await http.get(STATS[0], headers={"x-shared-link": wrong})
        assert r.status_code == 401 and set(r.json()) == {"detail"}, r.text

    listed = (await http.get(f"/api/auth/apps/{app['app_id']}/shared-links", headers=owner["headers"])).json()
    assert [(x["link_id"], x["prefix"], x["token"], x["url"]) for x in listed] == [(link["link_id"], token[:6], None, None)]
    assert token not in str(listed)


async def _known(directory: AppDirectory, app_id: str) -> bool:
    record = directory.get(app_id)
    return record is not None and bool(record.shared_links)


async def test_a_revoked_link_stops_working_within_a_second(http: httpx.AsyncClient) -> None:
    owner = await signup_login(http)
    app = await register(http, owner)
    link = await make_link(http, owner, app["app_id"])
    assert (await http.get(STATS[3], headers={"x-shared-link": link["token"]})).status_code == 200
    r = await http.delete(f"/api/auth/apps/{app['app_id']}/shared-links/{link['link_id']}", headers=owner["headers"])
    assert r.status_code == 204, r.text
    revoked_at = time.monotonic()
    while (await http.get(STATS[3], headers={"x-shared-link": link["token"]})).status_code != 401:
        assert time.monotonic() - revoked_at < 1, "a revoked link still read the stats after a second"
    assert (await http.get(f"/api/auth/apps/{app['app_id']}/shared-links", headers=owner["headers"])).json() == []
    r = await http.delete(f"/api/auth/apps/{app['app_id']}/shared-links/{link['link_id']}", headers=owner["headers"])
    assert r.status_code == 404
    r = await http.delete(f"/api/auth/apps/{app['app_id']}/shared-links/not-a-link", headers=owner["headers"])
    assert r.status_code == 404


async def test_a_link_with_a_password_reads_only_once_unlocked(http: httpx.AsyncClient) -> None:
    owner = await signup_login(http)
    app = await register(http, owner)
    link = await make_link(http, owner, app["app_id"], password="correct horse battery")
    assert link["has_password"] is True
    r = await http.get(STATS[3], headers={"x-shared-link": link["token"]})
    assert r.status_code == 401 and "password" in r.json()["detail"]
    r = await http.post("/api/auth/shared-links/unlock", json={"token": link["token"], "password": "wrong password"})
    assert r.status_code == 401 and set(r.json()) == {"detail"}
    r = await http.post("/api/auth/shared-links/unlock", json={"token": "nonsense", "password": "whatever"})
    assert r.status_code == 404
    r = await http.post("/api/auth/shared-links/unlock", json={"token": link["token"], "password": "correct horse battery"})
    assert r.status_code == 200, r.text
    unlocked = r.json()["access_token"]
    assert r.json()["expires_in"] == 3600
    assert (await http.get(STATS[3], headers={"x-shared-link": unlocked})).status_code == 200
    # It is no user's access token, and no key.
    assert (await http.get("/api/auth/apps", headers={"authorization": f"Bearer {unlocked}"})).status_code == 401
    r = await http.get("/api/analytics/events", params={"app_id": app["app_id"]}, headers={"authorization": f"Bearer {unlocked}"})
    assert r.status_code == 401
    # Revoking the link ends the unlocked token too.
    r = await http.delete(f"/api/auth/apps/{app['app_id']}/shared-links/{link['link_id']}", headers=owner["headers"])
    assert r.status_code == 204

    async def refused() -> bool:
        return (await http.get(STATS[3], headers={"x-shared-link": unlocked})).status_code == 401

    await eventually(refused, 1, "a revoked link's unlocked token still read")
    # A link without password has nothing to unlock; a too short password is refused.
    plain = await make_link(http, owner, app["app_id"])
    r = await http.post("/api/auth/shared-links/unlock", json={"token": plain["token"], "password": "x"})
    assert r.status_code == 409
    r = await http.post(f"/api/auth/apps/{app['app_id']}/shared-links", json={"password": "short"}, headers=owner["headers"])
    assert r.status_code == 422


async def test_every_other_route_refuses_a_shared_link(http: httpx.AsyncClient) -> None:
    """Only the stats routes read a link: every other route that takes credentials answers 401 (or 403)
    with nothing but `detail`, given only the link. Enumerated from the OpenAPI document."""
    owner = await signup_login(http)
    app = await register(http, owner, "Shop")
    link = await make_link(http, owner, app["app_id"])
    document = (await http.get("/openapi.json")).json()
    tried = 0
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or not operation.get("security") or path in STATS:
                continue
            url = path.replace("{app_id}", app["app_id"]).replace("{team_id}", str(uuid.uuid4()))
            url = url.replace("{link_id}", link["link_id"]).replace("{event_id}", "e1")
            url = re.sub(r"\{[a-z_]+\}", "x", url)  # every other id: the link must be refused before it matters
            body = {"event": "x", "app_id": app["app_id"]} if "requestBody" in operation else None
            r = await http.request(method.upper(), url, params={"app_id": app["app_id"]}, json=body,
                                   headers={"x-shared-link": link["token"]})
            assert r.status_code in (401, 403), (method, path, r.status_code, r.text)
            assert set(r.json()) == {"detail"}, (method, path, r.text)
            tried += 1
    assert tried > 30


async def test_only_admins_manage_links(http: httpx.AsyncClient) -> None:
    owner, stranger = await signup_login(http), await signup_login(http)
    app = await register(http, owner)
    link = await make_link(http, owner, app["app_id"])
    base = f"/api/auth/apps/{app['app_id']}/shared-links"
    for r in (await http.post(base, json={}, headers=stranger["headers"]), await http.get(base, headers=stranger["headers"]),
              await http.delete(f"{base}/{link['link_id']}", headers=stranger["headers"])):
        assert r.status_code == 403 and set(r.json()) == {"detail"}, r.text
    r = await http.get(f"/api/auth/apps/{uuid.uuid4()}/shared-links", headers=owner["headers"])
    assert r.status_code == 404
    assert (await http.get(base)).status_code == 401


async def test_password_guesses_are_limited_per_link(http: httpx.AsyncClient, stack: Stack) -> None:
    owner = await signup_login(http)
    app = await register(http, owner)
    link = await make_link(http, owner, app["app_id"], password="correct horse battery")
    statuses = []
    for attempt in range(21):
        async with client_for(stack, random_ip()) as guesser:  # each from its own address
            r = await guesser.post("/api/auth/shared-links/unlock", json={"token": link["token"], "password": f"guess {attempt}"})
        statuses.append(r.status_code)
    assert statuses == [401] * 20 + [429], statuses
    assert int(r.headers["retry-after"]) >= 1
