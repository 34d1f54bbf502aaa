"""The HTTP server the services run on (uvicorn with a response's writes joined): every response
arrives whole and in order, over keep-alive connections, streamed, and when the connection closes."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn

from services.http_protocol import OneWriteHttpToolsProtocol, QuietServer
from tests.conftest import serving


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await receive()
    path = scope["path"]
    if path == "/stream":  # a chunked answer written in many pieces, some across loop turns
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        for i in range(500):
            await send({"type": "http.response.body", "body": f"line {i}\n".encode(), "more_body": True})
            if i % 50 == 0:
                await asyncio.sleep(0)
        await send({"type": "http.response.body", "body": b""})
        return
    if path == "/empty":
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    body = f"you asked for {path}".encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    if path == "/bye":
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    async with serving(app, http=OneWriteHttpToolsProtocol) as url:
        yield url


async def test_many_requests_on_one_keep_alive_connection_each_get_their_own_answer(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url, limits=httpx.Limits(max_connections=1)) as client:
        for i in range(50):
            r = await client.get(f"/page/{i}")
            assert r.status_code == 200
            assert r.text == f"you asked for /page/{i}"


async def test_concurrent_connections_get_whole_answers(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url, limits=httpx.Limits(max_connections=20)) as client:
        answers = await asyncio.gather(*[client.get(f"/c/{i}") for i in range(200)])
    assert [r.text for r in answers] == [f"you asked for /c/{i}" for i in range(200)]


async def test_a_streamed_answer_arrives_whole_and_in_order(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as client:
        r = await client.get("/stream")
    assert r.status_code == 200
    assert r.text == "".join(f"line {i}\n" for i in range(500))


async def test_an_empty_answer_and_connection_close_are_delivered(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as client:
        empty = await client.get("/empty")
        bye = await client.get("/bye")
        after = await client.get("/after")  # a new connection replaces the closed one
    assert empty.status_code == 204 and empty.content == b""
    assert bye.text == "you asked for /bye" and bye.headers["connection"] == "close"
    assert after.text == "you asked for /after"


async def test_a_raw_http_1_1_exchange_gets_head_and_body_together(base_url: str) -> None:
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"GET /raw HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(65536), 5)
    finally:
        writer.close()
    # one write: the whole answer is there in the first read
    assert data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert data.endswith(b"\r\n\r\nyou asked for /raw")


async def test_the_runners_server_leaves_the_process_signal_handlers_alone() -> None:
    """`analytics run` handles SIGINT/SIGTERM itself (drain first, then stop the servers): the server
    it runs must not take them over while it serves."""
    from libs.embedded.procs import free_port

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    server = QuietServer(uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_config=None, lifespan="off"))
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done(), task.result()
            await asyncio.sleep(0.02)
        assert {sig: signal.getsignal(sig) for sig in before} == before
    finally:
        server.should_exit = True
        await task
