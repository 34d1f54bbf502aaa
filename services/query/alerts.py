# ruff: noqa: S608 - SQL from fixed fragments only; every value is a bind parameter
"""The alert checker: every ALERTS_CHECK_INTERVAL_S, each alert's metric over its trailing window.

Runs in the query service, where ClickHouse is. Alerts are made at auth, which publishes their
definitions on `auth.alerts.v1`; this service folds that topic into its own table, `query_alerts`,
with each alert's state (whether its condition held at the last check), and reads and writes no other.
A round claims the alerts not checked since it began (`FOR UPDATE SKIP LOCKED`, so several query
replicas share them) and computes:

* a web stats metric (visitors, visits, pageviews, views_per_visit, bounce_rate, visit_duration,
  events) over [now - window, now) with the alert's filters, exactly as `/stats/aggregate` does
  (services/query/stats.py);
* a custom metric's statistic (avg, sum, count, min, max) of its values in the window; a window
  without values has no avg/min/max (the alert does not hold), and a count or sum of 0;
* for a spike, the percent change of that value against the same window a week before, rounded to
  0.1 (no change can be computed against 0 or no values: the alert does not hold).

`above` holds when the value is greater than the threshold, `below` when it is less; `spike` when the
change is at least the threshold (a negative threshold: at most it, a drop). When that turns true the
alert fires: a `fired` record on `query.alert-firings.v1` (auth mails and calls the webhooks); while it
stays true nothing more is sent; when it turns false a `recovered` record, and the next breach fires
again. The record is published before the state is stored (in the same transaction): a failure in
between publishes it again at the next check, with the same state, which auth applies once.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer
from prometheus_client import Counter

from libs.alerts import SPIKE_BASELINE_S
from libs.apps import AppDirectory
from libs.clickhouse import ClickHouse
from libs.contracts import AlertFiring
from libs.kafka import ALERT_FIRINGS_TOPIC, ALERTS_GROUP, ALERTS_TOPIC, publish
from libs.logs import get_logger
from libs.runtime import Runtime
from libs.settings import Settings
from libs.statetopic import follow_state_topic, into_table
from services.query import stats
from services.query.queries import ts_param
from services.query.reports import migrated_postgres

log = get_logger(__name__)

ALERTS_FIRED = Counter("alerts_fired_total", "Alerts that fired (their condition became true)")
BATCH = 50
CUSTOM_STATS = {"avg": "avg(value)", "sum": "sum(value)", "count": "toFloat64(count())", "min": "min(value)",
                "max": "max(value)"}

UPSERT = """INSERT INTO query_alerts (id, app_id, metric, metric_name, custom_stat, filters, window_s, condition, threshold)
            VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9)
            ON CONFLICT (id) DO UPDATE SET app_id = EXCLUDED.app_id, metric = EXCLUDED.metric,
                metric_name = EXCLUDED.metric_name, custom_stat = EXCLUDED.custom_stat, filters = EXCLUDED.filters,
                window_s = EXCLUDED.window_s, condition = EXCLUDED.condition, threshold = EXCLUDED.threshold"""
GONE = "DELETE FROM query_alerts WHERE id = $1"
DUE = """SELECT id, app_id, metric, metric_name, custom_stat, filters, window_s, condition, threshold, breached
         FROM query_alerts WHERE last_checked_at IS NULL OR last_checked_at < $1
         ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED"""
CHECKED = "UPDATE query_alerts SET breached = $2, last_value = $3, last_checked_at = $4 WHERE id = $1"


async def custom_value(ch: ClickHouse, app_id: str, name: str, stat: str, start: datetime, end: datetime) -> float | None:
    rows = await ch.query(
        f"""SELECT count() AS n, {CUSTOM_STATS[stat]} AS v FROM metrics FINAL
            WHERE app_id = {{app_id:String}} AND metric_name = {{name:String}}
              AND timestamp >= {{start:DateTime64(3, 'UTC')}} AND timestamp < {{end:DateTime64(3, 'UTC')}}""",
        {"app_id": app_id, "name": name, "start": ts_param(start), "end": ts_param(end)},
    )
    n = int(rows[0]["n"]) if rows else 0
    if n == 0:
        return 0.0 if stat in ("sum", "count") else None
    return float(rows[0]["v"])


async def metric_value(ch: ClickHouse, alert: Any, start: datetime, end: datetime) -> float | None:
    """The alert's metric over [start, end)."""
    if alert["metric"] == "custom":
        return await custom_value(ch, alert["app_id"], alert["metric_name"], alert["custom_stat"] or "avg", start, end)
    filters = alert["filters"]
    scope = stats.Scope(alert["app_id"], start, end, orjson.loads(filters) if isinstance(filters, str) else dict(filters))
    return float((await stats.aggregate(ch, scope, [alert["metric"]]))[alert["metric"]])


