"""Hand events to Kafka and tell each request when its events are acknowledged.

Concurrent requests' events share record batches: an event is appended to the open batch of its
partition (aiokafka's C batch builder, about a microsecond), the request waits on a plain future, and
one drain task per partition hands each batch to the producer once the previous one is
acknowledged. A request that finds a batch open joins it; one that finds none opens it. So a request costs an
append and a future, not aiokafka's per-message `send()` bookkeeping, a timeout context and a gather,
and under load each produce request carries the events of every request that arrived while the
previous one was in flight (natural batching: no linger, no added latency when idle).

Promises:
* a request's futures resolve only after the broker acknowledged (acks=all) every batch holding one
  of its events; any failure fails every request of that batch;
* every batch has a deadline (`ack_timeout_s` from its first event): past it, its requests get a
  timeout. A batch not yet handed to the producer by then is dropped, so an event answered with an
  error is, as far as the gateway can tell, not published; one already handed over may still arrive
  (a client retry carrying the same event id is then counted once downstream);
* the events waiting for a partition are bounded (`max_pending_bytes`): past that a request fails at
  once with `Backpressure` instead of queueing behind a broker that does not keep up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.partitioner import murmur2
from prometheus_client import Histogram

from libs.logs import get_logger

log = get_logger(__name__)

BATCH_EVENTS = Histogram(
    "gateway_produce_batch_events", "Events per record batch handed to Kafka",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
)


class Backpressure(Exception):
    """More events wait for the broker than the gateway holds: answer 503 now."""


class _Batch:
    """An open record batch of one partition and the futures of the requests waiting on it."""

    __slots__ = ("builder", "count", "handed_over", "size", "timer", "waiters")

    def __init__(self, builder: Any) -> None:
        self.builder = builder
        self.waiters: list[asyncio.Future[None]] = []
        self.size = 0
        self.count = 0
        self.timer: asyncio.TimerHandle | None = None
        self.handed_over = False

    def settle(self, error: BaseException | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        for waiter in self.waiters:
            if not waiter.done():
                if error is None:
                    waiter.set_result(None)
                else:
                    waiter.set_exception(error)
        self.waiters = []


class _Partition:
    __slots__ = ("draining", "pending_bytes", "queue")

    def __init__(self) -> None:
        self.queue: list[_Batch] = []  # closed and open batches not yet handed over, oldest first
        self.pending_bytes = 0
        self.draining = False


class CoalescingPublisher:
    def __init__(
        self,
        producer: Callable[[], AIOKafkaProducer],
        topic: str,
        ack_timeout_s: float,
        max_pending_bytes: int = 64 << 20,
    ) -> None:
        self._producer = producer
        self.topic = topic
        self.ack_timeout_s = ack_timeout_s
        self.max_pending_bytes = max_pending_bytes
        self._parts: dict[int, _Partition] = {}
        self._partition_of: dict[bytes, int] = {}
        self._partition_ids: tuple[int, ...] = ()
        self._partitions_checked_at = float("-inf")
        self._drains: set[asyncio.Task[None]] = set()
        # The loop, looked up once: CPython 3.11's asyncio.get_running_loop() makes a getpid() system
        # call each time (its fork check), several percent of a request's CPU on the hot path.
        self._loop: asyncio.AbstractEventLoop | None = None

    def partition(self, key: bytes) -> int:
        """What aiokafka's default partitioner picks for `key`, from the producer's metadata cache
        (no await: metadata is refreshed by the client in the background)."""
        ids = self._partition_ids
        now = time.monotonic()
        if now >= self._partitions_checked_at + 1.0:  # at most once a second: it builds a set
            self._partitions_checked_at = now
            known = self._producer().client.cluster.partitions_for_topic(self.topic)
            if known is not None and len(known) != len(ids):  # first use, or partitions were added
                ids = self._partition_ids = tuple(sorted(known))
                self._partition_of.clear()
        found = self._partition_of.get(key)
        if found is None:
            if not ids:
                raise KafkaError(f"no metadata for topic {self.topic} yet")
            found = self._partition_of[key] = ids[(murmur2(key) & 0x7FFFFFFF) % len(ids)]
        return found

    async def ensure_metadata(self) -> None:
        """Load the topic's partitions once at start (later refreshes happen inside aiokafka)."""
        self._loop = asyncio.get_running_loop()
        await self._producer().partitions_for(self.topic)

    def append(
        self, partition: int, key: bytes, values: Sequence[bytes], headers: Sequence[tuple[str, bytes]]
    ) -> list[asyncio.Future[None]]:
        """Add the values to the partition's open batch(es); the futures resolve when all are acked.

        Raises Backpressure when the partition already holds `max_pending_bytes` waiting."""
        part = self._parts.get(partition)
        if part is None:
            part = self._parts[partition] = _Partition()
        if part.pending_bytes > self.max_pending_bytes:
            raise Backpressure(f"{part.pending_bytes} bytes wait for partition {partition}")
        loop = self._loop or asyncio.get_running_loop()
        waiters: list[asyncio.Future[None]] = []
        batch = part.queue[-1] if part.queue else None
        joined = None
        for value in values:
            if batch is None or batch.builder.append(key=key, value=value, timestamp=None, headers=headers) is None:
                batch = self._open(part, loop)
                if batch.builder.append(key=key, value=value, timestamp=None, headers=headers) is None:
                    raise ValueError("an event larger than the producer's batch size")
            if batch is not joined:  # one future per batch the request has events in
                joined = batch
                waiter = loop.create_future()
                batch.waiters.append(waiter)
                waiters.append(waiter)
            batch.size += len(value)
            batch.count += 1
            part.pending_bytes += len(value)
        if not part.draining:
            part.draining = True
            task = loop.create_task(self._drain(partition, part))
            self._drains.add(task)
            task.add_done_callback(self._drains.discard)
        return waiters

    def _open(self, part: _Partition, loop: asyncio.AbstractEventLoop) -> _Batch:
        batch = _Batch(self._producer().create_batch())
        batch.timer = loop.call_later(self.ack_timeout_s, self._expire, part, batch)
        part.queue.append(batch)
        return batch

    def _expire(self, part: _Partition, batch: _Batch) -> None:
        batch.timer = None
        if not batch.handed_over and batch in part.queue:  # never reached the producer: drop it
            part.queue.remove(batch)
            part.pending_bytes -= batch.size
        batch.settle(TimeoutError(f"Kafka did not acknowledge within {self.ack_timeout_s}s"))

    async def _drain(self, partition: int, part: _Partition) -> None:
        """Hand the partition's batches to the producer, oldest first, each once the previous one is
        acknowledged: one batch in flight, the next gathering every event that arrives meanwhile.

        (Handing a batch over as soon as the previous one has merely left, as aiokafka's send_batch
        allows, freezes it with the few events of that instant and makes every other produce request
        a tiny one.) An idle partition sends its first event at once: no linger."""
        producer = self._producer()
        try:
            while part.queue:
                batch = part.queue.pop(0)
                batch.handed_over = True
                BATCH_EVENTS.observe(batch.count)
                try:
                    delivered = await producer.send_batch(batch.builder, self.topic, partition=partition)
                except (TimeoutError, KafkaError) as exc:
                    batch.settle(exc)
                    continue
                finally:
                    part.pending_bytes -= batch.size
                delivered.add_done_callback(lambda fut, b=batch: b.settle(_error_of(fut)))
                await asyncio.wait((delivered,))
        finally:
            part.draining = False

    async def close(self) -> None:
        for task in list(self._drains):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _error_of(fut: asyncio.Future[Any]) -> BaseException | None:
    if fut.cancelled():
        return asyncio.CancelledError()
    return fut.exception()
