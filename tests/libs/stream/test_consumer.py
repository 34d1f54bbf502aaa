"""The stream skeleton (libs/stream) on the real embedded Kafka: commits by watermark, backpressure by
pausing, rebalances between two members of one group, and the one dead-letter shape."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from libs.contracts import DeadLetter
from libs.kafka import ensure_topics, make_consumer
from libs.logs import request_id_var
from libs.runtime import Stack
from libs.settings import Settings
from libs.stream import Concurrent, ConsumerSpec, DeadLetters, StreamConsumer, dead_letter_record
from tests.conftest import eventually
from tests.services.aggregator.test_aggregator import committed

pytestmark = pytest.mark.engines


async def own_topic(settings: Settings, partitions: int) -> str:
    topic = f"test.stream.{uuid.uuid4().hex[:8]}"
    await ensure_topics(settings.model_copy(update={"kafka_partitions": partitions}), (topic,))
    return topic


@pytest.fixture
async def producer(stack: Stack) -> AIOKafkaProducer:
    return await stack.runtime.producer()


class Gate:
    """A handler whose messages finish only when the test opens their offset's gate."""

    def __init__(self) -> None:
        self.started: list[tuple[int, int]] = []  # (partition, offset), in the order handled
        self.gates: dict[tuple[int, int], asyncio.Event] = {}
        self.open_all = False

    def gate(self, partition: int, offset: int) -> asyncio.Event:
        return self.gates.setdefault((partition, offset), asyncio.Event())

    async def handle(self, message: Any) -> None:
        self.started.append((message.partition, message.offset))
        if not self.open_all:
            await self.gate(message.partition, message.offset).wait()


@contextlib.asynccontextmanager
async def running(member: StreamConsumer) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(member.run())
    try:
        await asyncio.wait_for(member.assigned.wait(), 30)
        yield task
    finally:
        member.stop()
        await asyncio.wait_for(task, 15)


async def one_partition(settings: Settings) -> tuple[str, str, Gate]:
    """A topic of one partition, a group of its own, and a gated handler."""
    topic = await own_topic(settings, 1)
    return topic, f"g-{topic}", Gate()


async def send(producer: AIOKafkaProducer, topic: str, n: int, partition: int = 0) -> None:
    for i in range(n):
        await producer.send(topic, orjson.dumps({"i": i}), key=b"k", partition=partition)
    await producer.flush()


async def test_offsets_are_committed_up_to_the_longest_finished_prefix_when_work_finishes_out_of_order(
    stack: Stack, producer: AIOKafkaProducer
) -> None:
    topic, group, work = await one_partition(stack.settings)
    member = StreamConsumer(stack.settings, ConsumerSpec(topic, group, Concurrent(work.handle, 10), commit_interval_s=0))
    await send(producer, topic, 5)
    async with running(member):
        await eventually(lambda: asyncio.sleep(0, len(work.started) == 5), 10, f"handled {work.started}")

        async def committed_is(offset: int | None) -> bool:
            await asyncio.sleep(0.3)  # a few loop turns, each of which may commit
            return (await committed(stack.settings, group, topic)).get(0) == offset

        for offset in (3, 2, 4):  # later work finishes first: nothing may be committed
            work.gate(0, offset).set()
        assert await committed_is(None)
        work.gate(0, 0).set()
        await eventually(lambda: committed_is(1), 5, "offset 0 done: commit 1")
        work.gate(0, 1).set()
        await eventually(lambda: committed_is(5), 5, "0..4 done: commit 5")


async def test_a_saturated_consumer_pauses_its_partitions_and_resumes_when_work_finishes(
    stack: Stack, producer: AIOKafkaProducer
) -> None:
    topic, group, work = await one_partition(stack.settings)
    spec = ConsumerSpec(topic, group, Concurrent(work.handle, 2), commit_interval_s=0,
                        client_options={"max_poll_records": 1})
    member = StreamConsumer(stack.settings, spec)
    await send(producer, topic, 10)
    async with running(member):
        await eventually(lambda: asyncio.sleep(0, len(work.started) == 2), 10, f"handled {work.started}")
        await asyncio.sleep(1)
        assert len(work.started) == 2  # nothing more was read while two are in flight
        assert member.consumer is not None
        assert member.consumer.paused() == {TopicPartition(topic, 0)}
        work.open_all = True
        for event in list(work.gates.values()):
            event.set()

        async def all_done() -> bool:
            return (await committed(stack.settings, group, topic)).get(0) == 10

        await eventually(all_done, 10, f"not all committed; handled {work.started}")
        assert member.consumer.paused() == set()
        assert sorted(work.started) == [(0, i) for i in range(10)]  # each message handled once


