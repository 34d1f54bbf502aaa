"""SQL of the auth service (asyncpg). Every value is a bind parameter."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg

from libs.apikeys import KeyRecord
from libs.stores import PgConnection

# Background jobs' bulk statements: longer than the auth pool's per-statement default (request path).
BULK_TIMEOUT_S = 60


def version_now() -> int:
    """Microseconds since the epoch: key versions only grow, so consumers keep the newest state."""
    return int(datetime.now(UTC).timestamp() * 1_000_000)


async def insert_user(conn: PgConnection, username: str, email: str, password_hash: str) -> asyncpg.Record:
    row = await conn.fetchrow(
        "INSERT INTO users(username, email, password_hash) VALUES($1, $2, $3) "
        "RETURNING id, username, email, created_at",
        username, email, password_hash,
    )
    assert row is not None  # INSERT ... RETURNING answers the row it inserted
    return row


async def user_by_login(conn: PgConnection, login: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT id, username, email, password_hash FROM users WHERE lower(username)=lower($1) OR lower(email)=lower($1) "
        "LIMIT 1",
        login,
    )


async def user_by_id(conn: PgConnection, user_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT id, username, email, created_at FROM users WHERE id=$1", uuid.UUID(user_id))


async def user_auth_by_id(conn: PgConnection, user_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT id, username, email, password_hash, created_at FROM users WHERE id=$1", uuid.UUID(user_id)
    )


async def user_by_email(conn: PgConnection, email: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT id, username, email FROM users WHERE lower(email)=lower($1)", email)


async def lock_user(conn: PgConnection, user_id: str) -> bool:
    """Lock the user's row until the transaction ends; False when there is no such user."""
    return await conn.fetchval("SELECT true FROM users WHERE id=$1 FOR UPDATE", uuid.UUID(user_id)) is not None


async def set_password(conn: PgConnection, user_id: str, password_hash: str) -> None:
    await conn.execute("UPDATE users SET password_hash=$2 WHERE id=$1", uuid.UUID(user_id), password_hash)


async def delete_user(conn: PgConnection, user_id: str) -> None:
    """The user's apps, keys, refresh tokens, reset links and subscriptions go with it (ON DELETE CASCADE)."""
    await conn.execute("DELETE FROM users WHERE id=$1", uuid.UUID(user_id))


async def delete_app(conn: PgConnection, app_id: uuid.UUID) -> None:
    """Its keys and report subscriptions go with it (ON DELETE CASCADE)."""
    await conn.execute("DELETE FROM apps WHERE id=$1", app_id)


async def insert_password_reset(conn: PgConnection, token_hash: str, user_id: str, expires_at: datetime) -> None:
    await conn.execute(
        "INSERT INTO password_resets(token_hash, user_id, expires_at) VALUES($1, $2, $3)",
        token_hash, uuid.UUID(user_id), expires_at,
    )


async def claim_password_reset(conn: PgConnection, token_hash: str) -> asyncpg.Record | None:
    """The reset link's row, locked until the transaction ends (two uses at once see each other)."""
    return await conn.fetchrow(
        "SELECT user_id, expires_at, used_at FROM password_resets WHERE token_hash=$1 FOR UPDATE", token_hash
    )


async def spend_password_resets(conn: PgConnection, user_id: str) -> None:
    await conn.execute(
        "UPDATE password_resets SET used_at = now() WHERE user_id=$1 AND used_at IS NULL", uuid.UUID(user_id)
    )


async def taken(conn: PgConnection, username: str, email: str) -> list[str]:
    rows = await conn.fetch(
        "SELECT lower(username)=lower($1) AS u, lower(email)=lower($2) AS e FROM users "
        "WHERE lower(username)=lower($1) OR lower(email)=lower($2)",
        username, email,
    )
    found = []
    if any(r["u"] for r in rows):
        found.append("username")
    if any(r["e"] for r in rows):
        found.append("email")
    return found


async def insert_refresh(
    conn: PgConnection, jti: str, family: str, user_id: str, expires_at: datetime
) -> None:
    await conn.execute(
        "INSERT INTO refresh_tokens(jti, family_id, user_id, expires_at) VALUES($1, $2, $3, $4)",
        uuid.UUID(jti), uuid.UUID(family), uuid.UUID(user_id), expires_at,
    )


