"""Embedded ClickHouse adapter: the ClickHouse engine inside this process (chDB), data on disk.

chDB allows one session per process and blocks while it works, so every call runs in one dedicated
thread (never on the event loop) and the session is shared by everything in the process.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, ClassVar

from clickhouse_connect.driver.binding import escape_str

from libs.clickhouse import (
    OUTPUT_SETTINGS,
    ClickHouseError,
    ClickHouseUnavailable,
    Schema,
    check_identifier,
    check_token,
    from_code,
    parse_rows,
)
from libs.memory import release_free_heap, release_library_pages

# Server-wide limits for chDB on a laptop, passed as start-up args on the session's connection string
# (each one a ClickHouse server setting). ClickHouse's defaults size its caches for a server: 5 GiB each
# for marks, primary indexes and index marks, which a long-running `analytics run` would fill as its data
# grows. These hold the marks and indexes of a laptop's data many times over; reads past them read the
# files again (page cache), they do not fail. The memory limit (ClickHouse's default: 90% of RAM) stays:
# a heavy read may need it, and exceeding it fails the query.
LAPTOP_SERVER_SETTINGS: dict[str, int] = {
    "mark_cache_size": 256 * 2**20,
    "primary_index_cache_size": 128 * 2**20,
    "index_mark_cache_size": 64 * 2**20,
    "vector_similarity_index_cache_size": 16 * 2**20,  # no vector indexes here
    "compiled_expression_cache_size": 32 * 2**20,
    "query_condition_cache_size": 32 * 2**20,
}


def connection_string(path: Path) -> str:
    """chDB's connection string for a data dir with the laptop limits above."""
    return f"{path}?" + "&".join(f"{name}={value}" for name, value in LAPTOP_SERVER_SETTINGS.items())


# chDB's code (`_chdb.abi3.so`, 555 MB) is mapped from the wheel; starting the engine reads some 300 MB
# of it (every function, format and table engine registers itself), and most of that is not run again.
# chDB's Python layer also imports pyarrow and numpy (some 40 MB of their libraries read), which
# nothing here calls. Those pages are clean copies of their files: after IDLE_TRIM_S without a query
# they are handed back to the kernel (MADV_PAGEOUT, Linux 5.4+), and whatever a later query runs is
# read back from the file. The C heap's free pages go back at the same time (libs/memory.py).
IDLE_TRIM_S = 30.0
_TRIMMED_LIBRARIES = ("/chdb/", "/chdb_core.libs/", "/pyarrow/", "/pyarrow.libs/", "/numpy/", "/numpy.libs/")


def release_code_pages() -> int:
    """Hand the read-only pages of chDB's library (and of pyarrow's and numpy's, which chDB imports)
    back to the kernel (libs/memory.py); returns the bytes advised."""
    return release_library_pages(_TRIMMED_LIBRARIES)


# The order in which calls waiting for chDB's one thread run: the aggregator's inserts first, then
# everything else in arrival order. A dashboard polling every second queues reads that each take tens
# of milliseconds over a busy day; behind them, in arrival order, a batch of new events waited up to a
# second, and with it every reader waiting to see those events (bench pipeline's freshness).
INSERT, READ = 0, 1


