"""Teams over HTTP: create, invite by email (the mailed one-time token), accept as the signed-in invitee,
roles, removal; an app of a team, and what each role may do with it in auth and in the query service
(which learns the team's members from auth.apps.v1)."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from libs.runtime import Stack
from libs.settings import Settings
from tests.conftest import PASSWORD, eventually, signup_login
from tests.services.auth.helpers import client_for, collect, random_ip, register, wait_for_mail

pytestmark = pytest.mark.engines


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(stack, random_ip()) as client:
        yield client


async def new_team(http: httpx.AsyncClient, owner: dict[str, Any], name: str = "Marketing") -> str:
    r = await http.post("/api/teams", json={"name": name}, headers=owner["headers"])
    assert r.status_code == 201, r.text
    assert r.json()["name"] == name and r.json()["role"] == "owner"
    return str(r.json()["team_id"])


async def invite(http: httpx.AsyncClient, settings: Settings, owner: dict[str, Any], team_id: str,
                 invitee: dict[str, Any], role: str) -> str:
    """Invite `invitee` and return the token from the mail they got."""
    r = await http.post(f"/api/teams/{team_id}/invitations", json={"email": invitee["email"], "role": role},
                        headers=owner["headers"])
    assert r.status_code == 201, r.text
    assert r.json()["email"] == invitee["email"] and r.json()["role"] == role
    assert "token" not in r.json()
    mail = await wait_for_mail(settings, invitee["email"], f"{owner['username']} invited you to the team Marketing")
    text = mail.get_body(("plain",)).get_content()
    found = re.search(r"/dashboard\?invitation=([A-Za-z0-9_\-]+)", text)
    assert found, text
    assert f"as {role}" in text
    return found.group(1)


async def join(http: httpx.AsyncClient, settings: Settings, owner: dict[str, Any], team_id: str,
               role: str) -> dict[str, Any]:
    """A new user who joined the team with `role`."""
    member = await signup_login(http)
    token = await invite(http, settings, owner, team_id, member, role)
    r = await http.post("/api/invitations/accept", json={"token": token}, headers=member["headers"])
    assert r.status_code == 200, r.text
    assert r.json()["team_id"] == team_id and r.json()["role"] == role
    return member


async def members(http: httpx.AsyncClient, user: dict[str, Any], team_id: str) -> dict[str, str]:
    r = await http.get(f"/api/teams/{team_id}/members", headers=user["headers"])
    assert r.status_code == 200, r.text
    return {m["username"]: m["role"] for m in r.json()["members"]}


async def test_a_new_team_has_its_creator_as_owner(http: httpx.AsyncClient) -> None:
    alice, bob = await signup_login(http), await signup_login(http)
    team_id = await new_team(http, alice)
    r = await http.get("/api/teams", headers=alice["headers"])
    assert [(t["team_id"], t["role"]) for t in r.json()] == [(team_id, "owner")]
    assert await members(http, alice, team_id) == {alice["username"]: "owner"}
    # Not bob's team: he does not see it, nor its members.
    assert (await http.get("/api/teams", headers=bob["headers"])).json() == []
    r = await http.get(f"/api/teams/{team_id}/members", headers=bob["headers"])
    assert r.status_code == 403 and set(r.json()) == {"detail"}
    for missing in (str(uuid.uuid4()), "not-a-team"):
        r = await http.get(f"/api/teams/{missing}/members", headers=alice["headers"])
        assert r.status_code == 404, r.text
    assert (await http.post("/api/teams", json={"name": ""}, headers=alice["headers"])).status_code == 422
    assert (await http.post("/api/teams", json={"name": "x"})).status_code == 401


async def test_an_invitation_is_mailed_and_accepted_once_by_its_addressee(http: httpx.AsyncClient, engines: Settings) -> None:
    alice, bob, carol = await signup_login(http), await signup_login(http), await signup_login(http)
    team_id = await new_team(http, alice)
    token = await invite(http, engines, alice, team_id, bob, "viewer")
    pending = (await http.get(f"/api/teams/{team_id}/members", headers=alice["headers"])).json()["invitations"]
    assert [(i["email"], i["role"]) for i in pending] == [(bob["email"], "viewer")]

    # Someone else signed in cannot use bob's invitation, nor can nobody.
    r = await http.post("/api/invitations/accept", json={"token": token}, headers=carol["headers"])
    assert r.status_code == 403, r.text
    assert (await http.post("/api/invitations/accept", json={"token": token})).status_code == 401
    r = await http.post("/api/invitations/accept", json={"token": "nonsense"}, headers=bob["headers"])
    assert r.status_code == 404, r.text

    r = await http.post("/api/invitations/accept", json={"token": token}, headers=bob["headers"])
    assert r.status_code == 200, r.text
    assert r.json() == {"team_id": team_id, "name": "Marketing", "role": "viewer", "created_at": r.json()["created_at"]}
    r = await http.post("/api/invitations/accept", json={"token": token}, headers=bob["headers"])
    assert r.status_code == 409, r.text  # single use

    assert await members(http, bob, team_id) == {alice["username"]: "owner", bob["username"]: "viewer"}
    assert (await http.get(f"/api/teams/{team_id}/members", headers=alice["headers"])).json()["invitations"] == []
    assert [(t["team_id"], t["role"]) for t in (await http.get("/api/teams", headers=bob["headers"])).json()] == [(team_id, "viewer")]


async def test_an_invitation_expires_after_seven_days(http: httpx.AsyncClient, engines: Settings) -> None:
    alice, bob = await signup_login(http), await signup_login(http)
    team_id = await new_team(http, alice)
    token = await invite(http, engines, alice, team_id, bob, "admin")
    conn = await asyncpg.connect(engines.database_url)
    try:
        expires = await conn.fetchval("SELECT expires_at - created_at FROM team_invitations WHERE team_id = $1", uuid.UUID(team_id))
        assert expires == timedelta(days=7)
        await conn.execute("UPDATE team_invitations SET expires_at = now() - interval '1 second' WHERE team_id = $1",
                           uuid.UUID(team_id))
    finally:
        await conn.close()
    r = await http.post("/api/invitations/accept", json={"token": token}, headers=bob["headers"])
    assert r.status_code == 410, r.text
    assert await members(http, alice, team_id) == {alice["username"]: "owner"}


async def test_only_owners_invite_and_manage_members(http: httpx.AsyncClient, engines: Settings) -> None:
    alice, outsider = await signup_login(http), await signup_login(http)
    team_id = await new_team(http, alice)
    admin = await join(http, engines, alice, team_id, "admin")
    viewer = await join(http, engines, alice, team_id, "viewer")
    for who in (admin, viewer, outsider):
        r = await http.post(f"/api/teams/{team_id}/invitations", json={"email": "x@example.com", "role": "owner"},
                            headers=who["headers"])
        assert r.status_code == 403 and set(r.json()) == {"detail"}, r.text
        r = await http.patch(f"/api/teams/{team_id}/members/{viewer['id']}", json={"role": "owner"}, headers=who["headers"])
        assert r.status_code == 403, r.text
        r = await http.delete(f"/api/teams/{team_id}/members/{alice['id']}", headers=who["headers"])
        assert r.status_code == 403, r.text
    r = await http.post(f"/api/teams/{team_id}/invitations", json={"email": "x@example.com", "role": "boss"},
                        headers=alice["headers"])
    assert r.status_code == 422
    r = await http.post(f"/api/teams/{team_id}/invitations", json={"email": admin["email"], "role": "viewer"},
                        headers=alice["headers"])
    assert r.status_code == 409, r.text  # a member already
    assert await members(http, alice, team_id) == {
        alice["username"]: "owner", admin["username"]: "admin", viewer["username"]: "viewer"}

    r = await http.patch(f"/api/teams/{team_id}/members/{viewer['id']}", json={"role": "admin"}, headers=alice["headers"])
    assert r.status_code == 200 and r.json()["role"] == "admin", r.text
    r = await http.patch(f"/api/teams/{team_id}/members/{outsider['id']}", json={"role": "admin"}, headers=alice["headers"])
    assert r.status_code == 404, r.text
    r = await http.delete(f"/api/teams/{team_id}/members/{viewer['id']}", headers=alice["headers"])
    assert r.status_code == 204, r.text
    # A member may leave.
    r = await http.delete(f"/api/teams/{team_id}/members/{admin['id']}", headers=admin["headers"])
    assert r.status_code == 204, r.text
    assert await members(http, alice, team_id) == {alice["username"]: "owner"}


async def test_a_team_keeps_an_owner(http: httpx.AsyncClient, engines: Settings) -> None:
    alice = await signup_login(http)
    team_id = await new_team(http, alice)
    r = await http.delete(f"/api/teams/{team_id}/members/{alice['id']}", headers=alice["headers"])
    assert r.status_code == 409, r.text
    r = await http.patch(f"/api/teams/{team_id}/members/{alice['id']}", json={"role": "admin"}, headers=alice["headers"])
    assert r.status_code == 409, r.text
    bob = await join(http, engines, alice, team_id, "owner")
    r = await http.delete(f"/api/teams/{team_id}/members/{alice['id']}", headers=alice["headers"])
    assert r.status_code == 204, r.text
    assert await members(http, bob, team_id) == {bob["username"]: "owner"}


async def test_a_team_app_follows_the_members_roles(http: httpx.AsyncClient, engines: Settings, stack: Stack) -> None:
    alice, outsider = await signup_login(http), await signup_login(http)
    team_id = await new_team(http, alice)
    bob = await join(http, engines, alice, team_id, "viewer")
    # A viewer registers no app for the team, nor does an outsider; an unknown team is 404.
    for who, status in ((bob, 403), (outsider, 403)):
        r = await http.post("/api/auth/register", json={"name": "x", "team_id": team_id}, headers=who["headers"])
        assert r.status_code == status, r.text
    r = await http.post("/api/auth/register", json={"name": "x", "team_id": str(uuid.uuid4())}, headers=alice["headers"])
    assert r.status_code == 404, r.text

    app = await register(http, alice, "team site", team_id=team_id)
    app_id = app["app_id"]
    # Its state on auth.apps.v1, in this process's app directory: the team and its members' roles.
    record = stack.runtime.shared["app_directory"].get(app_id)
    assert record is not None and record.team_id == team_id
    assert dict(record.members) == {alice["id"]: "owner", bob["id"]: "viewer"}
    listed = {a["app_id"]: a for a in (await http.get("/api/auth/apps", headers=bob["headers"])).json()}
    assert listed[app_id]["role"] == "viewer" and listed[app_id]["team_id"] == team_id
    assert listed[app_id]["name"] == "team site"
    assert app_id not in {a["app_id"] for a in (await http.get("/api/auth/apps", headers=outsider["headers"])).json()}

    async def reads(who: dict[str, Any]) -> int:
        r = await http.get("/api/analytics/stats/aggregate", params={"app_id": app_id}, headers=who["headers"])
        return r.status_code

    assert await reads(bob) == 200 and await reads(outsider) == 403
    # A viewer manages no keys and no settings.
    r = await http.get("/api/auth/api-key", params={"app_id": app_id}, headers=bob["headers"])
    assert r.status_code == 403 and set(r.json()) == {"detail"}
    r = await http.patch(f"/api/auth/apps/{app_id}", json={"name": "mine"}, headers=bob["headers"])
    assert r.status_code == 403, r.text

    # Made admin, he does; the query service learns of it from auth.apps.v1.
    r = await http.patch(f"/api/teams/{team_id}/members/{bob['id']}", json={"role": "admin"}, headers=alice["headers"])
    assert r.status_code == 200, r.text

    async def published_admin() -> bool:
        record = stack.runtime.shared["app_directory"].get(app_id)
        return record is not None and record.members.get(bob["id"]) == "admin"

    await eventually(published_admin, 5, "the new role never reached the app directory")
    r = await http.patch(f"/api/auth/apps/{app_id}", json={"name": "renamed"}, headers=bob["headers"])
    assert r.status_code == 200 and r.json()["role"] == "admin", r.text
    r = await http.get("/api/auth/api-key", params={"app_id": app_id}, headers=bob["headers"])
    assert r.status_code == 200 and len(r.json()["keys"]) == 2

    async def can_delete_user_data(who: dict[str, Any]) -> bool:
        r = await http.delete("/api/analytics/users/nobody", params={"app_id": app_id}, headers=who["headers"])
        return r.status_code == 200

    await eventually(lambda: can_delete_user_data(bob), timeout=5, message="the query service never saw bob become admin")

    # Removed from the team, he loses the app everywhere; the app stays the team's.
    r = await http.delete(f"/api/teams/{team_id}/members/{bob['id']}", headers=alice["headers"])
    assert r.status_code == 204, r.text
    assert app_id not in {a["app_id"] for a in (await http.get("/api/auth/apps", headers=bob["headers"])).json()}
    r = await http.get("/api/auth/api-key", params={"app_id": app_id}, headers=bob["headers"])
    assert r.status_code == 403, r.text

    async def refused() -> bool:
        return await reads(bob) == 403

    await eventually(refused, timeout=5, message="the query service still lets a removed member read")
    assert await reads(alice) == 200


async def test_who_registered_a_team_app_loses_it_on_leaving_the_team(http: httpx.AsyncClient, engines: Settings) -> None:
    alice = await signup_login(http)
    team_id = await new_team(http, alice)
    bob = await join(http, engines, alice, team_id, "admin")
    app = await register(http, bob, "bobs team site", team_id=team_id)
    r = await http.delete(f"/api/teams/{team_id}/members/{bob['id']}", headers=bob["headers"])
    assert r.status_code == 204, r.text
    r = await http.get("/api/auth/api-key", params={"app_id": app["app_id"]}, headers=bob["headers"])
    assert r.status_code == 403, r.text
    r = await http.get("/api/auth/api-key", params={"app_id": app["app_id"]}, headers=alice["headers"])
    assert r.status_code == 200, r.text


async def test_a_member_who_leaves_or_becomes_viewer_gets_no_more_report_emails(http: httpx.AsyncClient, engines: Settings) -> None:
    alice = await signup_login(http)
    team_id = await new_team(http, alice)
    bob = await join(http, engines, alice, team_id, "admin")
    carol = await join(http, engines, alice, team_id, "admin")
    app = await register(http, alice, "reported", team_id=team_id)
    for who in (alice, bob, carol):
        r = await http.post("/api/email/reports", json={"app_id": app["app_id"], "frequency": "weekly"}, headers=who["headers"])
        assert r.status_code == 201, r.text

    async def reports(who: dict[str, Any]) -> list[str]:
        r = await http.get("/api/email/reports", headers=who["headers"])
        return [x["app_id"] for x in r.json()]

    r = await http.patch(f"/api/teams/{team_id}/members/{bob['id']}", json={"role": "viewer"}, headers=alice["headers"])
    assert r.status_code == 200, r.text
    assert await reports(bob) == []
    r = await http.delete(f"/api/teams/{team_id}/members/{carol['id']}", headers=carol["headers"])
    assert r.status_code == 204, r.text
    assert await reports(carol) == []
    assert await reports(alice) == [app["app_id"]]
    # A viewer subscribes to none.
    r = await http.post("/api/email/reports", json={"app_id": app["app_id"]}, headers=bob["headers"])
    assert r.status_code == 403, r.text


async def test_a_deleted_account_leaves_its_teams_and_the_apps_it_registered_stay_with_the_team(
    http: httpx.AsyncClient, engines: Settings, stack: Stack
) -> None:
    alice = await signup_login(http)
    team_id = await new_team(http, alice)
    bob = await join(http, engines, alice, team_id, "owner")
    app = await register(http, bob, "bobs team site", team_id=team_id)
    r = await http.request("DELETE", "/api/user/me", json={"password": PASSWORD}, headers=bob["headers"])
    assert r.status_code == 204, r.text
    assert bob["username"] not in await members(http, alice, team_id)
    # The team's app is the team's: its keys still work, alice still manages and reads it.
    assert (await collect(http, app["write_key"])).status_code == 202
    r = await http.get("/api/auth/api-key", params={"app_id": app["app_id"]}, headers=alice["headers"])
    assert r.status_code == 200, r.text
    r = await http.get("/api/analytics/events/count", params={"app_id": app["app_id"]}, headers=alice["headers"])
    assert r.status_code == 200, r.text
    # Published again without bob: the query service's directory no longer lists him.

    async def bob_gone() -> bool:
        record = stack.runtime.shared["app_directory"].get(app["app_id"])
        return record is not None and bob["id"] not in record.members and not record.deleted

    await eventually(bob_gone, 5, "the team app was not published again without the deleted member")


async def test_the_last_owner_of_a_team_cannot_delete_the_account(http: httpx.AsyncClient, engines: Settings) -> None:
    alice = await signup_login(http)
    team_id = await new_team(http, alice)
    await join(http, engines, alice, team_id, "admin")
    r = await http.request("DELETE", "/api/user/me", json={"password": PASSWORD}, headers=alice["headers"])
    assert r.status_code == 409, r.text
    assert "owner" in r.json()["detail"]
    assert (await http.get("/api/user/get_user_profile", headers=alice["headers"])).status_code == 200
