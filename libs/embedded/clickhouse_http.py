"""ClickHouse's HTTP interface in front of the embedded engine (chDB), for `analytics infra`.

`analytics infra` runs this as a child process (`start_clickhouse_http`) on the data dir's chDB files,
so every service can run in its own process with CLICKHOUSE_URL set, through clickhouse-connect, as in
production. The engine is the real one; what is written here is the part of the HTTP interface that
clickhouse-connect uses (docs/architecture.md, "Embedded ClickHouse over HTTP", lists what is not):

* the statement from the `query` parameter, the body, or a multipart form's `query` field; `param_<name>`
  values bound to `{name:Type}` placeholders by the engine; `database`, `default_format`, `query_id`;
* every other URL parameter is a setting for that one query (an unknown one is ClickHouse's
  UNKNOWN_SETTING), `insert_deduplication_token` included;
* INSERT with rows in any input format the engine reads (Native included) in a body compressed or not
  (Content-Encoding lz4, zstd, gzip, deflate, br when brotli is installed);
* responses compressed with `enable_http_compression=1` and Accept-Encoding;
* sessions (`session_id`, `session_timeout`, `session_check`, `close_session`): each one is its own
  engine session (temporary tables, SET, USE), one request at a time (SESSION_IS_LOCKED otherwise);
* errors as a server answers them: `Code: N. DB::Exception: ...` with X-ClickHouse-Exception-Code and
  the HTTP status ClickHouse gives that code.

chDB runs several sessions on one data dir in one process, each usable from one thread at a time and
blocking while it works: every engine call runs on a pool of worker threads, never on the event loop,
and a session's connection serves one request at a time. Requests without a session get a fresh engine
session each, as on a server, so nothing one sets leaks into another.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import os
import re
import signal
import sys
import time
import uuid
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import BodyPartReader, web

from libs.embedded.clickhouse_sql import Statement, StatementError, split_statement
from libs.logs import configure_logging, get_logger

if TYPE_CHECKING:
    from libs.embedded.procs import ManagedProcess

log = get_logger(__name__)

DEFAULT_PORT = 18123  # ClickHouse's 8123, moved out of its way; another free port when taken
WORKERS = 8  # engine calls at once (queries run in parallel across sessions)
DEFAULT_SESSION_TIMEOUT_S = 60  # ClickHouse's default_session_timeout
MAX_SESSION_TIMEOUT_S = 3600  # and its max_session_timeout
MAX_BODY_BYTES = 1 << 30

# Request parameters the HTTP interface reads itself: every other one, but `param_*`, is a setting.
TRANSPORT_PARAMS = frozenset({
    "query", "database", "default_format", "user", "password", "quota_key", "query_id", "session_id",
    "session_timeout", "session_check", "close_session", "compress", "decompress", "stacktrace", "role",
    "wait_end_of_query", "buffer_size", "client_protocol_version",
})
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CODE = re.compile(r"Code: (\d+)\. ")
_TRUE = ("1", "true")
# chDB's Python API turns these "formats" into Python objects: no ClickHouse format, as a server says.
_PYTHON_ONLY_FORMATS = frozenset({"arrowtable", "dataframe", "datastore"})

# ClickHouse's HTTP status per error (src/Server/HTTP/exceptionCodeToHTTPStatus.cpp); others are 500.
_STATUS_BY_ERROR: dict[str, int] = {
    "REQUIRED_PASSWORD": 401,
    **dict.fromkeys(("UNKNOWN_USER", "WRONG_PASSWORD", "AUTHENTICATION_FAILED", "SET_NON_GRANTED_ROLE",
                     "ACCESS_DENIED"), 403),
    **dict.fromkeys((
        "BAD_ARGUMENTS", "CANNOT_COMPILE_REGEXP", "CANNOT_PARSE_TEXT", "CANNOT_PARSE_ESCAPE_SEQUENCE",
        "CANNOT_PARSE_QUOTED_STRING", "CANNOT_PARSE_DATE", "CANNOT_PARSE_DATETIME", "CANNOT_PARSE_NUMBER",
        "CANNOT_PARSE_DOMAIN_VALUE_FROM_STRING", "CANNOT_PARSE_IPV4", "CANNOT_PARSE_IPV6",
        "CANNOT_PARSE_INPUT_ASSERTION_FAILED", "CANNOT_PARSE_UUID", "DUPLICATE_COLUMN", "ILLEGAL_COLUMN",
        "UNKNOWN_ELEMENT_IN_AST", "UNKNOWN_TYPE_OF_AST_NODE", "THERE_IS_NO_COLUMN", "TOO_DEEP_AST", "TOO_BIG_AST",
        "UNEXPECTED_AST_STRUCTURE", "SYNTAX_ERROR", "INCORRECT_DATA", "TYPE_MISMATCH",
        "VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE"), 400),
    **dict.fromkeys((
        "UNKNOWN_TABLE", "UNKNOWN_FUNCTION", "UNKNOWN_IDENTIFIER", "UNKNOWN_TYPE", "UNKNOWN_STORAGE",
        "UNKNOWN_DATABASE", "UNKNOWN_SETTING", "UNKNOWN_DIRECTION_OF_SORTING", "UNKNOWN_AGGREGATE_FUNCTION",
        "UNKNOWN_FORMAT", "UNKNOWN_DATABASE_ENGINE", "UNKNOWN_TYPE_OF_QUERY", "UNKNOWN_ROLE"), 404),
    "QUERY_IS_TOO_LARGE": 413,
    "NOT_IMPLEMENTED": 501,
    **dict.fromkeys(("SOCKET_TIMEOUT", "CANNOT_OPEN_FILE", "CANNOT_SCHEDULE_TASK"), 503),
    "HTTP_LENGTH_REQUIRED": 411,
    "TIMEOUT_EXCEEDED": 408,
    "UNSUPPORTED_MEDIA_TYPE": 415,
}


class HttpError(Exception):
    """An error this interface answers itself, by ClickHouse's error name (its code comes from the engine)."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


