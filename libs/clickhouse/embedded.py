"""Embedded ClickHouse adapter: the ClickHouse engine inside this process (chDB), data on disk.

chDB allows one session per process and blocks while it works, so every call runs in one dedicated
thread (never on the event loop) and the session is shared by everything in the process.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
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
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chdb")
        self._session = session.Session(str(path))
        self._session.query(f"CREATE DATABASE IF NOT EXISTS {check_identifier(database)}")
        self._session.query(f"USE {database}")
        for name, value in OUTPUT_SETTINGS.items():
            self._session.query(f"SET {name} = {value!r}")
        self._users = 0
        self._closed = False

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

    async def _run(self, sql: str, params: dict[str, Any] | None) -> bytes:
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self._pool, self._query_sync, sql, params)
        except ClickHouseError:  # what the engine answered, classified by its code
            raise
        except RuntimeError as exc:  # executor shut down: the engine is closed
            raise ClickHouseUnavailable(str(exc)) from exc
        return result

    def _query_sync(self, sql: str, params: dict[str, Any] | None) -> bytes:
        from chdb import ChdbError

        if self._closed:  # a call queued behind close(): the session is gone
            raise ClickHouseUnavailable("chDB is closed")
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
        await self._run(sql + b"\n".join(rows).decode(), None)

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
        await asyncio.get_running_loop().run_in_executor(self._pool, self._session.close)
        self._pool.shutdown(wait=True)


def _escaped(params: dict[str, Any]) -> dict[str, Any]:
    """String values in the escaped text form ClickHouse reads `{name:String}` parameters in, as
    clickhouse-connect sends them to a server: the same value then means the same on both engines.
    (Raw, a backslash in a client's filter value started an escape sequence and a tab or a newline
    made the query fail.)"""
    return {k: escape_str(v) if isinstance(v, str) else v for k, v in params.items()}
