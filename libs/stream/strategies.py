"""The processing strategies of the stream skeleton (consumer.py), after arroyo's.

* `Batches`: arroyo's Reduce followed by RunTask. Each message folds into its partition's accumulator
  (`add`, synchronous: it runs per message; it returns the reason when the message is bad, which is
  then dead-lettered and still counts as handled). A batch closes by size (messages held over all
  partitions) or by the age of its oldest message, or at once while draining, and the accumulators of
  every partition go to `step` (one async call, e.g. one insert) while the next batch fills. One step
  runs at a time; a step that raises one of `retry_on` is retried with exactly the same accumulators
  (backoff up to 10 s, partitions paused meanwhile) before anything later; other errors stop the
  consumer. The offsets of a batch are finished when its step returned.
* `Concurrent`: arroyo's RunTaskInThreads for coroutines: one task per message (`handle`, with the
  message's request id), at most `max_in_flight` before the partitions are paused; finished in any
  order, committed by watermark.
* `Apply`: a synchronous function per message, finished at once (a follower that builds a table).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

from libs.logs import get_logger
from libs.stream.consumer import Strategy, StreamConsumer
from libs.stream.deadletter import message_context
from libs.stream.offsets import Span

log = get_logger(__name__)

A = TypeVar("A")


class _Open(Generic[A]):
    """One partition's accumulator and the span of offsets it holds."""

    __slots__ = ("acc", "count", "created", "span")

    def __init__(self, acc: A, span: Span) -> None:
        self.acc = acc
        self.span = span
        self.count = 0
        self.created = time.monotonic()


