"""The aggregator's consumer: poll -> decode -> batch per partition -> insert -> commit.

* Batches close by size or age (`aggregator_batch_size`, `aggregator_batch_max_age_ms`).
* Offsets are committed only after the batch's insert succeeded, at most about once a second
  unless a flush forces it, and always on shutdown and before partitions are handed away.
* When ClickHouse refuses writes, the partitions are paused (polling goes on, so the consumer keeps
  its group membership) and the same batch is retried with backoff until it goes in; nothing is
  committed meanwhile and nothing more is read, so memory stays bounded.
* Poison messages go to the DLQ with their error; if most recent messages are poison, the consumer
  stops with an error rather than dead-lettering all traffic.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from prometheus_client import Counter, Gauge

from libs.clickhouse import ClickHouse, ClickHouseError
from libs.kafka import EVENTS_DLQ_TOPIC, dumps, make_consumer
from libs.logs import get_logger, kafka_headers, request_id_from_headers, request_id_var
from libs.settings import Settings
from services.aggregator.decode import PoisonMessage, decode
from services.aggregator.writer import PartitionBatch, write_batch

log = get_logger(__name__)

COMMIT_INTERVAL_S = 1.0
BAD_WINDOW = 1000

CONSUMED = Counter("aggregator_messages_consumed_total", "Messages read from Kafka")
DEAD_LETTERED = Counter("aggregator_messages_dead_lettered_total", "Messages sent to the DLQ")
INSERT_FAILURES = Counter("aggregator_insert_failures_total", "Failed ClickHouse inserts (retried)")
LAG = Gauge("aggregator_consumer_lag", "Messages behind the partition's end", ["partition"])
PAUSED = Gauge("aggregator_paused", "1 while partitions are paused because ClickHouse refuses writes")


class TooManyBadMessages(RuntimeError):
    pass


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: EventConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.owner.hand_over(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("partitions assigned", partitions=sorted(tp.partition for tp in assigned))


class EventConsumer:
    """One member of the aggregator's consumer group. `run()` returns when `stop()` is called (after a
    last flush and commit) and raises TooManyBadMessages when the topic is mostly poison."""

    def __init__(
        self, settings: Settings, ch: ClickHouse, producer: AIOKafkaProducer,
        topic: str | None = None, group_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.topic = topic or settings.aggregator_topic
        self.group_id = group_id or settings.aggregator_group
        self.ch = ch
        self.producer = producer
        self.consumer: AIOKafkaConsumer | None = None
        self.batches: dict[int, PartitionBatch] = {}
        self.pending_commit: dict[TopicPartition, int] = {}
        self.positions: dict[int, int] = {}
        self.last_commit = time.monotonic()
        self.recent_bad: collections.deque[bool] = collections.deque(maxlen=BAD_WINDOW)
        self.retry_at = 0.0
        self.retry_delay = 0.2
        self.running = True
        # A rebalance callback may run while the loop is between awaits: one flush at a time.
        self._flush_lock = asyncio.Lock()

    # ---- main loop ------------------------------------------------------------------------------
    async def run(self) -> None:
        self.consumer = make_consumer(
            self.settings, group_id=self.group_id, max_poll_records=self.settings.aggregator_batch_size,
            session_timeout_ms=self.settings.aggregator_session_timeout_ms,
            heartbeat_interval_ms=min(1000, self.settings.aggregator_session_timeout_ms // 3),
        )
        self.consumer.subscribe([self.topic], listener=_Rebalance(self))
        await self.consumer.start()
        log.info("aggregator consuming", topic=self.topic, group=self.group_id)
        try:
            while self.running:
                await self._step()
        finally:
            await self._shutdown()

    async def _step(self) -> None:
        assert self.consumer is not None
        polled = await self.consumer.getmany(timeout_ms=self._poll_timeout_ms())
        for tp, messages in polled.items():
            for message in messages:
                await self._take(tp, message)
        await self._flush_due()
        await self._commit(force=False)
        self._update_lag()

    def stop(self) -> None:
        """Ask `run()` to finish: flush what it holds, commit, leave the group."""
        self.running = False

    def _poll_timeout_ms(self) -> int:
        if not self.batches:
            return 200
        if self.retry_at:  # paused: wait for the next retry instead of spinning on due batches
            return max(0, min(200, int((self.retry_at - time.monotonic()) * 1000)))
        oldest = max(b.age for b in self.batches.values())
        left = self.settings.aggregator_batch_max_age_ms / 1000 - oldest
        return max(0, min(200, int(left * 1000)))

    async def _take(self, tp: TopicPartition, message: Any) -> None:
        CONSUMED.inc()
        batch = self.batches.get(tp.partition)
        if batch is None:
            batch = self.batches[tp.partition] = PartitionBatch(tp.partition, message.offset, self.topic)
        try:
            table, row = decode(message.value)
        except PoisonMessage as exc:
            batch.add(message.offset, None, None)
            self.positions[tp.partition] = message.offset + 1
            await self._dead_letter(message, str(exc))
            return
        self.recent_bad.append(False)
        batch.add(message.offset, table, row)
        self.positions[tp.partition] = message.offset + 1

    # ---- flushing -------------------------------------------------------------------------------
    def _due(self, batch: PartitionBatch) -> bool:
        return (
            batch.messages >= self.settings.aggregator_batch_size
            or batch.age * 1000 >= self.settings.aggregator_batch_max_age_ms
        )

    async def _flush_due(self) -> None:
        due = [p for p, b in self.batches.items() if self._due(b)]
        if due and time.monotonic() >= self.retry_at:
            await self._flush(due)

    async def _flush(self, partitions: list[int]) -> bool:
        """Insert the batches of `partitions`; on failure pause everything and retry later."""
        assert self.consumer is not None
        async with self._flush_lock:
            for p in partitions:
                batch = self.batches.get(p)
                if batch is None:  # flushed by a rebalance callback meanwhile
                    continue
                try:
                    await write_batch(self.ch, batch)
                except ClickHouseError as exc:
                    INSERT_FAILURES.inc()
                    self._pause(exc)
                    return False
                self.pending_commit[TopicPartition(self.topic, p)] = batch.last_offset + 1
                if self.batches.get(p) is batch:
                    del self.batches[p]
            self._resume()
            await self._commit(force=True)
        return True

    def _pause(self, exc: Exception) -> None:
        assert self.consumer is not None
        assigned = list(self.consumer.assignment())
        if not self.consumer.paused():
            log.error("clickhouse refused the insert; partitions paused until it accepts", error=str(exc)[:300])
        self.consumer.pause(*assigned)
        PAUSED.set(1)
        self.retry_at = time.monotonic() + self.retry_delay
        self.retry_delay = min(self.retry_delay * 2, 10.0)

    def _resume(self) -> None:
        assert self.consumer is not None
        if self.consumer.paused():
            self.consumer.resume(*self.consumer.paused())
            log.info("clickhouse accepts inserts again; partitions resumed")
        PAUSED.set(0)
        self.retry_delay = 0.2
        self.retry_at = 0.0

    async def _commit(self, force: bool) -> None:
        assert self.consumer is not None
        if not self.pending_commit:
            return
        if not force and time.monotonic() - self.last_commit < COMMIT_INTERVAL_S:
            return
        offsets = {tp: off for tp, off in self.pending_commit.items() if tp in self.consumer.assignment()}
        self.pending_commit.clear()
        if offsets:
            await self.consumer.commit(offsets)
        self.last_commit = time.monotonic()

    # ---- rebalance and shutdown --------------------------------------------------------------------
    async def hand_over(self, revoked: list[TopicPartition]) -> None:
        """Before partitions go to another member: store what we have and commit it."""
        parts = [tp.partition for tp in revoked if tp.partition in self.batches]
        if parts and not await self._flush(parts):
            for p in parts:  # the new owner reads them again; the dedup token and FINAL absorb it
                self.batches.pop(p, None)
        for tp in revoked:
            self.positions.pop(tp.partition, None)
        offsets = {tp: off for tp, off in self.pending_commit.items() if tp in revoked}
        if offsets and self.consumer is not None:
            with contextlib.suppress(Exception):
                await self.consumer.commit(offsets)
        for tp in revoked:
            self.pending_commit.pop(tp, None)
            with contextlib.suppress(KeyError):
                LAG.remove(str(tp.partition))

    async def _shutdown(self) -> None:
        """Finish the batch (a few tries), commit, leave the group."""
        if self.consumer is None:
            return
        for _ in range(3):
            if not self.batches or await self._flush(list(self.batches)):
                break
            await asyncio.sleep(0.5)
        with contextlib.suppress(Exception):
            await self._commit(force=True)
        await self.consumer.stop()
        log.info("aggregator stopped; offsets committed")

    # ---- DLQ and lag ---------------------------------------------------------------------------
    async def _dead_letter(self, message: Any, error: str) -> None:
        token = request_id_var.set(request_id_from_headers(message.headers))
        try:
            record = {
                "error": error, "topic": message.topic, "partition": message.partition, "offset": message.offset,
                "value": (message.value or b"").decode("utf-8", errors="replace")[:100_000],
                "timestamp_ms": message.timestamp,
            }
            await self.producer.send_and_wait(EVENTS_DLQ_TOPIC, dumps(record), key=message.key, headers=kafka_headers())
            DEAD_LETTERED.inc()
            log.warning("message dead-lettered", error=error, partition=message.partition, offset=message.offset)
        finally:
            request_id_var.reset(token)
        self.recent_bad.append(True)
        bad = sum(self.recent_bad)
        if bad >= self.settings.aggregator_dlq_min_bad and bad / len(self.recent_bad) > self.settings.aggregator_max_bad_ratio:
            raise TooManyBadMessages(
                f"{bad} of the last {len(self.recent_bad)} messages on {self.topic} were invalid "
                f"(limit {self.settings.aggregator_max_bad_ratio:.0%}); the aggregator stopped instead of "
                f"dead-lettering all traffic. Inspect {EVENTS_DLQ_TOPIC}, fix the producer, then restart."
            )

    def _update_lag(self) -> None:
        """Lag = the partition's end minus the first offset not yet stored."""
        assert self.consumer is not None
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            if high is None:
                continue
            batch = self.batches.get(tp.partition)
            stored_up_to = batch.first_offset if batch else self.positions.get(tp.partition, high)
            LAG.labels(str(tp.partition)).set(max(0, high - stored_up_to))
