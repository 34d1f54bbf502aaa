"""Decode and validate one Kafka message into a ClickHouse row (JSONEachRow bytes) for its table."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import ValidationError

from libs.events import EnrichedEvent


class PoisonMessage(ValueError):
    """A message that can never be stored (bad JSON, schema violation): goes to the DLQ."""


def _ts(value: Any) -> str:
    # ClickHouse DateTime64(3) reads "YYYY-MM-DD hh:mm:ss.fff" from either engine.
    return str(value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3])


def _epoch(moment: datetime) -> float:
    """Seconds since the epoch; a naive timestamp is UTC (as the events table reads it)."""
    return (moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)).timestamp()


def decode(raw: bytes | None) -> tuple[str, bytes, str, float]:
    """(table, row, app id, event time in epoch seconds) for one message value: the app and time are
    taken from the parsed event here, so that nobody parses the row again. Raises PoisonMessage, and
    nothing else: a message that cannot be stored is dead-lettered, never a stop of the consumer."""
    try:
        return _decode(raw)
    except PoisonMessage:
        raise
    except Exception as exc:  # whatever a message holds, it is poison, not a crash
        raise PoisonMessage(f"cannot be stored: {exc!r}"[:500]) from exc


def _decode(raw: bytes | None) -> tuple[str, bytes, str, float]:
    if not raw:
        raise PoisonMessage("empty message")
    try:
        event = EnrichedEvent.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            raise PoisonMessage(first["msg"]) from exc  # "Invalid JSON: ..."
        if first["type"] == "model_type":
            raise PoisonMessage(f"not an event object: {first['msg']}") from exc
        where = ".".join(str(p) for p in first["loc"]) or "message"
        raise PoisonMessage(f"schema violation at {where}: {first['msg']} ({exc.error_count()} errors)") from exc
    if event.type == "metric":
        if event.metric_value is None:
            raise PoisonMessage("metric event without metric_value")
        row: dict[str, Any] = {
            "app_id": event.app_id,
            "event_id": event.event_id,
            "metric_name": event.event_name,
            "value": event.metric_value,
            "unit": event.metric_unit,
            "tags": {str(k): str(v) for k, v in event.properties.items()},
            "timestamp": _ts(event.timestamp),
            "received_at": _ts(event.received_at),
        }
        return "metrics", orjson.dumps(row), event.app_id, _epoch(event.timestamp)
    # The validated event serialized by pydantic's Rust serializer: the cheapest canonical row (ISO
    # timestamps, read by ClickHouse's best_effort parser; the metric fields are skipped as unknown),
    # plus the properties' JSON text for the properties_json column (the JSON column drops nulls).
    row_json = event.__pydantic_serializer__.to_json(event)
    exact = orjson.dumps(orjson.dumps(event.properties).decode())
    line = b"".join((row_json[:-1], b',"properties_json":', exact, b"}"))
    return "events", line, event.app_id, _epoch(event.timestamp)
