"""What one event may hold: the limits the gateway validates with and the aggregator decodes with.

Defined once, so that whatever the gateway accepts the aggregator can store (tests/system/test_event_contract.py
round-trips generated events through the gateway's validation and the aggregator's decoding). An event
the aggregator cannot decode is dead-lettered, so every limit here is refused at the gateway first,
with a 4xx naming the field.
"""

from __future__ import annotations

from datetime import UTC, datetime
from math import isfinite
from typing import Annotated, Any

from pydantic import AfterValidator, Field

# Nesting of objects and arrays in one field of an event (properties, traits, metadata, context, tags):
# `{"a": 1}` is 1 level. The aggregator's JSON parser stops at 200 levels, orjson at 255.
MAX_DEPTH = 32
# Keys of one object, items of one array.
MAX_WIDTH = 1000
# Integers orjson writes and ClickHouse's JSON column reads (Int64 to UInt64); larger ones arrive as floats.
MIN_INT, MAX_INT = -(2**63), 2**64 - 1
# ClickHouse DateTime64(3)'s range: a client time outside it is refused before any arithmetic on it.
MIN_TIME = datetime(1900, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(2299, 12, 31, 23, 59, 59, 999000, tzinfo=UTC)
# Text fields.
NAME_CHARS = 200  # event and metric names, categories, user/session/anonymous ids
ID_CHARS = 128  # event ids (messageId)
APP_ID_CHARS = 64
URL_CHARS = 4096
SHORT_CHARS = 40  # device, unit, screen size

# The gateway builds an event's stored properties from what a call sends: identify and group calls keep
# their traits under "traits" (one level more), the collect route adds metadata's extra fields to the
# properties, Segment calls add group_id and previous_id. The aggregator allows exactly that much more.
STORED_MAX_DEPTH = MAX_DEPTH + 1
STORED_MAX_WIDTH = 2 * MAX_WIDTH + 2


class JsonLimitError(ValueError):
    """A JSON value over a limit; `loc` is the path of the offending value."""

    def __init__(self, loc: tuple[Any, ...], msg: str, kind: str) -> None:
        super().__init__(f"{msg} (at {'.'.join(map(str, loc)) or 'the top'})")
        self.loc, self.msg, self.kind = loc, msg, kind

    def error(self) -> dict[str, Any]:
        """The error in the shape of the gateway's validation errors."""
        return {"loc": list(self.loc), "msg": self.msg, "type": self.kind}


def check_json(value: Any, loc: tuple[Any, ...] = (), max_depth: int = MAX_DEPTH, max_width: int = MAX_WIDTH) -> None:
    """Raise JsonLimitError when `value` (parsed JSON) nests deeper than `max_depth` objects and arrays,
    holds an object or array wider than `max_width`, a float that is not finite or an integer outside
    64 bits. Iterative: a value nested beyond Python's recursion limit is refused, not a crash.
    (On the ingest hot path: plain loops, exact type checks; JSON parsers make no subclasses.)"""
    kind = type(value)
    if kind is not dict and kind is not list:
        _check_scalar(value, loc)
        return
    stack: list[tuple[Any, int, tuple[Any, ...]]] = [(value, 1, loc)]
    while stack:
        node, depth, path = stack.pop()
        if depth > max_depth:
            raise JsonLimitError(path, f"nested deeper than {max_depth} levels of objects and arrays; flatten it",
                                 "json_too_deep")
        if len(node) > max_width:
            what = "keys" if type(node) is dict else "items"
            raise JsonLimitError(path, f"more than {max_width} {what}; split it", "json_too_wide")
        for key, child in node.items() if type(node) is dict else enumerate(node):
            kind = type(child)
            if kind is dict or kind is list:
                stack.append((child, depth + 1, (*path, key)))
            elif (kind is float and not isfinite(child)) or (kind is int and not MIN_INT <= child <= MAX_INT):
                _check_scalar(child, (*path, key))  # raises


def _check_scalar(value: Any, loc: tuple[Any, ...]) -> None:
    if type(value) is float and not isfinite(value):
        raise JsonLimitError(loc, "not a finite number (NaN and Infinity cannot be stored)", "finite_number")
    if type(value) is int and not MIN_INT <= value <= MAX_INT:
        raise JsonLimitError(loc, f"integer outside {MIN_INT}..{MAX_INT}; send it as a string", "int_range")


def check_event(item: dict[str, Any]) -> None:
    """`check_json` over every field of one inbound event object, each named by its path."""
    if len(item) > MAX_WIDTH:
        raise JsonLimitError((), f"more than {MAX_WIDTH} fields", "json_too_wide")
    for key, value in item.items():
        kind = type(value)
        if kind is dict or kind is list or kind is float or kind is int:
            check_json(value, (key,))


def _stored_properties(value: dict[str, Any]) -> dict[str, Any]:
    check_json(value, (), STORED_MAX_DEPTH, STORED_MAX_WIDTH)
    return value


TIME_RANGE = f"{MIN_TIME:%Y-%m-%d}..{MAX_TIME:%Y-%m-%d} (UTC)"


def storable_time(moment: datetime) -> bool:
    """Whether a time (naive = UTC) fits the timestamp columns."""
    return MIN_TIME <= (moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment) <= MAX_TIME


def _storable_time(value: datetime) -> datetime:
    if not storable_time(value):
        raise ValueError(f"outside the storable range {TIME_RANGE}")
    return value


# Pydantic types for the fields that carry these limits.
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
EventTime = Annotated[datetime, AfterValidator(_storable_time)]
StoredProperties = Annotated[dict[str, Any], AfterValidator(_stored_properties)]
