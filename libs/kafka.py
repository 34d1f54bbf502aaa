"""Kafka helpers on aiokafka: the topic contract, topic creation, producer and consumer set-up.

Tansu (the embedded broker) does not support the idempotent producer, so it stays off everywhere;
exactly-once storage is the consumers' job (see the aggregator's writer).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError, for_code
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from libs.logs import get_logger, kafka_headers
from libs.settings import Settings

log = get_logger(__name__)

EVENTS_TOPIC = "analytics.events.v1"
EVENTS_DLQ_TOPIC = "analytics.events.dlq.v1"
API_KEYS_TOPIC = "auth.api-keys.v1"
APPS_TOPIC = "auth.apps.v1"
EMAIL_TOPIC = "notifications.email.v1"
EMAIL_DLQ_TOPIC = "notifications.email.dlq.v1"
REPORT_SUBSCRIPTIONS_TOPIC = "auth.report-subscriptions.v1"
REPORT_RUNS_TOPIC = "query.report-runs.v1"
ALERTS_TOPIC = "auth.alerts.v1"
ALERT_FIRINGS_TOPIC = "query.alert-firings.v1"
APP_DELETIONS_TOPIC = "auth.app-deletions.v1"
ALL_TOPICS = (EVENTS_TOPIC, EVENTS_DLQ_TOPIC, API_KEYS_TOPIC, APPS_TOPIC, EMAIL_TOPIC, EMAIL_DLQ_TOPIC,
              REPORT_SUBSCRIPTIONS_TOPIC, REPORT_RUNS_TOPIC, APP_DELETIONS_TOPIC, ALERTS_TOPIC, ALERT_FIRINGS_TOPIC)
# Keyed state, each record the whole state of its key: compacted, only the latest per key matters. The
# key topic is the key state itself (no database behind it for gateways and query).
COMPACTED_TOPICS = frozenset({API_KEYS_TOPIC, APPS_TOPIC, REPORT_SUBSCRIPTIONS_TOPIC, REPORT_RUNS_TOPIC, APP_DELETIONS_TOPIC,
                              ALERTS_TOPIC})
TOPIC_CONFIGS: dict[str, dict[str, str]] = {t: {"cleanup.policy": "compact"} for t in COMPACTED_TOPICS}
# The consumer groups that commit offsets (deploy/k8s's KEDA trigger reads the aggregator's lag).
AGGREGATOR_GROUP = "aggregator"
NOTIFIER_GROUP = "notifier"
REPORT_RUNS_GROUP = "auth-report-runs"
REPORT_SUBSCRIPTIONS_GROUP = "query-report-subscriptions"
APP_DELETIONS_GROUP = "query-app-deletions"
ALERTS_GROUP = "query-alerts"  # the query service folds auth's alerts into its own table
ALERT_FIRINGS_GROUP = "auth-alert-firings"  # auth mails and delivers (webhooks) the query service's firings
WEBHOOK_KEY_EVENTS_GROUP = "auth-webhook-key-events"  # auth turns key changes into webhook deliveries
# The topic each of them reads: `analytics status` shows these groups even while no member runs.
GROUP_TOPICS = {
    AGGREGATOR_GROUP: EVENTS_TOPIC,
    NOTIFIER_GROUP: EMAIL_TOPIC,
    REPORT_RUNS_GROUP: REPORT_RUNS_TOPIC,
    REPORT_SUBSCRIPTIONS_GROUP: REPORT_SUBSCRIPTIONS_TOPIC,
    APP_DELETIONS_GROUP: APP_DELETIONS_TOPIC,
    ALERTS_GROUP: ALERTS_TOPIC,
    ALERT_FIRINGS_GROUP: ALERT_FIRINGS_TOPIC,
    WEBHOOK_KEY_EVENTS_GROUP: API_KEYS_TOPIC,
}


class KafkaUnavailable(RuntimeError):
    """The broker did not acknowledge in time."""


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=str)


async def ensure_topics(settings: Settings, topics: tuple[str, ...] = ALL_TOPICS, timeout: float = 60) -> None:
    """Create the topics that do not exist yet, waiting for the broker to come up."""
    assert settings.kafka_bootstrap_servers
    async for attempt in AsyncRetrying(
        stop=stop_after_delay(timeout),
        wait=wait_exponential(multiplier=0.2, max=3),
        retry=retry_if_exception_type((KafkaConnectionError, KafkaError, OSError)),
        reraise=True,
    ):
        with attempt:
            admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
            await admin.start()
            try:
                existing = set(await admin.list_topics())
                new = [
                    NewTopic(t, settings.kafka_partitions, settings.kafka_replication_factor,
                             topic_configs=TOPIC_CONFIGS.get(t, {}))
                    for t in topics
                    if t not in existing
                ]
                if new:
                    # another service may create the same topics at the same moment
                    with contextlib.suppress(TopicAlreadyExistsError):
                        await admin.create_topics(new)
                    log.info("kafka topics created", topics=[t.name for t in new])
            finally:
                await admin.close()


def make_producer(settings: Settings, **overrides: Any) -> AIOKafkaProducer:
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "acks": "all",
        "enable_idempotence": False,
        "linger_ms": 0,  # batches still form while a request is in flight; waiting only adds latency
        "request_timeout_ms": 5000,
        "max_batch_size": 1 << 20,
        "compression_type": None,
    }
    options.update(overrides)
    return AIOKafkaProducer(**options)


async def publish(
    producer: AIOKafkaProducer,
    topic: str,
    value: Any,
    key: str | None = None,
    timeout: float = 5.0,
) -> Any:
    """Send one message and wait for the broker's acknowledgement (acks=all); returns its
    RecordMetadata (partition, offset). A `value` of None is a tombstone (a null value: on a compacted
    topic, the key is gone).

    Raises KafkaUnavailable when the broker does not acknowledge within `timeout` seconds.
    """
    payload = value if value is None or isinstance(value, bytes) else dumps(value)
    try:
        fut = await asyncio.wait_for(
            producer.send(topic, payload, key=key.encode() if key else None, headers=kafka_headers()),
            timeout,
        )
        return await asyncio.wait_for(fut, timeout)
    except (TimeoutError, KafkaError) as exc:
        raise KafkaUnavailable(f"Kafka did not acknowledge a message to {topic}: {exc!r}") from exc


def make_consumer(settings: Settings, *topics: str, group_id: str | None, **overrides: Any) -> AIOKafkaConsumer:
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "fetch_max_wait_ms": 100,
        "max_poll_records": 5000,
    }
    options.update(overrides)
    return AIOKafkaConsumer(*topics, **options)


async def kafka_ping(settings: Settings) -> bool:
    """True when the broker answers a metadata request."""
    from libs.stream.produce import broker_answers

    return await broker_answers(settings.kafka_bootstrap_servers or "")


@dataclass(frozen=True)
class MemberDescription:
    """One member of a consumer group, as the group coordinator describes it."""

    member_id: str
    client_id: str
    host: str
    topics: list[str]  # subscribed; empty when the broker does not say (Tansu)
    assignment: dict[str, list[int]]  # topic -> partitions; empty when the broker does not say (Tansu)


@dataclass(frozen=True)
class GroupDescription:
    group: str
    state: str  # Stable, PreparingRebalance, CompletingRebalance, Empty, Dead
    members: list[MemberDescription]


async def describe_groups(
    settings: Settings, groups: Iterable[str] = (), listed: bool = True, timeout: float = 10
) -> list[GroupDescription]:
    """`groups` and (with `listed`) every group the broker lists (ListGroups), each described
    (DescribeGroups: state and members), sorted by name. One group per request: the embedded broker
    (Tansu) garbles the answer about a second group of one request and closes the connection."""
    from libs.stream.produce import decode_member

    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers, request_timeout_ms=int(timeout * 1000))
    await asyncio.wait_for(admin.start(), timeout)
    try:
        names = set(groups)
        if listed:
            names.update(str(group) for group, *_ in await asyncio.wait_for(admin.list_consumer_groups(), timeout))
        described = []
        for group in sorted(names):
            (response,) = await asyncio.wait_for(admin.describe_consumer_groups([group]), timeout)
            for answer in response.to_object()["groups"]:
                members = []
                for m in answer["members"]:
                    topics, assignment = decode_member(m["member_metadata"], m["member_assignment"])
                    members.append(MemberDescription(m["member_id"], m["client_id"], m["client_host"], topics, assignment))
                state = answer["state"] or "unknown"
                if answer["error_code"]:
                    state = f"not described ({for_code(answer['error_code']).__name__})"
                described.append(GroupDescription(answer["group"] or group, state, members))
        return described
    finally:
        await admin.close()


# ---- what a consumer group has not done yet, and draining a member before it stops ---------------


@contextlib.asynccontextmanager
async def group_reader(settings: Settings, group: str) -> AsyncIterator[AIOKafkaConsumer]:
    """A client that reads `group`'s committed offsets and the topics' ends without joining the group."""
    reader = make_consumer(settings, group_id=group)
    await reader.start()
    try:
        yield reader
    finally:
        from libs.stream.produce import stop_consumer

        await stop_consumer(reader)


async def topic_partitions(reader: AIOKafkaConsumer, topic: str) -> list[TopicPartition]:
    partitions = reader.partitions_for_topic(topic)
    if not partitions:
        await reader.topics()  # a fresh client knows no topics until it asks
        partitions = reader.partitions_for_topic(topic) or set()
    return [TopicPartition(topic, p) for p in sorted(partitions)]


async def end_offsets(reader: AIOKafkaConsumer, tps: list[TopicPartition], timeout: float = 5) -> dict[TopicPartition, int]:
    """The offset the next message of each partition will get, from a fetch's high watermark: the
    embedded broker (Tansu) answers ListOffsets(latest) with the start of the log's last record
    batch plus one, not with the end of the log. (`reader` is assigned `tps` for that.)"""
    listed = await reader.end_offsets(tps)
    reader.assign(tps)  # a fresh assignment: no high watermark known from an earlier call
    for tp in tps:
        reader.seek(tp, max(0, listed[tp] - 1))
    deadline = time.monotonic() + timeout
    while any(reader.highwater(tp) is None for tp in tps) and time.monotonic() < deadline:
        await reader.getmany(*tps, timeout_ms=100)
    return {tp: max(listed[tp], reader.highwater(tp) or 0) for tp in tps}


async def backlog(reader: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> dict[TopicPartition, int]:
    """Per partition, the messages before `ends` that the reader's group has not committed (stored,
    sent): from its committed offset, or from the log's start where it never committed."""
    if not ends:
        return {}
    starts = await reader.beginning_offsets(list(ends))
    done = await committed_offsets(reader, list(ends))
    return {tp: max(0, end - max(done[tp] or 0, starts.get(tp, 0))) for tp, end in ends.items()}


