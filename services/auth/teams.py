"""Teams (`/api/teams`, `/api/invitations`): people who share apps, each with a role.

A team's owner invites by email (a one-time token, mailed, valid 7 days); the signed-in invitee whose
email it names accepts it and becomes a member with the invited role. An app registered with a
`team_id` belongs to the team: its state on `auth.apps.v1` carries the team's members (user id ->
role), so every change of membership publishes every app of the team again, inside the transaction
that makes the change (a change Kafka did not take is rolled back). Roles: viewer < admin < owner
(libs/apps.py); a team keeps at least one owner."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated

import asyncpg
from fastapi import APIRouter, Path, Response

from libs.http import ApiError
from libs.kafka import REPORT_SUBSCRIPTIONS_TOPIC, publish
from libs.logs import get_logger
from libs.notifications import EmailMessage
from libs.openapi import errors
from libs.stores import PgConnection
from services.auth import repository as repo
from services.auth import schemas as s
from services.auth.context import AuthCtx, User
from services.auth.keys import app_record, team_role

if TYPE_CHECKING:
    from services.auth.keys import AppKeys

log = get_logger(__name__)

INVITATION_TTL = timedelta(days=7)
INVITATION_LIMIT = "30/hour"  # invitation emails per inviting user
MAX_TEAMS_PER_USER = 100

Id = Annotated[s.Line, Path(max_length=64)]


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def members_changed(svc: AppKeys, conn: PgConnection, team: uuid.UUID) -> None:
    """Publish every app of the team again with its new members (a new version each), before commit.
    A team keeps an owner: a change that leaves none is refused (409) and rolled back."""
    owners = await conn.fetchval("SELECT count(*) FROM team_members WHERE team_id = $1 AND role = 'owner'", team)
    if not owners:
        raise ApiError(409, "a team needs an owner: make another member owner first")
    rows = await repo.touch_team_apps(conn, team)
    if rows:
        await svc.announce_apps([app_record(r) for r in rows])
    # Report emails of the team's apps go only to its admins and owners: a member who left or was made
    # viewer gets no more of them (their subscriptions end, tombstones published before commit).
    ended = await conn.fetch(
        """DELETE FROM report_subscriptions s USING apps a
           WHERE s.app_id = a.id AND a.team_id = $1 AND NOT EXISTS (
               SELECT 1 FROM team_members m WHERE m.team_id = $1 AND m.user_id = s.user_id AND m.role IN ('admin', 'owner'))
           RETURNING s.id""",
        team,
    )
    for sub in ended:
        await publish(svc.producer, REPORT_SUBSCRIPTIONS_TOPIC, None, key=str(sub["id"]))


def _team_out(row: asyncpg.Record) -> s.TeamOut:
    return s.TeamOut(team_id=str(row["id"]), name=row["name"], role=row["role"], created_at=row["created_at"])


def _member_out(row: asyncpg.Record) -> s.MemberOut:
    return s.MemberOut(user_id=str(row["user_id"]), username=row["username"], email=row["email"], role=row["role"],
                       joined_at=row["created_at"])


def _invitation_out(row: asyncpg.Record) -> s.InvitationOut:
    return s.InvitationOut(invitation_id=str(row["id"]), email=row["email"], role=row["role"],
                           created_at=row["created_at"], expires_at=row["expires_at"])


async def create_team(svc: AppKeys, user_id: str, name: str) -> asyncpg.Record:
    async with svc.db() as conn, conn.transaction():
        count = await conn.fetchval("SELECT count(*) FROM team_members WHERE user_id = $1", uuid.UUID(user_id))
        if count >= MAX_TEAMS_PER_USER:
            raise ApiError(409, f"at most {MAX_TEAMS_PER_USER} teams per user")
        team = await conn.fetchrow("INSERT INTO teams(name) VALUES($1) RETURNING id, name, created_at, 'owner' AS role", name)
        assert team is not None
        await conn.execute("INSERT INTO team_members(team_id, user_id, role) VALUES($1, $2, 'owner')", team["id"], uuid.UUID(user_id))
    log.info("team created", team_id=str(team["id"]))
    return team


async def teams_of(svc: AppKeys, user_id: str) -> list[asyncpg.Record]:
    async with svc.db() as conn:
        return await conn.fetch(
            """SELECT t.id, t.name, t.created_at, m.role FROM teams t JOIN team_members m ON m.team_id = t.id
               WHERE m.user_id = $1 ORDER BY t.created_at, t.id""",
            uuid.UUID(user_id),
        )


async def members_of(svc: AppKeys, user_id: str, team_id: str) -> s.MembersOut:
    async with svc.db() as conn:
        team = await team_role(conn, team_id, user_id, "viewer")
        name = await conn.fetchval("SELECT name FROM teams WHERE id = $1", team)
        members = await conn.fetch(
            """SELECT m.user_id, u.username, u.email, m.role, m.created_at FROM team_members m JOIN users u ON u.id = m.user_id
               WHERE m.team_id = $1 ORDER BY m.created_at, u.username""",
            team,
        )
        pending = await conn.fetch(
            """SELECT id, email, role, created_at, expires_at FROM team_invitations
               WHERE team_id = $1 AND accepted_at IS NULL AND expires_at > now() ORDER BY created_at""",
            team,
        )
    return s.MembersOut(
        team_id=str(team), name=name,
        members=[_member_out(m) for m in members],
        invitations=[_invitation_out(r) for r in pending],
    )


async def invite(svc: AppKeys, user_id: str, team_id: str, email: str, role: str) -> asyncpg.Record:
    """A one-time token, mailed to `email` (only its hash is stored). Owners only."""
    token = secrets.token_urlsafe(32)
    async with svc.db() as conn:
        team = await team_role(conn, team_id, user_id, "owner")
        member = await conn.fetchval(
            """SELECT 1 FROM team_members m JOIN users u ON u.id = m.user_id
               WHERE m.team_id = $1 AND lower(u.email) = lower($2)""",
            team, email,
        )
        if member:
            raise ApiError(409, f"{email} is a member of this team already")
    retry_after = await svc.limiter.hit(INVITATION_LIMIT, "invite", user_id)
    if retry_after is not None:
        raise ApiError(429, f"too many invitations; retry in {retry_after}s", {"Retry-After": str(retry_after)})
    async with svc.db() as conn:
        row = await conn.fetchrow(
            """INSERT INTO team_invitations(team_id, email, role, token_hash, invited_by, expires_at)
               VALUES($1, $2, $3, $4, $5, now() + make_interval(days => $6)) RETURNING id, email, role, created_at, expires_at""",
            team, email.lower(), role, _token_hash(token), uuid.UUID(user_id), INVITATION_TTL.days,
        )
        names = await conn.fetchrow(
            "SELECT t.name AS team, u.username AS inviter FROM teams t, users u WHERE t.id = $1 AND u.id = $2",
            team, uuid.UUID(user_id),
        )
    assert row is not None and names is not None
    await svc._email_quietly(EmailMessage(to=email, template="team_invitation", data={
        "team_name": names["team"], "inviter": names["inviter"], "role": role, "token": token,
        "expires_days": INVITATION_TTL.days,
    }))
    log.info("team invitation sent", team_id=team_id, invitation_id=str(row["id"]))
    return row


async def accept(svc: AppKeys, user_id: str, token: str) -> asyncpg.Record:
    """The signed-in user joins the invitation's team, if the invitation names their email."""
    async with svc.db() as conn, conn.transaction():
        invitation = await conn.fetchrow(
            """SELECT id, team_id, email, role, expires_at <= now() AS expired, accepted_at FROM team_invitations
               WHERE token_hash = $1 FOR UPDATE""",
            _token_hash(token),
        )
        if invitation is None:
            raise ApiError(404, "invitation not found; ask the team's owner for a new one")
        user = await repo.user_by_id(conn, user_id)
        if user is None or user["email"].lower() != invitation["email"].lower():
            raise ApiError(403, "this invitation is for another email address; sign in as its addressee")
        if invitation["accepted_at"] is not None:
            raise ApiError(409, "this invitation was used already")
        if invitation["expired"]:
            raise ApiError(410, "this invitation has expired; ask the team's owner for a new one")
        team = invitation["team_id"]
        await conn.execute("SELECT 1 FROM teams WHERE id = $1 FOR UPDATE", team)
        added = await conn.fetchval(
            """INSERT INTO team_members(team_id, user_id, role) VALUES($1, $2, $3)
               ON CONFLICT (team_id, user_id) DO NOTHING RETURNING 1""",
            team, uuid.UUID(user_id), invitation["role"],
        )
        if not added:
            raise ApiError(409, "you are a member of this team already")
        await conn.execute(
            "UPDATE team_invitations SET accepted_at = now(), accepted_by = $2 WHERE id = $1", invitation["id"], uuid.UUID(user_id)
        )
        await members_changed(svc, conn, team)
        joined = await conn.fetchrow("SELECT id, name, created_at, $2::text AS role FROM teams WHERE id = $1", team, invitation["role"])
    assert joined is not None
    log.info("team invitation accepted", team_id=str(team), invitation_id=str(invitation["id"]))
    return joined