# --- compression: the codecs clickhouse-connect sends and accepts --------------------------------------


def _lz4_decompress(data: bytes) -> bytes:
    import lz4.frame

    out = []
    while data:  # clickhouse-connect sends one frame per block
        decompressor = lz4.frame.LZ4FrameDecompressor()
        out.append(decompressor.decompress(data))
        data = decompressor.unused_data
    return b"".join(out)


def _lz4_compress(data: bytes) -> bytes:
    import lz4.frame

    return bytes(lz4.frame.compress(data))


def _zstd() -> Any:
    if sys.version_info >= (3, 14):
        from compression import zstd
    else:
        from backports import zstd
    return zstd


def _codecs() -> dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]]:
    """Content-Encoding name -> (decompress, compress), for the codecs whose package is installed."""
    codecs: dict[str, tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]] = {
        "gzip": (gzip.decompress, gzip.compress),
        "deflate": (zlib.decompress, zlib.compress),
    }
    with contextlib.suppress(ImportError):
        import lz4.frame  # noqa: F401 - only whether it is there

        codecs["lz4"] = (_lz4_decompress, _lz4_compress)
    with contextlib.suppress(ImportError):
        zstd = _zstd()
        codecs["zstd"] = (zstd.decompress, zstd.compress)
    with contextlib.suppress(ImportError):
        import brotli  # type: ignore[import-not-found, unused-ignore]

        codecs["br"] = (brotli.decompress, brotli.compress)
    return codecs


CODECS = _codecs()


def _response_encoding(accept: str) -> str | None:
    """The first encoding of the client's Accept-Encoding that this server can write."""
    for item in accept.split(","):
        name = item.split(";")[0].strip().lower()
        if name in CODECS:
            return name
    return None


# --- the engine -----------------------------------------------------------------------------------------


@dataclass
class Connection:
    """One engine session, and what the requests on it changed: a request's settings and database apply
    to that request only, and are set back lazily (at the next request) to the session's own."""

    raw: Any  # chdb.state.sqlitelike.Connection
    database: str  # the engine session's current database now
    session_database: str  # what the session's own USE chose: requests without `database` run there
    throwaway: bool = False  # one request's, closed after it
    applied: dict[str, str] = field(default_factory=dict)  # request settings set on the engine session now
    prior: dict[str, str | None] = field(default_factory=dict)  # their session values (None: the default)


@dataclass(frozen=True)
class Request:
    statement: Statement
    settings: dict[str, str]
    params: dict[str, str]
    database: str | None
    default_format: str


@dataclass(frozen=True)
class Outcome:
    body: bytes
    summary: dict[str, int]