async def committed_offsets(reader: AIOKafkaConsumer, tps: list[TopicPartition]) -> dict[TopicPartition, int | None]:
    """The reader's group's committed offset of each partition (None: it never committed there). One
    OffsetFetch per partition, as aiokafka's `committed()` does: the admin client's
    list_consumer_group_offsets breaks the connection to the embedded broker (Tansu)."""
    return {tp: await reader.committed(tp) for tp in tps}


async def group_backlog(reader: AIOKafkaConsumer, topic: str) -> int:
    """Messages on `topic`, up to its current end, that the reader's group has not committed."""
    tps = await topic_partitions(reader, topic)
    return sum((await backlog(reader, await end_offsets(reader, tps) if tps else {})).values())


@dataclass(frozen=True)
class Drained:
    """What a consumer did when asked to finish its work before stopping."""

    service: str
    noun: str  # what it handles, as a log line counts it: "acknowledged events", "queued mails"
    done: str  # what finishing one means: "stored in ClickHouse", "sent"
    drained: int  # handled between the stop signal and leaving the group
    at_risk: int  # on the topic before its end at stop, and not handled when the member stopped
    seconds: float
    timeout: float


class GroupMember:
    """A consumer-group member that can be drained: the subclass consumes in `_run()` (returning soon
    after `stop()`), sets `assigned` when the group gives it partitions and clears it when they are
    revoked; `run()` keeps `finished` and `assigned` true to the end."""

    drain_labels: ClassVar[tuple[str, str, str]]  # service, noun, done: see Drained
    settings: Settings
    topic: str
    group_id: str
    consumer: AIOKafkaConsumer | None

    def __init__(self) -> None:
        self.assigned = asyncio.Event()  # set while it owns its partitions (group joined, assignment received)
        self.finished = asyncio.Event()  # set once run() has returned (its last commit made, group left)
        self.draining = False  # set when drain() begins

    async def run(self) -> None:
        self.finished.clear()  # a job restarted after a failure (libs.runtime) runs again
        try:
            await self._run()
        finally:
            self.assigned.clear()
            self.finished.set()

    async def _run(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    async def drain(self, timeout: float) -> Drained:
        """Handle every message up to the partitions' end offsets (read now), then stop; gives up
        after `timeout` seconds and reports what it could not handle (`drain_member`)."""
        self.draining = True
        return await drain_member(self, timeout, *self.drain_labels)


async def drain_member(member: GroupMember, timeout: float, service: str, noun: str, done: str) -> Drained:
    """Let `member` handle every message up to its partitions' end offsets, read now, then stop it.

    Progress is the group's committed offsets (a member commits only what it stored or sent), read
    by a client of its own. The member is stopped when they reach the ends, or at `timeout`; what
    is still uncommitted after it stopped is reported `at_risk`. A member that never got its
    partitions is measured against the whole topic."""
    start = time.monotonic()
    deadline = start + timeout
    async with group_reader(member.settings, member.group_id) as reader:
        await _first_set((member.assigned, member.finished), timeout)
        if member.assigned.is_set() and member.consumer is not None:
            tps = list(member.consumer.assignment())  # may be none: more members than partitions
        else:
            tps = await topic_partitions(reader, member.topic)
        ends = await end_offsets(reader, tps) if tps else {}
        before = left = sum((await backlog(reader, ends)).values())
        while left and time.monotonic() < deadline and not member.finished.is_set():
            await asyncio.sleep(0.05)
            left = sum((await backlog(reader, ends)).values())
        member.stop()
        # It still flushes and commits what it holds: give it a little past the deadline for that.
        await _first_set((member.finished,), max(0.0, deadline - time.monotonic()) + 10)
        with contextlib.suppress(KafkaError, OSError, TimeoutError):  # else: the last count stands
            left = sum((await asyncio.wait_for(backlog(reader, ends), 10)).values())
    return Drained(service, noun, done, max(0, before - left), left, time.monotonic() - start, timeout)


async def _first_set(events: Iterable[asyncio.Event], timeout: float) -> None:
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()
