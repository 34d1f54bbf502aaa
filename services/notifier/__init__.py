"""Notifier: consumes email topics and sends mail over SMTP. Port 8005 (health and metrics only)."""

from __future__ import annotations

from libs.kafka import ALL_TOPICS, Drained, ensure_topics
from libs.runtime import Runtime, ServiceParts, ServiceSpec

NAME = "notifier"


def build(runtime: Runtime) -> ServiceParts:
    from services.notifier.consumer import EmailConsumer
    from services.notifier.mailer import SmtpTarget, smtp_ping

    settings = runtime.settings

    async def start() -> None:
        producer = await runtime.producer()
        if settings.notifier_topic not in ALL_TOPICS:
            await ensure_topics(settings, (settings.notifier_topic,))
        runtime.contexts.set(NAME, EmailConsumer(settings, producer, await runtime.redis()))

    async def consume() -> None:
        await runtime.contexts.get(NAME, EmailConsumer).run()

    async def drain(timeout: float) -> Drained | None:
        consumer = runtime.contexts.find(NAME, EmailConsumer)
        return await consumer.drain(timeout) if consumer is not None else None

    async def smtp_reachable() -> bool:
        return await smtp_ping(SmtpTarget.from_settings(settings))

    return ServiceParts(on_start=[start], background=[consume], drains=[drain], checks={"smtp": smtp_reachable})


SERVICE = ServiceSpec(
    name=NAME,
    port=8005,
    needs=frozenset({"kafka", "redis", "smtp"}),
    build=build,
    description="email topics to SMTP",
)