class Engine:
    """chDB on one data dir. Every method but `run` blocks: call them through `run` (the worker threads)."""

    def __init__(self, path: Path, workers: int = WORKERS) -> None:
        import chdb

        path.mkdir(parents=True, exist_ok=True)
        self.path = str(path.resolve())
        self._connect = chdb.connect
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="chdb-http")
        self._root = chdb.connect(self.path)  # opens the data dir; held while serving, used for nothing else
        first = self._text(self._root, "SELECT version(), timezone(), currentDatabase()").split("\t")
        self.version, self.timezone, self.default_database = first
        codes = self._text(self._root, "SELECT number, errorCodeToName(number) FROM numbers(2000) "
                                       "WHERE errorCodeToName(number) != ''")
        self.codes = {name: int(code) for code, name in (line.split("\t") for line in codes.splitlines())}
        self.names = {code: name for name, code in self.codes.items()}
        self.setting_names = frozenset(self._text(self._root, "SELECT name FROM system.settings").splitlines())

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._root.close()

    @staticmethod
    def _text(conn: Any, sql: str) -> str:
        return bytes(conn.query(sql, "TabSeparated").bytes()).decode().rstrip("\n")

    def open(self, throwaway: bool = False) -> Connection:
        return Connection(self._connect(self.path), self.default_database, self.default_database, throwaway)

    def execute_once(self, request: Request) -> Outcome:
        """A request without a session: on a fresh engine session, closed after."""
        conn = self.open(throwaway=True)
        try:
            return self.execute(conn, request)
        finally:
            conn.raw.close()

    def execute(self, conn: Connection, request: Request) -> Outcome:
        statement = request.statement
        # A SET statement changes the session's own values: it runs with none of a request's applied.
        self._apply(conn, {} if statement.kind == "SET" else request.settings)
        target = request.database or conn.session_database
        if target != conn.database:
            conn.raw.query(f"USE {_identifier(target)}")
            conn.database = target
        started = time.perf_counter_ns()
        if statement.insert_format is not None:
            inserter = conn.raw.send_insert(statement.sql, statement.insert_format)
            try:
                if statement.data:
                    inserter.append(statement.data)
                written = inserter.finish()
            except BaseException:
                with contextlib.suppress(Exception):
                    inserter.cancel()
                raise
            elapsed = time.perf_counter_ns() - started
            return Outcome(b"", {"written_rows": written.rows_written, "written_bytes": written.bytes_written,
                                 "elapsed_ns": elapsed})
        result = conn.raw.query(statement.sql, request.default_format, params=request.params)
        if statement.kind == "USE":
            conn.session_database = conn.database = self._text(conn.raw, "SELECT currentDatabase()")
        if result is None:
            return Outcome(b"", {"elapsed_ns": time.perf_counter_ns() - started})
        body = bytes(result.bytes())
        return Outcome(body, {"read_rows": result.rows_read(), "read_bytes": result.bytes_read(),
                              "written_rows": result.rows_written(), "written_bytes": result.bytes_written(),
                              "result_bytes": len(body), "elapsed_ns": time.perf_counter_ns() - started})

    def _apply(self, conn: Connection, wanted: dict[str, str]) -> None:
        """Make the engine session's settings its own plus `wanted`, in one SET."""
        unknown = [name for name in wanted if name not in self.setting_names]
        if unknown:
            raise HttpError("UNKNOWN_SETTING", f"Unknown setting '{unknown[0]}'")
        if conn.throwaway:  # closed after this request: nothing to put back
            if wanted:
                conn.raw.query("SET " + ", ".join(f"{name} = {_literal(value)}" for name, value in wanted.items()))
            return
        fresh = [name for name in wanted if name not in conn.applied]
        if fresh:  # the session's own values, to put back after the request (getSetting: system.settings is slow)
            values = self._text(conn.raw, "SELECT " + ", ".join(f"getSetting({_literal(name)})" for name in fresh))
            for name, value in zip(fresh, values.split("\t"), strict=True):
                # A map or array value is put back as the default: its text is no SET literal.
                conn.prior[name] = None if value[:1] in ("{", "[") else _unescape_tsv(value)
        changes = [f"{name} = {_restore(conn.prior.get(name))}" for name in conn.applied if name not in wanted]
        changes += [f"{name} = {_literal(value)}" for name, value in wanted.items() if conn.applied.get(name) != value]
        if not changes:
            return
        try:
            conn.raw.query("SET " + ", ".join(changes))
        except Exception:
            # Unknown how much of it applied: put back every name touched, one at a time.
            for name in {*conn.applied, *wanted}:
                try:
                    conn.raw.query(f"SET {name} = {_restore(conn.prior.get(name))}")
                except Exception:  # noqa: BLE001 - then its default
                    with contextlib.suppress(Exception):
                        conn.raw.query(f"SET {name} = DEFAULT")
            conn.applied.clear()
            raise
        conn.applied = dict(wanted)


