"""The aggregator's consumer, declared on the stream skeleton (libs/stream): poll -> decode -> batch
per partition -> insert -> commit.

* A batch closes by size (messages held over all partitions) or by the age of its oldest message
  (`aggregator_batch_size`, `aggregator_batch_max_age_ms`); it is written as one insert per table
  while the next one fills (`Batches`).
* Offsets are committed only after the batch's insert succeeded, at most about once a second
  unless a flush forces it, and always on shutdown and before partitions are handed away.
* When ClickHouse refuses writes, the partitions are paused (polling goes on, so the consumer keeps
  its group membership) and the same batch is retried with backoff until it goes in; nothing is
  committed meanwhile and nothing more is read, so memory stays bounded.
* Poison messages go to the DLQ with their error, counted per app (libs/stream/badness.py): one app's
  poison never stops the consumer; if most recent messages are poison from most of the apps sending
  (a broken deployment), the consumer stops with an error rather than dead-lettering all traffic.
* Stopping (`drain`): every message up to the partitions' end offsets, read when the stop begins,
  is written at once and committed, bounded by `drain_timeout_s`; what could not be stored by then
  is counted and reported, not silently dropped.
* `ready`: the consumer owns its partitions (group joined, assignment received) and ClickHouse is
  not refusing its inserts; /readyz reports it.
"""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaProducer
from prometheus_client import Counter, Gauge

from libs.clickhouse import ClickHouse, ClickHouseError
from libs.kafka import AGGREGATOR_GROUP, EVENTS_DLQ_TOPIC, EVENTS_TOPIC
from libs.settings import Settings
from libs.stream import BadMessages, Batches, ConsumerSpec, DeadLetters, StreamConsumer, TooManyBadMessages
from services.aggregator.decode import PoisonMessage, decode
from services.aggregator.versions import DataVersions
from services.aggregator.writer import PartitionBatch, write_batches

__all__ = ["EventConsumer", "TooManyBadMessages"]

BAD_WINDOW = 1000

CONSUMED = Counter("aggregator_messages_consumed_total", "Messages read from Kafka")
DEAD_LETTERED = Counter("aggregator_messages_dead_lettered_total", "Messages sent to the DLQ")
INSERT_FAILURES = Counter("aggregator_insert_failures_total", "Failed ClickHouse inserts (retried)")
LAG = Gauge("aggregator_consumer_lag", "Messages behind the partition's end", ["partition"])
PAUSED = Gauge("aggregator_paused", "1 while partitions are paused because ClickHouse refuses writes")


class _EventDeadLetters(DeadLetters):
    """The shared record shape, plus `error` and `value` (the text) that this topic carried first."""

    async def send(self, message: Any, reason: str, **extra: Any) -> None:
        value = (message.value or b"").decode("utf-8", errors="replace")[:100_000]
        try:
            await super().send(message, reason, error=reason, value=value, **extra)
        finally:
            DEAD_LETTERED.inc()


class EventConsumer(StreamConsumer):
    """One member of the aggregator's consumer group. `run()` returns when `stop()` is called (after a
    last flush and commit) and raises TooManyBadMessages when most recent messages are poison from most of
    the apps sending; one app's poison is only dead-lettered. `drain()` stores what the topic holds first."""

    drain_labels = ("aggregator", "acknowledged events", "stored in ClickHouse")

    def __init__(
        self, settings: Settings, ch: ClickHouse, producer: AIOKafkaProducer,
        topic: str = EVENTS_TOPIC, group_id: str = AGGREGATOR_GROUP, versions: DataVersions | None = None,
    ) -> None:
        self.ch = ch
        self.versions = versions  # the apps' data versions, bumped after each insert (query cache keys)
        s = settings
        guard = BadMessages(s.aggregator_max_bad_ratio, s.aggregator_dlq_min_bad, s.aggregator_bad_min_apps, BAD_WINDOW)
        self.batches: Batches[PartitionBatch] = Batches(
            max_messages=s.aggregator_batch_size,
            max_age_s=s.aggregator_batch_max_age_ms / 1000,
            start=lambda partition, first: PartitionBatch(partition, first, topic),
            add=self._take,
            step=self._write,
            retry_on=(ClickHouseError,),
            on_refused=self._refused,
            on_accepted=lambda: PAUSED.set(0),
        )
        super().__init__(settings, ConsumerSpec(
            topic=topic,
            group_id=group_id,
            strategy=self.batches,
            dead_letters=_EventDeadLetters(
                producer, EVENTS_DLQ_TOPIC, guard, stop_hint="fix the producer (or the aggregator's version)."
            ),
            client_options={
                "max_poll_records": s.aggregator_batch_size,
                "session_timeout_ms": s.aggregator_session_timeout_ms,
                "heartbeat_interval_ms": min(1000, s.aggregator_session_timeout_ms // 3),
            },
            lag=LAG,
            consumed=CONSUMED,
        ))

    @property
    def ready(self) -> bool:
        """Owns its partitions and ClickHouse takes its inserts: what it reads now gets stored."""
        return self.assigned.is_set() and not self.batches.refusing and not self.draining and not self.finished.is_set()

    @staticmethod
    def _take(batch: PartitionBatch, message: Any) -> str | None:
        """Decode one message into its partition's batch; the error when it is poison (for the DLQ)."""
        try:
            table, row, app_id, at = decode(message.value)
        except PoisonMessage as exc:
            batch.add(message.offset, None, None)
            return str(exc)
        batch.add(message.offset, table, row, app_id, at)
        return None

    async def _write(self, batches: list[PartitionBatch]) -> None:
        await write_batches(self.ch, batches)
        if self.versions is not None:  # stored: cached answers of these apps must not be served any more
            await self.versions.stored(batches)  # never raises; before the commit, so a crash repeats it

    @staticmethod
    def _refused(exc: BaseException | None) -> None:
        INSERT_FAILURES.inc()
        PAUSED.set(1)
