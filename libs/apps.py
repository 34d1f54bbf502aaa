"""Apps as gateways and the query service know them: who may read each, and its site settings.

Auth owns apps (Postgres) and publishes each app's whole state on the compacted topic `auth.apps.v1`
(key: the app id) whenever it changes, again at start and whenever it finds the topic emptied. Every
gateway and query process mirrors the topic in memory (libs/mirror.py) into one `AppDirectory`, so
deciding whether a user may read an app, or which rules an app's events follow, never leaves memory
and never reads auth's tables. A state carries a version (microseconds of the change): a replayed older
state never replaces a newer one. A deleted app stays on the topic as a state with `deleted: true`.

Read-your-writes as for keys: an app the directory does not know (registered a moment ago, maybe
through another process) is looked up again after `caught_up_for_app`, which waits until the mirror
holds everything Kafka acknowledged before the call.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from prometheus_client import Counter, Gauge

from libs.kafka import APPS_TOPIC
from libs.logs import get_logger
from libs.mirror import TopicMirror, shared, stop_shared
from libs.settings import Settings

log = get_logger(__name__)

Role = Literal["viewer", "admin", "owner"]
ROLES: tuple[Role, ...] = ("viewer", "admin", "owner")
ROLE_RANK: dict[str, int] = {role: rank for rank, role in enumerate(ROLES, start=1)}

APP_ID_FORMAT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

APP_STATES_APPLIED = Counter("app_states_applied_total", "App states applied from auth.apps.v1")
APPS_KNOWN = Gauge("apps_known", "Apps in this process's in-memory app directory")
APP_MISSES = Counter("app_directory_misses_total", "App ids the directory did not know at first look", ["reason"])
APP_CATCHUPS = Counter("app_directory_catchups_total", "Catch-ups of the app directory to auth.apps.v1", ["outcome"])


def at_least(role: str | None, needed: Role) -> bool:
    """Whether `role` (None: no access) grants what `needed` does (owner > admin > viewer)."""
    return role is not None and ROLE_RANK.get(role, 0) >= ROLE_RANK[needed]


@dataclass(frozen=True, slots=True)
class SharedLink:
    """A read-only link to an app's stats: only the SHA-256 of its token travels and is kept."""

    link_id: str
    token_hash: str
    has_password: bool  # then only a token from POST /api/auth/shared-links/unlock reads through it


@dataclass(frozen=True, slots=True)
class AppRecord:
    app_id: str
    owner_id: str
    name: str
    version: int
    domain: str | None = None
    team_id: str | None = None
    timezone: str = "UTC"  # IANA name; decides the site's day boundaries
    excluded_ips: tuple[str, ...] = ()  # addresses and CIDRs whose events the gateway drops
    allowed_origins: tuple[str, ...] = ()  # browser origins the write key accepts (empty: any)
    # user id -> role: an app of a team has its team's members (who registered it is no owner by that alone)
    members: Mapping[str, Role] = field(default_factory=dict)
    shared_links: tuple[SharedLink, ...] = ()  # read-only links to its stats (revoked ones are gone)
    deleted: bool = False

    def role_of(self, user_id: str) -> Role | None:
        """What `user_id` may do with the app: a member has the member's role; the owner of an app of
        no team is "owner" (an app of a team: only its members, with their roles in the team)."""
        if self.deleted:
            return None
        if user_id == self.owner_id and self.team_id is None:
            return "owner"
        return self.members.get(user_id)

    def to_message(self) -> dict[str, Any]:
        return {
            "schema": APPS_TOPIC,
            "app_id": self.app_id,
            "owner_id": self.owner_id,
            "team_id": self.team_id,
            "name": self.name,
            "domain": self.domain,
            "timezone": self.timezone,
            "excluded_ips": list(self.excluded_ips),
            "allowed_origins": list(self.allowed_origins),
            "members": dict(self.members),
            "shared_links": [{"link_id": link.link_id, "token_hash": link.token_hash, "has_password": link.has_password}
                             for link in self.shared_links],
            "deleted": self.deleted,
            "version": self.version,
            "occurred_at": datetime.now(UTC).isoformat(),
        }

    @classmethod
    def from_message(cls, msg: dict[str, Any]) -> AppRecord:
        members = msg.get("members") or {}
        if not isinstance(members, dict):
            raise TypeError("members must be an object of user id -> role")
        return cls(
            app_id=str(msg["app_id"]), owner_id=str(msg["owner_id"]), name=str(msg["name"]),
            version=int(msg["version"]), domain=msg.get("domain"), team_id=msg.get("team_id"),
            timezone=str(msg.get("timezone") or "UTC"),
            excluded_ips=tuple(str(v) for v in msg.get("excluded_ips") or ()),
            allowed_origins=tuple(str(v) for v in msg.get("allowed_origins") or ()),
            members={str(user): role for user, role in members.items() if role in ROLE_RANK},
            shared_links=tuple(SharedLink(str(link["link_id"]), str(link["token_hash"]), bool(link["has_password"]))
                               for link in msg.get("shared_links") or ()),
            deleted=bool(msg.get("deleted", False)),
        )


