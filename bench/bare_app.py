"""Baselines for the ingest benchmark, served by the same uvicorn as the gateway.

* `app`: a bare ASGI endpoint that reads the body and answers 202 — the HTTP ceiling here.
* `fastapi_app`: a plain FastAPI + pydantic route without Kafka — what a straightforward service gets.

`python -m bench.bare_app PORT` serves `app` on the HTTP protocol the services use (uvicorn's, with
a response's head and body in one write: `services/http_protocol.py`), for context next to the
stock-uvicorn baseline.
"""

from __future__ import annotations

import sys
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

_BODY = b'{"accepted":1}'
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(_BODY)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 202, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _BODY})


fastapi_app = FastAPI()


class Event(BaseModel):
    event: str
    url: str | None = None
    device: str | None = None
    userId: str | None = None


@fastapi_app.post("/api/analytics/collect", status_code=202)
async def collect(event: Event) -> dict[str, int]:
    return {"accepted": 1}


if __name__ == "__main__":
    import uvicorn

    from services.http_protocol import OneWriteHttpToolsProtocol

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False,
                backlog=2048, http=OneWriteHttpToolsProtocol)
