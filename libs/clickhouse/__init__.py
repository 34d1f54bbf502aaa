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
    """The engine rejected a statement for a reason of ours (bad SQL, missing table, refused write): a
    bug, answered 500. `code` is ClickHouse's numeric error code when there is one."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class ClickHouseUnavailable(ClickHouseError):
    """The engine cannot answer now (unreachable, not running, overloaded, out of time or memory):
    answered 503 with Retry-After."""


class ClickHouseRejected(ClickHouseError):
    """The engine refused a value the client sent (cannot parse it, out of range, too large): answered
    422. `name` is ClickHouse's name of the error."""

    @property
    def name(self) -> str:
        return CLIENT_CODES.get(self.code or 0, "BAD_ARGUMENTS")


# ClickHouse's error codes (src/Common/ErrorCodes.cpp; `SELECT errorCodeToName(n)`), the same from a
# server and from chDB. An outage: retry later.
OUTAGE_CODES = {
    159: "TIMEOUT_EXCEEDED", 160: "TOO_SLOW", 198: "DNS_ERROR", 202: "TOO_MANY_SIMULTANEOUS_QUERIES",
    203: "NO_FREE_CONNECTION", 209: "SOCKET_TIMEOUT", 210: "NETWORK_ERROR", 236: "ABORTED",
    241: "MEMORY_LIMIT_EXCEEDED", 242: "TABLE_IS_READ_ONLY", 252: "TOO_MANY_PARTS", 279: "ALL_CONNECTION_TRIES_FAILED",
    285: "TOO_FEW_LIVE_REPLICAS", 319: "UNKNOWN_STATUS_OF_INSERT", 394: "QUERY_WAS_CANCELLED",
    439: "CANNOT_SCHEDULE_TASK", 745: "SERVER_OVERLOADED", 749: "TCP_CONNECTION_LIMIT_REACHED", 999: "KEEPER_EXCEPTION",
}
# A value of the request that ClickHouse will not take (every value is a bound parameter).
CLIENT_CODES = {
    6: "CANNOT_PARSE_TEXT", 25: "CANNOT_PARSE_ESCAPE_SEQUENCE", 26: "CANNOT_PARSE_QUOTED_STRING",
    27: "CANNOT_PARSE_INPUT_ASSERTION_FAILED", 36: "BAD_ARGUMENTS", 38: "CANNOT_PARSE_DATE", 41: "CANNOT_PARSE_DATETIME",
    43: "ILLEGAL_TYPE_OF_ARGUMENT", 69: "ARGUMENT_OUT_OF_BOUND", 70: "CANNOT_CONVERT_TYPE", 72: "CANNOT_PARSE_NUMBER",
    128: "TOO_LARGE_ARRAY_SIZE", 131: "TOO_LARGE_STRING_SIZE", 158: "TOO_MANY_ROWS", 307: "TOO_MANY_BYTES",
    321: "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE", 396: "TOO_MANY_ROWS_OR_BYTES", 407: "DECIMAL_OVERFLOW",
    457: "BAD_QUERY_PARAMETER",
}
_CODE_RE = re.compile(r"Code: (\d+)\.")


def from_code(code: int | None, message: str) -> ClickHouseError:
    """The exception for an error the engine answered, by ClickHouse's error code (read from the
    message when not given): ClickHouseUnavailable, ClickHouseRejected, else ClickHouseError. Both
    adapters classify through here, so one error means the same status whichever engine answers."""
    if code is None:
        found = _CODE_RE.search(message)
        code = int(found.group(1)) if found else None
    if code in OUTAGE_CODES:
        return ClickHouseUnavailable(message, code)
    if code in CLIENT_CODES:
        return ClickHouseRejected(message, code)
    return ClickHouseError(message, code)


class ClickHouse(Protocol):
    database: str
    kind: str
    schema: Schema  # one server or a cluster: which table stores the rows, ON CLUSTER (libs/clickhouse/schema.py)

    async def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Rows as dicts. Raises ClickHouseUnavailable when the engine is down, ClickHouseRejected when it
        refuses a bound value, ClickHouseError otherwise."""

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
