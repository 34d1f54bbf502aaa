"""The key-state boundary: key state reaches gateways and query over the compacted key topic only."""

from __future__ import annotations

import asyncio
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from libs.apikeys import KeyTopicWatch
from libs.kafka import API_KEYS_TOPIC, ensure_topics, publish
from libs.runtime import Stack


def test_the_gateway_needs_no_postgres_for_its_keys() -> None:
    from services.gateway import SERVICE

    assert "postgres" not in SERVICE.needs


@pytest.mark.engines
async def test_the_key_topic_is_created_log_compacted(stack: Stack) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        described: Any = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, API_KEYS_TOPIC)])
    finally:
        await admin.close()
    configs = {entry[0]: entry[1] for response in described for resource in response.resources for entry in resource[4]}
    assert configs.get("cleanup.policy") == "compact", configs


@pytest.mark.engines
async def test_auth_finds_out_when_the_key_topic_lost_what_it_acknowledged(stack: Stack) -> None:
    producer = await stack.runtime.producer()
    topic = f"test.keys.{uuid.uuid4().hex[:8]}"
    await ensure_topics(stack.settings, (topic,))
    watch = KeyTopicWatch(stack.settings, topic)
    assert not await watch.emptied()  # nothing published yet: nothing to miss
    metadata = await publish(producer, topic, {"probe": True}, key="watch-probe")
    watch.note(metadata)
    assert not await watch.emptied()  # the topic holds what was acknowledged
    # As if the broker had been restarted without its log: it ends before what was acknowledged.
    watch.note(SimpleNamespace(partition=metadata.partition, offset=metadata.offset + 1_000_000))
    assert await watch.emptied()
    assert await watch.emptied()  # owed until every key was published again
    watch.republished()
    assert not await asyncio.wait_for(watch.emptied(), 10)