class Batches(Strategy, Generic[A]):
    def __init__(
        self,
        *,
        max_messages: int,
        max_age_s: float,
        start: Callable[[int, int], A],  # (partition, first offset) -> an empty accumulator
        add: Callable[[A, Any], str | None],  # fold a message in; the reason when it is bad
        step: Callable[[list[A]], Coroutine[Any, Any, None]],
        retry_on: tuple[type[BaseException], ...] = (),
        on_refused: Callable[[BaseException | None], None] = lambda exc: None,
        on_accepted: Callable[[], None] = lambda: None,
        close_tries: int = 3,
    ) -> None:
        self.max_messages = max_messages
        self.max_age_s = max_age_s
        self._start = start
        self._add = add
        self._step = step
        self.retry_on = retry_on
        self.on_refused = on_refused  # called on every refused step (log, metrics)
        self.on_accepted = on_accepted  # called after a step went in
        self.close_tries = close_tries
        self._reset()

    def bind(self, member: StreamConsumer) -> None:
        super().bind(member)
        self._reset()

    def _reset(self) -> None:
        self.open: dict[int, _Open[A]] = {}
        self.held = 0  # messages in `open`
        self.running: asyncio.Task[None] | None = None
        self.running_batches: list[_Open[A]] = []
        self.failed: list[_Open[A]] = []  # refused, retried first
        self.refusing = False
        self.retry_at = 0.0
        self.retry_delay = 0.2
        self._lock = asyncio.Lock()  # a rebalance callback may flush while the loop is between awaits

    # ---- reading -------------------------------------------------------------------------------
    async def submit(self, message: Any) -> None:
        await self.submit_many([message])

    async def submit_many(self, messages: list[Any]) -> None:
        """Fold the messages in without an await each: only a bad one awaits (its dead letter)."""
        if not messages:
            return
        partition = messages[0].partition
        batch = self.open.get(partition)
        if batch is None:
            batch = self.open[partition] = _Open(
                self._start(partition, messages[0].offset), self.offsets.open(partition, messages[0].offset)
            )
        letters = self.member.dead_letters
        guard = letters is not None and letters.guard is not None
        add, acc = self._add, batch.acc
        for message in messages:
            reason = add(acc, message)
            if reason is not None:
                assert letters is not None, "a strategy that finds bad messages needs dead letters"
                batch.span.last = message.offset  # the dead letter is sent before the batch is stored
                await letters.send(message, reason)
            elif guard:
                letters.good(message)  # type: ignore[union-attr]
        batch.span.last = messages[-1].offset
        batch.count += len(messages)
        self.held += len(messages)

    def poll_timeout_ms(self) -> int:
        if self.running is not None:  # come back soon to start the next step once this one is done
            return 20
        if self.failed:  # refused: wait for the next retry instead of spinning
            return max(0, min(200, int((self.retry_at - time.monotonic()) * 1000)))
        if not self.open:
            return 200
        left = self.max_age_s - (time.monotonic() - min(b.created for b in self.open.values()))
        return max(0, min(200, int(left * 1000)))

    def saturated(self) -> bool:
        return self.running is not None and self.held >= self.max_messages

    async def progress(self, timeout: float) -> None:
        if self.running is not None:
            await asyncio.wait({self.running}, timeout=timeout)

    def paused(self) -> bool:
        return bool(self.failed)

    def _due(self) -> bool:
        return bool(self.open) and (
            self.member.draining
            or self.held >= self.max_messages
            or time.monotonic() - min(b.created for b in self.open.values()) >= self.max_age_s
        )

    # ---- steps ---------------------------------------------------------------------------------
    async def poll(self) -> None:
        await self._reap()
        if self.running is not None or time.monotonic() < self.retry_at:
            return
        if self.failed:  # exactly the batches that were refused, before any later one
            batches, self.failed = self.failed, []
        elif self._due():
            batches = list(self.open.values())
            self.open = {}
            self.held = 0
        else:
            return
        self._launch(batches)

    def _launch(self, batches: list[_Open[A]]) -> None:
        self.running = asyncio.create_task(self._step([b.acc for b in batches]), name="stream:step")
        self.running_batches = batches

    async def _reap(self, wait: bool = False) -> None:
        """Account for the step in flight once it is over: finish its offsets, or keep it to retry."""
        task = self.running
        if task is None or (not wait and not task.done()):
            return
        if wait:
            with contextlib.suppress(BaseException):  # its outcome is examined below
                await asyncio.shield(task)
        if self.running is not task:  # accounted for by a concurrent caller (a rebalance callback)
            return
        self.running = None
        batches, self.running_batches = self.running_batches, []
        exc = task.exception() if not task.cancelled() else None
        if exc is None and not task.cancelled():
            for batch in batches:
                self.offsets.finish(batch.span)
            self.member.commit_now = True
            if self.refusing:
                log.info("the step's dependency accepts work again; partitions resumed", topic=self.member.topic)
            self.refusing = False
            self.retry_delay = 0.2
            self.retry_at = 0.0
            self.on_accepted()
            return
        if exc is not None and not isinstance(exc, self.retry_on):
            raise exc
        self.failed = batches + self.failed
        if not self.refusing:  # log once per outage, not per retry
            log.error("the step was refused; partitions paused until it goes in", topic=self.member.topic,
                      error=str(exc)[:300])
        self.refusing = True
        self.retry_at = time.monotonic() + self.retry_delay
        self.retry_delay = min(self.retry_delay * 2, 10.0)
        self.on_refused(exc)

    async def _flush(self, partitions: set[int] | None = None) -> bool:
        """Run, in order, everything held for `partitions` (default all): the step in flight, the
        refused batches, the filling ones. False if the step was refused."""
        async with self._lock:
            await self._reap(wait=True)
            held = self.failed + sorted(self.open.values(), key=lambda b: b.span.partition)
            batches = [b for b in held if partitions is None or b.span.partition in partitions]
            self.failed = [b for b in self.failed if b not in batches]
            for b in batches:
                if self.open.get(b.span.partition) is b:
                    del self.open[b.span.partition]
                    self.held -= b.count
            if not batches:
                return True
            self._launch(batches)
            await self._reap(wait=True)
            return not any(b in batches for b in self.failed)

    async def revoke(self, partitions: set[int]) -> None:
        """The step in flight finishes (it is one call); what the revoked partitions hold is stored
        too if the dependency takes it, else dropped: the new owner reads it again from the last
        commit, and the step must absorb a repeat (the aggregator's dedup tokens)."""
        if not await self._flush(partitions):
            self.failed = [b for b in self.failed if b.span.partition not in partitions]

    async def close(self) -> None:
        for _ in range(self.close_tries):
            try:
                if await self._flush():
                    return
            except Exception as exc:  # noqa: BLE001 - stopping goes on; uncommitted work is read again
                log.warning("last flush failed", error=repr(exc))
                return
            await asyncio.sleep(0.5)

    def pending_firsts(self) -> list[tuple[int, int]]:
        """(partition, first offset) of every batch not stored yet."""
        return [(b.span.partition, b.span.first) for b in (*self.failed, *self.running_batches, *self.open.values())]


class Concurrent(Strategy):
    def __init__(self, handle: Callable[[Any], Awaitable[None]], max_in_flight: int) -> None:
        self.handle = handle
        self.max_in_flight = max_in_flight
        self.tasks: dict[asyncio.Task[None], Span] = {}

    async def submit(self, message: Any) -> None:
        span = self.offsets.open(message.partition, message.offset)
        with message_context(message):  # the task copies the context: its logs carry the request id
            task = asyncio.create_task(self._run(message, span))
        self.tasks[task] = span

    async def _run(self, message: Any, span: Span) -> None:
        try:
            await self.handle(message)
        except Exception as exc:  # a bug must not stall the partition forever
            log.error("message handling failed", error=repr(exc), exc_info=exc)
            if self.member.dead_letters is None:
                raise
            await self.member.dead_letters.send(message, f"unexpected error: {exc!r}")
        finally:
            self.tasks.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
        self.offsets.finish(span)

    def paused(self) -> bool:
        return len(self.tasks) >= self.max_in_flight

    async def revoke(self, partitions: set[int]) -> None:
        """Work of revoked partitions is not cut off (a mail half-sent stays whole); it is no longer
        committed by this member (the skeleton forgets the partitions' spans)."""

    async def close(self) -> None:
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Apply(Strategy):
    def __init__(self, apply: Callable[[Any], None]) -> None:
        self.apply = apply

    async def submit(self, message: Any) -> None:
        self.apply(message)
        self.offsets.finish(self.offsets.open(message.partition, message.offset))
