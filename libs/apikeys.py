"""API keys: their format, their hash, and the in-memory key table that gateways and query read.

Key formats (the prefix tells the kind at a glance, like Stripe's `sk_`/`pk_`):
* `sk_<43 chars>`: secret key, 256 random bits; ingest and read. Keep it on servers.
* `wk_<43 chars>`: write key, 256 random bits; ingest only. Safe to ship in browsers and apps.

Only `sha256(key)` is stored or published: keys are long random strings, so a fast hash is enough
and keeps the lookup on the hot path to one dict access.

The key topic `auth.api-keys.v1` is the only way key state reaches gateways and query (they never
read auth's tables): it is log-compacted by key id, every message carries the key's whole state and a
version, and the table follows it from the earliest offset, so replays and repeats are harmless and
the newest state always wins. Auth republishes every key at start and whenever it finds the topic
emptied (a broker that lost its log). The table mirrors the topic (libs/mirror.py: no group, every
partition, nothing committed). A lookup of a known key never leaves memory.

Read-your-writes: a well-formed key the table does not know is not refused at once: the caller awaits
`caught_up_for`, which waits until the table holds every key message Kafka acknowledged before the
request arrived (a key issued a moment ago, in another process too), then looks again; those catch-ups
are shared and rate-limited (libs/mirror.py), so a flood of invalid keys costs at most ~20 offset
requests a second per process and no database call. A string that cannot be one of our keys, or a
known key that is revoked or expired, is refused without one. If Kafka cannot answer in time the
request gets 503 (retry), not 401: the key may well be valid.

When a key was last used is noted in memory at lookup and written to a Redis hash
(`KEY_LAST_USED_HASH`, key id -> unix time, the newest wins) every few seconds, off the hot path;
auth reads it for the key metadata and folds it into Postgres.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
import orjson
import redis.asyncio as aioredis
from prometheus_client import Counter, Gauge

from libs.kafka import API_KEYS_TOPIC, end_offsets, group_reader, topic_partitions
from libs.logs import get_logger
from libs.mirror import TopicMirror, shared, stop_shared
from libs.settings import Settings

log = get_logger(__name__)

KeyKind = Literal["secret", "write"]
KIND_PREFIX: dict[KeyKind, str] = {"secret": "sk_", "write": "wk_"}
PREFIX_SHOWN = 11  # "sk_" + 8 chars: enough to tell keys apart in a list, useless to an attacker

KEY_EVENTS_APPLIED = Counter("api_key_events_applied_total", "Key lifecycle messages applied", ["type"])
KEYS_KNOWN = Gauge("api_keys_known", "Keys in this process's in-memory key table")
KEY_MISSES = Counter(
    "api_key_misses_total", "Presented keys (or apps) the key table did not accept at first look", ["reason"]
)
KEY_CATCHUPS = Counter(
    "api_key_catchups_total", "Catch-ups of the key table to the key topic's end offsets", ["outcome"]
)

# What generate_key makes: a prefix and token_urlsafe(32). Anything else is refused without a catch-up.
KEY_FORMAT = re.compile(r"(?:sk|wk)_[A-Za-z0-9_-]{43}")

KEY_LAST_USED_HASH = "auth:key-last-used"
# HSET each field only if the new time is newer: gateways flush independently.
_KEEP_NEWEST = """
for i = 1, #ARGV, 2 do
  local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0')
  if tonumber(ARGV[i + 1]) > cur then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
