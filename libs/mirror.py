"""A compacted topic mirrored in memory, with read-your-writes on demand.

Gateways and the query service know keys (`auth.api-keys.v1`) and apps (`auth.apps.v1`) only from
topics auth publishes, each message the whole state of one key or app. A `TopicMirror` reads such a
topic from its earliest offset (no group, every partition, nothing committed) into a table of its
owner's through `apply`, then follows it.

Read-your-writes: auth answers a change only after Kafka acknowledged its message, yet the message
reaches a mirror some milliseconds later (longer in another process). So a caller that does not find
what it looks for awaits `wait_caught_up()`, which reads the topic's end offsets (after the caller
asked) and waits until the mirror has applied everything up to them. Those catch-ups are shared: one
in flight and one queued per mirror, every waiting caller joining the queued one, started at most
every CATCH_UP_MIN_INTERVAL_S, so a flood of lookups of unknown ids costs at most ~20 offset requests
a second per process and no database call. If Kafka cannot answer within CATCH_UP_TIMEOUT_S the
caller gets DependencyUnavailable (503, retry), not a refusal: what it looked for may well exist.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from aiokafka import TopicPartition
from prometheus_client import Counter

from libs.http import DependencyUnavailable
from libs.logs import get_logger
from libs.settings import Settings
from libs.stream import Apply, ConsumerSpec, StreamConsumer
from libs.stream.produce import stop_consumer

log = get_logger(__name__)

CATCH_UP_MIN_INTERVAL_S = 0.05  # between the starts of two catch-ups of one mirror: <= 20 offset requests/s
CATCH_UP_TIMEOUT_S = 2.0  # a caller waits this long for the topic at most, then gets 503

class SharedRounds:
    """Runs `work` for whoever asks, shared: at most one round in flight and one queued. Every caller
    arriving while a round is queued joins it, so each caller gets a round that starts after it asked;
    a round starts no sooner than `min_interval` after the previous one started."""

    def __init__(self, work: Callable[[], Awaitable[None]], min_interval: float, name: str = "catch-up") -> None:
        self._work = work
        self._min_interval = min_interval
        self._name = name
        self._queued: asyncio.Future[None] | None = None  # the round not started yet, if any
        self._last: asyncio.Task[None] | None = None  # the latest round (in flight or queued)
        self._tasks: set[asyncio.Task[None]] = set()  # rounds not finished, for close()
        self._last_start = -math.inf

    def request(self) -> asyncio.Future[None]:
        """A round that starts after this call: its result, or the exception its work raised."""
        if self._queued is None:
            self._queued = asyncio.get_running_loop().create_future()
            self._queued.add_done_callback(_retrieved)
            self._last = asyncio.create_task(self._run(self._queued, self._last), name=self._name)
            self._tasks.add(self._last)
            self._last.add_done_callback(self._tasks.discard)
        return self._queued

    async def _run(self, done: asyncio.Future[None], previous: asyncio.Task[None] | None) -> None:
        try:
            if previous is not None:
                await asyncio.wait([previous])
            await asyncio.sleep(max(0.0, self._last_start + self._min_interval - time.monotonic()))
            self._queued = None  # who asks from now on needs the next round
            self._last_start = time.monotonic()
            await self._work()
        except BaseException as exc:
            if not done.done():
                done.set_exception(exc if isinstance(exc, Exception) else RuntimeError("stopped"))
            if not isinstance(exc, Exception):
                raise
        else:
            done.set_result(None)

    async def close(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _retrieved(future: asyncio.Future[None]) -> None:
    """Mark a round's exception as seen: its waiters may all have given up already."""
    if not future.cancelled():
        future.exception()