async def test_a_rebalance_commits_what_the_old_owner_finished_and_never_its_late_work(
    stack: Stack, producer: AIOKafkaProducer
) -> None:
    """Member A finished offsets 0..2 of each partition and still works on 3 when B joins: the
    partition that moves starts at 3 with B (done work is not redone, unfinished work is), and A's
    late finish of 3 commits nothing over B's progress."""
    topic = await own_topic(stack.settings, 2)
    group = f"g-{topic}"
    settings = stack.settings.model_copy(update={"aggregator_session_timeout_ms": 3000})
    options = {"session_timeout_ms": 3000, "heartbeat_interval_ms": 500}
    a_work, b_work = Gate(), Gate()
    for p in (0, 1):
        for offset in (0, 1, 2, 4, 5):
            a_work.gate(p, offset).set()
    b_work.open_all = True
    a = StreamConsumer(settings, ConsumerSpec(topic, group, Concurrent(a_work.handle, 10), commit_interval_s=0,
                                              client_options=options))
    b = StreamConsumer(settings, ConsumerSpec(topic, group, Concurrent(b_work.handle, 10), commit_interval_s=0,
                                              client_options=options))
    for p in (0, 1):
        await send(producer, topic, 6, partition=p)
    async with running(a):
        await eventually(lambda: asyncio.sleep(0, len(a_work.started) == 12), 10, f"A handled {a_work.started}")

        async def at_three() -> bool:
            return await committed(settings, group, topic) == {0: 3, 1: 3}

        await eventually(at_three, 5, "A commits 0..2 of each partition")
        async with running(b):
            assert b.consumer is not None and a.consumer is not None
            moved = {tp.partition for tp in b.consumer.assignment()}
            assert len(moved) == 1 and moved.isdisjoint(tp.partition for tp in a.consumer.assignment())
            (p,) = moved
            await send(producer, topic, 4, partition=p)  # offsets 6..9

            async def b_done() -> bool:
                return (await committed(settings, group, topic)).get(p) == 10

            await eventually(b_done, 15, f"B did not finish the moved partition: {b_work.started}")
            assert [o for q, o in b_work.started if q == p] == list(range(3, 10))  # from A's commit, once each
            for q in (0, 1):
                a_work.gate(q, 3).set()  # A's late work finishes, on the moved partition too
            await asyncio.sleep(1)
            assert (await committed(settings, group, topic))[p] == 10  # A committed nothing over B
            kept = 1 - p

            async def a_done() -> bool:
                return (await committed(settings, group, topic)).get(kept) == 6

            await eventually(a_done, 5, "A commits the partition it kept once its work finished")


async def test_every_dead_letter_has_one_shape_the_key_and_the_request_id_of_its_message(
    stack: Stack, producer: AIOKafkaProducer
) -> None:
    topic, dlq = await own_topic(stack.settings, 1), await own_topic(stack.settings, 1)
    await producer.send_and_wait(topic, b'{"to": "x"}', key=b"app-1", headers=[("request_id", b"req-42")])
    await producer.send_and_wait(topic, b"{not json", key=b"app-1", headers=[("request_id", b"req-43")])
    reader = make_consumer(stack.settings, group_id=None)
    await reader.start()
    try:
        reader.subscribe([topic, dlq])
        originals: list[Any] = []
        while len(originals) < 2:
            originals += [m for ms in (await reader.getmany(timeout_ms=500)).values() for m in ms]
        letters = DeadLetters(producer, dlq)
        letters.group = "the-group"
        outside = request_id_var.get()
        for message in originals:
            await letters.send(message, "refused", extra_field=1)
        assert request_id_var.get() == outside
        records: list[Any] = []
        while len(records) < 2:
            records += [m for ms in (await reader.getmany(timeout_ms=500)).values() for m in ms if m.topic == dlq]
    finally:
        await reader.stop()
    for record, original, rid in zip(records, originals, (b"req-42", b"req-43"), strict=True):
        body = orjson.loads(record.value)
        DeadLetter.model_validate(body)
        assert record.key == b"app-1" and dict(record.headers)["request_id"] == rid
        assert (body["reason"], body["group"], body["extra_field"]) == ("refused", "the-group", 1)
        assert (body["topic"], body["partition"], body["offset"]) == (topic, 0, original.offset)
        assert body["timestamp_ms"] == original.timestamp and body["failed_at"]
    assert orjson.loads(records[0].value)["original"] == {"to": "x"}
    assert orjson.loads(records[1].value)["original"] == "{not json"
    assert dead_letter_record(originals[1], "r", None)["original"] == "{not json"
