"""Auth service: users, passwords, JWT sessions, apps and API keys (Postgres). Port 8002."""

from __future__ import annotations

from pathlib import Path

from libs.migrations import apply_postgres
from libs.ratelimit import RateLimiter
from libs.runtime import Runtime, ServiceParts, ServiceSpec

MIGRATIONS = Path(__file__).parent / "migrations" / "postgres"


def build(runtime: Runtime) -> ServiceParts:
    from services.auth.reports import build_reports_router
    from services.auth.router import build_routers
    from services.auth.service import AuthService

    holder: dict[str, AuthService] = {}

    def service() -> AuthService:
        return holder["svc"]

    async def start() -> None:
        pg = await runtime.pg()
        await apply_postgres(pg, "auth", MIGRATIONS)
        assert runtime.settings.redis_url
        svc = AuthService(
            runtime.settings, pg, await runtime.producer(), await runtime.redis(),
            RateLimiter(runtime.settings.redis_url, "auth"),
        )
        holder["svc"] = svc
        await svc.republish_all_keys()

    async def key_checks() -> None:
        await service().run_key_checks()

    routers = [*build_routers(runtime.settings, service), build_reports_router(runtime.settings, service)]
    return ServiceParts(routers=routers, on_start=[start], background=[key_checks])


SERVICE = ServiceSpec(
    name="auth",
    port=8002,
    needs=frozenset({"postgres", "kafka", "redis"}),
    build=build,
    description="users, JWT sessions, apps and API keys",
)


async def migrate(runtime: Runtime) -> list[str]:
    return await apply_postgres(await runtime.pg(), "auth", MIGRATIONS)
