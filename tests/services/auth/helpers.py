"""Helpers of the auth tests: clients with their own IP, the key topic, the SMTP sink's inbox."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from email.message import EmailMessage
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import orjson
from fastapi import FastAPI

from libs.embedded.procs import free_port
from libs.embedded.smtp_sink import read_inbox
from libs.kafka import API_KEYS_TOPIC, make_consumer
from libs.runtime import Stack
from libs.settings import Settings

_apps: dict[int, FastAPI] = {}


def random_ip() -> str:
    """A fresh address (its own /64) from the documentation range, so rate limits per IP never collide."""
    return "2001:db8:" + ":".join(secrets.token_hex(2) for _ in range(2)) + "::1"


@asynccontextmanager
async def client_for(stack: Stack, ip: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on every route of `stack`, calling from `ip`."""
    app = _apps.get(id(stack))
    if app is None:
        app = _apps[id(stack)] = stack.app()
    transport = httpx.ASGITransport(app=app, client=(ip, 4242))
    async with httpx.AsyncClient(transport=transport, base_url="http://analytics.test", timeout=30) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def collect(http: httpx.AsyncClient, key: str) -> httpx.Response:
    return await http.post("/api/analytics/collect", json={"event": "auth_test"}, headers={"x-api-key": key})


class KeyTopicReader:
    """Reads auth.api-keys.v1 (or another of auth's state topics) from its end at the moment it is entered."""

    def __init__(self, settings: Settings, topic: str = API_KEYS_TOPIC) -> None:
        self._consumer = make_consumer(settings, topic, group_id=None, auto_offset_reset="latest")
        self.seen: list[tuple[dict[str, Any], str]] = []

    async def __aenter__(self) -> KeyTopicReader:
        await self._consumer.start()
        for _ in range(100):
            if self._consumer.assignment():
                break
            await asyncio.sleep(0.05)
        await self._consumer.seek_to_end()
        for tp in self._consumer.assignment():
            await self._consumer.position(tp)  # the end is fixed before anything is produced
        return self

    async def __aexit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            await self._consumer.stop()

    async def wait_for(
        self, match: Callable[[dict[str, Any]], bool], count: int = 1, timeout: float = 10
    ) -> list[tuple[dict[str, Any], str]]:
        """The first `count` messages (parsed, raw) that `match`, waiting up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            found = [(m, raw) for m, raw in self.seen if match(m)]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(found)} of {count} key messages arrived: {[m for m, _ in found]}")
            await self._read(200)

    async def drain(self, seconds: float) -> None:
        """Keep reading for `seconds`, to see what else arrives."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            await self._read(100)

    async def _read(self, timeout_ms: int) -> None:
        for messages in (await self._consumer.getmany(timeout_ms=timeout_ms)).values():
            for message in messages:
                raw = message.value.decode()
                self.seen.append((orjson.loads(raw), raw))


def mails_to(settings: Settings, address: str) -> list[EmailMessage]:
    return [m for m in read_inbox(settings.data_dir / "mail") if address.lower() in str(m["To"]).lower()]


async def wait_for_mail(settings: Settings, address: str, subject: str, timeout: float = 15) -> EmailMessage:
    """The message to `address` with this subject, once the notifier has delivered it to the sink."""
    deadline = time.monotonic() + timeout
    while True:
        for message in mails_to(settings, address):
            if message["Subject"] == subject:
                return message
        if time.monotonic() > deadline:
            got = [m["Subject"] for m in mails_to(settings, address)]
            raise AssertionError(f"no mail {subject!r} to {address} (has: {got})")
        await asyncio.sleep(0.1)


async def register(http: httpx.AsyncClient, user: dict[str, Any], name: str = "site", **extra: Any) -> dict[str, Any]:
    """Register an app and wait until the gateway accepts both of its keys (they travel by Kafka)."""
    r = await http.post("/api/auth/register", json={"name": name, **extra}, headers=user["headers"])
    assert r.status_code == 201, r.text
    app = r.json()
    deadline = time.monotonic() + 5
    for key in (app["api_key"], app["write_key"]):
        while (await collect(http, key)).status_code != 202:
            assert time.monotonic() < deadline, f"key {key[:11]} never became usable"
            await asyncio.sleep(0.05)
    return app


class PostgresProxy:
    """A TCP front for the test Postgres that a test can cut (`down`) and restore (`up`).

    Only the services started on `dsn` lose their database; the session's Postgres stays up."""

    def __init__(self, database_url: str) -> None:
        url = urlsplit(database_url)
        query = parse_qs(url.query)
        host = (query.pop("host", [None])[0]) or url.hostname or "127.0.0.1"
        port = url.port or int(query.pop("port", ["5432"])[0])
        self._unix = f"{host}/.s.PGSQL.{port}" if host.startswith("/") else None
        self._target = (host, port)
        self.port = free_port(15432)
        auth = url.netloc.rsplit("@", 1)[0] + "@" if "@" in url.netloc else ""
        rest = urlencode({k: v[0] for k, v in query.items()})
        self.dsn = f"{url.scheme}://{auth}127.0.0.1:{self.port}{url.path}" + (f"?{rest}" if rest else "")
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def up(self) -> None:
        self._flowing.set()
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    def hang(self) -> None:
        """Keep accepting connections and bytes but pass nothing on, as a hung (SIGSTOPped) server does."""
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    async def down(self) -> None:
        """Refuse new connections and cut the open ones, as a crashed database would."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        writers = [writer]
        try:
            if self._unix:
                up_reader, up_writer = await asyncio.open_unix_connection(self._unix)
            else:
                up_reader, up_writer = await asyncio.open_connection(*self._target)
            writers.append(up_writer)
            self._writers.update(writers)
            await asyncio.gather(_pipe(reader, up_writer, self._flowing), _pipe(up_reader, writer, self._flowing))
        finally:
            self._tasks.discard(task)
            for w in writers:
                self._writers.discard(w)
                w.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, flowing: asyncio.Event) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            await flowing.wait()
            writer.write(data)
            await writer.drain()
    writer.transport.abort()


@contextmanager
def captured_logs() -> Iterator[io.StringIO]:
    """Every log line of this process, rendered by the product's own JSON formatter, at DEBUG."""
    root = logging.getLogger()
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(root.handlers[0].formatter)
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield out
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