def holds(condition: str, threshold: float, value: float | None) -> bool:
    if value is None:
        return False
    if condition == "above":
        return value > threshold
    if condition == "below":
        return value < threshold
    return value >= threshold if threshold >= 0 else value <= threshold  # spike: a rise, or a drop


async def evaluate(ch: ClickHouse, alert: Any, now: datetime) -> tuple[float | None, float | None, float | None]:
    """(value the condition reads, the window's metric, the baseline a week before for a spike)."""
    start = now - timedelta(seconds=alert["window_s"])
    current = await metric_value(ch, alert, start, now)
    if alert["condition"] != "spike":
        return current, current, None
    week = timedelta(seconds=SPIKE_BASELINE_S)
    baseline = await metric_value(ch, alert, start - week, now - week)
    if current is None or not baseline:
        return None, current, baseline
    return round((current - baseline) * 100 / baseline, 1), current, baseline


class AlertChecker:
    def __init__(self, settings: Settings, pg: asyncpg.Pool, ch: ClickHouse, producer: AIOKafkaProducer,
                 apps: AppDirectory) -> None:
        self.settings = settings
        self.pg = pg
        self.ch = ch
        self.producer = producer
        self.apps = apps  # an alert of an app deleted (auth.apps.v1) is dropped, tombstone or not

    async def run(self) -> None:
        while True:
            try:
                await self.check_all()
            except Exception as exc:  # noqa: BLE001 - an alert never stops the query service
                log.warning("alert checks failed; retrying at the next round", error=repr(exc))
            await asyncio.sleep(self.settings.alerts_check_interval_s)

    async def check_all(self) -> int:
        """One round: every alert not checked since the round began; returns how many were checked."""
        began = datetime.now(UTC)
        checked = 0
        while True:
            n = await self._check_batch(began)
            checked += n
            if n < BATCH:
                return checked

    async def _check_batch(self, began: datetime) -> int:
        async with self.pg.acquire() as conn, conn.transaction():
            due = await conn.fetch(DUE, began, BATCH)
            for alert in due:
                app = self.apps.get(alert["app_id"])
                if app is not None and app.deleted:  # its alerts went with it at auth, without tombstones
                    await conn.execute(GONE, alert["id"])
                    log.info("alert of a deleted app dropped", alert_id=str(alert["id"]), app_id=alert["app_id"])
                    continue
                now = datetime.now(UTC)
                try:
                    value, current, baseline = await evaluate(self.ch, alert, now)
                except Exception as exc:  # noqa: BLE001 - one alert's failure must not hold up the others
                    log.error("alert check failed", alert_id=str(alert["id"]), error=repr(exc))
                    await conn.execute(CHECKED, alert["id"], alert["breached"], None, now)
                    continue
                breached = holds(alert["condition"], alert["threshold"], value)
                if breached != alert["breached"]:
                    firing = AlertFiring(
                        firing_id=f"{alert['id']}:{now.isoformat()}", alert_id=str(alert["id"]), app_id=alert["app_id"],
                        state="fired" if breached else "recovered", value=value, current=current, baseline=baseline,
                        window_start=now - timedelta(seconds=alert["window_s"]), window_end=now, checked_at=now,
                    )
                    await publish(self.producer, ALERT_FIRINGS_TOPIC, firing.model_dump(mode="json", by_alias=True),
                                  key=str(alert["id"]))
                    if breached:
                        ALERTS_FIRED.inc()
                    log.info("alert state changed", alert_id=str(alert["id"]), state=firing.state, value=value)
                await conn.execute(CHECKED, alert["id"], breached, value, now)
            return len(due)


async def fold_alerts(settings: Settings, pg: asyncpg.Pool) -> None:
    """Forever: apply `auth.alerts.v1` to `query_alerts` (a tombstone removes the alert)."""

    def values(key: str, state: dict[str, Any]) -> tuple[Any, ...]:
        return (uuid.UUID(key), state["app_id"], state["metric"], state.get("metric_name"), state.get("custom_stat"),
                orjson.dumps(state.get("filters") or {}).decode(), int(state["window_s"]), state["condition"],
                float(state["threshold"]))

    await follow_state_topic(settings, ALERTS_TOPIC, ALERTS_GROUP, into_table(pg, GONE, UPSERT, values))


async def run_alerts(runtime: Runtime, ch: ClickHouse, apps: AppDirectory) -> None:
    """Wait for Postgres if need be, apply this service's migrations, then follow the alerts and check
    them forever."""
    pg = await migrated_postgres(runtime, "alerts", runtime.settings.alerts_check_interval_s)
    producer = await runtime.producer()
    checker = AlertChecker(runtime.settings, pg, ch, producer, apps)
    await asyncio.gather(fold_alerts(runtime.settings, pg), checker.run())
