"""The gateway as a plain ASGI app with a lifespan, for serving by any ASGI server (bench/servers.py).

`app` starts the gateway's service stack (engines from the environment's URLs) on the server's
lifespan startup and drains and stops it on shutdown, as `analytics run --services gateway` does
around its own uvicorn. `python -m bench.served PORT` serves it on uvicorn with the services' HTTP
protocol (`services/http_protocol.py`), the way `analytics run` does.
"""

from __future__ import annotations

import sys
from typing import Any

from libs.runtime import Stack
from libs.settings import Settings
from services.runner import SERVICES, tune_garbage_collector

_stack: Stack | None = None
_app: Any = None


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _stack, _app
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                _stack = Stack(Settings(), [SERVICES["gateway"]])
                await _stack.start()
                _app = _stack.app()
                tune_garbage_collector()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if _stack is not None:
                    await _stack.drain()
                    await _stack.stop()
                await send({"type": "lifespan.shutdown.complete"})
                return
    await _app(scope, receive, send)


if __name__ == "__main__":
    import uvicorn

    from services.http_protocol import OneWriteHttpToolsProtocol

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False,
                backlog=2048, http=OneWriteHttpToolsProtocol, loop="uvloop", lifespan="on")
