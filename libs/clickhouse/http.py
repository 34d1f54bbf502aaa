"""ClickHouse server adapter (clickhouse-connect, HTTP interface)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import clickhouse_connect
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError

from libs.clickhouse import (
    OUTPUT_SETTINGS,
    ClickHouseError,
    ClickHouseUnavailable,
    Schema,
    check_identifier,
    check_token,
    database_from_url,
    from_code,
    parse_rows,
)


def classified(exc: DatabaseError) -> ClickHouseError:
    """clickhouse-connect's error as ours, by ClickHouse's error code (from the server's
    X-ClickHouse-Exception-Code header, else its message), as the embedded adapter classifies them.
    An OperationalError that is no refusal (no answer at all, or 5xx answers until the retries ran
    out) is an outage."""
    error = from_code(exc.code, str(exc))
    if isinstance(exc, OperationalError) and type(error) is ClickHouseError:
        return ClickHouseUnavailable(str(exc), error.code)
    return error


class HttpClickHouse:
    kind = "clickhouse-server"

    def __init__(self, client: Any, schema: Schema) -> None:
        self._client = client
        self.schema = schema
        self.database = schema.database

    @classmethod
    async def connect(cls, url: str, cluster: str = "") -> HttpClickHouse:
        """A client of the server at `url`; with `cluster` (CLICKHOUSE_CLUSTER), of that cluster: the
        database is created on every node and the cluster-mode settings apply to every query."""
        parts = urlsplit(url)
        schema = Schema(database_from_url(url), cluster)
        try:
            # Connect to `default` first: the database may not exist before migrations run.
            client = await clickhouse_connect.get_async_client(
                host=parts.hostname or "localhost",
                port=parts.port or (8443 if parts.scheme == "https" else 8123),
                username=unquote(parts.username or "default"),
                password=unquote(parts.password or ""),
                secure=parts.scheme == "https",
                database="default",
                settings={**OUTPUT_SETTINGS, **schema.session_settings},
            )
            await client.command(f"CREATE DATABASE IF NOT EXISTS {schema.database}{schema.on_cluster}")
            client.database = schema.database
        except OperationalError as exc:
            raise ClickHouseUnavailable(f"ClickHouse at {parts.hostname}:{parts.port} is unreachable: {exc}") from exc
        return cls(client, schema)

    async def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        try:
            raw = await self._client.raw_query(sql, parameters=params or {}, fmt="JSONEachRow")
        except DatabaseError as exc:
            raise classified(exc) from exc
        return parse_rows(raw)

    async def command(self, sql: str, params: dict[str, Any] | None = None) -> None:
        try:
            await self._client.command(sql, parameters=params or None)
        except DatabaseError as exc:
            raise classified(exc) from exc

    async def insert_rows(self, table: str, rows: Sequence[bytes], *, dedup_token: str | None = None) -> None:
        settings: dict[str, Any] = {}
        if dedup_token:
            settings["insert_deduplication_token"] = check_token(dedup_token)
        try:
            await self._client.raw_insert(
                check_identifier(table), insert_block=b"\n".join(rows), settings=settings, fmt="JSONEachRow"
            )
        except DatabaseError as exc:
            raise classified(exc) from exc

    async def ping(self) -> bool:
        try:
            return bool(await self._client.ping())
        except Exception:  # noqa: BLE001 - a ping answers yes or no
            return False

    async def close(self) -> None:
        await self._client.close()
