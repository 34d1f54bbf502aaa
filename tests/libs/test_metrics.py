"""The hot path's tallied metrics read exactly as prometheus_client's own metrics of the same name, labels
and buckets, observed one call at a time, in `/metrics` output and through the registry."""

from __future__ import annotations

import uuid

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest

from libs.http import HTTP_LATENCY
from libs.metrics import TalliedCounter, TalliedHistogram

VALUES = (0.0005, 0.001, 0.0011, 0.003, 0.3, 7.0, 0.001)
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def exposition(registry: CollectorRegistry) -> list[str]:
    """The /metrics text without the `_created` timestamps (which differ by construction time)."""
    return [line for line in generate_latest(registry).decode().splitlines() if "_created" not in line]


def test_a_tallied_histogram_reads_as_one_observed_value_by_value() -> None:
    route = f"/t-{uuid.uuid4().hex[:6]}"
    for value in VALUES:
        HTTP_LATENCY.observe(("svc", route), value)
    stock = Histogram(f"stock_{uuid.uuid4().hex[:6]}", "stock", ["service", "route"], buckets=BUCKETS,
                      registry=CollectorRegistry())
    for value in VALUES:
        stock.labels("svc", route).observe(value)
    stock_buckets = {s.labels["le"]: s.value for s in stock.collect()[0].samples if s.name.endswith("_bucket")}
    for le in ("0.001", "0.0025", "0.005", "0.5", "5.0", "+Inf"):
        got = sample("http_request_duration_seconds_bucket", service="svc", route=route, le=le)
        assert got == stock_buckets[le], le
    assert sample("http_request_duration_seconds_count", service="svc", route=route) == len(VALUES)
    assert sample("http_request_duration_seconds_sum", service="svc", route=route) == sum(VALUES)


def test_metrics_output_is_the_same_as_the_stock_metrics_with_the_same_names() -> None:
    tallied_registry, stock_registry = CollectorRegistry(), CollectorRegistry()
    counter = TalliedCounter("things_total", "Things", ["kind"], registry=tallied_registry)
    histogram = TalliedHistogram("wait_seconds", "Waits", ["kind"], BUCKETS, registry=tallied_registry)
    stock_counter = Counter("things_total", "Things", ["kind"], registry=stock_registry)
    stock_histogram = Histogram("wait_seconds", "Waits", ["kind"], buckets=BUCKETS, registry=stock_registry)
    for i, value in enumerate(VALUES):
        kind = "ab"[i % 2]
        counter.inc((kind,), i)
        stock_counter.labels(kind).inc(i)
        histogram.observe((kind,), value)
        stock_histogram.labels(kind).observe(value)
    assert exposition(tallied_registry) == exposition(stock_registry)
    created = [line.split(" ")[0] for line in generate_latest(tallied_registry).decode().splitlines()
               if "_created{" in line]
    assert created == [line.split(" ")[0] for line in generate_latest(stock_registry).decode().splitlines()
                       if "_created{" in line]


def test_tallied_counts_are_in_the_next_collection_and_counted_once() -> None:
    name = f"tally_test_{uuid.uuid4().hex[:6]}"
    counter = TalliedCounter(name, "test", ["kind"])
    counter.inc(("a",))
    counter.inc(("a",), 2)
    counter.inc(("b",))
    assert sample(name + "_total", kind="a") == 3
    assert sample(name + "_total", kind="b") == 1
    assert sample(name + "_total", kind="a") == 3, "a second collection must not add the same increments again"