async def spend_refresh(conn: PgConnection, jti: str) -> asyncpg.Record | None:
    """Mark a refresh token used; returns its row as it was before (None if unknown).

    Call inside a transaction: the row lock makes two concurrent uses of one token see each other.
    """
    row = await conn.fetchrow(
        "SELECT family_id, user_id, used_at, revoked_at, expires_at FROM refresh_tokens WHERE jti=$1 FOR UPDATE",
        uuid.UUID(jti),
    )
    if row is not None and row["used_at"] is None:
        await conn.execute("UPDATE refresh_tokens SET used_at = now() WHERE jti=$1", uuid.UUID(jti))
    return row


async def revoke_family(conn: PgConnection, family: str) -> None:
    await conn.execute(
        "UPDATE refresh_tokens SET revoked_at = now() WHERE family_id = $1 AND revoked_at IS NULL", uuid.UUID(family)
    )


async def revoke_user_families(conn: PgConnection, user_id: str, keep: str | None) -> list[str]:
    """Revoke every session (refresh family) of the user but `keep`; returns the families revoked."""
    rows = await conn.fetch(
        """UPDATE refresh_tokens SET revoked_at = now()
           WHERE user_id = $1 AND revoked_at IS NULL AND ($2::uuid IS NULL OR family_id <> $2::uuid)
           RETURNING family_id""",
        uuid.UUID(user_id), uuid.UUID(keep) if keep else None,
    )
    return sorted({str(r["family_id"]) for r in rows})


APP_COLUMNS = "id, owner_id, name, domain, created_at, timezone, excluded_ips, allowed_origins, version"


async def insert_app(conn: PgConnection, owner_id: str, name: str, domain: str | None) -> asyncpg.Record:
    row = await conn.fetchrow(
        f"INSERT INTO apps(owner_id, name, domain, version) VALUES($1, $2, $3, $4) RETURNING {APP_COLUMNS}",
        uuid.UUID(owner_id), name, domain, version_now(),
    )
    assert row is not None  # INSERT ... RETURNING answers the row it inserted
    return row


