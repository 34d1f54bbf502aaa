# ruff: noqa: S608 - SQL from fixed fragments only; every value is a bind parameter
"""Users list, and one user's data: export (JSON lines, streamed) and deletion; and every event of an
app deleted when auth announces the app gone (`auth.app-deletions.v1`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from libs.clickhouse import ClickHouse, ClickHouseUnavailable
from libs.kafka import (
    AGGREGATOR_GROUP,
    APP_DELETIONS_GROUP,
    APP_DELETIONS_TOPIC,
    EVENTS_TOPIC,
    backlog,
    end_offsets,
    group_reader,
    topic_partitions,
)
from libs.logs import get_logger
from libs.settings import Settings
from libs.statetopic import State, follow_state_topic
from services.query import frozen
from services.query.cache import QueryCache
from services.query.queries import EVENT_COLUMNS, _decode_properties

log = get_logger(__name__)

# Events a gateway accepted just before it heard of the revocation (it applies it within a second) may
# still be on their way to ClickHouse: they are deleted by a second pass, once the aggregator has stored
# everything published until LATE_EVENTS_S after the deletion was asked for (waiting at most CATCH_UP_S).
LATE_EVENTS_S = 5.0
CATCH_UP_S = 60.0

EXPORT_BATCH = 1000


async def list_users(
    ch: ClickHouse, app_id: str, search: str | None, limit: int, offset: int, only: tuple[str, dict[str, Any]] = ("", {})
) -> tuple[list[dict[str, Any]], int]:
    """`only`: a condition on visitor_id (segments.segment_condition) with its values, or none."""
    params: dict[str, Any] = {"app_id": app_id, "limit": limit, "offset": offset, **only[1]}
    clause = "app_id = {app_id:String} AND user_id != ''"
    if only[0]:
        clause += f" AND {only[0]}"
    if search:
        clause += " AND positionCaseInsensitive(user_id, {search:String}) > 0"
        params["search"] = search
    rows = await ch.query(
        f"""SELECT user_id AS userId, count() AS events, min(timestamp) AS firstSeen, max(timestamp) AS lastSeen,
                   argMax(device_type, timestamp) AS device, argMax(browser, timestamp) AS browser,
                   argMax(os, timestamp) AS os, argMax(country, timestamp) AS country
            FROM events FINAL WHERE {clause}
            GROUP BY user_id ORDER BY lastSeen DESC, userId LIMIT {{limit:UInt32}} OFFSET {{offset:UInt32}}""",
        params,
    )
    total = await ch.query(f"SELECT uniqExact(user_id) AS n FROM events FINAL WHERE {clause}", params)
    return rows, int(total[0]["n"]) if total else 0


async def export_lines(ch: ClickHouse, app_id: str, user_id: str) -> AsyncIterator[bytes]:
    """Every event of the user, oldest first, in batches (keyset pagination on timestamp, event_id)."""
    after_ts, after_id = "1900-01-01 00:00:00.000", ""  # the timestamp column's first day (libs/limits.py)
    while True:
        rows = await ch.query(
            f"""SELECT {EVENT_COLUMNS}, formatDateTime(timestamp, '%Y-%m-%d %H:%i:%S.%f', 'UTC') AS _cursor
                FROM events FINAL
                WHERE app_id = {{app_id:String}} AND user_id = {{user_id:String}}
                  AND (timestamp, event_id) > (toDateTime64({{ts:String}}, 3, 'UTC'), {{id:String}})
                ORDER BY timestamp, event_id LIMIT {{n:UInt32}}""",
            {"app_id": app_id, "user_id": user_id, "ts": after_ts, "id": after_id, "n": EXPORT_BATCH},
        )
        if not rows:
            return
        after_ts, after_id = rows[-1]["_cursor"][:23], rows[-1]["event_id"]
        for row in _decode_properties(rows):
            row.pop("_cursor", None)
            yield orjson.dumps(row, default=str) + b"\n"
        if len(rows) < EXPORT_BATCH:
            return


async def delete_user(ch: ClickHouse, app_id: str, user_id: str) -> int:
    return await _delete_events(ch, app_id, "app_id = {app_id:String} AND user_id = {user_id:String}",
                                {"app_id": app_id, "user_id": user_id})


async def delete_app(ch: ClickHouse, app_id: str) -> int:
    """Every event and metric of the app, and its rollups; returns how many events there were."""
    n = await _delete_events(ch, app_id, "app_id = {app_id:String}", {"app_id": app_id})
    await ch.command(f"{ch.schema.alter('metrics')} DELETE WHERE app_id = {{app_id:String}} SETTINGS mutations_sync = 2",
                     {"app_id": app_id})
    return n


async def _delete_events(ch: ClickHouse, app_id: str, where: str, params: dict[str, Any]) -> int:
    rows = await ch.query(f"SELECT count() AS n FROM events FINAL WHERE {where}", params)
    n = int(rows[0]["n"]) if rows else 0
    if n:
        days = [r["d"] for r in await ch.query(
            f"SELECT DISTINCT toString(toDate(timestamp)) AS d FROM events FINAL WHERE {where}", params)]
        # A mutation, waited for: when this returns, no read finds the rows. It goes to the table that
        # stores the rows (in a cluster: events_local ON CLUSTER; a Distributed table takes no mutation).
        await ch.command(f"{ch.schema.alter('events')} DELETE WHERE {where} SETTINGS mutations_sync = 2", params)
        await rebuild_daily(ch, app_id, days)
        await frozen.mark_changed(ch, app_id, days)  # their frozen counts are not used again
    return n


async def rebuild_daily(ch: ClickHouse, app_id: str, days: list[str]) -> None:
    """Recompute the events_daily rollup of these days of the app from events (after a deletion)."""
    params: dict[str, Any] = {"app_id": app_id, "days": ",".join(days)}
    scope = "app_id = {app_id:String} AND has(splitByChar(',', {days:String}), toString(day))"
    await ch.command(f"{ch.schema.alter('events_daily')} DELETE WHERE {scope} SETTINGS mutations_sync = 2", params)
    # Through the Distributed events_daily in a cluster (the days' new rows land on the shard of their
    # key, the old ones are gone from every shard), written before this returns (foreground inserts).
    # No insert deduplication: a replicated rollup would drop a rebuild identical to an earlier one
    # (the same day rebuilt after the rows added since were deleted), after the DELETE emptied the day.
    await ch.command(
        """INSERT INTO events_daily SETTINGS insert_deduplicate = 0
           SELECT app_id, toDate(timestamp) AS day, event_name, device_type,
                  uniqExactState(cityHash64(event_id)) AS events, uniqCombined64State(15)(visitor_id) AS visitors
           FROM events FINAL WHERE app_id = {app_id:String} AND has(splitByChar(',', {days:String}), toString(toDate(timestamp)))
           GROUP BY app_id, day, event_name, device_type""",
        params,
    )


async def follow_app_deletions(
    settings: Settings, ch: ClickHouse, cache: QueryCache, forget: Callable[[str], Awaitable[None]] | None = None
) -> None:
    """Forever: delete every event of each app named on `auth.app-deletions.v1` (its owner deleted the
    app or the account), then make its cached answers unreachable. ClickHouse away: retried.
    `forget(app_id)`: also remove what else the query service keeps of the app (its goals, segments
    and saved funnels, definitions.py)."""

    async def apply(states: Sequence[State]) -> None:
        apps = {app_id: state for app_id, state in states if state is not None}
        for app_id, state in apps.items():  # at once: reads stop finding them
            if forget is not None:
                await forget(app_id)
            deleted = await delete_app(ch, app_id)
            await cache.bump_generation(app_id)
            log.info("app events deleted", app_id=app_id, events=deleted, reason=state.get("reason"))
        if not apps:
            return
        asked = max(datetime.fromisoformat(state["requested_at"]).timestamp() for state in apps.values())
        caught_up = await _aggregator_caught_up(settings, asked + LATE_EVENTS_S)
        for app_id in apps:  # and what was still on its way
            late = await delete_app(ch, app_id)
            await cache.bump_generation(app_id)
            if late or not caught_up:
                log.warning("late app events deleted", app_id=app_id, events=late, aggregator_caught_up=caught_up)

    await follow_state_topic(settings, APP_DELETIONS_TOPIC, APP_DELETIONS_GROUP, apply, retry_on=(ClickHouseUnavailable,))


async def _aggregator_caught_up(settings: Settings, after: float) -> bool:
    """Wait until `after` (unix time), then until the aggregator has stored every event published by
    then (its group committed past the events topic's ends read then); False after CATCH_UP_S."""
    await asyncio.sleep(max(0.0, after - datetime.now(UTC).timestamp()))
    deadline = time.monotonic() + CATCH_UP_S
    try:
        async with group_reader(settings, AGGREGATOR_GROUP) as reader:
            tps = await topic_partitions(reader, EVENTS_TOPIC)
            ends = await end_offsets(reader, tps) if tps else {}
            while sum((await backlog(reader, ends)).values()):
                if time.monotonic() > deadline:
                    return False
                await asyncio.sleep(0.5)
    except Exception as exc:  # noqa: BLE001 - Kafka away: the second pass goes ahead after what was waited
        log.warning("aggregator progress not read", error=repr(exc))
        return False
    return True
