"""Apps and their API keys: registering, listing, revoking and regenerating, each change announced on
`auth.api-keys.v1` (so gateways and the query service learn of it) before it is committed. No HTTP
here; errors are ApiError."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from libs.apikeys import KEY_LAST_USED_HASH, KeyKind, KeyRecord, KeyTopicWatch, generate_key, hash_key, shown_prefix
from libs.apps import AppRecord
from libs.contracts import AppDeletion, AppDeletionReason
from libs.http import ApiError
from libs.kafka import API_KEYS_TOPIC, APP_DELETIONS_TOPIC, APPS_TOPIC, REPORT_SUBSCRIPTIONS_TOPIC, KafkaUnavailable, publish
from libs.logs import get_logger
from libs.stores import PgConnection
from services.auth import repository as repo
from services.auth.store import AuthStore

log = get_logger(__name__)


@dataclass
class IssuedKeys:
    api_key: str
    write_key: str
    records: list[KeyRecord]


class AppKeys(AuthStore):
    """An owner's apps and their keys (a secret key to read, a write key to send events)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.key_topic = KeyTopicWatch(self.settings)  # republish when the key topic lost what it held
        self.app_topic = KeyTopicWatch(self.settings, APPS_TOPIC)  # the same for the apps topic

    def _default_expiry(self) -> datetime | None:
        days = self.settings.api_key_ttl_days
        return datetime.now(UTC) + timedelta(days=days) if days else None

    async def register_app(
        self, owner_id: str, name: str, domain: str | None, expires_at: datetime | None
    ) -> tuple[asyncpg.Record, IssuedKeys]:
        expires_at = expires_at or self._default_expiry()
        async with self.db() as conn, conn.transaction():
            app = await repo.insert_app(conn, owner_id, name, domain)
            issued = await self._issue_keys(conn, app["id"], expires_at)
            await self.announce_apps([app_record(app)])  # before the keys: a reader finds the app of a key
            await self.announce(issued.records, "created")
        await self._email_owner(owner_id, "api_key_created", {"app_name": name, "keys": _key_summaries(issued.records)})
        return app, issued

    async def _issue_keys(self, conn: PgConnection, app_id: uuid.UUID, expires_at: datetime | None) -> IssuedKeys:
        made: dict[KeyKind, str] = {"secret": generate_key("secret"), "write": generate_key("write")}
        records = [
            await repo.insert_key(conn, app_id, kind, shown_prefix(key), hash_key(key), expires_at)
            for kind, key in made.items()
        ]
        return IssuedKeys(api_key=made["secret"], write_key=made["write"], records=records)

    async def owned_app(self, user_id: str, app_id: str) -> asyncpg.Record:
        """The app, if `user_id` owns it: 404 when it does not exist, 403 when it is someone else's."""
        app_uuid = _uuid_or_404(app_id, "app")
        async with self.db() as conn:
            app = await repo.app_by_id(conn, app_uuid)
        if app is None:
            raise ApiError(404, "app not found")
        if str(app["owner_id"]) != user_id:
            raise ApiError(403, "this app belongs to another user")
        return app

    async def list_apps(self, user_id: str) -> list[asyncpg.Record]:
        async with self.db() as conn:
            return await repo.apps_of(conn, user_id)

    async def key_metadata(self, user_id: str, app_id: str) -> list[dict[str, Any]]:
        """The app's keys, with when each was last used as far as gateways told (Redis) or Postgres knows."""
        app = await self.owned_app(user_id, app_id)
        async with self.db() as conn:
            rows = [dict(r) for r in await repo.keys_of_app(conn, app["id"])]
        recent = await self.recent_key_usage([str(r["id"]) for r in rows])
        for row in rows:
            seen = recent.get(row["id"])
            if seen is not None and (row["last_used_at"] is None or seen > row["last_used_at"]):
                row["last_used_at"] = seen
        return rows

    async def recent_key_usage(self, key_ids: list[str] | None = None) -> dict[uuid.UUID, datetime]:
        """Last uses the gateways wrote to Redis (all, or these keys); empty when Redis is down."""
        raw: Mapping[bytes | str, bytes | str | None]  # hmget answers None for a key never used
        try:
            if key_ids is None:
                raw = await self.redis.hgetall(KEY_LAST_USED_HASH)
            elif key_ids:
                raw = dict(zip(key_ids, await self.redis.hmget(KEY_LAST_USED_HASH, key_ids), strict=True))
            else:
                raw = {}
        except Exception as exc:  # noqa: BLE001 - last-used times are best effort
            log.warning("api key usage not read", error=repr(exc))
            return {}
        used: dict[uuid.UUID, datetime] = {}
        for key_id, at in raw.items():
            if at is None:
                continue
            with contextlib.suppress(ValueError, TypeError):
                key = key_id.decode() if isinstance(key_id, bytes) else key_id
                used[uuid.UUID(key)] = datetime.fromtimestamp(float(at), UTC)
        return used


    async def revoke(self, user_id: str, app_id: str | None, key_id: str | None) -> list[KeyRecord]:
        if key_id is not None:
            key_uuid = _uuid_or_404(key_id, "key")
            async with self.db() as conn:
                row = await repo.key_by_id(conn, key_uuid)
            if row is None:
                raise ApiError(404, "key not found")
            app = await self.owned_app(user_id, str(row["app_id"]))
        else:
            assert app_id is not None
            app = await self.owned_app(user_id, app_id)
        async with self.db() as conn, conn.transaction():
            targets = [key_uuid] if key_id is not None else [r["id"] for r in await repo.keys_of_app(conn, app["id"])]
            revoked = await repo.revoke_keys(conn, targets)
            await self.announce(revoked, "revoked")
        if revoked:
            await self._email_owner(user_id, "api_key_revoked", {"app_name": app["name"], "keys": _key_summaries(revoked)})
        return revoked

    async def regenerate(self, user_id: str, app_id: str, expires_at: datetime | None) -> tuple[IssuedKeys, list[KeyRecord]]:
        app = await self.owned_app(user_id, app_id)
        async with self.db() as conn, conn.transaction():
            old = [r["id"] for r in await repo.keys_of_app(conn, app["id"])]
            revoked = await repo.revoke_keys(conn, old)
            issued = await self._issue_keys(conn, app["id"], expires_at or self._default_expiry())
            await self.announce(revoked, "regenerated")
            await self.announce(issued.records, "created")
        await self._email_owner(user_id, "api_key_created", {"app_name": app["name"], "keys": _key_summaries(issued.records)})
        return issued, revoked

    async def update_settings(self, user_id: str, app_id: str, changes: dict[str, Any]) -> asyncpg.Record:
        """Change an app's name, domain or site settings, announced on auth.apps.v1 before committing."""
        app = await self.owned_app(user_id, app_id)
        async with self.db() as conn, conn.transaction():
            row = await repo.update_app(conn, app["id"], changes)
            await self.announce_apps([app_record(row)])
        log.info("app settings changed", app_id=app_id, fields=sorted(changes))
        return row

    async def retire_apps(self, conn: PgConnection, app_ids: list[uuid.UUID], reason: AppDeletionReason) -> list[uuid.UUID]:
        """Inside the caller's transaction, before it deletes the apps: revoke their keys (announced, so
        gateways and the query service refuse them at once), publish the apps as deleted, stop their
        report subscriptions (tombstones), and ask the query service to delete their events (auth.app-deletions.v1). Kafka not taking any of
        it raises (503), and the transaction is rolled back."""
        if not app_ids:
            return []
        keys = await conn.fetch("SELECT id FROM api_keys WHERE app_id = ANY($1::uuid[])", app_ids)
        await self.announce(await repo.revoke_keys(conn, [k["id"] for k in keys]), "revoked")
        subscriptions = await conn.fetch("SELECT id FROM report_subscriptions WHERE app_id = ANY($1::uuid[])", app_ids)
        await self._stop_reports([s["id"] for s in subscriptions])
        now = datetime.now(UTC)
        rows = await repo.apps_by_ids(conn, app_ids)
        owners = {r["id"]: str(r["owner_id"]) for r in rows}
        # Gone for every reader at once: a Bearer read of a deleted app is 404 (auth.apps.v1).
        await self.announce_apps([replace(app_record(r), deleted=True, version=repo.version_now()) for r in rows])
        for app_id in app_ids:
            request = AppDeletion(app_id=str(app_id), owner_id=owners.get(app_id, ""), reason=reason, requested_at=now)
            await publish(self.producer, APP_DELETIONS_TOPIC, request.model_dump(mode="json", by_alias=True), key=str(app_id))
        log.info("apps retired", apps=[str(a) for a in app_ids], reason=reason)
        return app_ids

    async def delete_app(self, user_id: str, app_id: str) -> None:
        """Retire the app (keys revoked, published as deleted, reports stopped, its events deleted by the
        query service) and remove its row, in one transaction that commits only once Kafka took it all."""
        app = await self.owned_app(user_id, app_id)
        async with self.db() as conn, conn.transaction():
            await self.retire_apps(conn, [app["id"]], "app_deleted")
            await repo.delete_app(conn, app["id"])

    async def stop_reports_of(self, conn: PgConnection, user_id: str) -> None:
        """Tombstones for the user's own report subscriptions (inside the caller's transaction)."""
        rows = await conn.fetch("SELECT id FROM report_subscriptions WHERE user_id = $1", uuid.UUID(user_id))
        await self._stop_reports([r["id"] for r in rows])

    async def _stop_reports(self, subscription_ids: list[uuid.UUID]) -> None:
        for subscription_id in subscription_ids:
            await publish(self.producer, REPORT_SUBSCRIPTIONS_TOPIC, None, key=str(subscription_id))

    async def announce(self, records: list[KeyRecord], event_type: str) -> None:
        """Tell every gateway (auth.api-keys.v1) and wait for Kafka's acknowledgement, retrying briefly.

        Callers announce inside the transaction that makes the change: a change Kafka did not take
        is rolled back (the client gets 503 and may retry) instead of being stored while gateways
        never hear of it. The reverse (announced, then the commit fails) is harmless: a created key
        nobody was shown, or a revocation the owner retries.
        """
        await self._announce(API_KEYS_TOPIC, self.key_topic, [(r.key_id, r.to_message(event_type)) for r in records])

    async def announce_apps(self, records: list[AppRecord]) -> None:
        """As `announce`, for apps' states (auth.apps.v1): who may read them and their site settings."""
        await self._announce(APPS_TOPIC, self.app_topic, [(r.app_id, r.to_message()) for r in records])

    async def _announce(self, topic: str, watch: KeyTopicWatch, states: list[tuple[str, dict[str, Any]]]) -> None:
        pending = states
        for attempt in range(3):
            pending = await self._publish_states(topic, watch, pending)
            if not pending:
                return
            if attempt < 2:
                await asyncio.sleep(0.2 * 2**attempt)
        log.error("state change not published", topic=topic, keys=[key for key, _ in pending])
        raise KafkaUnavailable(f"{len(pending)} change(s) not acknowledged by Kafka ({topic})")

    async def _publish_states(
        self, topic: str, watch: KeyTopicWatch, states: list[tuple[str, dict[str, Any]]]
    ) -> list[tuple[str, dict[str, Any]]]:
        """Publish the states concurrently; returns those Kafka did not acknowledge."""
        results = await asyncio.gather(
            *(publish(self.producer, topic, message, key=key) for key, message in states), return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, KafkaUnavailable):
                raise result
            if not isinstance(result, BaseException):
                watch.note(result)
        return [state for state, result in zip(states, results, strict=True) if isinstance(result, KafkaUnavailable)]

    async def republish_all_keys(self) -> int:
        """Publish the state of every key (at start-up), so gateways converge even after a lost message."""
        async with self.db() as conn:
            records = await repo.all_keys(conn)
        return await self._republish(API_KEYS_TOPIC, self.key_topic, [(r.key_id, r.to_message("snapshot")) for r in records])

    async def republish_all_apps(self) -> int:
        """Publish the state of every app (at start-up): gateways and query know apps only from it."""
        async with self.db() as conn:
            records = [app_record(row) for row in await repo.all_apps(conn)]
        return await self._republish(APPS_TOPIC, self.app_topic, [(r.app_id, r.to_message()) for r in records])

    async def _republish(self, topic: str, watch: KeyTopicWatch, states: list[tuple[str, dict[str, Any]]]) -> int:
        for i in range(0, len(states), 500):
            failed = await self._publish_states(topic, watch, states[i : i + 500])
            if failed:
                raise KafkaUnavailable(f"{len(failed)} states not acknowledged by Kafka at start-up ({topic})")
        return len(states)

    async def republish_if_key_topic_emptied(self) -> int:
        """Publish every key (and app) again when its topic lost what it held (KeyTopicWatch): gateways
        and query know keys and apps only from them."""
        published = 0
        for watch, republish in ((self.key_topic, self.republish_all_keys), (self.app_topic, self.republish_all_apps)):
            if await watch.emptied():
                published += await republish()
                watch.republished()
        return published


def app_record(row: asyncpg.Record) -> AppRecord:
    """The published state of an app row (repository.APP_COLUMNS)."""
    return AppRecord(
        app_id=str(row["id"]), owner_id=str(row["owner_id"]), name=row["name"], version=int(row["version"]),
        domain=row["domain"], timezone=row["timezone"], excluded_ips=tuple(row["excluded_ips"]),
        allowed_origins=tuple(row["allowed_origins"]),
    )


def _uuid_or_404(value: str, what: str) -> uuid.UUID:
    """An id that is no UUID names nothing: 404, as for one that does not exist."""
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise ApiError(404, f"{what} not found") from exc


def _key_summaries(records: list[KeyRecord]) -> list[dict[str, Any]]:
    return [
        {"kind": r.kind, "prefix": r.prefix, "expires_at": r.expires_at.isoformat() if r.expires_at else None}
        for r in records
    ]
