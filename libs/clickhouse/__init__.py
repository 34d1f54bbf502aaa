"""One ClickHouse interface, two adapters running the same SQL.

* `HttpClickHouse`: a ClickHouse server through clickhouse-connect (`CLICKHOUSE_URL` set).
* `ChdbClickHouse`: the ClickHouse engine in this process through chDB (embedded default).

Both take SQL with `{name:Type}` placeholders and a dict of values, which the engine binds (values are
never formatted into the SQL text), and both read results as JSONEachRow so rows come back as the
same Python dicts from either engine.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

import orjson

from libs.clickhouse.schema import Schema, check_identifier
from libs.settings import Settings

# Same output from a server and from chDB, whatever their version's defaults are.
OUTPUT_SETTINGS: dict[str, Any] = {
    "output_format_json_quote_64bit_integers": 0,
    "output_format_json_quote_64bit_floats": 0,
    "output_format_json_quote_decimals": 0,
    "date_time_output_format": "iso",
    "date_time_input_format": "best_effort",
    # Rows carry fields of the event contract that a table does not store (e.g. metric_value on events).
    "input_format_skip_unknown_fields": 1,
    # `{"a": {"b": 1}, "a.b": 2}` names the path a.b twice for the `properties` JSON column: keep the first
    # rather than refuse the whole insert (which would hold up every event behind it). The exact
    # properties are in properties_json, which every read returns.
    "type_json_skip_duplicated_paths": 1,
}

_TOKEN_RE = re.compile(r"^[A-Za-z0-9_.:\-]{1,200}$")


class ClickHouseError(RuntimeError):
    """The engine rejected a statement (bad SQL, missing table, refused write)."""


class ClickHouseUnavailable(ClickHouseError):
    """The engine cannot be reached."""


class ClickHouse(Protocol):
    database: str
    kind: str
    schema: Schema  # one server or a cluster: which table stores the rows, ON CLUSTER (libs/clickhouse/schema.py)

    async def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Rows as dicts. Raises ClickHouseUnavailable when the engine is down."""

    async def command(self, sql: str, params: dict[str, Any] | None = None) -> None:
        """Run a statement that returns nothing (DDL, mutations)."""

    async def insert_rows(
        self, table: str, rows: Sequence[bytes], *, dedup_token: str | None = None
    ) -> None:
        """Insert JSONEachRow lines (already serialized) in one block.

        With `dedup_token`, ClickHouse drops a repeat of the same block (insert deduplication), so a
        retried batch is stored once.
        """

    async def ping(self) -> bool: ...

    async def close(self) -> None: ...


def check_token(token: str) -> str:
    if not _TOKEN_RE.match(token):
        raise ValueError(f"bad dedup token: {token!r}")
    return token


def parse_rows(raw: bytes) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in raw.splitlines() if line]


def database_from_url(url: str | None) -> str:
    if url:
        path = urlsplit(url).path.strip("/")
        if path:
            return check_identifier(unquote(path))
    return "analytics"


async def connect_clickhouse(settings: Settings) -> ClickHouse:
    """The server adapter when CLICKHOUSE_URL is set, else the embedded chDB one."""
    if settings.clickhouse_url:
        from libs.clickhouse.http import HttpClickHouse

        return await HttpClickHouse.connect(settings.clickhouse_url, cluster=settings.clickhouse_cluster)
    from libs.clickhouse.embedded import ChdbClickHouse

    return await ChdbClickHouse.open(settings.data_dir / "clickhouse")
