"""The event contract, round-tripped: whatever the gateway's validation accepts, the aggregator's
decoding turns into a row (never a dead letter), with the properties' exact JSON; whatever it refuses is
a 4xx. Generated events (hypothesis) go through the gateway's own validation and conversion
(`Ingestor.prepare`, as every ingest route does) and then through `services.aggregator.decode`.
No engines needed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from libs.apikeys import KeyRecord
from libs.http import ApiError
from libs.limits import MAX_DEPTH, MAX_WIDTH
from libs.settings import Settings
from services.aggregator.decode import decode
from services.gateway.fastpath import ANALYTICS_ROUTES
from services.gateway.segment import SegmentMessage, from_segment, parse_time
from services.gateway.service import Ingestor, RequestFacts, Route

NOW = datetime.now(UTC)
GATEWAY = Ingestor(Settings(analytics_env="test"), keys=None, publisher=None, limiter=None)  # type: ignore[arg-type]
RECORD = KeyRecord("k1", "contract-app", "owner", "write", "0" * 64, "wk_", NOW, None, None, 1)
EXAMPLES = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def nested(depth: int, leaf: Any = 1) -> Any:
    for _ in range(depth):
        leaf = {"a": leaf}
    return leaf


keys = st.sampled_from(["a", "b", "a.b", "a.b.c", "", ".", "..", "x y", "ключ"]) | st.text(max_size=8)
scalars = (
    st.none() | st.booleans() | st.text(max_size=12)
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4), max_leaves=16
)
objects = (
    st.dictionaries(keys, json_values, max_size=6)
    | st.integers(MAX_DEPTH - 2, MAX_DEPTH + 3).map(lambda d: nested(d))
    | st.sampled_from([{"x": nested(250)}, {f"k{i}": i for i in range(MAX_WIDTH + 1)}, {"l": list(range(MAX_WIDTH))},
                       {"a": 1, "a.b": 2}, {"a": {"b": 1}, "a.b": 2}, {"t": {"traits": nested(MAX_DEPTH - 1)}}])
)
times = st.none() | st.sampled_from([
    "0001-01-01T00:00:00Z", "1899-12-31T23:59:59Z", "1900-01-01T00:00:00Z", "1970-01-01T00:00:00Z",
    "2299-12-31T23:59:59Z", "2300-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "not a time",
]) | st.integers(-800, 800).map(lambda days: (NOW + timedelta(days=days)).isoformat())
names = st.text(min_size=0, max_size=205)
metric_values = (
    st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**70), 2**70)
    | st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "nan", "inf", "12.5"])
)


def optional(**fields: Any) -> Any:
    return fields


COLLECT = st.fixed_dictionaries({"event": names}, optional=optional(
    properties=objects, metadata=st.dictionaries(keys, json_values, max_size=4) | objects, timestamp=times,
    userId=st.text(max_size=8), url=st.sampled_from(["https://example.com/p?utm_source=x", "nope"])))
NAMED_EVENTS = st.fixed_dictionaries({"event_name": names}, optional=optional(metadata=objects, timestamp=times))
METRICS = st.fixed_dictionaries({"metric_name": names, "value": metric_values}, optional=optional(
    tags=st.dictionaries(keys, st.text(max_size=8), max_size=4) | objects, timestamp=times))
SEGMENT = st.fixed_dictionaries(
    {"type": st.sampled_from(["track", "page", "screen", "identify", "group", "alias"]), "userId": st.just("u"),
     "event": names, "groupId": st.just("g"), "previousId": st.just("p")},
    optional=optional(properties=objects, traits=objects, context=objects, timestamp=times, sentAt=times,
                      originalTimestamp=times, name=names, extra=objects),
)


def facts() -> RequestFacts:
    return RequestFacts(RECORD, datetime.now(UTC), "curl/8", "203.0.113.7")


def gateway_then_aggregator(item: dict[str, Any], route: Route) -> None:
    """The property: refused with a 4xx, or every event accepted decodes, its properties exactly kept."""
    try:
        events, _ = GATEWAY.prepare(facts(), [item], False, route)
    except ApiError as refused:
        assert refused.status in (400, 413, 422), refused
        assert refused.detail[0]["msg"], refused.detail
        return
    for event in events:
        table, row, _app, _at = decode(orjson.dumps(event))  # PoisonMessage here fails the test
        stored = orjson.loads(row)
        if table == "events":
            assert orjson.loads(stored["properties_json"]) == event["properties"]
        else:
            assert stored["value"] == event["metric_value"]


@pytest.mark.parametrize("path", ["/api/analytics/collect", "/api/analytics/events", "/api/analytics/metrics"])
@EXAMPLES
@given(data=st.data())
def test_what_an_analytics_route_accepts_the_aggregator_stores(path: str, data: st.DataObject) -> None:
    item = data.draw({"/api/analytics/collect": COLLECT, "/api/analytics/events": NAMED_EVENTS,
                      "/api/analytics/metrics": METRICS}[path])
    gateway_then_aggregator(item, ANALYTICS_ROUTES[path])


@EXAMPLES
@given(item=SEGMENT, batch_sent_at=times)
def test_what_the_segment_api_accepts_the_aggregator_stores(item: dict[str, Any], batch_sent_at: str | None) -> None:
    try:
        sent_at = parse_time(batch_sent_at)
    except ApiError as refused:
        assert refused.status == 400 and "sentAt" in refused.detail
        return
    route: Route = (SegmentMessage.model_validate,
                    lambda msg, f: from_segment(msg, f.base(msg.messageId), sent_at), "segment")
    gateway_then_aggregator(item, route)


def test_refusals_name_the_field() -> None:
    cases = [
        ({"metric_name": "m", "value": "NaN"}, "/api/analytics/metrics", ["value"]),
        ({"event": "e", "properties": nested(MAX_DEPTH + 1)}, "/api/analytics/collect", ["properties"]),
        ({"event": "e", "properties": {"n": 2**64}}, "/api/analytics/collect", ["properties", "n"]),
        ({"event_name": "e", "timestamp": "1899-12-31T00:00:00Z"}, "/api/analytics/events", ["timestamp"]),
        ({"event_name": "e", "timestamp": "1971-01-01T00:00:00Z"}, "/api/analytics/events", ["timestamp"]),
    ]
    for item, path, loc in cases:
        with pytest.raises(ApiError) as refused:
            GATEWAY.prepare(facts(), [item], False, ANALYTICS_ROUTES[path])
        assert refused.value.status == 422
        assert refused.value.detail[0]["loc"][: len(loc)] == loc, refused.value.detail
