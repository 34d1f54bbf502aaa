"""One consumer skeleton: a consumer is declared (`ConsumerSpec`: topic, group, strategy, dead letters),
not hand-written.

Modelled on getsentry/arroyo (its `StreamProcessor` with the `Reduce`, `RunTask`, `RunTaskInThreads`
and `CommitOffsets` strategies, and snuba's `strategy_factory.py` that composes them), but written for
asyncio on aiokafka: arroyo itself is synchronous and threaded on confluent-kafka, which this platform
does not use. The skeleton owns what every consumer needs and none should write again:

* subscription and assignment: a member of `group_id` (rebalances: the strategy finishes or drops the
  work of revoked partitions, what is finished is committed, their state is forgotten, so no work that
  outlived its partition is committed over the new owner's), or with no group, a follower of every
  partition from the earliest offset that commits nothing (the API-key table);
* commits only of finished work: per partition the end of the longest finished prefix
  (offsets.Watermarks), at most every `commit_interval_s` unless a strategy finished a step, and always
  before partitions are handed away and on stop;
* backpressure: when the strategy is `saturated` (its next step waits for the current one) the loop
  waits for the strategy instead of fetching; when it asks for `paused` (a dependency refuses work, or
  its concurrency is used up) every partition is paused and polling goes on, so the member keeps its
  group membership (aiokafka's max_poll_interval) while nothing more is read;
* dead letters in one shape with the optional bad-ratio stop (deadletter.py), and the request id of
  each message's producer restored for its work (headers, libs.logs);
* the drain contract of libs.kafka.GroupMember: `draining` makes a strategy finish what it holds at
  once; `run()` returns after `stop()` with its last commit made;
* a report of itself while it runs (`status()`: group, member id, partitions owned and their lag),
  listed in its stack's `Members` when a stack started it: each service's `GET /status`.

Strategies (strategies.py): `Batches` (arroyo's Reduce then RunTask: messages fold into one
accumulator per partition, closed by size or age, written as one async step while the next fills,
retried while the dependency refuses), `Concurrent` (RunTaskInThreads for coroutines: one task per
message, bounded), `Apply` (a synchronous function per message, done at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Collection
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, ClassVar

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError
from prometheus_client import Counter, Gauge

from libs.kafka import GroupMember, make_consumer
from libs.logs import get_logger
from libs.settings import Settings
from libs.stream.deadletter import DeadLetters
from libs.stream.offsets import Watermarks
from libs.stream.produce import group_member_id, refresh_metadata, stop_consumer

log = get_logger(__name__)


class Strategy:
    """What a consumer does with its messages. The skeleton calls `submit` for every message in order,
    `poll` once per loop turn, `revoke` before partitions go away and `close` on stop; a strategy marks
    its work finished with `self.offsets.finish(span)`."""

    member: StreamConsumer
    offsets: Watermarks

    def bind(self, member: StreamConsumer) -> None:
        self.member = member
        self.offsets = member.offsets

    async def submit(self, message: Any) -> None:
        raise NotImplementedError

    async def submit_many(self, messages: list[Any]) -> None:
        """The messages of one partition from one fetch, in order (a strategy may do it without an
        await per message)."""
        for message in messages:
            await self.submit(message)

    async def poll(self) -> None:
        """Make progress without blocking: account for finished work, start due work."""

    def poll_timeout_ms(self) -> int:
        return 200

    def saturated(self) -> bool:
        """True while the next step must wait for the current one (briefly): do not fetch."""
        return False

    async def progress(self, timeout: float) -> None:
        """Wait (at most `timeout`) for work to finish, while `saturated`."""
        await asyncio.sleep(timeout)

    def paused(self) -> bool:
        """True while no more messages should be read (for longer): partitions paused, polling goes on."""
        return False

    async def revoke(self, partitions: set[int]) -> None:
        """Finish or drop the work of partitions that go to another member."""

    async def close(self) -> None:
        """On stop: finish what can be finished, drop the rest."""


@dataclass
class ConsumerSpec:
    topic: str
    group_id: str | None  # None: follow every partition from the earliest offset, commit nothing
    strategy: Strategy
    dead_letters: DeadLetters | None = None
    commit_interval_s: float = 1.0
    client_options: dict[str, Any] = field(default_factory=dict)  # aiokafka consumer options
    consumed: Counter | None = None  # messages read
    lag: Gauge | None = None  # labelled by partition: the partition's end minus the first unfinished offset
    on_polled: Callable[[], Awaitable[None]] | None = None  # after each loop turn (the key table's progress)


class Members:
    """The consumers running in one stack, each with the service that runs it: what `GET /status`
    reports (libs.runtime)."""

    def __init__(self) -> None:
        self._running: dict[StreamConsumer, str] = {}

    def add(self, member: StreamConsumer, service: str) -> None:
        self._running[member] = service

    def discard(self, member: StreamConsumer) -> None:
        self._running.pop(member, None)

    def status(self, services: Collection[str]) -> list[dict[str, Any]]:
        """`StreamConsumer.status()` of each consumer run by one of `services`."""
        return [member.status(service) for member, service in list(self._running.items()) if service in services]


# Set by a stack around its services' start hooks and background jobs (and so inherited by the tasks
# they create): a consumer started there is listed in that stack's Members under that service.
reporting_to: ContextVar[tuple[Members, str] | None] = ContextVar("reporting_to", default=None)


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, owner: StreamConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.owner.assigned.clear()
        await self.owner.hand_over({tp.partition for tp in revoked if tp.topic == self.owner.topic})

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("partitions assigned", topic=self.owner.topic, partitions=sorted(tp.partition for tp in assigned))
        self.owner.assigned.set()


class StreamConsumer(GroupMember):
    """Runs one `ConsumerSpec`: `run()` until `stop()`; `drain()` (GroupMember) finishes the backlog first."""

    drain_labels: ClassVar[tuple[str, str, str]] = ("consumer", "messages", "handled")

    def __init__(self, settings: Settings, spec: ConsumerSpec) -> None:
        super().__init__()
        self.settings = settings
        self.spec = spec
        self.topic = spec.topic
        self.group_id = spec.group_id  # type: ignore[assignment]
        self.consumer = None
        self.offsets = Watermarks()
        self.strategy = spec.strategy
        self.dead_letters = spec.dead_letters
        if self.dead_letters is not None:
            self.dead_letters.group = spec.group_id
        self.running = True
        self.commit_now = False  # a strategy finished a step: commit without waiting for the interval
        self.last_commit = time.monotonic()
        self._started = False
        self.started = asyncio.Event()  # set once the client has joined its group (or been assigned)
        self._reporting_to: tuple[Members, str] | None = None
        self.strategy.bind(self)

    def stop(self) -> None:
        """Ask `run()` to return: the strategy closes, what is finished is committed."""
        self.running = False

    async def start(self) -> None:
        """Join the group (or assign every partition); `run()` calls it if nobody did."""
        if self._started:
            return
        self.offsets = Watermarks()  # a run restarted after a failure reads again from the last commit
        self.strategy.bind(self)
        options = {"group_id": self.spec.group_id, **self.spec.client_options}
        consumer = self.consumer = make_consumer(self.settings, **options)
        try:
            if self.spec.group_id is not None:
                consumer.subscribe([self.topic], listener=_Rebalance(self))
                await consumer.start()
            else:
                await consumer.start()
                tps = [TopicPartition(self.topic, p) for p in sorted(await self._partitions())]
                consumer.assign(tps)
                await consumer.seek_to_beginning(*tps)
                self.assigned.set()
        except BaseException:  # cancelled while joining, or no topic: still close the client
            await stop_consumer(consumer)
            raise
        self._started = True
        self.started.set()
        self._reporting_to = reporting_to.get()
        if self._reporting_to is not None:
            members, service = self._reporting_to
            members.add(self, service)
        log.info("consuming", topic=self.topic, group=self.spec.group_id)

    async def _partitions(self) -> set[int]:
        assert self.consumer is not None
        for _ in range(100):
            partitions = self.consumer.partitions_for_topic(self.topic)
            if partitions:
                return set(partitions)
            await refresh_metadata(self.consumer)
            await asyncio.sleep(0.1)
        raise RuntimeError(f"Kafka topic {self.topic} has no partitions; is the broker up and the topic created?")

    async def _run(self) -> None:
        await self.start()
        try:
            while self.running:
                await self.step()
        finally:
            await self._shutdown()

    async def step(self) -> None:
        """One loop turn: fetch (unless saturated), submit, let the strategy progress, commit."""
        consumer = self.consumer
        assert consumer is not None
        strategy = self.strategy
        if strategy.saturated():
            await strategy.progress(0.2)
            polled: dict[TopicPartition, list[Any]] = {}
        else:
            polled = await consumer.getmany(timeout_ms=strategy.poll_timeout_ms())
        for messages in polled.values():
            if self.spec.consumed is not None:
                self.spec.consumed.inc(len(messages))
            await strategy.submit_many(messages)
        await strategy.poll()
        self._apply_backpressure()
        await self.commit(force=False)
        if self.spec.lag is not None:
            self._update_lag()
        if self.spec.on_polled is not None:
            await self.spec.on_polled()

    def _apply_backpressure(self) -> None:
        assert self.consumer is not None
        wanted = set(self.consumer.assignment()) if self.strategy.paused() else set()
        paused = self.consumer.paused()
        if wanted - paused:
            self.consumer.pause(*(wanted - paused))
        if paused - wanted:
            self.consumer.resume(*(paused - wanted))

    async def commit(self, force: bool, partitions: set[int] | None = None) -> None:
        """Commit the finished prefix of each (owned) partition; at most every `commit_interval_s`
        unless forced or a strategy finished a step."""
        if self.spec.group_id is None or self.consumer is None:
            return
        if not (force or self.commit_now) and time.monotonic() - self.last_commit < self.spec.commit_interval_s:
            return
        owned = {tp.partition for tp in self.consumer.assignment()}
        offsets = self.offsets.committable(owned if partitions is None else owned & partitions)
        self.commit_now = False
        self.last_commit = time.monotonic()
        if not offsets:
            return
        try:
            await self.consumer.commit({TopicPartition(self.topic, p): off for p, off in offsets.items()})
        except (CommitFailedError, IllegalStateError) as exc:
            # A rebalance took a partition away: its new owner starts from the last commit.
            log.warning("offset commit refused (rebalance); the next owner reads again from the last commit",
                        topic=self.topic, error=repr(exc))
            return
        self.offsets.committed(offsets)

    async def hand_over(self, partitions: set[int]) -> None:
        """Before partitions go to another member: the strategy finishes or drops their work, what is
        finished is committed, the rest is forgotten (never committed later)."""
        try:
            await self.strategy.revoke(partitions)
            with contextlib.suppress(Exception):  # the new owner reads again from the last commit
                await self.commit(force=True, partitions=partitions)
        finally:
            self.offsets.forget(partitions)
            if self.spec.lag is not None:
                for p in partitions:
                    with contextlib.suppress(KeyError):
                        self.spec.lag.remove(str(p))

    async def _shutdown(self) -> None:
        if self.consumer is None:
            return
        try:
            await self.strategy.close()
        finally:
            with contextlib.suppress(Exception):
                await self.commit(force=True)
            await stop_consumer(self.consumer)
            self._started = False
            if self._reporting_to is not None:
                self._reporting_to[0].discard(self)
            log.info("consumer stopped; offsets committed", topic=self.topic, group=self.spec.group_id)

    def _update_lag(self) -> None:
        assert self.spec.lag is not None
        for partition, lag in self.partition_lags().items():
            self.spec.lag.labels(str(partition)).set(lag)

    def partition_lags(self) -> dict[int, int]:
        """Per owned partition whose end is known (a fetch has answered): its end minus the first
        offset not finished (what a crash now would have read again)."""
        lags: dict[int, int] = {}
        if self.consumer is None:
            return lags
        for tp in self.consumer.assignment():
            high = self.consumer.highwater(tp)
            if high is None:
                continue
            pending = self.offsets.first_pending(tp.partition)
            if pending is None:
                pending = self.offsets.done_upto(tp.partition, high)
            lags[tp.partition] = max(0, high - pending)
        return lags

    def status(self, service: str) -> dict[str, Any]:
        """What this member is, for `GET /status`: its topic and group, the member id the group
        coordinator gave it (None before it joined, or without a group), and each partition it owns
        with its lag (None until a fetch has told its end)."""
        consumer = self.consumer
        owned = sorted(tp.partition for tp in consumer.assignment() if tp.topic == self.topic) if consumer else []
        lags = self.partition_lags()
        return {
            "service": service,
            "topic": self.topic,
            "group": self.spec.group_id,
            "member_id": group_member_id(consumer) if consumer is not None and self.spec.group_id else None,
            "partitions": [{"partition": p, "lag": lags.get(p)} for p in owned],
            "paused": self.strategy.paused(),
        }
