"""The embedded ClickHouse served over ClickHouse's HTTP interface (`analytics infra`), driven by a real
clickhouse-connect client (sync and async) and by the project's own HttpClickHouse adapter.

The server runs as `analytics infra` runs it: a child process started by EmbeddedStack on a temporary
data dir, serving chDB's files there.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import clickhouse_connect
import httpx
import lz4.frame
import orjson
import pytest
from backports import zstd
from clickhouse_connect.driver.exceptions import DatabaseError

from libs.clickhouse import ClickHouseError, ClickHouseRejected
from libs.clickhouse.http import HttpClickHouse
from libs.clickhouse.migrate import MIGRATIONS, migrate_clickhouse
from libs.embedded import EmbeddedStack
from libs.embedded.procs import port_open
from libs.settings import Settings
from tests.e2e import ROOT

pytestmark = pytest.mark.engines

# The columns of the migrations' tables (libs/clickhouse/migrations), Native in and out.
COLUMNS = """
    app_id LowCardinality(String), event_id String, value Float64, tags Map(String, String),
    flags Array(LowCardinality(String)), is_bot Bool, schema_version UInt8, visitor UInt64,
    timestamp DateTime64(3, 'UTC'), properties JSON, inserted_at DateTime64(3, 'UTC') DEFAULT now64(3)
