"""Notifier: consumes email topics and sends mail over SMTP. Port 8005 (health and metrics only)."""

from __future__ import annotations

from libs.runtime import Runtime, ServiceParts, ServiceSpec


def build(runtime: Runtime) -> ServiceParts:
    from services.notifier.consumer import EmailConsumer
    from services.notifier.mailer import SmtpTarget

    state: dict[str, EmailConsumer] = {}

    async def start() -> None:
        state["consumer"] = EmailConsumer(runtime.settings, await runtime.producer(), await runtime.redis())

    async def consume() -> None:
        await state["consumer"].run()

    async def smtp_reachable() -> bool:
        import asyncio

        target = SmtpTarget.from_url(runtime.settings.smtp_url or "smtp://localhost")
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(target.host, target.port), 2)
        except (OSError, TimeoutError):
            return False
        writer.close()
        return True

    return ServiceParts(on_start=[start], background=[consume], checks={"smtp": smtp_reachable})


SERVICE = ServiceSpec(
    name="notifier",
    port=8005,
    needs=frozenset({"kafka", "redis", "smtp"}),
    build=build,
    description="email topics to SMTP",
)
