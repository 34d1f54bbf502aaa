"""The hot path's metric tallies read exactly as the metrics observed one call at a time."""

from __future__ import annotations

import uuid

from prometheus_client import REGISTRY, Counter

from libs.http import HTTP_LATENCY, Tally

VALUES = (0.0005, 0.001, 0.0011, 0.003, 0.3, 7.0, 0.001)


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_a_tallied_histogram_reads_as_one_observed_value_by_value() -> None:
    tally = Tally()
    tallied, direct = f"/t-{uuid.uuid4().hex[:6]}", f"/d-{uuid.uuid4().hex[:6]}"
    for value in VALUES:
        tally.observe(HTTP_LATENCY, ("svc", tallied), value)
        HTTP_LATENCY.labels("svc", direct).observe(value)
    for le in ("0.001", "0.0025", "0.005", "0.5", "5.0", "+Inf"):
        got = sample("http_request_duration_seconds_bucket", service="svc", route=tallied, le=le)
        assert got == sample("http_request_duration_seconds_bucket", service="svc", route=direct, le=le), le
    assert sample("http_request_duration_seconds_count", service="svc", route=tallied) == len(VALUES)
    assert sample("http_request_duration_seconds_sum", service="svc", route=tallied) == sum(VALUES)


def test_tallied_counts_are_in_the_next_collection_and_counted_once() -> None:
    counter = Counter(f"tally_test_{uuid.uuid4().hex[:6]}", "test", ["kind"])
    tally = Tally()
    tally.inc(counter, ("a",))
    tally.inc(counter, ("a",), 2)
    tally.inc(counter, ("b",))
    name = counter._name + "_total"
    assert sample(name, kind="a") == 3
    assert sample(name, kind="b") == 1
    assert sample(name, kind="a") == 3, "a second collection must not add the same increments again"
