"""libs/stream/produce.py, the one module on aiokafka's internals: what it produces is what aiokafka's
own producer would (partition, key, value, headers), read back from the real broker, and it refuses
an aiokafka outside the range it was tested with."""

from __future__ import annotations

import asyncio
import re
import tomllib
import uuid
from pathlib import Path
from typing import Any

import aiokafka
import pytest

from libs.kafka import describe_groups, ensure_topics, make_consumer
from libs.runtime import Stack
from libs.settings import Settings
from libs.stream.produce import (
    TESTED_AIOKAFKA,
    CoalescingPublisher,
    check_aiokafka_version,
    decode_member,
    group_member_id,
    stop_consumer,
)

ROOT = Path(__file__).resolve().parents[3]


def test_the_installed_aiokafka_is_in_the_tested_range_and_pyproject_bounds_it_the_same() -> None:
    check_aiokafka_version()
    spec = next(d for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
                if d.startswith("aiokafka"))
    low, high = TESTED_AIOKAFKA
    assert spec == f"aiokafka>={low[0]}.{low[1]},<{high[0]}.{high[1]}", spec


@pytest.mark.parametrize("version", ["0.13.1", "0.15.0", "1.0.0"])
def test_an_aiokafka_outside_the_tested_range_fails_saying_what_to_do(version: str) -> None:
    with pytest.raises(RuntimeError) as refused:
        check_aiokafka_version(version)
    message = str(refused.value)
    assert f"aiokafka {version} is installed" in message
    assert "tests/libs/stream/test_produce.py" in message and "pyproject.toml" in message


@pytest.mark.engines
async def test_coalesced_batches_read_back_as_aiokafkas_producer_would_have_written_them(stack: Stack) -> None:
    settings = stack.settings.model_copy(update={"kafka_partitions": 3})
    topic = f"test.produce.{uuid.uuid4().hex[:8]}"
    await ensure_topics(settings, (topic,))
    producer = await stack.runtime.producer()
    publisher = CoalescingPublisher(lambda: producer, topic, ack_timeout_s=5)
    await publisher.ensure_metadata()
    sent: dict[bytes, list[bytes]] = {}
    waiters: list[asyncio.Future[None]] = []
    try:
        for i in range(12):
            key = f"app-{i % 4}".encode()
            values = [f'{{"n": {i}, "part": {j}}}'.encode() for j in range(3)]
            sent.setdefault(key, []).extend(values)
            waiters += publisher.append(publisher.partition(key), key, values, [("request_id", f"r{i}".encode())])
        await asyncio.wait_for(asyncio.gather(*waiters), 10)
        # aiokafka's own producer, same keys: the partition it picks is the one the publisher picked.
        reference = {key: (await (await producer.send(topic, b"ref", key=key))).partition for key in sent}
    finally:
        await publisher.close()

    reader = make_consumer(settings, group_id=None)
    await reader.start()
    got: list[Any] = []
    try:
        reader.subscribe([topic])
        while len(got) < 36 + len(sent):
            batch = await asyncio.wait_for(reader.getmany(timeout_ms=500), 10)
            got += [m for msgs in batch.values() for m in msgs]
    finally:
        await reader.stop()
    for key, values in sent.items():
        mine = [m for m in got if m.key == key and m.value != b"ref"]
        assert [m.value for m in mine] == values  # in order, none lost, none doubled
        assert {m.partition for m in mine} == {reference[key]} == {publisher.partition(key)}
        assert all(re.fullmatch(r"r\d+", dict(m.headers)["request_id"].decode()) for m in mine)
        assert [dict(m.headers)["request_id"] for m in mine] == [
            f"r{i}".encode() for i in range(12) if f"app-{i % 4}".encode() == key for _ in range(3)]
    assert aiokafka.__version__


@pytest.mark.engines
async def test_a_group_members_id_is_the_one_the_broker_lists_and_a_consumer_without_a_group_has_none(
    engines: Settings,
) -> None:
    topic, group = f"test.member.{uuid.uuid4().hex[:8]}", f"g-member-{uuid.uuid4().hex[:8]}"
    await ensure_topics(engines, (topic,))
    member = make_consumer(engines, topic, group_id=group)
    loner = make_consumer(engines, group_id=None)
    await loner.start()
    try:
        assert group_member_id(member) is None  # not started, so not joined
        await member.start()
        while not member.assignment():
            await asyncio.wait_for(member.getmany(timeout_ms=100), 10)
        (described,) = [g for g in await describe_groups(engines, [group]) if g.group == group]
        assert [m.member_id for m in described.members] == [group_member_id(member)]
        assert group_member_id(member), group_member_id(member)
        assert group_member_id(loner) is None
    finally:
        await stop_consumer(member)
        await stop_consumer(loner)


def test_a_members_subscription_and_assignment_decode_as_aiokafka_encodes_them() -> None:
    from aiokafka.coordinator.protocol import ConsumerProtocolMemberAssignment, ConsumerProtocolMemberMetadata

    metadata = ConsumerProtocolMemberMetadata(0, ["b.topic", "a.topic"], b"").encode()
    assignment = ConsumerProtocolMemberAssignment(0, [("a.topic", [2, 0]), ("b.topic", [1])], b"").encode()
    assert decode_member(metadata, assignment) == (["a.topic", "b.topic"], {"a.topic": [0, 2], "b.topic": [1]})
    # What the embedded broker (Tansu) sends, and bytes of another protocol: nothing known.
    assert decode_member(b"", b"") == ([], {})
    assert decode_member(b"\x00\x01junk", b"\xff") == ([], {})
