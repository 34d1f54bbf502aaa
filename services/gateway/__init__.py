"""Ingest gateway: validates API keys and events, enriches them, publishes to Kafka. Port 8001."""

from __future__ import annotations

import asyncio
import functools

from libs.apikeys import shared_key_table, stop_shared_key_table
from libs.apps import shared_app_directory, stop_shared_app_directory
from libs.ratelimit import RateLimiter
from libs.runtime import Runtime, ServiceParts, ServiceSpec

NAME = "gateway"


def build(runtime: Runtime) -> ServiceParts:
    from services.gateway import static
    from services.gateway.enrich import geoip
    from services.gateway.fastpath import ANALYTICS_ROUTES, SEGMENT_PATHS, IngestFastPath
    from services.gateway.ratelimit import KeyRateLimiter
    from services.gateway.router import ROUTERS
    from services.gateway.service import MAX_REQUEST_BYTES, Ingestor, Publisher

    ingest_paths = sorted([*ANALYTICS_ROUTES, *SEGMENT_PATHS])
    ingestor = functools.partial(runtime.contexts.get, NAME, Ingestor)

    def started() -> Ingestor | None:
        return runtime.contexts.find(NAME, Ingestor)

    async def start() -> None:
        await asyncio.to_thread(geoip)  # the country database, loaded before the first event needs it
        producer = await runtime.producer()
        settings = runtime.settings
        await runtime.redis()  # readiness reports whether the rate-limit store answers
        shared = RateLimiter(settings.redis_url, "ingest") if settings.redis_url else None
        limiter = KeyRateLimiter(settings.ingest_rate_limit, shared)
        limiter.start()
        publisher = Publisher(lambda: producer)
        await publisher.batches.ensure_metadata()
        runtime.contexts.set(NAME, Ingestor(
            settings, await shared_key_table(runtime), publisher, limiter, await shared_app_directory(runtime),
        ))

    async def stop() -> None:
        gate = started()
        if gate is not None:
            await gate.publisher.batches.close()
            if gate.limiter is not None:
                await gate.limiter.stop()
        await stop_shared_key_table(runtime)
        await stop_shared_app_directory(runtime)

    async def key_table_loaded() -> bool:
        gate = started()
        return gate is not None and gate.keys.ready.is_set()

    async def stop_accepting() -> None:
        """Ingest answers 503 from now on; return once Kafka acknowledged (or refused) what it took,
        so that the topic's end offsets read next cover every event answered 202."""
        gate = started()
        if gate is not None:
            gate.draining = True
            await gate.publisher.batches.settled()

    return ServiceParts(
        routers=[*ROUTERS, static.router],
        on_start=[start],
        on_stop=[stop],
        stop_accepting=[stop_accepting],
        checks={"api_key_table": key_table_loaded},
        asgi_wrappers=[lambda app: IngestFastPath(app, ingestor)],
        body_limits=dict.fromkeys(ingest_paths, MAX_REQUEST_BYTES),  # the fast path's caps, for these routes behind it
        public_routes=[*(f"POST {path}" for path in ingest_paths), "GET /js/*", "HEAD /js/*"],
    )


SERVICE = ServiceSpec(
    name=NAME,
    port=8001,
    # Keys reach it over the key topic only (libs/apikeys.py); Redis down fails open: not a readiness need.
    needs=frozenset({"kafka", "redis"}),
    ready_needs=frozenset({"kafka"}),
    build=build,
    description="API-key checks, event validation and enrichment, publishing to Kafka",
    tags=(
        ("ingest", "send events and metrics with an app's write key (x-api-key); answered once Kafka has them"),
        ("segment", "Segment's HTTP Tracking API, for unmodified Segment and RudderStack SDKs"),
        ("snippet", "the tracking script websites embed"),
    ),
)