return 1
"""


def generate_key(kind: KeyKind) -> str:
    return KIND_PREFIX[kind] + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


# The gateway hashes the key of every request; a site sends thousands with the same few keys. Only the
# hash is cached: whether that hash is a usable key is still looked up each time, so a revocation
# takes effect at once.
_hash_of_presented_key = functools.lru_cache(maxsize=4096)(hash_key)


def shown_prefix(key: str) -> str:
    return key[:PREFIX_SHOWN]


@dataclass(frozen=True, slots=True)
class KeyRecord:
    key_id: str
    app_id: str
    owner_id: str
    kind: KeyKind
    key_hash: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    version: int

    def usable(self, now: datetime | None = None) -> bool:
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or self.expires_at > (now or datetime.now(UTC))

    def to_message(self, event_type: str) -> dict[str, Any]:
        return {
            "schema": "auth.api-keys.v1",
            "type": event_type,
            "key_id": self.key_id,
            "app_id": self.app_id,
            "owner_id": self.owner_id,
            "kind": self.kind,
            "key_hash": self.key_hash,
            "prefix": self.prefix,
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "version": self.version,
            "occurred_at": datetime.now(UTC).isoformat(),
        }

    @classmethod
    def from_message(cls, msg: dict[str, Any]) -> KeyRecord:
        def ts(value: str | None) -> datetime | None:
            return datetime.fromisoformat(value) if value else None

        created = ts(msg["created_at"])
        assert created is not None
        return cls(
            key_id=msg["key_id"], app_id=msg["app_id"], owner_id=msg["owner_id"], kind=msg["kind"],
            key_hash=msg["key_hash"], prefix=msg["prefix"], created_at=created,
            expires_at=ts(msg.get("expires_at")), revoked_at=ts(msg.get("revoked_at")),
            version=int(msg["version"]),
        )

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> KeyRecord:
        return cls(
            key_id=str(row["id"]), app_id=str(row["app_id"]), owner_id=str(row["owner_id"]),
            kind=row["kind"], key_hash=row["key_hash"], prefix=row["prefix"], created_at=row["created_at"],
            expires_at=row["expires_at"], revoked_at=row["revoked_at"], version=int(row["version"]),
        )


class KeyTable:
    """key hash -> KeyRecord."""

    def __init__(self) -> None:
        self._by_hash: dict[str, KeyRecord] = {}
        self._by_id: dict[str, KeyRecord] = {}
        self.ready = asyncio.Event()
        self._used: dict[str, float] = {}  # key id -> last use (unix time), since the last flush
        # Set by KeyTableSync: wait until the table holds everything on the key topic when called.
        self.catch_up: Callable[[], Awaitable[None]] | None = None

    def lookup(self, key: str) -> KeyRecord | None:
        """The record of a usable key (known, not revoked, not expired), else None. Never waits."""
        rec = self._by_hash.get(_hash_of_presented_key(key))
        if rec is None or not rec.usable():
            return None
        self._used[rec.key_id] = time.time()
        return rec

    async def caught_up_for(self, key: str) -> bool:
        """After `lookup(key)` missed: True once the table caught up with every key message
        acknowledged before this call (look again), False when no catch-up could change the answer
        (a string that cannot be our key, a known key that is revoked or expired).

        Raises DependencyUnavailable when the key topic could not be read in time."""
        if not KEY_FORMAT.fullmatch(key):
            return self._no_catch_up("malformed")
        if _hash_of_presented_key(key) in self._by_hash:
            return self._no_catch_up("revoked_or_expired")
        return await self._wait_for_topic("unknown_key")

    @staticmethod
    def _no_catch_up(reason: str) -> bool:
        KEY_MISSES.labels(reason).inc()
        return False

    async def _wait_for_topic(self, reason: str) -> bool:
        KEY_MISSES.labels(reason).inc()
        if self.catch_up is None:
            return False
        await self.catch_up()
        return True

    def take_used(self) -> dict[str, float]:
        """The keys used since the last call, with when; forgets them."""
        used, self._used = self._used, {}
        return used

    def give_back_used(self, used: dict[str, float]) -> None:
        """Keep usage that could not be flushed for the next attempt."""
        for key_id, at in used.items():
            self._used[key_id] = max(at, self._used.get(key_id, 0.0))

    def apply(self, rec: KeyRecord) -> bool:
        """Keep `rec` unless a newer version of the same key is already known."""
        current = self._by_id.get(rec.key_id)
        if current is not None and current.version > rec.version:
            return False
        if current is not None and current.key_hash != rec.key_hash:
            self._by_hash.pop(current.key_hash, None)
        self._by_id[rec.key_id] = rec
        self._by_hash[rec.key_hash] = rec
        KEYS_KNOWN.set(len(self._by_id))
        return True

    def __len__(self) -> int:
        return len(self._by_id)


class KeyTableSync:
    """Fills a KeyTable from the key topic (libs/mirror.py: from its earliest offset, then
    continuously), catches it up with the topic on demand (`KeyTable.caught_up_for`), and writes when
    keys were last used to Redis."""

    def __init__(self, settings: Settings, table: KeyTable, redis: aioredis.Redis | None = None) -> None:
        self.settings = settings
        self.table = table
        self.redis = redis
        self._usage_task: asyncio.Task[None] | None = None
        self.mirror = TopicMirror(settings, API_KEYS_TOPIC, self._apply, "the API-key topic", KEY_CATCHUPS)

    async def start(self) -> None:
        await self.mirror.start()
        self.table.ready.set()
        log.info("api key table loaded", keys=len(self.table))
        self.table.catch_up = self.mirror.wait_caught_up
        if self.redis is not None:
            self._usage_task = asyncio.create_task(self._flush_usage_forever(), name="api-key-usage-flush")

    def _apply(self, message: Any) -> None:
        try:
            body = orjson.loads(message.value)
            self.table.apply(KeyRecord.from_message(body))
            KEY_EVENTS_APPLIED.labels(body.get("type", "unknown")).inc()
        except (ValueError, KeyError, TypeError) as exc:
            log.error("bad api key message skipped", offset=message.offset, error=repr(exc))

    async def _flush_usage_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.api_key_usage_flush_interval_s)
            await self.flush_usage()

    async def flush_usage(self) -> None:
        """Write when keys were last used to Redis; on failure keep them for the next flush."""
        used = self.table.take_used()
        if not used or self.redis is None:
            return
        args = [v for key_id, at in used.items() for v in (key_id, f"{at:.3f}")]
        try:
            await self.redis.eval(_KEEP_NEWEST, 1, KEY_LAST_USED_HASH, *args)
        except Exception as exc:  # noqa: BLE001 - last-used times are best effort; ingestion goes on
            self.table.give_back_used(used)
            log.warning("api key usage not flushed", keys=len(used), error=repr(exc))

    async def stop(self) -> None:
        self.table.catch_up = None
        await self.mirror.stop()
        if self._usage_task is not None:
            self._usage_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._usage_task
        self._usage_task = None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush_usage(), 2)


class KeyTopicWatch:
    """For the publisher of the key topic (auth): how far it published on each partition, to tell when
    the topic lost what it held (the broker's log was wiped, the topic recreated) and every key must be
    published again, or gateways and query would not know them."""

    def __init__(self, settings: Settings, topic: str = API_KEYS_TOPIC) -> None:
        self.settings = settings
        self.topic = topic
        self.published: dict[int, int] = {}  # partition -> the offset after the last acknowledged message
        self.owed = False  # the topic lost messages and not every key was published again yet

    def note(self, metadata: Any) -> None:
        """Remember an acknowledged message (aiokafka's RecordMetadata)."""
        after = metadata.offset + 1
        if after > self.published.get(metadata.partition, 0):
            self.published[metadata.partition] = after

    async def emptied(self) -> bool:
        """True when a partition now ends before what was acknowledged on it (then `owed` stays true
        until `republished()`), or an earlier republishing did not finish."""
        if self.owed:
            return True
        if not self.published:
            return False
        async with group_reader(self.settings, "auth-key-topic-watch") as reader:
            tps = await topic_partitions(reader, self.topic)
            ends = await end_offsets(reader, tps) if tps else {}
        lost = {tp.partition: end for tp, end in ends.items() if end < self.published.get(tp.partition, 0)}
        if tps and len(tps) < len(self.published):  # fewer partitions than before: recreated
            lost = lost or {-1: 0}
        if not lost:
            return False
        log.warning("the key topic lost messages it had acknowledged; publishing every key again",
                    topic=self.topic, ends=lost, published=self.published)
        self.published = {}
        self.owed = True
        return True

    def republished(self) -> None:
        self.owed = False


async def shared_key_table(runtime: Any) -> KeyTable:
    """One key table per process, shared by every service in it (gateway and query)."""

    async def make() -> tuple[KeyTable, KeyTableSync]:
        table = KeyTable()
        redis = await runtime.redis() if runtime.settings.redis_url else None
        sync = KeyTableSync(runtime.settings, table, redis)
        await sync.start()
        return table, sync

    return await shared(runtime, "key_table", make)


async def stop_shared_key_table(runtime: Any) -> None:
    await stop_shared(runtime, "key_table")
