"""Ingest gateway: validates API keys and events, enriches them, publishes to Kafka. Port 8001."""

from __future__ import annotations

from libs.apikeys import KeyTable, shared_key_table, stop_shared_key_table
from libs.runtime import Runtime, ServiceParts, ServiceSpec


def build(runtime: Runtime) -> ServiceParts:
    from services.gateway.router import build_router
    from services.gateway.service import Publisher

    state: dict[str, object] = {}

    def keys() -> KeyTable:
        return state["keys"]  # type: ignore[return-value]

    def publisher() -> Publisher:
        return state["publisher"]  # type: ignore[return-value]

    async def start() -> None:
        producer = await runtime.producer()
        state["publisher"] = Publisher(lambda: producer)
        state["keys"] = await shared_key_table(runtime)

    async def stop() -> None:
        await stop_shared_key_table(runtime)

    async def key_table_loaded() -> bool:
        return "keys" in state and keys().ready.is_set()

    return ServiceParts(
        routers=[build_router(keys, publisher)],
        on_start=[start],
        on_stop=[stop],
        checks={"api_key_table": key_table_loaded},
    )


SERVICE = ServiceSpec(
    name="gateway",
    port=8001,
    needs=frozenset({"kafka", "postgres"}),
    build=build,
    description="API-key checks, event validation and enrichment, publishing to Kafka",
)
