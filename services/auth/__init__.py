"""Auth service: users, passwords, JWT sessions, apps and API keys (Postgres). Port 8002."""

from __future__ import annotations

from pathlib import Path

from libs.migrations import apply_postgres
from libs.ratelimit import RateLimiter
from libs.runtime import Runtime, ServiceParts, ServiceSpec
from libs.stores import close_pg_pool, create_pg_pool

MIGRATIONS = Path(__file__).parent / "migrations" / "postgres"


def build(runtime: Runtime) -> ServiceParts:
    from services.auth.reports import build_reports_router, follow_report_runs, republish_all_reports
    from services.auth.router import build_routers
    from services.auth.service import PG_STATEMENT_TIMEOUT_S, AuthService

    holder: dict[str, AuthService] = {}

    def service() -> AuthService:
        return holder["svc"]

    async def start() -> None:
        await apply_postgres(await runtime.pg(), "auth", MIGRATIONS)
        assert runtime.settings.redis_url
        # A pool of its own whose statements time out soon (the shared one allows 10 s, for migrations
        # and bulk reads): a hung database answers a login with 503 in about a second.
        pg = await create_pg_pool(runtime.settings, command_timeout=PG_STATEMENT_TIMEOUT_S)
        svc = AuthService(
            runtime.settings, pg, await runtime.producer(), await runtime.redis(),
            RateLimiter(runtime.settings.redis_url, "auth"),
        )
        holder["svc"] = svc
        await svc.republish_all_keys()
        await republish_all_reports(svc)

    async def stop() -> None:
        if "svc" in holder:
            await close_pg_pool(holder["svc"].pg)

    async def key_checks() -> None:
        await service().run_key_checks()

    async def report_runs() -> None:
        await follow_report_runs(service())

    routers = [*build_routers(runtime.settings, service), build_reports_router(runtime.settings, service)]
    return ServiceParts(
        routers=routers, on_start=[start], on_stop=[stop], background=[key_checks, report_runs],
        # A mail body may have 20,000 characters, each up to 12 bytes of JSON (an escaped surrogate pair).
        body_limits={"/api/email/notification": 256 * 1024},
    )


SERVICE = ServiceSpec(
    name="auth",
    port=8002,
    needs=frozenset({"postgres", "kafka", "redis"}),
    build=build,
    description="users, JWT sessions, apps and API keys",
)


async def migrate(runtime: Runtime) -> list[str]:
    return await apply_postgres(await runtime.pg(), "auth", MIGRATIONS)
