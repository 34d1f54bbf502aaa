"""Notifier: consumes email topics and sends mail over SMTP. Port 8005 (health and metrics only)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from libs.kafka import EMAIL_TOPIC, NOTIFIER_GROUP, Drained
from libs.runtime import Runtime, ServiceParts, ServiceSpec

if TYPE_CHECKING:
    from services.notifier.consumer import EmailConsumer

NAME = "notifier"


def build(
    runtime: Runtime, topic: str = EMAIL_TOPIC, group_id: str = NOTIFIER_GROUP,
    consumer_class: type[EmailConsumer] | None = None,
) -> ServiceParts:
    """The notifier reading `topic` as a member of `group_id` with `consumer_class` (default
    `EmailConsumer`); tests pass their own."""
    from services.notifier.consumer import EmailConsumer
    from services.notifier.mailer import SmtpTarget, smtp_ping

    settings = runtime.settings
    make_consumer = consumer_class or EmailConsumer

    async def start() -> None:
        producer = await runtime.producer()
        runtime.contexts.set(NAME, make_consumer(settings, producer, await runtime.redis(), group_id=group_id, topic=topic))

    async def consume() -> None:
        await runtime.contexts.get(NAME, EmailConsumer).run()

    async def drain(timeout: float) -> Drained | None:
        consumer = runtime.contexts.find(NAME, EmailConsumer)
        return await consumer.drain(timeout) if consumer is not None else None

    async def smtp_reachable() -> bool:
        return await smtp_ping(SmtpTarget.from_settings(settings))

    return ServiceParts(on_start=[start], background=[consume], drains=[drain], checks={"smtp": smtp_reachable})


def service(
    topic: str = EMAIL_TOPIC, group_id: str = NOTIFIER_GROUP, consumer_class: type[EmailConsumer] | None = None
) -> ServiceSpec:
    """The notifier's spec; one reading a topic and group of its own is isolated from `SERVICE`'s."""
    return ServiceSpec(
        name=NAME,
        port=8005,
        needs=frozenset({"kafka", "redis", "smtp"}),
        build=functools.partial(build, topic=topic, group_id=group_id, consumer_class=consumer_class),
        description="email topics to SMTP",
    )


SERVICE = service()
