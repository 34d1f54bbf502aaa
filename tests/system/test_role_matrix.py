"""Tenant isolation by role: every route of auth and query that takes an app, called by each role of a
team app's members (and by a signed-in stranger): allowed, or refused with 403 and nothing but the
`detail`. The routes are read from the stack's OpenAPI document, so a new route that takes an app and has
no declared expectation here fails `test_every_route_that_takes_an_app_has_an_expectation`."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from libs.apps import at_least
from libs.settings import Settings
from tests.conftest import eventually, signup_login, wait_for_key
from tests.services.auth.helpers import mails_to

pytestmark = pytest.mark.engines

# (method, path) -> the least role it needs (None: anyone signed in, answering only the caller's own data),
# and what to send: query parameters and a JSON body, `{app}` and `{event}` filled in.
Call = tuple[str | None, dict[str, Any], dict[str, Any] | None]
APP = "{app}"
UNIQUE = "{unique}"  # a name of its own for each call
EXPECTED: dict[tuple[str, str], Call] = {
    # auth: keys and site settings need admin; reports too
    ("GET", "/api/auth/api-key"): ("admin", {"app_id": APP}, None),
    ("POST", "/api/auth/revoke"): ("admin", {}, {"app_id": APP}),
    ("POST", "/api/auth/regenerate"): ("admin", {}, {"app_id": APP}),
    ("PATCH", "/api/auth/apps/{app_id}"): ("admin", {}, {"name": "renamed"}),
    ("POST", "/api/email/reports"): ("admin", {}, {"app_id": APP, "frequency": "daily"}),
    ("GET", "/api/email/reports"): (None, {"app_id": APP}, None),
    ("POST", "/api/auth/apps/{app_id}/shared-links"): ("admin", {}, {}),
    ("GET", "/api/auth/apps/{app_id}/shared-links"): ("admin", {}, None),
    ("DELETE", "/api/auth/apps/{app_id}/shared-links/{link_id}"): ("admin", {}, None),
    ("DELETE", "/api/auth/apps/{app_id}"): ("owner", {}, None),
    # auth: webhooks, alerts and the weather pull are an admin's
    ("POST", "/api/auth/apps/{app_id}/webhooks"): ("admin", {}, {"url": "https://192.0.32.10/hook", "events": ["alert.fired"]}),
    ("GET", "/api/auth/apps/{app_id}/webhooks"): ("admin", {}, None),
    ("DELETE", "/api/auth/apps/{app_id}/webhooks/{webhook_id}"): ("admin", {}, None),
    ("GET", "/api/auth/apps/{app_id}/webhooks/{webhook_id}/deliveries"): ("admin", {}, None),
    ("POST", "/api/auth/apps/{app_id}/alerts"): ("admin", {}, {"name": UNIQUE, "metric": "visitors", "window": "1h",
                                                            "condition": "above", "threshold": 1000000, "channels": ["email"]}),
    ("GET", "/api/auth/apps/{app_id}/alerts"): ("admin", {}, None),
    ("DELETE", "/api/auth/apps/{app_id}/alerts/{alert_id}"): ("admin", {}, None),
    ("PUT", "/api/auth/apps/{app_id}/weather"): ("admin", {}, {"cities": []}),
    ("GET", "/api/auth/apps/{app_id}/weather"): ("admin", {}, None),
    # query: every read is a viewer's, deleting a user's events an admin's
    ("GET", "/api/analytics/event-summary"): ("viewer", {"app_id": APP}, None),
    ("GET", "/api/analytics/user-stats"): ("viewer", {"app_id": APP, "userId": "u1"}, None),
    ("GET", "/api/analytics/events"): ("viewer", {"app_id": APP}, None),
    ("GET", "/api/analytics/events/count"): ("viewer", {"app_id": APP}, None),
    ("GET", "/api/analytics/events/daily"): ("viewer", {"app_id": APP}, None),
    ("GET", "/api/analytics/events/timeseries"): ("viewer", {"app_id": APP}, None),
    ("GET", "/api/analytics/events/grouped"): ("viewer", {"app_id": APP}, None),
    ("GET", "/api/analytics/users/active"): ("viewer", {"app_id": APP}, None),
    ("GET", "/api/analytics/events/{event_id}"): ("viewer", {"app_id": APP}, None),
    ("GET", "/api/analytics/funnels"): ("viewer", {"app_id": APP, "steps": "a,b"}, None),
    ("GET", "/api/analytics/retention"): ("viewer", {"app_id": APP}, None),
    ("GET", "/api/analytics/metrics"): ("viewer", {"app_id": APP}, None),
    ("GET", "/api/analytics/metrics/timeseries"): ("viewer", {"app_id": APP, "metric_name": "m"}, None),
    ("GET", "/api/analytics/users"): ("viewer", {"app_id": APP}, None),
    ("GET", "/api/analytics/users/{user_id}/export"): ("viewer", {"app_id": APP}, None),
    ("DELETE", "/api/analytics/users/{user_id}"): ("admin", {"app_id": APP}, None),
    ("GET", "/api/analytics/stats/aggregate"): ("viewer", {"app_id": APP}, None),
    ("GET", "/api/analytics/stats/timeseries"): ("viewer", {"app_id": APP}, None),
    ("GET", "/api/analytics/stats/breakdown"): ("viewer", {"app_id": APP}, None),
    ("GET", "/api/analytics/stats/realtime"): ("viewer", {"app_id": APP}, None),
    ("GET", "/api/analytics/stats/realtime/detail"): ("viewer", {"app_id": APP}, None),
    ("GET", "/api/analytics/paths"): ("viewer", {"app_id": APP, "start": "signup"}, None),
    ("GET", "/api/analytics/properties"): ("viewer", {"app_id": APP}, None),
    ("GET", "/api/analytics/funnels/dropoff"): ("viewer", {"app_id": APP, "steps": "a,b", "step": "1"}, None),
    # query: saved definitions and notes are read by viewers, made and removed by admins
    ("GET", "/api/analytics/goals"): ("viewer", {"app_id": APP}, None),
    ("GET", "/api/analytics/segments"): ("viewer", {"app_id": APP}, None),
    ("GET", "/api/analytics/funnels/saved"): ("viewer", {"app_id": APP}, None),
    ("GET", "/api/analytics/annotations"): ("viewer", {"app_id": APP}, None),
    ("POST", "/api/analytics/goals"): ("admin", {}, {"app_id": APP, "name": UNIQUE, "kind": "event", "match": "signup"}),
    ("POST", "/api/analytics/segments"): ("admin", {}, {"app_id": APP, "name": UNIQUE, "filters": {"country": "DE"}}),
    ("POST", "/api/analytics/funnels/saved"): ("admin", {}, {"app_id": APP, "name": UNIQUE, "steps": ["a", "b"]}),
    ("POST", "/api/analytics/annotations"): ("admin", {}, {"app_id": APP, "date": "2026-01-15", "text": "launch"}),
    ("DELETE", "/api/analytics/goals/{goal_id}"): ("admin", {"app_id": APP}, None),
    ("DELETE", "/api/analytics/segments/{segment_id}"): ("admin", {"app_id": APP}, None),
    ("DELETE", "/api/analytics/funnels/saved/{funnel_id}"): ("admin", {"app_id": APP}, None),
    ("DELETE", "/api/analytics/annotations/{annotation_id}"): ("admin", {"app_id": APP}, None),
}
# The DELETE routes of definitions: what the owner makes first for each case (the POST route of EXPECTED),
# and the path parameter its id fills.
MADE_BY = {
    ("DELETE", "/api/analytics/goals/{goal_id}"): (("POST", "/api/analytics/goals"), "goal_id"),
    ("DELETE", "/api/analytics/segments/{segment_id}"): (("POST", "/api/analytics/segments"), "segment_id"),
    ("DELETE", "/api/analytics/funnels/saved/{funnel_id}"): (("POST", "/api/analytics/funnels/saved"), "funnel_id"),
    ("DELETE", "/api/analytics/annotations/{annotation_id}"): (("POST", "/api/analytics/annotations"), "annotation_id"),
    ("DELETE", "/api/auth/apps/{app_id}/webhooks/{webhook_id}"): (("POST", "/api/auth/apps/{app_id}/webhooks"), "webhook_id"),
    ("GET", "/api/auth/apps/{app_id}/webhooks/{webhook_id}/deliveries"): (("POST", "/api/auth/apps/{app_id}/webhooks"), "webhook_id"),
    ("DELETE", "/api/auth/apps/{app_id}/alerts/{alert_id}"): (("POST", "/api/auth/apps/{app_id}/alerts"), "alert_id"),
}
# Routes that end the app: each case gets a team app of its own.
FRESH_APP = {("DELETE", "/api/auth/apps/{app_id}")}
WHO = ["stranger", "viewer", "admin", "owner"]
ROUTES = sorted(EXPECTED)


def _takes_an_app(document: dict[str, Any], operation: dict[str, Any]) -> bool:
    if any(p.get("name") == "app_id" for p in operation.get("parameters", [])):
        return True
    schema = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
    ref = schema.get("$ref")
    if ref:
        schema = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
    return "app_id" in schema.get("properties", {})


async def test_every_route_that_takes_an_app_has_an_expectation(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    found = {(method.upper(), path) for path, item in document["paths"].items() for method, op in item.items()
             if isinstance(op, dict) and _takes_an_app(document, op)}
    assert found - set(EXPECTED) == set(), "declare who may call these routes in EXPECTED"
    assert set(EXPECTED) - found == set(), "EXPECTED names routes that take no app (any more)"


@pytest.fixture(scope="module")
async def team(client: httpx.AsyncClient, engines: Settings) -> dict[str, Any]:
    """A team app with one event, its owner, an admin and a viewer (by invitation), and a stranger."""
    people = {who: await signup_login(client) for who in WHO}
    r = await client.post("/api/teams", json={"name": "Marketing"}, headers=people["owner"]["headers"])
    assert r.status_code == 201, r.text
    team_id = r.json()["team_id"]
    for role in ("admin", "viewer"):
        r = await client.post(f"/api/teams/{team_id}/invitations", json={"email": people[role]["email"], "role": role},
                              headers=people["owner"]["headers"])
        assert r.status_code == 201, r.text
        token = await _mailed_token(engines, people[role]["email"])
        r = await client.post("/api/invitations/accept", json={"token": token}, headers=people[role]["headers"])
        assert r.status_code == 200, r.text
    r = await client.post("/api/auth/register", json={"name": "team site", "team_id": team_id},
                          headers=people["owner"]["headers"])
    assert r.status_code == 201, r.text
    app = r.json()
    await wait_for_key(client, app["write_key"])
    now = datetime.now(UTC).isoformat()
    r = await client.post("/api/analytics/collect", headers={"x-api-key": app["write_key"]},
                          json={"event": "signup", "userId": "u1", "timestamp": now, "properties": {"secret": "s3cr3t-prop"}})
    assert r.status_code == 202, r.text

    async def visible() -> bool:
        r = await client.get("/api/analytics/events", params={"app_id": app["app_id"]}, headers=people["viewer"]["headers"])
        return r.status_code == 200 and bool(r.json()["events"])

    await eventually(visible, 15, "the team's viewer never saw the event")
    r = await client.get("/api/analytics/events", params={"app_id": app["app_id"]}, headers=people["viewer"]["headers"])
    return {"people": people, "app": app, "event_id": r.json()["events"][0]["event_id"], "team_id": team_id}


async def _mailed_token(settings: Settings, address: str) -> str:
    def invitations() -> list[Any]:
        return [m for m in mails_to(settings, address) if "invited you" in str(m["Subject"])]

    async def arrived() -> bool:
        return bool(invitations())

    await eventually(arrived, 15, f"no invitation to {address}")
    text = invitations()[-1].get_body(("plain",)).get_content()
    found = re.search(r"invitation=([A-Za-z0-9_\-]+)", text)
    assert found, text
    return found.group(1)


def _request(route: tuple[str, str], app_id: str, event_id: str,
             made: dict[str, str] | None = None) -> tuple[str, str, dict[str, Any], dict[str, Any] | None]:
    method, path = route
    _, params, body = EXPECTED[route]
    ids = {"app_id": app_id, "event_id": event_id, "user_id": "someone-else", "link_id": "", **(made or {})}  # u1 keeps its event
    url = path.format(**ids)

    def fill(value: Any) -> Any:
        return app_id if value == APP else f"made {uuid.uuid4().hex[:12]}" if value == UNIQUE else value

    json = {k: fill(v) for k, v in body.items()} if body is not None else None
    return method, url, {k: fill(v) for k, v in params.items()}, json


async def _made_by_owner(client: httpx.AsyncClient, team: dict[str, Any], route: tuple[str, str], app_id: str) -> dict[str, str]:
    """What a DELETE case removes: a shared link, or a definition, made by the owner first."""
    owner = team["people"]["owner"]["headers"]
    if "{link_id}" in route[1]:
        r = await client.post(f"/api/auth/apps/{app_id}/shared-links", json={}, headers=owner)
        assert r.status_code == 201, r.text
        return {"link_id": r.json()["link_id"]}
    if route in MADE_BY:
        maker, name = MADE_BY[route]
        method, url, params, json = _request(maker, app_id, team["event_id"])
        r = await client.request(method, url, params=params, json=json, headers=owner)
        assert r.status_code == 201, r.text
        return {name: r.json()["id"]}
    return {}


@pytest.mark.parametrize("who", WHO)
@pytest.mark.parametrize("route", ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
async def test_each_role_on_each_route(client: httpx.AsyncClient, team: dict[str, Any], route: tuple[str, str], who: str) -> None:
    needed = EXPECTED[route][0]
    app_id = team["app"]["app_id"]
    if route in FRESH_APP:
        r = await client.post("/api/auth/register", json={"name": "team site", "team_id": team["team_id"]},
                              headers=team["people"]["owner"]["headers"])
        assert r.status_code == 201, r.text
        app_id = r.json()["app_id"]
    made = await _made_by_owner(client, team, route, app_id)
    method, url, params, json = _request(route, app_id, team["event_id"], made)
    r = await client.request(method, url, params=params, json=json, headers=team["people"][who]["headers"])
    role = None if who == "stranger" else who
    if needed is None:
        assert r.status_code == 200, r.text
        if role is None or not at_least(role, "admin"):
            assert r.json() == [], r.text  # only the caller's own data, and they have none here
    elif at_least(role, needed):
        assert r.status_code < 300, r.text
    else:
        assert r.status_code == 403, r.text
        assert set(r.json()) == {"detail"}, r.text
        for secret in ("s3cr3t-prop", "team site", team["app"]["api_key"], team["event_id"]):
            assert secret not in r.text


@pytest.mark.parametrize("route", [r for r in ROUTES if EXPECTED[r][0] is not None], ids=lambda r: f"{r[0]} {r[1]}")
async def test_an_app_that_does_not_exist_is_404_for_everyone(client: httpx.AsyncClient, team: dict[str, Any],
                                                               route: tuple[str, str]) -> None:
    made = {name: str(uuid.uuid4()) for name in ("link_id", "goal_id", "segment_id", "funnel_id", "annotation_id",
                                                 "webhook_id", "alert_id")}
    method, url, params, json = _request(route, str(uuid.uuid4()), team["event_id"], made)
    r = await client.request(method, url, params=params, json=json, headers=team["people"]["owner"]["headers"])
    assert r.status_code == 404, r.text
    assert set(r.json()) == {"detail"}
