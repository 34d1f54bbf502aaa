# ruff: noqa: S608 - SQL from fixed fragments only; every value is a bind parameter
"""`format=csv` on the reads: one layer that turns a route's JSON answer, or a stream of rows, into CSV.

Every `/api/analytics` router takes `format=json|csv` (context.analytics_router). A route has a CSV
form when its OpenAPI answer declares `text/csv` (schemas.answer does for the reads); `format=csv`
elsewhere is a 422. The answer the route computed (cached as JSON, as always) is then written as CSV
by `csv_response`: its table is the first list of rows in the answer (`results`, `events`, `steps`,
`cohorts`, `paths`, ...), or its rows by name (`results` of stats/aggregate: one row per metric), or
else the answer itself as one row; nested objects become dotted columns (`deviceData.mobile`), lists
of values numbered ones (`retained.0`). The raw events of a range stream from ClickHouse in batches
(keyset pagination on timestamp and event id), `events_csv`.

Written by the stdlib csv writer (quoted when needed, `\\r\\n` rows, UTF-8). A text cell that a
spreadsheet would read as a formula (starting with `=`, `+`, `-`, `@`, a tab or a carriage return) is
prefixed with `'`, as OWASP advises for CSV injection. At most `query_csv_max_rows` rows (1,000,000 by
default); beyond them a last line `# row cap of N rows reached; ...` says the export was cut.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import AsyncIterator, Iterable, Iterator
from contextvars import ContextVar
from typing import Annotated, Any, Literal

import orjson
from fastapi import Query, Request
from fastapi.responses import StreamingResponse

from libs.clickhouse import ClickHouse
from libs.http import ApiError
from services.query.queries import EVENT_COLUMNS, Where

Format = Literal["json", "csv"]
MEDIA_TYPE = "text/csv; charset=utf-8"
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
BATCH = 5000
# The columns of EVENT_COLUMNS, in its order (properties: the JSON text as sent).
EVENT_FIELDS = [
    "event_id", "type", "event_name", "event_category", "source", "source_kind", "user_id", "anonymous_id",
    "session_id", "url", "path", "referrer", "referrer_host", "utm_source", "utm_medium", "utm_campaign",
    "device_type", "browser", "os", "screen_size", "country", "ip", "properties", "timestamp", "received_at", "is_bot",
]

_csv: ContextVar[tuple[str, int] | None] = ContextVar("csv", default=None)  # (file name, row cap)

CSV_CONTENT: dict[str, Any] = {"text/csv": {
    "schema": {"type": "string"},
    "example": "page,visitors,pageviews\r\n/pricing,12,30\r\n",
}}


def _declares_csv(route: Any) -> bool:
    answer = (getattr(route, "responses", None) or {}).get(200) or {}
    return "text/csv" in (answer.get("content") or {})


FormatParam = Annotated[Format, Query(description="json (default), or csv: the answer's rows as CSV, streamed")]


def choose(request: Request, format: Format, cap: int) -> None:
    """Remember, for `wants_csv`, whether this request asked for CSV, its file name and the row cap."""
    if format != "csv":
        _csv.set(None)
        return
    route = request.scope.get("route")
    if route is not None and not _declares_csv(route):
        raise ApiError(422, "this endpoint has no CSV form; leave format out (or send format=json)")
    stem = request.url.path.removeprefix("/api/analytics/").strip("/").replace("/", "-") or "export"
    _csv.set((re.sub(r"[^A-Za-z0-9._-]", "_", stem) + ".csv", cap))


def wants_csv() -> bool:
    return _csv.get() is not None


def _cap() -> int:
    chosen = _csv.get()
    return chosen[1] if chosen else 0


def safe(value: Any) -> Any:
    """The cell of a value: text a spreadsheet would run as a formula gets a leading `'`."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return value
    if isinstance(value, dict | list):
        value = orjson.dumps(value).decode()
    text = str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict) and value:
        for key, inner in value.items():
            _flatten(inner, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(value, list) and not any(isinstance(v, dict | list) for v in value):
        for n, inner in enumerate(value):
            out[f"{prefix}.{n}"] = inner
    else:
        out[prefix or "value"] = value


def table(answer: Any) -> list[dict[str, Any]]:
    """The rows of a JSON answer (see the module's docstring), each flattened."""
    rows: list[Any] | None = None
    if isinstance(answer, list):
        rows = answer
    elif isinstance(answer, dict):
        for value in answer.values():
            if isinstance(value, list) and all(isinstance(v, dict) for v in value):
                rows = value
                break
        if rows is None:
            for value in answer.values():
                if isinstance(value, dict) and value and all(isinstance(v, dict) for v in value.values()):
                    rows = [{"name": k, **v} for k, v in value.items()]
                    break
    if rows is None:
        rows = [answer]
    flat: list[dict[str, Any]] = []
    for row in rows:
        out: dict[str, Any] = {}
        _flatten(row, "", out)
        flat.append(out)
    return flat


class _Writer:
    """CSV lines, encoded, with the row cap."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.rows = 0
        self.buffer = io.StringIO()
        self.writer = csv.writer(self.buffer, lineterminator="\r\n")

    def line(self, cells: Iterable[Any]) -> bytes:
        self.writer.writerow([safe(c) for c in cells])
        text = self.buffer.getvalue()
        self.buffer.seek(0)
        self.buffer.truncate()
        return text.encode()

    def row(self, cells: Iterable[Any]) -> bytes | None:
        """The row's line, or None once the cap is reached (then `capped` is the last line)."""
        if self.rows >= self.cap:
            return None
        self.rows += 1
        return self.line(cells)

    def capped(self) -> bytes:
        return (f"# row cap of {self.cap} rows reached; ask for a shorter range or fewer rows "
                f"(QUERY_CSV_MAX_ROWS)\r\n").encode()


def _answer_lines(answer: Any, cap: int) -> Iterator[bytes]:
    rows = table(answer)
    header: dict[str, None] = {}
    for row in rows:
        header.update(dict.fromkeys(row))
    writer = _Writer(cap)
    if not header:
        return
    yield writer.line(header)
    for row in rows:
        line = writer.row(row.get(k) for k in header)
        if line is None:
            yield writer.capped()
            return
        yield line


def _headers(extra: dict[str, str] | None = None) -> dict[str, str]:
    chosen = _csv.get()
    name = chosen[0] if chosen else "export.csv"
    return {"Content-Disposition": f'attachment; filename="{name}"', "X-Row-Cap": str(_cap()),
            "Cache-Control": "no-store", **(extra or {})}


def csv_response(body: bytes, headers: dict[str, str] | None = None) -> StreamingResponse:
    """A route's JSON answer (as the cache holds it), as CSV."""
    return StreamingResponse(_answer_lines(orjson.loads(body), _cap()), media_type=MEDIA_TYPE, headers=_headers(headers))


async def _event_lines(ch: ClickHouse, where: Where, cap: int) -> AsyncIterator[bytes]:
    writer = _Writer(cap)
    yield writer.line(EVENT_FIELDS)
    after_ts, after_id = "1900-01-01 00:00:00.000", ""  # the timestamp column's first day
    while True:
        rows = await ch.query(
            f"""SELECT {EVENT_COLUMNS}, formatDateTime(timestamp, '%Y-%m-%d %H:%i:%S.%f', 'UTC') AS _cursor
                FROM events FINAL
                WHERE {where.sql()} AND (timestamp, event_id) > (toDateTime64({{after_ts:String}}, 3, 'UTC'), {{after_id:String}})
                ORDER BY timestamp, event_id LIMIT {{batch:UInt32}}""",
            {**where.params, "after_ts": after_ts, "after_id": after_id, "batch": BATCH},
        )
        for row in rows:
            line = writer.row(row.get(k) for k in EVENT_FIELDS)
            if line is None:
                yield writer.capped()
                return
            yield line
        if len(rows) < BATCH:
            return
        after_ts, after_id = rows[-1]["_cursor"][:23], rows[-1]["event_id"]


def events_csv(ch: ClickHouse, where: Where) -> StreamingResponse:
    """Every event of `where`, oldest first, streamed as CSV (properties as their JSON text)."""
    return StreamingResponse(_event_lines(ch, where, _cap()), media_type=MEDIA_TYPE, headers=_headers({"X-Cache": "MISS"}))