class TopicMirror:
    """Applies every message of `topic` (from its earliest offset, then continuously) with `apply`,
    and catches up with the topic on demand (`wait_caught_up`). `what` names the topic's content in
    logs and errors ("the API-key topic"); `catchups` counts catch-ups by outcome (done, failed)."""

    def __init__(
        self, settings: Settings, topic: str, apply: Callable[[Any], None], what: str, catchups: Counter,
    ) -> None:
        self.settings = settings
        self.topic = topic
        self.what = what
        self.catchups = catchups
        self._task: asyncio.Task[None] | None = None
        self._member = StreamConsumer(settings, ConsumerSpec(
            topic=topic, group_id=None, strategy=Apply(apply), on_polled=self._note_applied,
        ))
        self._applied: dict[TopicPartition, int] = {}  # partition -> next offset not yet applied
        self._progress = asyncio.Event()  # set (and replaced) each time the mirror applied a fetch
        self._rounds = SharedRounds(self._reach_end, CATCH_UP_MIN_INTERVAL_S, f"catch-up:{topic}")

    async def start(self) -> None:
        """Apply the topic up to its end offsets at the time of the call, then follow it in a task."""
        member = self._member
        await member.start()
        try:
            consumer = member.consumer
            assert consumer is not None
            tps = sorted(consumer.assignment())
            end = await consumer.end_offsets(tps)
            self._applied = dict.fromkeys(tps, 0)
            while [tp for tp, off in end.items() if await consumer.position(tp) < off]:
                await member.step()
            await self._note_applied()
        except BaseException:
            await stop_consumer(member.consumer)
            raise
        self._task = asyncio.create_task(member.run(), name=f"mirror:{self.topic}")

    async def _note_applied(self) -> None:
        """Record how far the mirror is (only a fetch, applied at once, moves a position) and wake the
        catch-ups waiting for it."""
        consumer = self._member.consumer
        assert consumer is not None
        for tp in self._applied:
            self._applied[tp] = await consumer.position(tp)
        self._progress.set()
        self._progress = asyncio.Event()

    async def wait_caught_up(self) -> None:
        """Return once the mirror holds every message Kafka acknowledged before this call.

        Shares a catch-up with concurrent callers (see SharedRounds). Raises DependencyUnavailable
        (503) past CATCH_UP_TIMEOUT_S: Kafka did not answer or the follower is stuck."""
        try:
            await asyncio.wait_for(asyncio.shield(self._rounds.request()), CATCH_UP_TIMEOUT_S)
        except Exception as exc:
            raise DependencyUnavailable(f"{self.what} (Kafka)", retry_after=2) from exc

    async def _reach_end(self) -> None:
        """One catch-up, within half the callers' budget (a caller may first wait for the one before)."""
        try:
            await asyncio.wait_for(self._read_to_end(), CATCH_UP_TIMEOUT_S / 2)
        except Exception as exc:
            self.catchups.labels("failed").inc()
            log.warning("in-memory mirror could not catch up with its topic; answering 503",
                        topic=self.topic, error=repr(exc))
            raise
        self.catchups.labels("done").inc()

    async def _read_to_end(self) -> None:
        assert self._member.consumer is not None
        end = await self._member.consumer.end_offsets(list(self._applied))
        while True:
            progress = self._progress
            if all(self._applied[tp] >= offset for tp, offset in end.items()):
                return
            await progress.wait()

    async def stop(self) -> None:
        await self._rounds.close()
        self._member.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = None


class Sync(Protocol):
    async def stop(self) -> None: ...


T = TypeVar("T")


async def shared(runtime: Any, name: str, make: Callable[[], Awaitable[tuple[T, Sync]]]) -> T:
    """One `name` per process (a key table, an app directory), shared by every service in it: made
    (with its follower, started) by the first caller."""
    async with runtime.shared.setdefault(f"{name}_lock", asyncio.Lock()):
        found: T | None = runtime.shared.get(name)
        if found is None:
            await runtime.kafka_ready()
            found, sync = await make()
            runtime.shared[name] = found
            runtime.shared[f"{name}_sync"] = sync
        return found


async def stop_shared(runtime: Any, name: str) -> None:
    sync = runtime.shared.pop(f"{name}_sync", None)
    if sync is not None:
        await sync.stop()
    runtime.shared.pop(name, None)
