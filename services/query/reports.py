"""The report scheduler: mails each due report subscription a summary of its app.

Runs in the query service, where ClickHouse is (chDB lives inside the aggregator/query process).
Subscriptions are made at auth, which publishes their state on `auth.report-subscriptions.v1`; this
service folds that topic into its own table, `query_report_subscriptions` (its migrations are in
`services/query/migrations/postgres`), and reads and writes no other. Due rows are claimed with
`FOR UPDATE SKIP LOCKED`, so several query replicas never mail the same report, and the email's
message id is derived from the subscription and the period, so a report published twice (a crash
between publishing and moving `next_run_at`) is still mailed once by the notifier. Each run is
published on `query.report-runs.v1` (when it went out, when the next is due) for auth's listing.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
from aiokafka import AIOKafkaProducer
from prometheus_client import Counter

from libs.clickhouse import ClickHouse
from libs.contracts import ReportRun
from libs.kafka import REPORT_RUNS_TOPIC, REPORT_SUBSCRIPTIONS_GROUP, REPORT_SUBSCRIPTIONS_TOPIC, publish
from libs.logs import get_logger
from libs.migrations import apply_postgres
from libs.notifications import EmailMessage, next_report_at, queue_email, report_start
from libs.runtime import Runtime
from libs.settings import Settings
from libs.statetopic import follow_state_topic, into_table
from services.query import queries
from services.query.queries import Where

log = get_logger(__name__)

REPORTS_QUEUED = Counter("reports_queued_total", "Scheduled report emails queued", ["frequency"])
REPORT_ID_NAMESPACE = uuid.UUID("0b7a3f52-5a1e-4f51-9d2c-2f0d8f2f7e11")
BATCH = 50
TOP_EVENTS = 5

MIGRATIONS = Path(__file__).parent / "migrations" / "postgres"

DUE = """SELECT id, app_id, frequency, next_run_at, app_name, email, username FROM query_report_subscriptions
         WHERE next_run_at <= now() ORDER BY next_run_at LIMIT $1 FOR UPDATE SKIP LOCKED"""
SENT = "UPDATE query_report_subscriptions SET next_run_at = $2, last_sent_at = $3 WHERE id = $1"
# A subscription's state from auth: the recipient and app as published; the schedule stays this service's.
UPSERT = """INSERT INTO query_report_subscriptions (id, app_id, app_name, user_id, username, email, frequency, next_run_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
            ON CONFLICT (id) DO UPDATE SET app_id = EXCLUDED.app_id, app_name = EXCLUDED.app_name,
                user_id = EXCLUDED.user_id, username = EXCLUDED.username, email = EXCLUDED.email,
                frequency = EXCLUDED.frequency"""
GONE = "DELETE FROM query_report_subscriptions WHERE id = $1"


def _change(now: int, before: int) -> int | None:
    return None if before == 0 else round((now - before) * 100 / before)


async def report_data(ch: ClickHouse, app_id: str, start: datetime, end: datetime) -> dict[str, Any]:
    """The numbers of one app over [start, end), and of the period before it, with the query service's SQL."""
    where = Where(app_id, start, end)
    summary = await queries.event_summary(ch, where)
    previous = await queries.event_summary(ch, Where(app_id, start - (end - start), start))
    top = await queries.grouped(ch, Where(app_id, start, end), "event_name", TOP_EVENTS)
    return {
        "events": int(summary["count"]),
        "visitors": int(summary["uniqueUsers"]),
        "events_change": _change(int(summary["count"]), int(previous["count"])),
        "visitors_change": _change(int(summary["uniqueUsers"]), int(previous["uniqueUsers"])),
        "top_events": [{"name": r["key"], "count": int(r["count"]), "visitors": int(r["unique_users"])} for r in top],
        "devices": [{"name": k, "count": int(v)} for k, v in summary["deviceData"].items()],
    }


def period_label(start: datetime, end: datetime, tz: str = "UTC") -> str:
    """`Mon 16 Nov 2026` for a whole day, `16 Nov to 22 Nov 2026` for whole days, else with times; all
    in the site's time zone `tz`."""
    zone = ZoneInfo(tz)
    start, end = start.astimezone(zone), end.astimezone(zone)
    last = end - timedelta(microseconds=1)
    whole_days = start.time() == end.time() == time(0)
    if whole_days and (end.date() - start.date()).days == 1:
        return start.strftime("%a %d %b %Y")
    if whole_days:
        return f"{start.strftime('%d %b')} to {last.strftime('%d %b %Y')}"
    return f"{start.strftime('%d %b %Y %H:%M')} to {end.strftime('%d %b %Y %H:%M')}"


def utc(_app_id: str) -> str:
    return "UTC"


class ReportScheduler:
    """`timezone_of(app_id)`: the IANA time zone of the app's days (its site's time zone)."""

    def __init__(self, settings: Settings, pg: asyncpg.Pool, ch: ClickHouse, producer: AIOKafkaProducer,
                 timezone_of: Callable[[str], str] = utc) -> None:
        self.settings = settings
        self.pg = pg
        self.ch = ch
        self.producer = producer
        self.timezone_of = timezone_of

    async def run(self) -> None:
        while True:
            try:
                while await self.run_due() == BATCH:
                    pass
            except Exception as exc:  # noqa: BLE001 - a report never stops the query service
                log.warning("report run failed; retrying at the next check", error=repr(exc))
            await asyncio.sleep(self.settings.reports_check_interval_s)

    async def run_due(self) -> int:
        """Mail every due subscription (one batch); returns how many were mailed."""
        async with self.pg.acquire() as conn, conn.transaction():
            due = await conn.fetch(DUE, BATCH)
            done = 0
            for sub in due:
                run_at: datetime = sub["next_run_at"]
                sent_at = datetime.now(run_at.tzinfo)
                try:
                    tz = self.timezone_of(str(sub["app_id"]))  # the site's, as the app directory has it now
                    next_run_at = next_report_at(sub["frequency"], max(run_at, sent_at), tz)
                    message = await self._report(sub, report_start(sub["frequency"], run_at, tz), run_at, tz)
                except Exception as exc:  # noqa: BLE001 - one app's failure must not hold up the others
                    log.error("report failed; retried at the next check", subscription=str(sub["id"]),
                              error=repr(exc))
                    continue
                # The run before the mail: auth's listing shows it sent by the time the mail arrives. A
                # KafkaUnavailable leaves the row due (the transaction rolls back): the whole batch waits
                # for the next check, which publishes both again (the mail keeps its message id).
                run = ReportRun(subscription_id=str(sub["id"]), last_sent_at=sent_at, next_run_at=next_run_at)
                await publish(self.producer, REPORT_RUNS_TOPIC, run.model_dump(mode="json", by_alias=True),
                              key=str(sub["id"]))
                await queue_email(self.producer, message)
                REPORTS_QUEUED.labels(sub["frequency"]).inc()
                log.info("report queued", subscription=str(sub["id"]), app_id=str(sub["app_id"]),
                         events=message.data["events"])
                done += 1
                await conn.execute(SENT, sub["id"], next_run_at, sent_at)
        return done

    async def _report(self, sub: asyncpg.Record, start: datetime, end: datetime, tz: str) -> EmailMessage:
        data = await report_data(self.ch, str(sub["app_id"]), start, end)
        return EmailMessage(
            message_id=str(uuid.uuid5(REPORT_ID_NAMESPACE, f"{sub['id']}:{end.isoformat()}")),
            to=sub["email"], template="report",
            data={
                "username": sub["username"], "app_name": sub["app_name"], "app_id": str(sub["app_id"]),
                "frequency": sub["frequency"], "subscription_id": str(sub["id"]),
                "start": start.isoformat(), "end": end.isoformat(), "period": period_label(start, end, tz),
                "timezone": tz, **data,
            },
        )


async def fold_subscriptions(settings: Settings, pg: asyncpg.Pool) -> None:
    """Forever: apply `auth.report-subscriptions.v1` to `query_report_subscriptions` (a new subscription is
    first due at its `first_run_at`; a tombstone removes it)."""

    def values(key: str, state: dict[str, Any]) -> tuple[Any, ...]:
        return (uuid.UUID(key), uuid.UUID(state["app_id"]), state["app_name"], uuid.UUID(state["user_id"]),
                state["username"], state["email"], state["frequency"], datetime.fromisoformat(state["first_run_at"]))

    await follow_state_topic(settings, REPORT_SUBSCRIPTIONS_TOPIC, REPORT_SUBSCRIPTIONS_GROUP, into_table(pg, GONE, UPSERT, values))


async def migrated_postgres(runtime: Runtime, job: str, retry_s: float) -> asyncpg.Pool:
    """The Postgres pool once it answers (tried every `retry_s`), with this service's migrations applied."""
    while True:
        try:
            pg = await asyncio.wait_for(runtime.pg(), 10)
            break
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            log.warning(f"{job} wait for Postgres", error=repr(exc))
            await asyncio.sleep(retry_s)
    await apply_postgres(pg, "query", MIGRATIONS)
    return pg


async def run_scheduler(runtime: Runtime, ch: ClickHouse, timezone_of: Callable[[str], str] = utc) -> None:
    """Wait for Postgres if need be, apply this service's migrations, then follow the subscriptions and
    check for due reports forever."""
    pg = await migrated_postgres(runtime, "reports", runtime.settings.reports_check_interval_s)
    producer = await runtime.producer()
    await asyncio.gather(fold_subscriptions(runtime.settings, pg), ReportScheduler(runtime.settings, pg, ch, producer, timezone_of).run())
