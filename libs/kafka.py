"""Kafka helpers on aiokafka: the topic contract, topic creation, producer and consumer set-up.

Tansu (the embedded broker) does not support the idempotent producer, so it stays off everywhere;
exactly-once storage is the consumers' job (see the aggregator's writer).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential

from libs.logs import get_logger, kafka_headers
from libs.settings import Settings

log = get_logger(__name__)

EVENTS_TOPIC = "analytics.events.v1"
EVENTS_DLQ_TOPIC = "analytics.events.dlq.v1"
API_KEYS_TOPIC = "auth.api-keys.v1"
EMAIL_TOPIC = "notifications.email.v1"
EMAIL_DLQ_TOPIC = "notifications.email.dlq.v1"
ALL_TOPICS = (EVENTS_TOPIC, EVENTS_DLQ_TOPIC, API_KEYS_TOPIC, EMAIL_TOPIC, EMAIL_DLQ_TOPIC)


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
                    NewTopic(t, settings.kafka_partitions, settings.kafka_replication_factor)
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
) -> None:
    """Send one message and wait for the broker's acknowledgement (acks=all).

    Raises KafkaUnavailable when the broker does not acknowledge within `timeout` seconds.
    """
    payload = value if isinstance(value, bytes) else dumps(value)
    try:
        fut = await asyncio.wait_for(
            producer.send(topic, payload, key=key.encode() if key else None, headers=kafka_headers()),
            timeout,
        )
        await asyncio.wait_for(fut, timeout)
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
    from aiokafka.client import AIOKafkaClient

    client = AIOKafkaClient(bootstrap_servers=settings.kafka_bootstrap_servers, request_timeout_ms=2000)
    try:
        await asyncio.wait_for(client.bootstrap(), 3)
        return True
    except Exception:  # noqa: BLE001 - a ping answers yes or no
        return False
    finally:
        await client.close()
