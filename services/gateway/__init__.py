"""Ingest gateway: validates API keys and events, enriches them, publishes to Kafka. Port 8001."""

from __future__ import annotations

from libs.apikeys import shared_key_table, stop_shared_key_table
from libs.ratelimit import RateLimiter
from libs.runtime import Runtime, ServiceParts, ServiceSpec


def build(runtime: Runtime) -> ServiceParts:
    from services.gateway.router import build_routers
    from services.gateway.service import Ingestor, Publisher

    state: dict[str, Ingestor] = {}

    def ingestor() -> Ingestor:
        return state["ingestor"]

    async def start() -> None:
        producer = await runtime.producer()
        settings = runtime.settings
        await runtime.redis()  # readiness reports whether the rate-limit store answers
        limiter = RateLimiter(settings.redis_url, "ingest") if settings.redis_url else None
        state["ingestor"] = Ingestor(settings, await shared_key_table(runtime), Publisher(lambda: producer), limiter)

    async def stop() -> None:
        await stop_shared_key_table(runtime)

    async def key_table_loaded() -> bool:
        return "ingestor" in state and state["ingestor"].keys.ready.is_set()

    return ServiceParts(
        routers=build_routers(ingestor),
        on_start=[start],
        on_stop=[stop],
        checks={"api_key_table": key_table_loaded},
    )


SERVICE = ServiceSpec(
    name="gateway",
    port=8001,
    needs=frozenset({"kafka", "postgres", "redis"}),
    build=build,
    description="API-key checks, event validation and enrichment, publishing to Kafka",
)