def _literal(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _restore(prior: str | None) -> str:
    return "DEFAULT" if prior is None else _literal(prior)


def _identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _unescape_tsv(value: str) -> str:
    return value.replace("\\t", "\t").replace("\\n", "\n").replace("\\'", "'").replace("\\\\", "\\")


# --- sessions ---------------------------------------------------------------------------------------------


@dataclass
class Session:
    conn: Connection
    timeout_s: float
    last_used: float
    busy: bool = False


class Sessions:
    """Named sessions: each its own engine session, closed `session_timeout` seconds after its last use."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._by_id: dict[str, Session] = {}
        self._creating = asyncio.Lock()

    async def acquire(self, session_id: str, timeout_s: float, check: bool) -> Session:
        session = self._by_id.get(session_id)
        if session is None:
            if check:
                raise HttpError("SESSION_NOT_FOUND", f"Session {session_id} not found")
            async with self._creating:
                session = self._by_id.get(session_id)
                if session is None:
                    conn = await self.engine.run(self.engine.open)
                    session = self._by_id[session_id] = Session(conn, timeout_s, time.monotonic())
        if session.busy:
            raise HttpError("SESSION_IS_LOCKED", f"Session {session_id} is locked by a concurrent client")
        session.busy = True
        session.timeout_s = timeout_s
        return session

    def release(self, session_id: str, session: Session, close: bool) -> None:
        session.busy = False
        session.last_used = time.monotonic()
        if close and self._by_id.get(session_id) is session:
            del self._by_id[session_id]
            asyncio.get_running_loop().create_task(self.engine.run(session.conn.raw.close))

    async def expire(self) -> None:
        """Close sessions idle longer than their timeout, for as long as the server runs."""
        while True:
            await asyncio.sleep(1)
            now = time.monotonic()
            for session_id, session in list(self._by_id.items()):
                if not session.busy and now - session.last_used > session.timeout_s:
                    del self._by_id[session_id]
                    await self.engine.run(session.conn.raw.close)

    async def close(self) -> None:
        for session in self._by_id.values():
            await self.engine.run(session.conn.raw.close)
        self._by_id.clear()


# --- HTTP -------------------------------------------------------------------------------------------------

_CONTENT_TYPES = (
    ("TabSeparated", "text/tab-separated-values; charset=UTF-8"),
    ("TSV", "text/tab-separated-values; charset=UTF-8"),
    ("CSV", "text/csv; charset=UTF-8"),
    ("JSON", "application/json; charset=UTF-8"),
    ("Pretty", "text/plain; charset=UTF-8"),
    ("Values", "text/plain; charset=UTF-8"),
)


def _content_type(fmt: str) -> str:
    for prefix, content_type in _CONTENT_TYPES:
        if fmt.lower().startswith(prefix.lower()):
            return content_type
    return "application/octet-stream"


class ClickHouseHttp:
    """The aiohttp application: `/` (and `/query`) run one statement, `/ping` answers `Ok.`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sessions = Sessions(engine)
        self._expiry: asyncio.Task[None] | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/ping", self.ping)
        for path in ("/", "/query"):
            app.router.add_route("GET", path, self.handle)
            app.router.add_route("POST", path, self.handle)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)
        return app

    async def _start(self, _app: web.Application) -> None:
        self._expiry = asyncio.create_task(self.sessions.expire())

    async def _stop(self, _app: web.Application) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry
        await self.sessions.close()

    async def ping(self, _request: web.Request) -> web.Response:
        return web.Response(body=b"Ok.\n", content_type="text/plain")

    async def handle(self, request: web.Request) -> web.Response:
        query_id = request.query.get("query_id") or str(uuid.uuid4())
        headers = {"X-ClickHouse-Query-Id": query_id, "X-ClickHouse-Timezone": self.engine.timezone,
                   "X-ClickHouse-Server-Display-Name": "embedded-chdb"}
        try:
            params, body = await self._read(request)
            query = params.get("query", "")
            buffer = (query.encode() + b"\n" + body) if query else body
            if not buffer.strip():
                return web.Response(body=b"Ok.\n", content_type="text/plain", headers=headers)
            try:
                statement = split_statement(buffer)
            except StatementError as exc:
                raise HttpError("SYNTAX_ERROR", str(exc)) from None
            default_format = params.get("default_format") or "TabSeparated"
            if default_format.lower() in _PYTHON_ONLY_FORMATS:
                raise HttpError("UNKNOWN_FORMAT", f"Unknown format {default_format}")
            prepared = Request(
                statement=statement,
                settings={k: v for k, v in params.items() if _is_setting(k)},
                params={k.removeprefix("param_"): v for k, v in params.items() if k.startswith("param_")},
                database=params.get("database") or None,
                default_format=default_format,
            )
            outcome = await self._execute(params, prepared)
        except Exception as exc:  # noqa: BLE001 - every failure is answered as ClickHouse answers one
            return self._error(exc, headers)
        summary = {key: str(outcome.summary.get(key, 0)) for key in (
            "read_rows", "read_bytes", "written_rows", "written_bytes", "total_rows_to_read", "result_rows",
            "result_bytes", "elapsed_ns")}
        headers["X-ClickHouse-Summary"] = orjson.dumps(summary).decode()
        payload = outcome.body
        if statement.insert_format is None:
            fmt = statement.output_format or prepared.default_format
            headers["X-ClickHouse-Format"] = fmt
            headers["Content-Type"] = _content_type(fmt)
        encoding = None
        if payload and prepared.settings.get("enable_http_compression") in _TRUE:
            encoding = _response_encoding(request.headers.get("Accept-Encoding", ""))
        if encoding is not None:
            payload = await _off_loop(CODECS[encoding][1], payload)
            headers["Content-Encoding"] = encoding
        return web.Response(body=payload, headers=headers)

    async def _read(self, request: web.Request) -> tuple[dict[str, str], bytes]:
        """The URL parameters (with a multipart form's fields) and the decompressed body."""
        params = dict(request.query)
        for name in ("compress", "decompress"):
            if params.get(name) in _TRUE:
                raise HttpError("NOT_IMPLEMENTED", f"`{name}=1` (ClickHouse's own block compression) is not "
                                "supported by the embedded server: use HTTP compression (Content-Encoding, "
                                "enable_http_compression=1)")
        if request.content_type == "multipart/form-data":
            async for part in await request.multipart():
                if not isinstance(part, BodyPartReader) or part.name is None:
                    continue
                if part.filename is not None or not (part.name == "query" or part.name.startswith("param_")):
                    raise HttpError("NOT_IMPLEMENTED", "external data (multipart file parts) is not supported "
                                    "by the embedded server")
                params[part.name] = await part.text()
            return params, b""
        body = await request.read()
        encoding = request.headers.get("Content-Encoding", "").strip().lower()
        if body and encoding and encoding != "identity":
            codec = CODECS.get(encoding)
            if codec is None:
                raise HttpError("UNKNOWN_COMPRESSION_METHOD", f"Unknown compression method: {encoding}")
            try:
                body = await _off_loop(codec[0], body)
            except Exception as exc:  # noqa: BLE001 - each codec raises its own type
                raise HttpError("CANNOT_DECOMPRESS", f"Cannot decompress the {encoding} body: {exc}") from None
        return params, body

    async def _execute(self, params: dict[str, str], request: Request) -> Outcome:
        session_id = params.get("session_id")
        if not session_id:
            outcome: Outcome = await self.engine.run(self.engine.execute_once, request)
            return outcome
        try:
            timeout = min(float(params.get("session_timeout") or DEFAULT_SESSION_TIMEOUT_S), MAX_SESSION_TIMEOUT_S)
        except ValueError:
            raise HttpError("INVALID_SESSION_TIMEOUT", "Invalid session timeout: "
                            f"'{params['session_timeout']}'") from None
        session = await self.sessions.acquire(session_id, timeout, params.get("session_check") in _TRUE)
        close = params.get("close_session") in _TRUE
        work = asyncio.ensure_future(self.engine.run(self.engine.execute, session.conn, request))
        # Released when the engine is done with it, even if the client went away before.
        work.add_done_callback(lambda _: self.sessions.release(session_id, session, close))
        result: Outcome = await asyncio.shield(work)
        return result

    def _error(self, exc: Exception, headers: dict[str, str]) -> web.Response:
        if isinstance(exc, HttpError):
            code = self.engine.codes.get(exc.name, 1002)
            text = f"Code: {code}. DB::Exception: {exc}. ({exc.name})"
        else:
            message = str(exc)
            found = _CODE.search(message)
            if found:
                code, text = int(found.group(1)), message[found.start():]
            else:
                code, text = 1002, f"Code: 1002. DB::Exception: {message}. (UNKNOWN_EXCEPTION)"
                log.error("embedded ClickHouse HTTP request failed outside the engine", error=repr(exc))
        status = _STATUS_BY_ERROR.get(self.engine.names.get(code, ""), 500)
        headers = {**headers, "X-ClickHouse-Exception-Code": str(code)}
        if not text.rstrip().endswith(f"(version {self.engine.version})"):
            text = f"{text} (version {self.engine.version})"
        body = f"{text}\n".encode()
        return web.Response(status=status, body=body, content_type="text/plain", charset="utf-8", headers=headers)