async def app_by_id(conn: PgConnection, app_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(f"SELECT {APP_COLUMNS} FROM apps WHERE id=$1", app_id)


async def apps_of(conn: PgConnection, owner_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"SELECT {APP_COLUMNS} FROM apps WHERE owner_id=$1 ORDER BY created_at", uuid.UUID(owner_id)
    )


async def apps_by_ids(conn: PgConnection, app_ids: list[uuid.UUID]) -> list[asyncpg.Record]:
    return await conn.fetch(f"SELECT {APP_COLUMNS} FROM apps WHERE id = ANY($1::uuid[])", app_ids)


async def all_apps(conn: PgConnection) -> list[asyncpg.Record]:
    return await conn.fetch(f"SELECT {APP_COLUMNS} FROM apps", timeout=BULK_TIMEOUT_S)


async def update_app(conn: PgConnection, app_id: uuid.UUID, changes: dict[str, object]) -> asyncpg.Record:
    """Set the given columns (names from the caller's fixed list, values bound) and a new version."""
    columns = list(changes)
    sets = ", ".join(f"{c}=${i}" for i, c in enumerate(columns, start=3))
    row = await conn.fetchrow(
        f"UPDATE apps SET version=$2{', ' + sets if sets else ''} WHERE id=$1 RETURNING {APP_COLUMNS}",
        app_id, version_now(), *changes.values(),
    )
    assert row is not None  # the caller holds the app
    return row


KEY_COLUMNS = """k.id, k.app_id, a.owner_id, k.kind, k.key_hash, k.prefix, k.created_at, k.expires_at,
                 k.revoked_at, k.last_used_at, k.version"""


async def insert_key(
    conn: PgConnection, app_id: uuid.UUID, kind: str, prefix: str, key_hash: str, expires_at: datetime | None
) -> KeyRecord:
    row = await conn.fetchrow(
        f"""WITH k AS (
              INSERT INTO api_keys(app_id, kind, prefix, key_hash, expires_at, version)
              VALUES($1, $2, $3, $4, $5, $6) RETURNING *)
            SELECT {KEY_COLUMNS} FROM k JOIN apps a ON a.id = k.app_id""",
        app_id, kind, prefix, key_hash, expires_at, version_now(),
    )
    assert row is not None  # INSERT ... RETURNING answers the row it inserted
    return KeyRecord.from_row(row)


async def keys_of_app(conn: PgConnection, app_id: uuid.UUID) -> list[asyncpg.Record]:
    return await conn.fetch(
        f"SELECT {KEY_COLUMNS} FROM api_keys k JOIN apps a ON a.id = k.app_id WHERE k.app_id=$1 "
        "ORDER BY k.created_at, k.kind",
        app_id,
    )


async def key_by_id(conn: PgConnection, key_id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow(
        f"SELECT {KEY_COLUMNS} FROM api_keys k JOIN apps a ON a.id = k.app_id WHERE k.id=$1", key_id
    )


async def revoke_keys(conn: PgConnection, key_ids: list[uuid.UUID]) -> list[KeyRecord]:
    """Revoke the keys not yet revoked; returns their new state."""
    rows = await conn.fetch(
        f"""WITH k AS (
              UPDATE api_keys SET revoked_at = now(), version = $2
              WHERE id = ANY($1::uuid[]) AND revoked_at IS NULL RETURNING *)
            SELECT {KEY_COLUMNS} FROM k JOIN apps a ON a.id = k.app_id""",
        key_ids, version_now(),
    )
    return [KeyRecord.from_row(r) for r in rows]


async def all_keys(conn: PgConnection) -> list[KeyRecord]:
    rows = await conn.fetch(f"SELECT {KEY_COLUMNS} FROM api_keys k JOIN apps a ON a.id = k.app_id", timeout=BULK_TIMEOUT_S)
    return [KeyRecord.from_row(r) for r in rows]


async def claim_expiring(conn: PgConnection, within_s: float) -> list[asyncpg.Record]:
    """Mark usable keys that expire within `within_s` seconds and were not warned about yet.

    Returns them with their app's name and owner. The UPDATE claims each key once, even with
    several auth replicas checking at the same time; call inside the transaction that queues the
    emails, so a failed queue leaves them to the next check.
    """
    return await conn.fetch(
        """UPDATE api_keys k SET expiry_notified_at = now()
           FROM apps a
           WHERE a.id = k.app_id AND k.revoked_at IS NULL AND k.expiry_notified_at IS NULL
             AND k.expires_at > now() AND k.expires_at <= now() + make_interval(secs => $1)
           RETURNING k.id, k.app_id, k.kind, k.prefix, k.expires_at, a.owner_id, a.name AS app_name""",
        within_s, timeout=BULK_TIMEOUT_S,
    )


async def claim_expired(conn: PgConnection) -> list[KeyRecord]:
    """Mark keys whose expiry has passed (not revoked, not announced yet); returns their new state."""
    rows = await conn.fetch(
        f"""WITH k AS (
              UPDATE api_keys SET expired_announced_at = now(), version = $1
              WHERE revoked_at IS NULL AND expires_at IS NOT NULL AND expires_at <= now()
                AND expired_announced_at IS NULL
              RETURNING *)
            SELECT {KEY_COLUMNS} FROM k JOIN apps a ON a.id = k.app_id""",
        version_now(), timeout=BULK_TIMEOUT_S,
    )
    return [KeyRecord.from_row(r) for r in rows]


async def fold_key_usage(conn: PgConnection, used: dict[uuid.UUID, datetime]) -> None:
    """Keep the newer of each key's stored last use and `used`."""
    await conn.execute(
        """UPDATE api_keys k SET last_used_at = GREATEST(k.last_used_at, u.at)
           FROM unnest($1::uuid[], $2::timestamptz[]) AS u(id, at)
           WHERE k.id = u.id AND (k.last_used_at IS NULL OR k.last_used_at < u.at)""",
        list(used), list(used.values()), timeout=BULK_TIMEOUT_S,
    )
