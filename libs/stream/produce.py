"""The one module that touches aiokafka's protocol, record and client internals.

aiokafka's public API does not offer what is here, so everything that needs its internals lives in
this module and nowhere else: the coalescing produce path below (its `ProduceRequest`,
`DefaultRecordBatchBuilder`, `murmur2` partitioner and the producer's client and cluster metadata),
a forced metadata refresh for a consumer, closing a consumer whose stop was cut short, the broker
ping, a consumer's member id in its group and the decoding of a group member's subscription and
assignment (`analytics status`). pyproject.toml bounds aiokafka to the
versions this was tested with (`TESTED_AIOKAFKA`), and tests/libs/stream/test_produce.py pins the
behaviour against the real embedded broker; `check_aiokafka_version()` says what to do when the
installed aiokafka is outside that range.

Hand events to Kafka and tell each request when its events are acknowledged.

Concurrent requests' events share record batches: an event is appended to the open batch of its
partition (aiokafka's C record-batch builder, about a microsecond) and the request awaits that
batch's future, shared by every request in it. Batches go to the partition's leader as produce
requests of their own (aiokafka's client and connection: its version negotiation, framing and
metadata), `max_in_flight` at a time per partition. So a request costs an append and an await, not
aiokafka's per-message `send()` bookkeeping, and under load each produce request carries the events
of every request that arrived while the previous one was in flight (natural batching: no linger, no
added latency when idle).

Why not the producer's own `send_batch`: a batch it acknowledges reaches the next one only after
several turns of the event loop (the sender task, a shield, the drain task), each queued behind the
requests the acknowledgement just answered, so the broker sat idle for a good part of every round
trip. Here, when a produce request is acknowledged, the next batch is handed to the broker first
and the requests are answered after. One request in flight per partition (the default) makes the
largest batches, which costs the least CPU per event (measured with `make bench`).

Promises:
* a request's futures resolve only after the broker acknowledged (acks=all) every batch holding one
  of its events; any failure fails every request of that batch;
* every batch has a deadline (`ack_timeout_s` from its first event): past it, its requests get a
  timeout. A batch not yet handed to the broker by then is dropped, so an event answered with an
  error is, as far as the gateway can tell, not published; one already handed over may still arrive
  (a client retry carrying the same event id is then counted once downstream). A retriable broker
  error (leader moved, broker restarting) is retried until the deadline has answered the requests;
* the events waiting for a partition are bounded (`max_pending_bytes`): past that a request fails at
  once with `Backpressure` instead of queueing behind a broker that does not keep up.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import aiokafka
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.client import AIOKafkaClient
from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment, ConsumerProtocolMemberMetadata
from aiokafka.errors import KafkaError, for_code
from aiokafka.partitioner import murmur2
from aiokafka.protocol.produce import ProduceRequest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from prometheus_client import Histogram

from libs.logs import get_logger

log = get_logger(__name__)

# The aiokafka releases this module was tested with: keep in step with pyproject.toml's bound.
TESTED_AIOKAFKA = ((0, 14), (0, 15))  # from (inclusive), to (exclusive)


def check_aiokafka_version(version: str = aiokafka.__version__) -> None:
    """Raise with what to do when the installed aiokafka is outside the tested range."""
    installed = tuple(int(part) for part in version.split(".")[:2])
    low, high = TESTED_AIOKAFKA
    if not low <= installed < high:
        raise RuntimeError(
            f"aiokafka {version} is installed, but libs/stream/produce.py uses its internals and was tested "
            f"with {'.'.join(map(str, low))} <= aiokafka < {'.'.join(map(str, high))}: install a version in "
            "that range, or run tests/libs/stream/test_produce.py against the new one and widen the range "
            "(TESTED_AIOKAFKA and pyproject.toml)."
        )


async def refresh_metadata(consumer: AIOKafkaConsumer) -> None:
    """Ask the broker for fresh topic metadata now (a consumer that has not seen a new topic yet)."""
    await consumer._client.force_metadata_update()


def group_member_id(consumer: AIOKafkaConsumer) -> str | None:
    """The member id the group coordinator gave `consumer` (what DescribeGroups lists), or None while it
    is not a member of a group (not joined yet, between generations, or no group at all)."""
    coordinator = consumer._coordinator
    member_id = getattr(coordinator, "member_id", None)  # a consumer without a group has no such field
    return member_id or None  # aiokafka's "unknown member" is the empty string


def decode_member(metadata: bytes, assignment: bytes) -> tuple[list[str], dict[str, list[int]]]:
    """What DescribeGroups says of a member of a "consumer" group: the topics it subscribed to, and the
    partitions it was assigned by topic, decoded as aiokafka's ConsumerProtocol encodes them. Either is
    empty when the broker sent nothing (Tansu sends neither) or something else."""
    topics: list[str] = []
    partitions: dict[str, list[int]] = {}
    with contextlib.suppress(Exception):  # another protocol's bytes, or none: nothing known
        topics = sorted(ConsumerProtocolMemberMetadata.decode(metadata).subscription) if metadata else []
    with contextlib.suppress(Exception):
        if assignment:
            for topic, parts in ConsumerProtocolMemberAssignment.decode(assignment).assignment:
                partitions.setdefault(topic, []).extend(parts)
    return topics, {topic: sorted(parts) for topic, parts in partitions.items()}


async def stop_consumer(consumer: AIOKafkaConsumer) -> None:
    """Stop `consumer` and always close its client.

    aiokafka 0.14's `Fetcher.close()` awaits the fetch tasks it has just cancelled, so while a fetch is
    in flight (a broker that went down) `consumer.stop()` raises CancelledError before it closes its
    client (aio-libs/aiokafka#647). The client would stay open, asking the dead broker for metadata
    every `metadata_max_age_ms` and logging an error each time, for as long as the process lives. That
    CancelledError is swallowed here unless this task itself is being cancelled. Pinned by
    tests/services/gateway/test_gateway.py::test_a_gateway_stopped_while_kafka_is_down_leaves_no_kafka_client_open."""
    try:
        await consumer.stop()
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
    finally:
        await asyncio.shield(consumer._client.close())


async def broker_answers(bootstrap_servers: str, timeout: float = 3) -> bool:
    """True when the broker answers a metadata request."""
    client = AIOKafkaClient(bootstrap_servers=bootstrap_servers, request_timeout_ms=int(timeout * 1000 * 2 / 3))
    try:
        await asyncio.wait_for(client.bootstrap(), timeout)
        return True
    except Exception:  # noqa: BLE001 - a ping answers yes or no
        return False
    finally:
        await client.close()

BATCH_EVENTS = Histogram(
    "gateway_produce_batch_events", "Events per record batch handed to Kafka",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096),
)
MAX_BATCH_BYTES = 1 << 20  # the broker's default message.max.bytes is about 1 MB
BROKER_TIMEOUT_MS = 5000  # how long the broker may wait for its replicas (acks=all)
RETRY_BACKOFF_S = 0.05


class Backpressure(Exception):
    """More events wait for the broker than the gateway holds: answer 503 now."""


def _new_builder() -> Any:
    # Magic 2 record batch, no compression, not transactional, no producer id (no idempotence): what
    # aiokafka's producer builds with this platform's settings (libs.kafka.make_producer).
    return DefaultRecordBatchBuilder(2, 0, 0, -1, -1, 0, MAX_BATCH_BYTES)


class _Batch:
    """An open record batch of one partition; every request with an event in it awaits `acked`."""

    __slots__ = ("acked", "builder", "count", "handed_over", "size", "timer")

    def __init__(self, acked: asyncio.Future[None]) -> None:
        self.builder = _new_builder()
        self.acked = acked
        self.size = 0
        self.count = 0
        self.timer: asyncio.TimerHandle | None = None
        self.handed_over = False

    def add(self, key: bytes, value: bytes, headers: Sequence[tuple[str, bytes]]) -> bool:
        return self.builder.append(self.count, None, key, value, headers) is not None

    def settle(self, error: BaseException | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.acked.done():
            if error is None:
                self.acked.set_result(None)
            else:
                self.acked.set_exception(error)


class _Partition:
    __slots__ = ("in_flight", "pending_bytes", "pump_scheduled", "queue")

    def __init__(self) -> None:
        self.queue: list[_Batch] = []  # closed and open batches not yet handed over, oldest first
        self.pending_bytes = 0
        self.in_flight = 0
        self.pump_scheduled = False


class CoalescingPublisher:
    def __init__(
        self,
        producer: Callable[[], AIOKafkaProducer],
        topic: str,
        ack_timeout_s: float,
        max_pending_bytes: int = 64 << 20,
        max_in_flight: int = 1,
    ) -> None:
        self._producer = producer
        self.topic = topic
        self.ack_timeout_s = ack_timeout_s
        self.max_pending_bytes = max_pending_bytes
        self.max_in_flight = max_in_flight
        self._parts: dict[int, _Partition] = {}
        self._partition_of: dict[bytes, int] = {}
        self._partition_ids: tuple[int, ...] = ()
        self._partitions_checked_at = float("-inf")
        self._sends: set[asyncio.Task[None]] = set()
        self._closed = False
        # The loop, looked up once: CPython 3.11's asyncio.get_running_loop() makes a getpid() system
        # call each time (its fork check), a measurable share of a request's CPU (docs/scaling.md).
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
        """Load the topic's partitions once at start (later refreshes happen inside aiokafka).

        The topic is added to the client's tracked topics: `partitions_for` alone does not track a topic
        it already found in an all-topics answer, and once another user of the shared producer (auth's key
        messages, the aggregator's DLQ) sends to a topic, aiokafka's refreshes ask for the tracked topics
        only, so ours would drop out of the metadata and every batch would wait for a leader in vain."""
        self._loop = asyncio.get_running_loop()
        producer = self._producer()
        await producer.client.add_topic(self.topic)
        await producer.partitions_for(self.topic)

    def append(
        self, partition: int, key: bytes, values: Sequence[bytes], headers: Sequence[tuple[str, bytes]]
    ) -> list[asyncio.Future[None]]:
        """Add the values to the partition's open batch(es); the futures resolve when all are acked.

        Raises Backpressure when the partition already holds `max_pending_bytes` waiting."""
        if self._closed:
            raise KafkaError("the gateway is shutting down")
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
            if batch is None or not batch.add(key, value, headers):
                batch = self._open(part, loop)
                if not batch.add(key, value, headers):
                    raise ValueError("an event larger than a record batch")
            if batch is not joined:  # the futures of the batches the request has events in
                joined = batch
                waiters.append(batch.acked)
            batch.size += len(value)
            batch.count += 1
            part.pending_bytes += len(value)
        if not part.pump_scheduled and part.in_flight < self.max_in_flight:
            # At the end of this loop turn: the batch gathers the events of every request already
            # running in it.
            part.pump_scheduled = True
            loop.call_soon(self._pump, partition, part)
        return waiters

    def _open(self, part: _Partition, loop: asyncio.AbstractEventLoop) -> _Batch:
        batch = _Batch(loop.create_future())
        batch.timer = loop.call_later(self.ack_timeout_s, self._expire, part, batch)
        part.queue.append(batch)
        return batch

    def _expire(self, part: _Partition, batch: _Batch) -> None:
        batch.timer = None
        if not batch.handed_over and batch in part.queue:  # never reached the broker: drop it
            part.queue.remove(batch)
            part.pending_bytes -= batch.size
        batch.settle(TimeoutError(f"Kafka did not acknowledge within {self.ack_timeout_s}s"))

    def _pump(self, partition: int, part: _Partition) -> None:
        """Hand the partition's batches to the broker, oldest first, while fewer than `max_in_flight`
        are there; the rest gather events until one is acknowledged."""
        part.pump_scheduled = False
        if self._closed:
            return
        loop = self._loop or asyncio.get_running_loop()
        while part.queue and part.in_flight < self.max_in_flight:
            batch = part.queue.pop(0)
            batch.handed_over = True
            part.pending_bytes -= batch.size
            part.in_flight += 1
            BATCH_EVENTS.observe(batch.count)
            task = loop.create_task(self._produce(partition, part, batch))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)

    async def _produce(self, partition: int, part: _Partition, batch: _Batch) -> None:
        # Anything but an acknowledgement fails the batch's requests (503), a cancellation by close() too.
        error: BaseException | None = KafkaError("the gateway stopped before Kafka acknowledged")
        try:
            await self._send(partition, batch)
            error = None
        except (TimeoutError, KafkaError) as exc:
            error = exc
        except Exception as exc:  # noqa: BLE001 - a broken connection, or a bug: never an acknowledgement
            log.warning("producing a batch failed", error=repr(exc), partition=partition)
            error = KafkaError(f"producing failed: {exc!r}")
        finally:
            part.in_flight -= 1
            self._pump(partition, part)  # the next batch goes out before this one's requests are answered
            batch.settle(error)

    async def _send(self, partition: int, batch: _Batch) -> None:
        """One produce request for the batch, retried on retriable errors until its deadline timer
        has answered its requests (then there is no one left to tell)."""
        client = self._producer().client
        tp = TopicPartition(self.topic, partition)
        data = batch.builder.build()
        batch.builder = None
        while True:
            node = client.cluster.leader_for_partition(tp)
            leaderless = node is None or node < 0
            try:
                if leaderless:
                    raise KafkaError(f"no leader known for {tp.topic}[{tp.partition}]")
                request = ProduceRequest(None, -1, BROKER_TIMEOUT_MS, [(self.topic, [(partition, data)])])
                response = await client.send(node, request)
                code = _error_code(response)
                if code == 0:
                    return
                raise for_code(code)()
            except KafkaError as exc:
                if leaderless or getattr(exc, "invalid_metadata", False):
                    client.force_metadata_update()  # refreshed in the background; the retry reads it
                retriable = leaderless or getattr(exc, "retriable", False)
                if not retriable or batch.acked.done():
                    raise
                log.warning("produce failed; retrying", error=repr(exc), partition=partition)
                await asyncio.sleep(RETRY_BACKOFF_S)

    async def settled(self) -> None:
        """Return once every event appended so far was acknowledged or failed: each batch has its
        deadline, and a produce request its timeout, so this is bounded."""
        deadline = time.monotonic() + self.ack_timeout_s + BROKER_TIMEOUT_MS / 1000
        while time.monotonic() < deadline:
            pending = [b.acked for part in self._parts.values() for b in part.queue] + list(self._sends)
            if not pending:
                return
            await asyncio.wait(pending, timeout=max(0.0, deadline - time.monotonic()))

    async def close(self) -> None:
        self._closed = True
        for task in list(self._sends):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for part in self._parts.values():
            for batch in part.queue:
                batch.settle(KafkaError("the gateway is shutting down"))
            part.queue.clear()


def _error_code(response: Any) -> int:
    """The error code of the one partition a produce request carried (0: acknowledged)."""
    for _topic, partitions in response.topics:
        for info in partitions:
            return int(info[1])
    return -1
