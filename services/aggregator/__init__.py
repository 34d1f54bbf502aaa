"""Aggregator: a Kafka consumer group that writes events to ClickHouse in batches. Port 8004."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from libs.clickhouse import ClickHouse
from libs.clickhouse.migrate import migrate_clickhouse
from libs.kafka import AGGREGATOR_GROUP, EVENTS_TOPIC, Drained
from libs.runtime import Runtime, ServiceParts, ServiceSpec

if TYPE_CHECKING:
    from services.aggregator.consumer import EventConsumer
    from services.aggregator.versions import DataVersions

NAME = "aggregator"


async def migrate(runtime: Runtime, ch: ClickHouse | None = None) -> list[str]:
    """The events tables it writes (libs/clickhouse/migrations)."""
    return await migrate_clickhouse(ch or await runtime.clickhouse(), runtime.settings)


@dataclass(frozen=True)
class Aggregator:
    consumer: EventConsumer
    versions: DataVersions


def build(runtime: Runtime, topic: str = EVENTS_TOPIC, group_id: str = AGGREGATOR_GROUP) -> ServiceParts:
    """The aggregator reading `topic` as a member of `group_id` (tests and benchmarks pass their own)."""
    from services.aggregator.consumer import EventConsumer
    from services.aggregator.versions import DataVersions

    def started() -> Aggregator | None:
        return runtime.contexts.find(NAME, Aggregator)

    async def start() -> None:
        ch = await runtime.clickhouse()
        await migrate(runtime, ch)
        # Redis is not reached here (the client connects on first use): the aggregator starts without it.
        versions = DataVersions(await runtime.redis())
        consumer = EventConsumer(runtime.settings, ch, await runtime.producer(), topic=topic, group_id=group_id,
                                 versions=versions)
        runtime.contexts.set(NAME, Aggregator(consumer, versions))

    async def consume() -> None:
        await runtime.contexts.get(NAME, Aggregator).consumer.run()

    async def stop() -> None:
        if (agg := started()) is not None:
            await agg.versions.close()

    async def drain(timeout: float) -> Drained | None:
        return await agg.consumer.drain(timeout) if (agg := started()) is not None else None

    async def owns_partitions() -> bool:
        return (agg := started()) is not None and agg.consumer.ready

    return ServiceParts(
        on_start=[start], on_stop=[stop], background=[consume], drains=[drain], checks={"aggregator": owns_partitions}
    )


def service(topic: str = EVENTS_TOPIC, group_id: str = AGGREGATOR_GROUP) -> ServiceSpec:
    """The aggregator's spec; one reading a topic and group of its own is isolated from `SERVICE`'s."""
    return ServiceSpec(
        name=NAME,
        port=8004,
        # Redis: the apps' data versions that keep the query cache fresh. Not a readiness need: storing
        # events goes on while Redis is down (the bumps are retried), so an outage must not take it out.
        needs=frozenset({"kafka", "clickhouse", "redis"}),
        ready_needs=frozenset({"kafka", "clickhouse"}),
        build=functools.partial(build, topic=topic, group_id=group_id),
        description="Kafka consumer group writing events to ClickHouse",
    )


SERVICE = service()
