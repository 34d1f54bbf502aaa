"""The aggregator's consumer: poll -> decode -> batch per partition -> insert -> commit.

* A batch closes by size (messages held over all partitions) or by the age of its oldest message
  (`aggregator_batch_size`, `aggregator_batch_max_age_ms`); it is written as one insert per table
  while the next one fills.
* Offsets are committed only after the batch's insert succeeded, at most about once a second
  unless a flush forces it, and always on shutdown and before partitions are handed away.
* When ClickHouse refuses writes, the partitions are paused (polling goes on, so the consumer keeps
  its group membership) and the same batch is retried with backoff until it goes in; nothing is
  committed meanwhile and nothing more is read, so memory stays bounded.
* Poison messages go to the DLQ with their error, counted per app (badness.py): one app's poison never
  stops the consumer; if most recent messages are poison from most of the apps sending (a broken
  deployment), the consumer stops with an error rather than dead-lettering all traffic.
* Stopping (`drain`): every message up to the partitions' end offsets, read when the stop begins,
  is written at once and committed, bounded by `drain_timeout_s`; what could not be stored by then
  is counted and reported, not silently dropped.
* `ready`: the consumer owns its partitions (group joined, assignment received) and ClickHouse is
  not refusing its inserts; /readyz reports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from prometheus_client import Counter, Gauge

from libs.clickhouse import ClickHouse, ClickHouseError
from libs.kafka import EVENTS_DLQ_TOPIC, GroupMember, dumps, make_consumer
from libs.logs import get_logger, kafka_headers, request_id_from_headers, request_id_var
from libs.settings import Settings
from services.aggregator.badness import BadMessages
from services.aggregator.decode import PoisonMessage, decode
from services.aggregator.versions import DataVersions
from services.aggregator.writer import PartitionBatch, write_batches

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
        self.owner.assigned.clear()
        await self.owner.hand_over(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("partitions assigned", partitions=sorted(tp.partition for tp in assigned))
        self.owner.assigned.set()


class EventConsumer(GroupMember):
    """One member of the aggregator's consumer group. `run()` returns when `stop()` is called (after a
    last flush and commit) and raises TooManyBadMessages when most recent messages are poison from most of
    the apps sending (badness.py); one app's poison is only dead-lettered. `drain()` stores what the
    topic holds first."""

    drain_labels = ("aggregator", "acknowledged events", "stored in ClickHouse")

    def __init__(
        self, settings: Settings, ch: ClickHouse, producer: AIOKafkaProducer,
        topic: str | None = None, group_id: str | None = None, versions: DataVersions | None = None,
    ) -> None:
        super().__init__()
        self.settings = settings
        self.topic = topic or settings.aggregator_topic
        self.group_id = group_id or settings.aggregator_group
        self.ch = ch
        self.producer = producer
        self.versions = versions  # the apps' data versions, bumped after each insert (query cache keys)
        self.consumer: AIOKafkaConsumer | None = None
        self.batches: dict[int, PartitionBatch] = {}
        self.pending_commit: dict[TopicPartition, int] = {}
        self.positions: dict[int, int] = {}
        self.last_commit = time.monotonic()
        self.recent_bad = self._bad_counter()
        self.retry_at = 0.0
        self.retry_delay = 0.2
        self.running = True
        self.writing: asyncio.Task[None] | None = None
        self.writing_batches: list[PartitionBatch] = []
        self.failed: list[PartitionBatch] = []  # refused by ClickHouse, retried first
        self.refusing = False
        # A rebalance callback may run while the loop is between awaits: one flush at a time.
        self._flush_lock = asyncio.Lock()

    def _bad_counter(self) -> BadMessages:
        s = self.settings
        return BadMessages(s.aggregator_max_bad_ratio, s.aggregator_dlq_min_bad, s.aggregator_bad_min_apps, BAD_WINDOW)

    @property
    def ready(self) -> bool:
        """Owns its partitions and ClickHouse takes its inserts: what it reads now gets stored."""
        return self.assigned.is_set() and not self.refusing and not self.draining and not self.finished.is_set()

    # ---- main loop ------------------------------------------------------------------------------
    async def _run(self) -> None:
        self.consumer = make_consumer(
            self.settings, group_id=self.group_id, max_poll_records=self.settings.aggregator_batch_size,
            session_timeout_ms=self.settings.aggregator_session_timeout_ms,
            heartbeat_interval_ms=min(1000, self.settings.aggregator_session_timeout_ms // 3),
        )
        self.consumer.subscribe([self.topic], listener=_Rebalance(self))
        try:
            await self.consumer.start()
        except BaseException:  # cancelled while joining the group: still close the client
            await self.consumer.stop()
            raise
        log.info("aggregator consuming", topic=self.topic, group=self.group_id)
        try:
            while self.running:
                await self._step()
        finally:
            await self._shutdown()

    async def _step(self) -> None:
        assert self.consumer is not None
        if self.writing is not None and self._held() >= self.settings.aggregator_batch_size:
            # The next batch is full (its partitions are paused): wait for the insert, not the broker.
            await asyncio.wait({self.writing}, timeout=0.2)
            polled = {}
        else:
            polled = await self.consumer.getmany(timeout_ms=self._poll_timeout_ms())
        for tp, messages in polled.items():
            CONSUMED.inc(len(messages))
            for message in messages:
                poison = self._take(tp, message)
                if poison is not None:
                    await self._dead_letter(message, poison)
        await self._reap()
        self._start_write()
        self._apply_backpressure()
        await self._commit(force=False)
        self._update_lag()

    def stop(self) -> None:
        """Ask `run()` to finish: flush what it holds, commit, leave the group."""
        self.running = False

    def _poll_timeout_ms(self) -> int:
        if self.writing is not None:  # come back soon to start the next insert once this one is done
            return 20
        if self.failed:  # ClickHouse refuses writes: wait for the next retry instead of spinning
            return max(0, min(200, int((self.retry_at - time.monotonic()) * 1000)))
        if not self.batches:
            return 200
        oldest = max(b.age for b in self.batches.values())
        left = self.settings.aggregator_batch_max_age_ms / 1000 - oldest
        return max(0, min(200, int(left * 1000)))

    def _take(self, tp: TopicPartition, message: Any) -> str | None:
        """Decode one message into its partition's batch; the error when it is poison (for the DLQ).
        Not a coroutine: it runs once per message, and only poison needs to await anything."""
        batch = self.batches.get(tp.partition)
        if batch is None:
            batch = self.batches[tp.partition] = PartitionBatch(tp.partition, message.offset, self.topic)
        self.positions[tp.partition] = message.offset + 1
        try:
            table, row, app_id, at = decode(message.value)
        except PoisonMessage as exc:
            batch.add(message.offset, None, None)
            return str(exc)
        self.recent_bad.record(BadMessages.app_of(message.key), False)
        batch.add(message.offset, table, row, app_id, at)
        return None

    # ---- writing --------------------------------------------------------------------------------
    # One insert is in flight at a time, in a task, while the loop goes on polling and decoding the
    # next batch (chDB and the server do their work outside the GIL). Batches of one partition are
    # written in offset order, and each partition's offset is committed only after its batch is in.
    # When the next batch is full while the insert is still running, the loop waits for the insert
    # instead of polling, so memory is bounded by about two batches plus aiokafka's prefetch.

    def _held(self) -> int:
        return sum(b.messages for b in self.batches.values())

    def _due(self) -> bool:
        """Flush by size (messages held over all partitions) or by the age of the oldest batch; while
        draining, at once."""
        return bool(self.batches) and (
            self.draining
            or self._held() >= self.settings.aggregator_batch_size
            or max(b.age for b in self.batches.values()) * 1000 >= self.settings.aggregator_batch_max_age_ms
        )

    def _start_write(self) -> None:
        if self.writing is not None or time.monotonic() < self.retry_at:
            return
        if self.failed:  # retry exactly the batches that failed (same tokens), before any later one
            batches, self.failed = self.failed, []
        elif self._due():
            # One insert for every partition that holds something: fewer, larger blocks.
            batches = list(self.batches.values())
            self.batches = {}
        else:
            batches = []
        if batches:
            self.writing = asyncio.create_task(self._write(batches), name="aggregator:insert")
            self.writing_batches = batches

    async def _write(self, batches: list[PartitionBatch]) -> None:
        await write_batches(self.ch, batches)
        if self.versions is not None:  # stored: cached answers of these apps must not be served any more
            await self.versions.stored(batches)  # never raises; before the commit, so a crash repeats it
        for batch in batches:
            batch.written = True

    async def _reap(self, wait: bool = False) -> None:
        """Account for the insert in flight once it is over: commit what went in, keep what did not."""
        task = self.writing
        if task is None or (not wait and not task.done()):
            return
        if wait:
            with contextlib.suppress(Exception):  # its outcome is examined below
                await asyncio.shield(task)
        if self.writing is not task:  # accounted for by a concurrent caller (a rebalance callback)
            return
        self.writing = None
        batches, self.writing_batches = self.writing_batches, []
        for batch in batches:
            if batch.written:
                self.pending_commit[TopicPartition(self.topic, batch.partition)] = batch.last_offset + 1
        left = [b for b in batches if not b.written]
        if left:
            exc = task.exception() if not task.cancelled() else None
            if exc is not None and not isinstance(exc, ClickHouseError):
                raise exc
            INSERT_FAILURES.inc()
            self.failed = left + self.failed
            self._pause_all(exc)
        else:
            self._clickhouse_ok()
            await self._commit(force=True)

    def _apply_backpressure(self) -> None:
        """Every partition is paused while ClickHouse refuses writes, none otherwise. (A full batch
        waiting for the insert in flight needs no pause: the loop then stops polling until the insert
        is over, and aiokafka prefetches at most one fetch per partition meanwhile.)"""
        assert self.consumer is not None
        wanted = set(self.consumer.assignment()) if self.failed else set()
        paused = self.consumer.paused()
        if wanted - paused:
            self.consumer.pause(*(wanted - paused))
        if paused - wanted:
            self.consumer.resume(*(paused - wanted))

    def _pause_all(self, exc: BaseException | None) -> None:
        if not self.refusing:  # log once per outage, not per retry
            log.error("clickhouse refused the insert; partitions paused until it accepts", error=str(exc)[:300])
        self.refusing = True
        PAUSED.set(1)
        self.retry_at = time.monotonic() + self.retry_delay
        self.retry_delay = min(self.retry_delay * 2, 10.0)

    def _clickhouse_ok(self) -> None:
        if self.refusing:
            log.info("clickhouse accepts inserts again; partitions resumed")
        self.refusing = False
        PAUSED.set(0)
        self.retry_delay = 0.2
        self.retry_at = 0.0

    async def _flush_now(self, partitions: set[int] | None = None) -> bool:
        """Write, in order, everything held for `partitions` (default all): the insert in flight, the
        failed batches, the filling ones. For shutdown and rebalance. False if ClickHouse refused."""
        async with self._flush_lock:
            await self._reap(wait=True)
            held = self.failed + sorted(self.batches.values(), key=lambda b: b.partition)
            batches = [b for b in held if partitions is None or b.partition in partitions]
            self.failed = [b for b in self.failed if b not in batches]
            for b in batches:
                if self.batches.get(b.partition) is b:
                    del self.batches[b.partition]
            if not batches:
                return True
            self.writing = asyncio.create_task(self._write(batches), name="aggregator:insert")
            self.writing_batches = batches
            await self._reap(wait=True)
            # Refused ones are back in self.failed; the caller decides (retry on shutdown, drop on hand-over).
            return not any(b in batches for b in self.failed)

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
        parts = {tp.partition for tp in revoked}
        if not await self._flush_now(parts):
            # The new owner reads them again from the last commit; the dedup token and FINAL absorb it.
            self.failed = [b for b in self.failed if b.partition not in parts]
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
            try:
                if await self._flush_now():
                    break
            except Exception as exc:  # noqa: BLE001 - shutting down goes on; uncommitted work is re-read
                log.warning("last flush failed", error=repr(exc))
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
        app = BadMessages.app_of(message.key)
        self.recent_bad.record(app, True)
        if self.recent_bad.newly_misbehaving(app):
            log.warning("most recent events of this app are invalid; they go to the DLQ, other apps are not affected",
                        app_id=app, dlq=EVENTS_DLQ_TOPIC, last_error=error)
        broken = self.recent_bad.broken()
        if broken is not None:
            self.recent_bad = self._bad_counter()  # a restarted consumer judges afresh
            raise TooManyBadMessages(
                f"{broken} on {self.topic} (limit {self.settings.aggregator_max_bad_ratio:.0%}): the deployment "
                f"looks broken; the aggregator stopped instead of dead-lettering all traffic. Inspect "
                f"{EVENTS_DLQ_TOPIC} and fix the producer (or the aggregator's version)."
            )

    def _update_lag(self) -> None:
        """Lag = the partition's end minus the first offset not yet stored."""
        assert self.consumer is not None
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            if high is None:
                continue
            held = [b.first_offset for b in (*self.failed, *self.writing_batches, *self.batches.values())
                    if b.partition == tp.partition]
            stored_up_to = min(held) if held else self.positions.get(tp.partition, high)
            LAG.labels(str(tp.partition)).set(max(0, high - stored_up_to))