class _PriorityThread:
    """One worker thread running submitted calls by (priority, arrival)."""

    def __init__(self) -> None:
        self._queue: queue.PriorityQueue[tuple[int, int, Callable[[], Any] | None, Future[Any] | None]] = (
            queue.PriorityQueue())
        self._order = itertools.count()
        self._shut = False
        self._thread = threading.Thread(target=self._work, name="chdb", daemon=True)
        self._thread.start()

    def submit(self, priority: int, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        future: Future[Any] = Future()
        if self._shut:
            future.set_exception(RuntimeError("cannot schedule new futures after shutdown"))
            return future
        self._queue.put((priority, next(self._order), functools.partial(fn, *args), future))
        return future

    def shutdown(self) -> None:
        """Run what is queued, then stop the thread."""
        self._shut = True
        self._queue.put((READ + 1, next(self._order), None, None))
        self._thread.join()

    def _work(self) -> None:
        while True:
            _, _, call, future = self._queue.get()
            if call is None or future is None:
                return
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(call())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                future.set_exception(exc)


class ChdbClickHouse:
    kind = "chdb"
    _instances: ClassVar[dict[Path, ChdbClickHouse]] = {}
    _guard = threading.Lock()

    def __init__(self, path: Path, database: str = "analytics") -> None:
        from libs.embedded.errors import require_engines

        require_engines(["clickhouse"])  # chDB comes with the `embedded` extra
        from chdb import session

        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.database = database
        self.schema = Schema(database)  # one process, one node: never a cluster
        # One thread: a chDB session is not meant to be driven from several threads at once.
        self._pool = _PriorityThread()
        self._session = session.Session(connection_string(path))
        self._session.query(f"CREATE DATABASE IF NOT EXISTS {check_identifier(database)}")
        self._session.query(f"USE {database}")
        for name, value in OUTPUT_SETTINGS.items():
            self._session.query(f"SET {name} = {value!r}")
        self._users = 0
        self._closed = False
        self._last_query = time.monotonic()
        self._stop_trimming = threading.Event()
        threading.Thread(target=self._trim_when_idle, name="chdb-trim", daemon=True).start()

    def _trim_when_idle(self) -> None:
        """Once chDB has been idle for IDLE_TRIM_S, release its code pages (once per idle spell)."""
        trimmed_at = 0.0
        while not self._stop_trimming.wait(IDLE_TRIM_S / 3):
            last = self._last_query
            if last > trimmed_at and time.monotonic() - last >= IDLE_TRIM_S:
                release_code_pages()
                release_free_heap()  # and what the last burst of work freed
                trimmed_at = time.monotonic()

    @classmethod
    async def open(cls, path: Path) -> ChdbClickHouse:
        """The process-wide instance for `path` (chDB allows only one session per process)."""
        path = path.resolve()
        with cls._guard:
            inst = cls._instances.get(path)
            if inst is None:
                if cls._instances:
                    other = next(iter(cls._instances))
                    raise ClickHouseUnavailable(f"chDB is already open at {other} in this process")
                inst = await asyncio.to_thread(cls, path)
                cls._instances[path] = inst
            inst._users += 1
            return inst

    async def _run(self, sql: str, params: dict[str, Any] | None, priority: int = READ) -> bytes:
        try:
            result: bytes = await asyncio.wrap_future(self._pool.submit(priority, self._query_sync, sql, params))
        except ClickHouseError:  # what the engine answered, classified by its code
            raise
        except RuntimeError as exc:  # executor shut down: the engine is closed
            raise ClickHouseUnavailable(str(exc)) from exc
        return result

    def _query_sync(self, sql: str, params: dict[str, Any] | None) -> bytes:
        from chdb import ChdbError

        if self._closed:  # a call queued behind close(): the session is gone
            raise ClickHouseUnavailable("chDB is closed")
        self._last_query = time.monotonic()
        try:
            res = self._session.query(sql, "JSONEachRow", params=_escaped(params) if params else None)
        # A session raises chdb._exceptions.ChdbError, a RuntimeError (not chdb.ChdbError).
        except (ChdbError, RuntimeError) as exc:
            raise from_code(None, str(exc)) from exc
        return res.bytes() if res is not None else b""

    async def query(self, sql: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        return parse_rows(await self._run(sql, params))

    async def command(self, sql: str, params: dict[str, Any] | None = None) -> None:
        await self._run(sql, params)

    async def insert_rows(self, table: str, rows: Sequence[bytes], *, dedup_token: str | None = None) -> None:
        settings = f" SETTINGS insert_deduplication_token='{check_token(dedup_token)}'" if dedup_token else ""
        sql = f"INSERT INTO {check_identifier(table)}{settings} FORMAT JSONEachRow\n"
        await self._run(sql + b"\n".join(rows).decode(), None, INSERT)

    async def ping(self) -> bool:
        try:
            return (await self.query("SELECT 1 AS ok")) == [{"ok": 1}]
        except Exception:  # noqa: BLE001 - a ping answers yes or no
            return False

    async def close(self) -> None:
        with self._guard:
            self._users -= 1
            if self._users > 0:
                return
            self._instances.pop(self.path, None)
        self._closed = True
        self._stop_trimming.set()
        await asyncio.wrap_future(self._pool.submit(READ, self._session.close))
        self._pool.shutdown()


def _escaped(params: dict[str, Any]) -> dict[str, Any]:
    """String values in the escaped text form ClickHouse reads `{name:String}` parameters in, as
    clickhouse-connect sends them to a server: the same value then means the same on both engines.
    (Raw, a backslash in a client's filter value started an escape sequence and a tab or a newline
    made the query fail.)"""
    return {k: escape_str(v) if isinstance(v, str) else v for k, v in params.items()}