async def set_role(svc: AppKeys, user_id: str, team_id: str, member_id: str, role: str) -> s.MemberOut:
    async with svc.db() as conn, conn.transaction():
        team = await team_role(conn, team_id, user_id, "owner", lock="FOR UPDATE OF t")
        changed = await conn.fetchrow(
            """UPDATE team_members m SET role = $3 FROM users u WHERE m.team_id = $1 AND m.user_id = $2 AND u.id = m.user_id
               RETURNING m.user_id, u.username, u.email, m.role, m.created_at""",
            team, _member_uuid(member_id), role,
        )
        if changed is None:
            raise ApiError(404, "member not found")
        await members_changed(svc, conn, team)
    return _member_out(changed)


async def remove(svc: AppKeys, user_id: str, team_id: str, member_id: str) -> None:
    """An owner removes a member; any member removes themself. The last owner stays (409)."""
    async with svc.db() as conn, conn.transaction():
        team = await team_role(conn, team_id, user_id, "viewer" if member_id == user_id else "owner", lock="FOR UPDATE OF t")
        removed = await conn.fetchval(
            "DELETE FROM team_members WHERE team_id = $1 AND user_id = $2 RETURNING 1", team, _member_uuid(member_id),
        )
        if not removed:
            raise ApiError(404, "member not found")
        await members_changed(svc, conn, team)