"""
NAMES = ["app_id", "event_id", "value", "tags", "flags", "is_bot", "schema_version", "visitor", "timestamp", "properties"]


def _row(i: int, app: str = "app") -> list[Any]:
    return [app, f"e{i}", i + 0.25, {"k": f"v{i}", "é": "ü\t\n"}, ["a", "b"][: i % 3], i % 2 == 0, i % 256,
            2**64 - 1 - i, datetime(2026, 1, 2, 3, 4, 5, (i % 1000) * 1000), {"a": {"b": i}, "s": "x"}]


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[EmbeddedStack, str]]:
    """`analytics infra`'s ClickHouse: EmbeddedStack's "clickhouse" role on a fresh data dir."""
    data = Path(tempfile.mkdtemp(prefix="chh-"))
    stack = EmbeddedStack.start(Settings(analytics_data_dir=data, clickhouse_url=None), ["clickhouse"])
    try:
        yield stack, stack.settings.clickhouse_url or ""
    finally:
        stack.stop()
        shutil.rmtree(data, ignore_errors=True)


@pytest.fixture(scope="module")
def url(served: tuple[EmbeddedStack, str]) -> str:
    return served[1]


def _client(url: str, **kwargs: Any) -> Any:
    parts = urlsplit(url)
    return clickhouse_connect.get_client(host=parts.hostname, port=parts.port, **kwargs)


async def _async_client(url: str, **kwargs: Any) -> Any:
    parts = urlsplit(url)
    return await clickhouse_connect.get_async_client(host=parts.hostname, port=parts.port, **kwargs)


def _db(client: Any) -> str:
    name = f"t_{uuid.uuid4().hex[:10]}"
    client.command(f"CREATE DATABASE {name}")
    return name


def test_infra_prints_the_url_of_the_analytics_database_and_stops_the_server(tmp_path: Path) -> None:
    stack = EmbeddedStack.start(Settings(analytics_data_dir=tmp_path, clickhouse_url=None), ["clickhouse"])
    try:
        [line] = stack.env_lines()
        assert line.startswith("export CLICKHOUSE_URL=http://127.0.0.1:") and line.endswith("/analytics")
        url = line.split("=", 1)[1]
        assert httpx.get(url.rsplit("/", 1)[0] + "/ping").text == "Ok.\n"
        client = _client(url)
        client.command("CREATE DATABASE analytics")
        client.command("CREATE TABLE analytics.kept (a String) ENGINE = MergeTree ORDER BY a")
        client.insert("analytics.kept", [["over http"]], column_names=["a"])
    finally:
        stack.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(url.rsplit("/", 1)[0] + "/ping")
    # The same chDB files as without infra: the in-process adapter (another process: chDB opens one data
    # dir per process) reads what was written over HTTP.
    read = subprocess.run(
        [sys.executable, "-c", "import asyncio, sys\n"
         "from pathlib import Path\nfrom libs.clickhouse.embedded import ChdbClickHouse\n"
         "async def main():\n    ch = await ChdbClickHouse.open(Path(sys.argv[1]))\n"
         "    print((await ch.query('SELECT a FROM kept'))[0]['a'])\n    await ch.close()\n"
         "asyncio.run(main())", str(tmp_path / "clickhouse")],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert read.stdout == "over http\n", read.stderr


def test_a_killed_server_is_restarted_on_the_same_url_with_its_data(tmp_path: Path) -> None:
    said: list[str] = []
    stack = EmbeddedStack.start(Settings(analytics_data_dir=tmp_path, clickhouse_url=None), ["clickhouse"])
    try:
        url = stack.settings.clickhouse_url or ""
        _client(url).command("CREATE TABLE default.kept (a UInt8) ENGINE = MergeTree ORDER BY a")
        _client(url).insert("default.kept", [[7]], column_names=["a"])
        stack.supervise(announce=said.append)
        [proc] = stack._procs
        assert proc.popen is not None
        proc.popen.kill()
        deadline = time.monotonic() + 60
        while not any("clickhouse died" in line for line in said) or not port_open(urlsplit(url).hostname or "", urlsplit(url).port or 0):
            assert time.monotonic() < deadline, f"not restarted: {said}"
            time.sleep(0.2)
        assert _client(url).command("SELECT sum(a) FROM default.kept") == 7
        assert "sessions" in said[-1]  # what a restart loses, said to the user
    finally:
        stack.stop()


def test_connect_probes_answer_as_a_server(url: str) -> None:
    client = _client(url)
    version = client.command("SELECT version()")
    assert client.server_version == version and version.split(".")[0].isdigit()
    assert client.command("SELECT timezone()") == "Etc/UTC"
    # The settings probe (system.settings): the client then sends what the server can take.
    assert client.get_client_setting("date_time_input_format") == "best_effort"
    assert client.get_client_setting("enable_http_compression") is None  # sent per request with Accept-Encoding
    assert client.ping()


async def test_async_client_connects_and_queries(url: str) -> None:
    client = await _async_client(url)
    try:
        assert (await client.query("SELECT 1 AS one, 'x' AS s")).result_rows == [(1, "x")]
        assert await client.command("SELECT timezone()") == "Etc/UTC"
    finally:
        await client.close()


def test_query_binds_parameters_on_the_server(url: str) -> None:
    client = _client(url)
    tricky = "tab\tnewline\nquote' backslash\\ brace{x} ünï"
    result = client.query("SELECT {x:UInt32} + 1 AS y, {s:String} AS s, {d:DateTime64(3)} AS d",
                          parameters={"x": 41, "s": tricky, "d": datetime(2026, 5, 6, 7, 8, 9, 123000)})
    assert result.result_rows == [(42, tricky, datetime(2026, 5, 6, 7, 8, 9, 123000))]
    # Past 4 KiB of parameters the client sends a multipart form instead of the URL.
    big = "z" * 5000 + "'\\"
    assert client.query("SELECT length({b:String}), {b:String} = {b2:String}",
                        parameters={"b": big, "b2": big}).result_rows == [(5002, True)]


def test_command_runs_ddl_and_returns_values(url: str) -> None:
    client = _client(url)
    db = _db(client)
    client.command(f"CREATE TABLE {db}.t (a UInt8) ENGINE = MergeTree ORDER BY a")
    assert client.command(f"EXISTS TABLE {db}.t") == 1
    assert client.command("SELECT 1, 'two'") == ["1", "two"]


@pytest.mark.parametrize("compress", [False, "lz4", "zstd", "gzip"])
def test_insert_native_with_the_projects_column_types(url: str, compress: bool | str) -> None:
    client = _client(url, compress=compress)
    db = _db(client)
    client.command(f"CREATE TABLE {db}.t ({COLUMNS}) ENGINE = ReplacingMergeTree(inserted_at) ORDER BY (app_id, event_id)")
    rows = [_row(i) for i in range(300)]
    summary = client.insert(f"{db}.t", rows, column_names=NAMES)
    assert summary.written_rows == 300
    got = client.query(f"SELECT {', '.join(NAMES)} FROM {db}.t ORDER BY toUInt32(substring(event_id, 2))").result_rows
    assert [list(r[:9]) for r in got] == [r[:9] for r in rows]
    assert [r[9] for r in got] == [r[9] for r in rows]
    assert client.command(f"SELECT countIf(inserted_at > now64(3) - 600) FROM {db}.t") == 300  # the DEFAULT filled


def test_responses_are_compressed_as_asked(url: str) -> None:
    base = url.rsplit("/", 1)[0]
    decoders = {"zstd": zstd.decompress, "lz4": lz4.frame.decompress, "gzip": gzip.decompress, "deflate": zlib.decompress}
    for encoding, decode in decoders.items():
        with httpx.stream("POST", base, params={"enable_http_compression": "1"}, content=b"SELECT number FROM numbers(3)",
                          headers={"Accept-Encoding": f"{encoding}, identity"}) as r:
            assert r.headers["Content-Encoding"] == encoding
            assert decode(b"".join(r.iter_raw())) == b"0\n1\n2\n"
    plain = httpx.post(base, content=b"SELECT 1", headers={"Accept-Encoding": "gzip"})
    assert "Content-Encoding" not in plain.headers and plain.text == "1\n"
    for compress in ("zstd", "lz4"):
        assert _client(url, compress=compress).query("SELECT number FROM numbers(5000)").result_rows[-1] == (4999,)


async def test_insert_deduplication_token_stores_a_repeated_block_once(url: str) -> None:
    client = await _async_client(url)
    try:
        db = f"t_{uuid.uuid4().hex[:10]}"
        await client.command(f"CREATE DATABASE {db}")
        # As the migrations create the events tables: a deduplication window on a non-replicated table.
        await client.command(f"CREATE TABLE {db}.t ({COLUMNS}) ENGINE = ReplacingMergeTree(inserted_at) "
                             "ORDER BY (app_id, event_id) SETTINGS non_replicated_deduplication_window = 100")
        rows = [_row(i) for i in range(10)]
        for _ in range(2):
            await client.insert(f"{db}.t", rows, column_names=NAMES, settings={"insert_deduplication_token": "batch-1"})
        await client.insert(f"{db}.t", rows[:3], column_names=NAMES, settings={"insert_deduplication_token": "batch-2"})
        assert await client.command(f"SELECT count() FROM {db}.t") == 13  # not FINAL: the repeat never got in
    finally:
        await client.close()


def test_database_selection(url: str) -> None:
    db = _db(_client(url))
    client = _client(url, database=db)
    assert client.command("SELECT currentDatabase()") == db
    client.command("CREATE TABLE here (a UInt8) ENGINE = MergeTree ORDER BY a")
    client.insert("here", [[1], [2]], column_names=["a"])
    assert _client(url).command(f"SELECT sum(a) FROM {db}.here") == 3
    assert _client(url).command("SELECT currentDatabase()") == "default"  # only that client's requests
    with pytest.raises(DatabaseError) as info:
        _client(url, database="no_such_db")
    assert info.value.code == 81  # UNKNOWN_DATABASE


def test_a_session_keeps_its_temporary_tables_and_settings_to_itself(url: str) -> None:
    one = _client(url, session_id=f"s-{uuid.uuid4()}")
    other = _client(url, session_id=f"s-{uuid.uuid4()}")
    one.command("CREATE TEMPORARY TABLE tmp (a UInt32)")
    one.insert("tmp", [[5], [6]], column_names=["a"])
    assert one.command("SELECT sum(a) FROM tmp") == 11
    with pytest.raises(DatabaseError) as info:
        other.command("SELECT sum(a) FROM tmp")
    assert info.value.code == 60  # UNKNOWN_TABLE: another session's table is not there
    one.command("SET max_block_size = 777")
    assert one.command("SELECT getSetting('max_block_size')") == 777
    # A request's own settings apply to it only; the session's value is back on the next request.
    assert one.command("SELECT getSetting('max_block_size')", settings={"max_block_size": 555}) == 555
    assert one.command("SELECT getSetting('max_block_size')") == 777
    assert other.command("SELECT getSetting('max_block_size')") != 777


async def test_session_errors_as_a_server_answers_them(url: str) -> None:
    base = url.rsplit("/", 1)[0]
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.post(base, params={"session_id": "never-made", "session_check": "1"}, content=b"SELECT 1")
        assert (r.status_code, r.headers["X-ClickHouse-Exception-Code"]) == (500, "372")  # SESSION_NOT_FOUND
        session = {"session_id": f"s-{uuid.uuid4()}"}
        slow = asyncio.create_task(http.post(base, params=session, content=b"SELECT sleep(1)"))
        await asyncio.sleep(0.3)
        busy = await http.post(base, params=session, content=b"SELECT 1")
        assert busy.headers["X-ClickHouse-Exception-Code"] == "373"  # SESSION_IS_LOCKED
        assert "locked by a concurrent client" in busy.text
        assert (await slow).status_code == 200
        assert (await http.post(base, params=session, content=b"SELECT 1")).text == "1\n"
        # USE is the session's; a request's `database` is that request's only.
        assert (await http.post(base, params=session, content=b"USE system")).status_code == 200
        here = {**session, "database": "default"}
        assert (await http.post(base, params=here, content=b"SELECT currentDatabase()")).text == "default\n"
        assert (await http.post(base, params=session, content=b"SELECT currentDatabase()")).text == "system\n"
        closing = {**session, "close_session": "1"}
        assert (await http.post(base, params=closing, content=b"SELECT 2")).text == "2\n"
        gone = await http.post(base, params={**session, "session_check": "1"}, content=b"SELECT 1")
        assert gone.headers["X-ClickHouse-Exception-Code"] == "372"


def test_errors_carry_clickhouses_code_status_and_text(url: str) -> None:
    base = url.rsplit("/", 1)[0]
    unknown = httpx.post(base, content=b"SELECT * FROM default.no_such_table")
    assert (unknown.status_code, unknown.headers["X-ClickHouse-Exception-Code"]) == (404, "60")
    assert unknown.text.startswith("Code: 60. DB::Exception: ") and "(UNKNOWN_TABLE)" in unknown.text
    syntax = httpx.post(base, content=b"SELEC 1")
    assert (syntax.status_code, syntax.headers["X-ClickHouse-Exception-Code"]) == (400, "62")
    multi = httpx.post(base, content=b"SELECT 1; SELECT 2")
    assert (multi.status_code, multi.headers["X-ClickHouse-Exception-Code"]) == (400, "62")
    setting = httpx.post(base, params={"no_such_setting": "1"}, content=b"SELECT 1")
    assert (setting.status_code, setting.headers["X-ClickHouse-Exception-Code"]) == (404, "115")
    fmt = httpx.post(base, params={"default_format": "DataFrame"}, content=b"SELECT 1")  # chDB's Python-only
    assert (fmt.status_code, fmt.headers["X-ClickHouse-Exception-Code"]) == (404, "73")  # UNKNOWN_FORMAT
    assert httpx.post(base, params={"default_format": "JSONEachRow"}, content=b"SELECT 1 AS a").text == '{"a":1}\n'


async def _adapter(url: str) -> HttpClickHouse:
    return await HttpClickHouse.connect(url)


async def test_http_adapter_classifies_errors_by_code(url: str) -> None:
    ch = await _adapter(url)
    try:
        with pytest.raises(ClickHouseRejected) as rejected:
            await ch.query("SELECT {n:UInt32} AS n", {"n": "not a number"})
        assert rejected.value.code == 457 and rejected.value.name == "BAD_QUERY_PARAMETER"
        with pytest.raises(ClickHouseError) as missing:
            await ch.query("SELECT * FROM no_such_table")
        assert missing.value.code == 60 and not isinstance(missing.value, ClickHouseRejected)
        with pytest.raises(ClickHouseError) as bad_sql:
            await ch.command("CREATE TABEL x")
        assert bad_sql.value.code == 62
    finally:
        await ch.close()


@pytest.fixture(scope="module")
async def migrated(url: str) -> AsyncIterator[HttpClickHouse]:
    """The project's own adapter on the server's `analytics` database, migrated."""
    ch = await _adapter(url)
    settings = Settings(clickhouse_url=url)
    applied = await migrate_clickhouse(ch, settings)
    assert len(applied) == len(list(MIGRATIONS.glob("*.sql")))
    assert await migrate_clickhouse(ch, settings) == []  # recorded: the second run applies nothing
    yield ch
    await ch.close()


def _event(app: str, i: int) -> bytes:
    props = {"plan": "pro", "n": i, "nested": {"x": None}}
    return orjson.dumps({
        "app_id": app, "event_id": f"ev-{i}", "type": "track", "event_name": "signup", "source": "web",
        "source_kind": "browser", "user_id": f"u{i % 3}", "device_type": "mobile", "flags": ["x"],
        "properties": props, "properties_json": orjson.dumps(props).decode(), "is_bot": False,
        "schema_version": 1, "metric_value": 1.5,  # not a column of events: skipped, as the aggregator relies on
        "timestamp": "2026-03-04T05:06:07.891Z", "received_at": "2026-03-04T05:06:08Z",
    })


async def test_http_adapter_migrates_and_round_trips_rows(migrated: HttpClickHouse) -> None:
    ch = migrated
    assert ch.database == "analytics"
    app = f"app-{uuid.uuid4().hex[:8]}"
    rows = [_event(app, i) for i in range(5)]
    for _ in range(2):  # a retried batch: the same token stores it once
        await ch.insert_rows("events", rows, dedup_token=f"{app}-0-4")
    got = await ch.query("SELECT event_id, user_id, properties_json, timestamp, visitor_id > 0 AS v FROM events "
                         "WHERE app_id = {app:String} ORDER BY event_id", {"app": app})
    assert [r["event_id"] for r in got] == [f"ev-{i}" for i in range(5)]
    assert got[0]["timestamp"] == "2026-03-04T05:06:07.891Z" and got[0]["v"] == 1
    assert orjson.loads(got[1]["properties_json"]) == {"plan": "pro", "n": 1, "nested": {"x": None}}
    daily = await ch.query("SELECT uniqExactMerge(events) AS n FROM events_daily WHERE app_id = {app:String}", {"app": app})
    assert daily == [{"n": 5}]  # the materialized view ran on the insert
    metric = orjson.dumps({"app_id": app, "event_id": "m1", "metric_name": "latency", "value": 12.5, "unit": "ms",
                           "tags": {"route": "/a"}, "timestamp": "2026-03-04T05:06:07Z", "received_at": "2026-03-04T05:06:07Z"})
    await ch.insert_rows("metrics", [metric])
    assert await ch.query("SELECT value, tags FROM metrics WHERE app_id = {app:String}", {"app": app}) == [
        {"value": 12.5, "tags": {"route": "/a"}}]
    assert await ch.ping()


async def test_concurrent_queries_and_inserts_through_one_adapter_are_exact(migrated: HttpClickHouse) -> None:
    ch = migrated
    app = f"app-{uuid.uuid4().hex[:8]}"

    async def insert(batch: int) -> None:
        await ch.insert_rows("events", [_event(app, batch * 100 + i) for i in range(50)], dedup_token=f"{app}-{batch}")

    async def count() -> int:
        rows = await ch.query("SELECT count() AS n FROM events WHERE app_id = {app:String}", {"app": app})
        return int(rows[0]["n"])

    async def echo(i: int) -> str:
        rows = await ch.query("SELECT {s:String} AS s", {"s": f"q{i}"})
        return str(rows[0]["s"])

    work: list[Any] = []
    for i in range(20):
        work.append(insert(i) if i % 2 == 0 else echo(i))
        work.append(count())
    results = await asyncio.gather(*work)
    assert [r for r in results if isinstance(r, str)] == [f"q{i}" for i in range(1, 20, 2)]
    assert all(0 <= r <= 500 for r in results if isinstance(r, int))
    assert await count() == 10 * 50


async def test_twenty_concurrent_clients_mixing_queries_and_inserts_are_exact(url: str) -> None:
    setup = _client(url)
    db = _db(setup)
    setup.command(f"CREATE TABLE {db}.t ({COLUMNS}) ENGINE = MergeTree ORDER BY (app_id, event_id)")
    clients = [await _async_client(url, compress=("lz4", "zstd", False)[i % 3]) for i in range(20)]
    try:
        async def one(i: int, client: Any) -> Any:
            if i % 2 == 0:
                await client.insert(f"{db}.t", [_row(j, app=f"c{i}") for j in range(100)], column_names=NAMES)
                return None
            result = await client.query("SELECT {i:UInt32} * 2 AS d, count() AS n FROM numbers(10000) WHERE number % 7 = 0",
                                        parameters={"i": i})
            return result.result_rows

        results = await asyncio.gather(*(one(i, c) for i, c in enumerate(clients)))
        assert [r for r in results if r is not None] == [[(i * 2, 1429)] for i in range(1, 20, 2)]
        assert setup.query(f"SELECT app_id, count(), sum(value) FROM {db}.t GROUP BY app_id ORDER BY app_id").result_rows == [
            (f"c{i}", 100, sum(j + 0.25 for j in range(100))) for i in sorted(range(0, 20, 2), key=lambda i: f"c{i}")]
    finally:
        for client in clients:
            await client.close()
