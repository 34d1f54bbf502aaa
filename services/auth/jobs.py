"""The auth service's background jobs: warning owners of keys about to expire and announcing expired
ones, keeping the gateways' last-use times of keys in Postgres, and republishing every key state now
and then."""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import Awaitable, Callable

import asyncpg
from aiokafka.errors import KafkaError

from libs.http import DependencyUnavailable
from libs.kafka import KafkaUnavailable
from libs.logs import get_logger
from libs.notifications import EmailMessage, queue_email
from services.auth import repository as repo
from services.auth.keys import AppKeys
from services.auth.store import POSTGRES_DOWN

log = get_logger(__name__)

KEY_TOPIC_CHECK_S = 10.0  # how often auth looks whether the key topic lost its messages


class KeyJobs:
    """What auth does on its own schedule, over the apps' keys."""

    def __init__(self, keys: AppKeys) -> None:
        self.keys = keys

    async def check_key_expiry(self) -> tuple[int, int]:
        """Warn owners of keys that expire soon; announce keys that just expired.

        Returns (keys warned about, keys announced as expired). Each step claims its keys in a
        transaction that commits only once the emails or messages are acknowledged by Kafka.
        """
        within_s = self.keys.settings.auth_expiry_warning_days * 86400
        async with self.keys.db() as conn, conn.transaction():
            expiring = await repo.claim_expiring(conn, within_s)
            by_app: dict[uuid.UUID, list[asyncpg.Record]] = {}
            for row in expiring:
                by_app.setdefault(row["app_id"], []).append(row)
            for rows in by_app.values():
                first = min(rows, key=lambda r: r["expires_at"])
                owner = await repo.user_by_id(conn, str(first["owner_id"]))
                if owner is None:
                    continue
                await queue_email(self.keys.producer, EmailMessage(
                    to=owner["email"], template="api_key_expiring",
                    data={
                        "username": owner["username"], "app_name": first["app_name"],
                        "expires_at": first["expires_at"].isoformat(),
                        "keys": [
                            {"kind": r["kind"], "prefix": r["prefix"], "expires_at": r["expires_at"].isoformat()}
                            for r in rows
                        ],
                    },
                ))
        async with self.keys.db() as conn, conn.transaction():
            expired = await repo.claim_expired(conn)
            await self.keys.announce(expired, "expired")
        if expiring or expired:
            log.info("api key expiry checked", warned=len(expiring), expired=len(expired))
        return len(expiring), len(expired)

    async def run_key_checks(self) -> None:
        """Background job, now and every AUTH_EXPIRY_CHECK_INTERVAL_S seconds: `check_key_expiry`
        and `fold_key_usage`; and `republish_all_keys` every AUTH_KEY_SNAPSHOT_INTERVAL_S."""
        last_snapshot = time.monotonic()  # the start-up hook has just published one
        last_checks = -math.inf
        while True:
            # The key topic, every few seconds (one offsets request); the other checks every interval.
            with contextlib.suppress(*POSTGRES_DOWN, asyncpg.PostgresError, DependencyUnavailable, KafkaUnavailable,
                                     KafkaError, OSError):
                await self.keys.republish_if_key_topic_emptied()
            interval = self.keys.settings.auth_expiry_check_interval_s
            if time.monotonic() - last_checks < interval:
                await asyncio.sleep(min(KEY_TOPIC_CHECK_S, interval))
                continue
            last_checks = time.monotonic()
            checks: list[Callable[[], Awaitable[object]]] = [self.check_key_expiry, self.fold_key_usage]
            if time.monotonic() - last_snapshot >= self.keys.settings.auth_key_snapshot_interval_s:
                last_snapshot = time.monotonic()
                checks.append(self.keys.republish_all_keys)
            for check in checks:
                try:
                    await check()
                except (*POSTGRES_DOWN, asyncpg.PostgresError, DependencyUnavailable, KafkaUnavailable) as exc:
                    # Postgres or Kafka down: nothing was marked, the next round tries again.
                    log.warning("api key check failed; will retry", check=check.__name__, error=repr(exc))


    async def fold_key_usage(self) -> int:
        """Copy the last uses from Redis into Postgres, so they outlive Redis."""
        used = await self.keys.recent_key_usage()
        if used:
            async with self.keys.db() as conn:
                await repo.fold_key_usage(conn, used)
        return len(used)