def _member_uuid(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise ApiError(404, "member not found") from exc


router = APIRouter(tags=["teams"], responses=errors(401, 403, 404, 422, 503))


@router.post("/api/teams", operation_id="createTeam", status_code=201, response_model=s.TeamOut, responses=errors(409),
             summary="Create a team (you become its owner)")
async def create(body: s.TeamIn, user: User, ctx: AuthCtx) -> s.TeamOut:
    return _team_out(await create_team(ctx.keys, user.sub, body.name))


@router.get("/api/teams", operation_id="listTeams", response_model=list[s.TeamOut], summary="Your teams, with your role in each")
async def list_teams(user: User, ctx: AuthCtx) -> list[s.TeamOut]:
    return [_team_out(r) for r in await teams_of(ctx.keys, user.sub)]


@router.get("/api/teams/{team_id}/members", operation_id="listTeamMembers", response_model=s.MembersOut,
            summary="A team's members with their roles, and its pending invitations")
async def members(team_id: Id, user: User, ctx: AuthCtx) -> s.MembersOut:
    return await members_of(ctx.keys, user.sub, team_id)


@router.post("/api/teams/{team_id}/invitations", operation_id="inviteTeamMember", status_code=201,
             response_model=s.InvitationOut, responses=errors(409, 429),
             summary="Invite someone by email, with a role (owners only); the token is mailed, valid 7 days")
async def invitation(team_id: Id, body: s.InvitationIn, user: User, ctx: AuthCtx) -> s.InvitationOut:
    return _invitation_out(await invite(ctx.keys, user.sub, team_id, str(body.email), body.role))


@router.post("/api/invitations/accept", operation_id="acceptInvitation", response_model=s.TeamOut, responses=errors(409, 410),
             summary="Join a team with the token of an invitation to your email address")
async def accept_invitation(body: s.AcceptIn, user: User, ctx: AuthCtx) -> s.TeamOut:
    return _team_out(await accept(ctx.keys, user.sub, body.token))


@router.patch("/api/teams/{team_id}/members/{user_id}", operation_id="updateTeamMember", response_model=s.MemberOut,
              responses=errors(409), summary="Change a member's role (owners only; a team keeps an owner)")
async def update_member(team_id: Id, user_id: Id, body: s.RoleIn, user: User, ctx: AuthCtx) -> s.MemberOut:
    return await set_role(ctx.keys, user.sub, team_id, user_id, body.role)


@router.delete("/api/teams/{team_id}/members/{user_id}", operation_id="removeTeamMember", status_code=204,
               responses=errors(409), summary="Remove a member (owners), or leave the team (yourself)")
async def remove_member(team_id: Id, user_id: Id, user: User, ctx: AuthCtx) -> Response:
    await remove(ctx.keys, user.sub, team_id, user_id)
    return Response(status_code=204)
