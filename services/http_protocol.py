"""uvicorn's httptools protocol, with a response's head and body sent in one write.

uvicorn writes the status line and headers when the app sends `http.response.start`, and the body
in a second `write` when it sends `http.response.body`: two system calls and, with TCP_NODELAY, two
segments, each of which can wake the client. Here the writes a connection makes within one turn of
the event loop are joined and handed to the socket once, at the end of that turn (`call_soon`): the
bytes, their order and the keep-alive/close behaviour are unchanged; a close flushes first.

Also `QuietServer`, a uvicorn server that leaves signal handling to its caller. This module is the
only one that touches uvicorn's internals (`HttpToolsProtocol` and its use of the transport,
`Server.capture_signals`), so pyproject.toml bounds uvicorn's version and tests/services/test_http_protocol.py
pins the behaviour. Why it is kept rather than another server: docs/scaling.md, "The HTTP server".
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class _OneWritePerTurn:
    """A transport that joins the writes of one event-loop turn; everything else is passed through."""

    __slots__ = ("_chunks", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._chunks: list[bytes] = []

    def write(self, data: bytes) -> None:
        if not self._chunks:
            self._loop.call_soon(self._flush)
        self._chunks.append(data)

    def _flush(self) -> None:
        if not self._chunks:
            return
        data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks = []
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        self._flush()
        self._transport.close()

    def is_closing(self) -> bool:  # uvicorn asks after every response: spare it the __getattr__ detour
        return self._transport.is_closing()

    def get_write_buffer_size(self) -> int:
        return self._transport.get_write_buffer_size() + sum(len(c) for c in self._chunks)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class OneWriteHttpToolsProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_OneWritePerTurn(transport, self.loop))  # type: ignore[arg-type]


class QuietServer(uvicorn.Server):
    """uvicorn without its own signal handling: `analytics run` stops every server together, after the
    services drained."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
