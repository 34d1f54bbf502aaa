"""Aggregator: a Kafka consumer group that writes events to ClickHouse in batches. Port 8004."""

from __future__ import annotations

from typing import Any

from libs.clickhouse import ClickHouse
from libs.clickhouse.migrate import migrate_clickhouse
from libs.kafka import ALL_TOPICS, Drained, ensure_topics
from libs.runtime import Runtime, ServiceParts, ServiceSpec


async def migrate(runtime: Runtime, ch: ClickHouse | None = None) -> list[str]:
    """The events tables it writes (libs/clickhouse/migrations)."""
    return await migrate_clickhouse(ch or await runtime.clickhouse(), runtime.settings)


def build(runtime: Runtime) -> ServiceParts:
    from services.aggregator.consumer import EventConsumer
    from services.aggregator.versions import DataVersions

    state: dict[str, Any] = {}

    async def start() -> None:
        ch = await runtime.clickhouse()
        await migrate(runtime, ch)
        if runtime.settings.aggregator_topic not in ALL_TOPICS:
            await ensure_topics(runtime.settings, (runtime.settings.aggregator_topic,))
        # Redis is not reached here (the client connects on first use): the aggregator starts without it.
        state["versions"] = versions = DataVersions(await runtime.redis())
        state["consumer"] = EventConsumer(runtime.settings, ch, await runtime.producer(), versions=versions)

    async def consume() -> None:
        await state["consumer"].run()

    async def stop() -> None:
        if "versions" in state:
            await state["versions"].close()

    async def drain(timeout: float) -> Drained | None:
        return await state["consumer"].drain(timeout) if "consumer" in state else None

    async def owns_partitions() -> bool:
        return "consumer" in state and state["consumer"].ready

    return ServiceParts(
        on_start=[start], on_stop=[stop], background=[consume], drains=[drain], checks={"aggregator": owns_partitions}
    )


SERVICE = ServiceSpec(
    name="aggregator",
    port=8004,
    # Redis: the apps' data versions that keep the query cache fresh. Not a readiness need: storing
    # events goes on while Redis is down (the bumps are retried), so an outage must not take it out.
    needs=frozenset({"kafka", "clickhouse", "redis"}),
    ready_needs=frozenset({"kafka", "clickhouse"}),
    build=build,
    description="Kafka consumer group writing events to ClickHouse",
)