class AppDirectory:
    """app id -> AppRecord, the newest version of each; `caught_up_for_app` after a miss."""

    def __init__(self) -> None:
        self._apps: dict[str, AppRecord] = {}
        self._links: dict[str, tuple[str, SharedLink]] = {}  # token hash -> (app id, link)
        self.ready = asyncio.Event()
        # Set by AppDirectorySync: wait until the directory holds everything on the topic when called.
        self.catch_up: Any = None

    def get(self, app_id: str) -> AppRecord | None:
        """The app's record (deleted ones included), or None when unknown. Never waits."""
        return self._apps.get(app_id)

    def by_link(self, token_hash: str) -> tuple[AppRecord, SharedLink] | None:
        """The app and shared link whose token has this SHA-256 (None: no such link, or revoked). Never waits."""
        found = self._links.get(token_hash)
        if found is None:
            return None
        app = self._apps.get(found[0])
        return (app, found[1]) if app is not None and not app.deleted else None

    async def lookup_link(self, token_hash: str) -> tuple[AppRecord, SharedLink] | None:
        """`by_link`, caught up with the topic first when the link is not known yet (made a moment ago,
        maybe through another process). The caller passes only hashes of well-formed tokens."""
        found = self.by_link(token_hash)
        if found is None and self.catch_up is not None:
            APP_MISSES.labels("link").inc()
            await self.catch_up()
            found = self.by_link(token_hash)
        return found

    async def caught_up_for_app(self, app_id: str) -> bool:
        """After `get(app_id)` missed: True once the directory caught up with every app state
        acknowledged before this call (look again), False when no catch-up could change the answer
        (not an app id). Raises DependencyUnavailable when the topic could not be read in time."""
        if not APP_ID_FORMAT.fullmatch(app_id):
            APP_MISSES.labels("malformed").inc()
            return False
        APP_MISSES.labels("unknown").inc()
        if self.catch_up is None:
            return False
        await self.catch_up()
        return True

    async def lookup(self, app_id: str) -> AppRecord | None:
        """`get`, caught up with the topic first when the app is not known yet."""
        record = self.get(app_id)
        if record is None and await self.caught_up_for_app(app_id):
            record = self.get(app_id)
        return record

    def apply(self, rec: AppRecord) -> bool:
        """Keep `rec` unless a newer version of the same app is already known."""
        current = self._apps.get(rec.app_id)
        if current is not None and current.version > rec.version:
            return False
        for link in current.shared_links if current is not None else ():
            self._links.pop(link.token_hash, None)
        if not rec.deleted:
            for link in rec.shared_links:
                self._links[link.token_hash] = (rec.app_id, link)
        self._apps[rec.app_id] = rec
        APPS_KNOWN.set(len(self._apps))
        return True

    def __len__(self) -> int:
        return len(self._apps)


class AppDirectorySync:
    """Fills an AppDirectory from `auth.apps.v1` and catches it up on demand."""

    def __init__(self, settings: Settings, directory: AppDirectory) -> None:
        self.directory = directory
        self.mirror = TopicMirror(settings, APPS_TOPIC, self._apply, "the apps topic", APP_CATCHUPS)

    def _apply(self, message: Any) -> None:
        try:
            self.directory.apply(AppRecord.from_message(orjson.loads(message.value)))
            APP_STATES_APPLIED.inc()
        except (ValueError, KeyError, TypeError) as exc:
            log.error("bad app state skipped", offset=message.offset, error=repr(exc))

    async def start(self) -> None:
        await self.mirror.start()
        self.directory.ready.set()
        log.info("app directory loaded", apps=len(self.directory))
        self.directory.catch_up = self.mirror.wait_caught_up

    async def stop(self) -> None:
        self.directory.catch_up = None
        await self.mirror.stop()


async def shared_app_directory(runtime: Any) -> AppDirectory:
    """One app directory per process, shared by every service in it (gateway and query)."""

    async def make() -> tuple[AppDirectory, AppDirectorySync]:
        directory = AppDirectory()
        sync = AppDirectorySync(runtime.settings, directory)
        await sync.start()
        return directory, sync

    return await shared(runtime, "app_directory", make)


async def stop_shared_app_directory(runtime: Any) -> None:
    await stop_shared(runtime, "app_directory")
