"""Auth service: users, passwords, JWT sessions, apps and API keys (Postgres). Port 8002."""

from __future__ import annotations

from pathlib import Path

from libs.migrations import apply_postgres
from libs.outbound import release_outbound, shared_outbound
from libs.ratelimit import RateLimiter
from libs.runtime import Runtime, ServiceParts, ServiceSpec
from libs.stores import close_pg_pool, create_pg_pool

NAME = "auth"
MIGRATIONS = Path(__file__).parent / "migrations" / "postgres"


def build(runtime: Runtime) -> ServiceParts:
    from libs.clientip import TrustedProxies
    from services.auth.accounts import Accounts
    from services.auth.alerts import follow_alert_firings, republish_all_alerts
    from services.auth.alerts import router as alerts_router
    from services.auth.context import AuthContext
    from services.auth.jobs import KeyJobs
    from services.auth.keys import AppKeys
    from services.auth.oidc import OidcSignIn
    from services.auth.reports import follow_report_runs, republish_all_reports
    from services.auth.reports import router as reports_router
    from services.auth.router import ROUTERS
    from services.auth.shared_links import router as shared_links_router
    from services.auth.store import PG_STATEMENT_TIMEOUT_S
    from services.auth.teams import router as teams_router
    from services.auth.weather import pull_weather
    from services.auth.weather import router as weather_router
    from services.auth.webhooks import CONTEXT as WEBHOOKS
    from services.auth.webhooks import Webhooks
    from services.auth.webhooks import router as webhooks_router

    settings = runtime.settings

    def context() -> AuthContext:
        return runtime.contexts.get(NAME, AuthContext)

    async def start() -> None:
        await apply_postgres(await runtime.pg(), NAME, MIGRATIONS)
        assert settings.redis_url
        # A pool of its own whose statements time out soon (the shared one allows 10 s, for migrations
        # and bulk reads): a hung database answers a login with 503 in about a second.
        pg = await create_pg_pool(settings, command_timeout=PG_STATEMENT_TIMEOUT_S)
        connections = (settings, pg, await runtime.producer(), await runtime.redis(), RateLimiter(settings.redis_url, NAME))
        keys = AppKeys(*connections)
        accounts = Accounts(*connections)
        runtime.contexts.set(NAME, AuthContext(
            accounts=accounts, keys=keys, jobs=KeyJobs(keys), proxies=TrustedProxies(settings.trusted_proxies),
            oidc=OidcSignIn(accounts),
        ))
        # Webhook deliveries go out through the process's one pooled HTTP client (libs/outbound.py).
        runtime.contexts.set(WEBHOOKS, Webhooks(keys, await shared_outbound(runtime)))
        await keys.republish_all_keys()
        await keys.republish_all_apps()
        await republish_all_reports(keys)
        await republish_all_alerts(keys)

    async def stop() -> None:
        started = runtime.contexts.find(NAME, AuthContext)
        if started is not None:
            await close_pg_pool(started.keys.pg)
        if runtime.contexts.find(WEBHOOKS, Webhooks) is not None:
            await release_outbound(runtime)

    async def key_checks() -> None:
        await context().jobs.run_key_checks()

    async def report_runs() -> None:
        await follow_report_runs(context().keys)

    async def alert_firings() -> None:
        await follow_alert_firings(context().keys)

    async def weather() -> None:
        await pull_weather(context().keys, runtime.contexts.get(WEBHOOKS, Webhooks).outbound)

    async def webhook_deliveries() -> None:
        await runtime.contexts.get(WEBHOOKS, Webhooks).run()

    async def webhook_key_events() -> None:
        await runtime.contexts.get(WEBHOOKS, Webhooks).follow_key_events()

    return ServiceParts(
        routers=[*ROUTERS, reports_router, teams_router, shared_links_router, webhooks_router, alerts_router, weather_router],
        on_start=[start], on_stop=[stop],
        background=[key_checks, report_runs, webhook_deliveries, webhook_key_events, alert_firings,
                    weather],
        # A mail body may have 20,000 characters, each up to 12 bytes of JSON (an escaped surrogate pair).
        body_limits={"/api/email/notification": 256 * 1024},
    )


SERVICE = ServiceSpec(
    name=NAME,
    port=8002,
    needs=frozenset({"postgres", "kafka", "redis"}),
    build=build,
    description="users, JWT sessions, apps and API keys",
    tags=(
        ("account", "sign up, log in (a password, or an OpenID provider such as Google), refresh and end sessions "
                    "(Bearer JWTs), the signed-in user"),
        ("apps", "apps and their API keys: register, list, revoke, regenerate"),
        ("notifications", "emails to yourself"),
        ("reports", "daily or weekly summary emails of an app"),
        ("sharing", "read-only links to an app's stats that need no account"),
        ("teams", "teams sharing apps: members with roles (viewer, admin, owner), invitations by email"),
        ("webhooks", "an app's events POSTed, signed, to URLs of your own; their deliveries"),
        ("alerts", "email and webhook alerts on an app's metrics: thresholds and spikes"),
    ),
)


async def migrate(runtime: Runtime) -> list[str]:
    return await apply_postgres(await runtime.pg(), NAME, MIGRATIONS)