async def _off_loop(codec: Callable[[bytes], bytes], data: bytes) -> bytes:
    """(De)compress: a large body in a thread (not one of the engine's), so the event loop goes on serving."""
    if len(data) < 64 * 1024:
        return codec(data)
    return await asyncio.to_thread(codec, data)


def _is_setting(name: str) -> bool:
    if name in TRANSPORT_PARAMS or name.startswith("param_"):
        return False
    return bool(_SETTING_NAME.match(name))


# --- the process ------------------------------------------------------------------------------------------


async def serve(path: Path, host: str, port: int, workers: int = WORKERS) -> None:
    """Serve until SIGTERM or SIGINT."""
    engine = await asyncio.to_thread(Engine, path, workers)
    # The body is decompressed here, by Content-Encoding (aiohttp would do gzip, deflate and zstd itself but
    # not lz4); URLs as long as ClickHouse takes (its http_max_uri_size is 1 MiB).
    runner = web.AppRunner(ClickHouseHttp(engine).app(), access_log=None, auto_decompress=False,
                           max_line_size=1 << 20, max_field_size=1 << 20)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        log.info("embedded ClickHouse HTTP interface serving", host=host, port=port, data_dir=engine.path,
                 version=engine.version)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
        await asyncio.to_thread(engine.close)
    log.info("embedded ClickHouse HTTP interface stopped", port=port)


