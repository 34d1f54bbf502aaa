"""Backing services from testcontainers, when asked for (ANALYTICS_TEST_DOCKER=1) and Docker answers."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from libs.settings import Settings


def docker_wanted() -> bool:
    return os.environ.get("ANALYTICS_TEST_DOCKER") == "1"


def docker_available() -> tuple[bool, str]:
    if not docker_wanted():
        return False, "set ANALYTICS_TEST_DOCKER=1 (and run a Docker engine) to use containers"
    try:
        import docker

        docker.from_env().ping()
    except Exception as exc:
        return False, f"ANALYTICS_TEST_DOCKER=1 but no Docker engine answers: {exc}"
    return True, ""


@contextlib.contextmanager
def docker_engines(settings: Settings) -> Iterator[Settings]:
    """`settings` with containers for every URL not set, or unchanged without Docker."""
    ok, _ = docker_available()
    if not ok:
        yield settings
        return
    from testcontainers.clickhouse import ClickHouseContainer
    from testcontainers.kafka import KafkaContainer
    from testcontainers.postgres import PostgresContainer
    from testcontainers.redis import RedisContainer

    with contextlib.ExitStack() as stack:
        update: dict[str, str] = {}
        if not settings.database_url:
            pg = stack.enter_context(PostgresContainer("postgres:16-alpine"))
            update["database_url"] = pg.get_connection_url().replace("+psycopg2", "")
        if not settings.redis_url:
            rd = stack.enter_context(RedisContainer("redis:7-alpine"))
            update["redis_url"] = f"redis://{rd.get_container_host_ip()}:{rd.get_exposed_port(6379)}/0"
        if not settings.kafka_bootstrap_servers:
            kf = stack.enter_context(KafkaContainer("confluentinc/cp-kafka:7.6.1").with_kraft())
            update["kafka_bootstrap_servers"] = kf.get_bootstrap_server()
        if not settings.clickhouse_url:
            ch = stack.enter_context(ClickHouseContainer("clickhouse/clickhouse-server:25.3"))
            update["clickhouse_url"] = (
                f"http://{ch.username}:{ch.password}@{ch.get_container_host_ip()}:{ch.get_exposed_port(8123)}/analytics"
            )
        yield settings.model_copy(update=update)
