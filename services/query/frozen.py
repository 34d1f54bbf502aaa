# ruff: noqa: S608 - SQL from fixed fragments only; every value is a bind parameter
"""Frozen days: exact counts of closed UTC days, computed once and trusted while nothing changed.

Why. Whole days of event-summary, the UTC-day series and events grouped by name come from a daily rollup
(events_daily, migration 0003) whose event counts are uniqExact states of event-id hashes, so that an
event stored twice (a client retry with the same id in another batch, a batch cut differently after a
crash) is counted once (issue #5). Merging those states is the cost of a read: a 30-day summary over
10 million events merges millions of hashes. A rollup of plain sums would be cheap but counts every
copy. A past day rarely changes, so its exact count only has to be computed once: here it is, per
(app, day, event name, device) with the group's visitor state, into events_daily_frozen (migration
0004), and reads add plain numbers.

When a frozen day may be trusted. Events keep arriving for past days (late or offline clients,
replays after a crash, copies of events already counted) and privacy deletions remove some. Each day
has a change counter (events_day_changes: rows ever written into the rollup for the day, counted by a
materialized view on events_daily, plus one per deletion) that only grows. A freeze records the
counter it read *before* computing the counts from the rollup; a read trusts the frozen rows only
while the counter still reads that number. Why that is enough:
* An insert into events flows down a chain of views: events, then events_daily (its view), then
  events_day_changes (the view on events_daily). ClickHouse writes each table of the chain before
  pushing the block to that table's views, so a rollup block that the recorded counter includes is
  visible to the freeze's read of the rollup that follows; one it does not include has moved the
  counter on, and the frozen rows stop being used. (That is why the counter's view reads the rollup,
  not events: two views of one table have no order promised between them.)
* A copy of an event that is already counted moves the counter too: the day is frozen again from the
  rollup, whose uniqExact states count the copy once. No sum is ever trusted blindly.
* A privacy deletion rebuilds the rollup's days (that insert moves the counters) and then bumps every
  day it touched (a day left empty gets no rollup row), after the mutations finished.
* A read first asks which days are settled (their newest frozen version equals their counter), then
  reads, for those days, the rows of each day's newest version as the read itself sees it. A newer
  freeze replaces older rows at merges (ReplacingMergeTree on version), but never rows of the newest
  version, so a merge between the two steps cannot take rows away; and the rows of an older freeze (a
  group whose events were deleted since) are never mixed in. Two freezes of a day at the same counter
  (two replicas, two requests) write the same groups; the read takes one row of each.

With replicas (cluster mode, libs/clickhouse/schema.py, or a Replicated database behind a load
balancer) the chain holds on the replica that took the insert, but another replica fetches the parts
of the rollup and of the counter's table independently, so a freeze could read a counter that is ahead
of the rollup it reads. Where the rollup is a replicated table a day is therefore frozen only once its
last change is REPLICATED_QUIET_S old (ClickHouse itself stops reading from replicas that lag by more,
max_replica_delay_for_distributed_queries), and the counter bump of a deletion is inserted without
deduplication (a replicated table would drop a second identical bump).

Which days. Only closed days (before today, UTC) are frozen: today changes every second and is read
from the rollup. Freezing is lazy: a read first freezes the closed days of its range that have events
and no current freeze (at most MAX_DAYS_PER_READ of them, newest first, so that a first read of two
years does not compute them all at once; the rest are read from the rollup, exactly, and frozen by
later reads). A day that keeps changing (late events for yesterday) is simply frozen again by the next
read, at the cost of merging that one day's states once.

Counting unit, everywhere (frozen rows, rollup, partial days from events): distinct event ids per
(day, event name, device), added up. An id stored twice with the same day, name and device (every
retry, every replay) counts once, as in every FINAL read of the events table.

Every value is a bound parameter; table and column names are the fixed ones below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from weakref import WeakKeyDictionary

from libs.clickhouse import ClickHouse

MAX_DAYS_PER_READ = 31
REPLICATED_QUIET_S = 300

# The bound parameters of a range of whole days: {app_id}, {d0} (first day), {d1} (day after the last).
_DAY_RANGE = "app_id = {app_id:String} AND day >= toDate({d0:String}) AND day < toDate({d1:String})"


def _listed(name: str) -> str:
    """`day` is one of the ISO dates of the comma list bound as {name} (the primary key can use it)."""
    return f"has(arrayMap(d -> toDate(d), splitByChar(',', {{{name}:String}})), day)"


# Each day of the range that has rollup rows, frozen rows or a counter: in the rollup, its newest frozen
# version (frozen = 0: none), its change counter (no row reads 0), and whether its last change is
# {quiet} seconds old (see REPLICATED_QUIET_S). Reads only keys and small columns.
_PLAN = f"""SELECT toString(day) AS day, max(src = 0) AS in_rollup, max(src = 1) AS frozen,
           maxIf(n, src = 1) AS frozen_version, sumIf(n, src = 2) AS version,
           maxIf(t, src = 2) <= now64(3) - toIntervalSecond({{quiet:UInt32}}) AS quiet
    FROM (SELECT DISTINCT day, 0 AS src, toUInt64(0) AS n, toDateTime64(0, 3, 'UTC') AS t
          FROM events_daily WHERE {_DAY_RANGE}
          UNION ALL
          SELECT day, 1, version, toDateTime64(0, 3, 'UTC') FROM events_daily_frozen WHERE {_DAY_RANGE}
          UNION ALL
          SELECT day, 2, toUInt64(changes), last_change FROM events_day_changes WHERE {_DAY_RANGE})
    GROUP BY day"""

# The counts of the listed days from the rollup (its states merged once, per group), tagged with each
# day's counter as read before.
_FREEZE = f"""INSERT INTO events_daily_frozen (app_id, day, version, event_name, device_type, events, visitors)
    SELECT app_id, day,
           toUInt64(splitByChar(',', {{versions:String}})[indexOf(splitByChar(',', {{days:String}}), toString(day))]),
           event_name, device_type, uniqExactMerge(events), uniqCombined64MergeState(15)(visitors)
    FROM events_daily
    WHERE app_id = {{app_id:String}} AND {_listed("days")}
    GROUP BY app_id, day, event_name, device_type"""

_MARK_CHANGED = """INSERT INTO events_day_changes (app_id, day, changes, last_change) SETTINGS insert_deduplicate = 0
    SELECT {app_id:String}, toDate(d), 1, now64(3) FROM (SELECT arrayJoin(splitByChar(',', {days:String})) AS d)"""


@dataclass
class Plan:
    """How the whole days of a range are read: `frozen` days from their frozen counts, `rollup` days
    from events_daily (ISO dates). Days with no events at all are in neither."""

    frozen: list[str] = field(default_factory=list)
    rollup: list[str] = field(default_factory=list)

    def params(self) -> dict[str, str]:
        return {"frozen_days": ",".join(self.frozen), "rollup_days": ",".join(self.rollup)}

    def rows(self, extra: str = "") -> str | None:
        """SQL of rows (day, event_name, device_type, n: distinct event ids, v: visitor state) of the
        planned days, or None when there are none. `extra` narrows them (an event name filter: a fixed
        fragment whose values are bound parameters). Frozen rows are those of each day's newest version
        as this read sees it (see the module's docstring), one row per group."""
        parts = []
        if self.frozen:
            newest = (f"SELECT day, max(version) FROM events_daily_frozen WHERE {_DAY_RANGE} "
                      f"AND {_listed('frozen_days')} GROUP BY day")
            parts.append(
                f"""SELECT day, event_name, device_type, any(events) AS n, any(visitors) AS v
                    FROM events_daily_frozen
                    WHERE {_DAY_RANGE}{extra} AND {_listed("frozen_days")} AND (day, version) IN ({newest})
                    GROUP BY day, event_name, device_type""")
        if self.rollup:
            parts.append(
                f"""SELECT day, event_name, device_type, uniqExactMerge(events) AS n,
                           uniqCombined64MergeState(15)(visitors) AS v
                    FROM events_daily WHERE {_DAY_RANGE}{extra} AND {_listed("rollup_days")}
                    GROUP BY day, event_name, device_type""")
        return " UNION ALL ".join(parts) or None


_REPLICATED: WeakKeyDictionary[ClickHouse, bool] = WeakKeyDictionary()


async def _replicated(ch: ClickHouse) -> bool:
    """Whether the rollup is a replicated table (asked once per client)."""
    known = _REPLICATED.get(ch)
    if known is None:
        rows = await ch.query(
            "SELECT count() AS n FROM system.tables WHERE database = currentDatabase() "
            "AND name IN ('events_daily', 'events_daily_local') AND engine LIKE 'Replicated%'")
        known = _REPLICATED[ch] = bool(rows and int(rows[0]["n"]))
    return known


def today_utc() -> date:
    return datetime.now(UTC).date()


async def plan(ch: ClickHouse, app_id: str, first: date, last: date, limit: int | None = None) -> Plan:
    """The plan of the whole days [first, last) of an app, after freezing the closed ones that have
    events and no current freeze (at most `limit`, default MAX_DAYS_PER_READ, newest first)."""
    limit = MAX_DAYS_PER_READ if limit is None else limit
    quiet = REPLICATED_QUIET_S if await _replicated(ch) else 0
    params = {"app_id": app_id, "d0": first.isoformat(), "d1": last.isoformat(), "quiet": quiet}
    result = Plan()
    to_freeze: dict[str, int] = {}
    closed = today_utc().isoformat()
    for row in sorted(await ch.query(_PLAN, params), key=lambda r: str(r["day"]), reverse=True):
        day, version = str(row["day"]), int(row["version"])
        if row["frozen"] and int(row["frozen_version"]) == version:
            result.frozen.append(day)
        elif row["in_rollup"]:
            if day < closed and row["quiet"] and len(to_freeze) < limit:
                to_freeze[day] = version
            else:
                result.rollup.append(day)
    if to_freeze:
        await ch.command(_FREEZE, {"app_id": app_id, "days": ",".join(to_freeze),
                                   "versions": ",".join(str(v) for v in to_freeze.values())})
        result.frozen.extend(to_freeze)
    return result


async def mark_changed(ch: ClickHouse, app_id: str, days: list[str]) -> None:
    """Move these days' change counters on (after their events changed other than by an insert, e.g. a
    deletion): their frozen counts stop being used and the next read freezes them again."""
    if days:
        await ch.command(_MARK_CHANGED, {"app_id": app_id, "days": ",".join(days)})