def start_clickhouse_http(data_dir: Path, database: str = "analytics") -> tuple[ManagedProcess, str]:
    """Serve `<data_dir>/clickhouse` (the chDB files the embedded adapter uses) over ClickHouse's HTTP
    interface in a child process; returns it and the CLICKHOUSE_URL that names `database`."""
    from libs.embedded.procs import ManagedProcess, launch_on_a_free_port

    root = str(Path(__file__).resolve().parents[2])  # the directory that holds `libs`
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}

    def make(port: int) -> ManagedProcess:
        return ManagedProcess(
            "clickhouse",
            [sys.executable, "-m", "libs.embedded.clickhouse_http", "--data-dir", str(data_dir / "clickhouse"),
             "--port", str(port)],
            data_dir / "run",
            data_dir / "logs" / "clickhouse.log",
            env=env,
            ready_timeout=60,
        )

    proc, port = launch_on_a_free_port(make, DEFAULT_PORT)
    return proc, f"http://127.0.0.1:{port}/{database}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="ClickHouse's HTTP interface over the embedded engine (chDB)")
    parser.add_argument("--data-dir", type=Path, required=True, help="chDB's data directory")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--workers", type=int, default=WORKERS)
    args = parser.parse_args(argv)
    configure_logging(os.environ.get("LOG_LEVEL", "INFO"), service="clickhouse-http")
    asyncio.run(serve(args.data_dir, args.host, args.port, args.workers))


if __name__ == "__main__":
    main()
