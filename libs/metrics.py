"""Metrics for hot paths: counters and histograms kept in plain dicts, exposed through a collector.

prometheus_client's own `Counter`/`Histogram` take a lock and check the metric on every `inc`, and walk
the buckets on every `observe`; on a path taken once per request that is a noticeable share of the
request. A `TalliedCounter`/`TalliedHistogram` records with a dict update (and a bisect) instead, and
reports through prometheus_client's public custom-collector API (`CounterMetricFamily`,
`HistogramMetricFamily`), so `/metrics` and `REGISTRY.get_sample_value` read exactly what the stock
metric with the same name, labels and buckets would show.

Recording is meant for the event loop's thread (as the HTTP paths are); collection may come from
another thread and reads a copy.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

_labelled: dict[tuple[int, tuple[str, ...]], Any] = {}


def labelled(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)` of a stock prometheus_client metric, looked up once per label set rather
    than on every call (prometheus_client's own lookup takes a lock and builds a tuple each time)."""
    key = (id(metric), labels)
    found = _labelled.get(key)
    if found is None:
        found = _labelled[key] = metric.labels(*labels)
    return found


class TalliedCounter:
    """A labelled counter: `inc(labels, amount)`. `name` as for `prometheus_client.Counter`."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str],
                 registry: CollectorRegistry = REGISTRY) -> None:
        self.name = name.removesuffix("_total")
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._values: dict[tuple[str, ...], float] = {}
        self._created: dict[tuple[str, ...], float] = {}
        registry.register(self)

    def inc(self, labels: tuple[str, ...], amount: float = 1) -> None:
        values = self._values
        value = values.get(labels)
        if value is None:
            self._created[labels] = time.time()
            value = 0
        values[labels] = value + amount

    def describe(self) -> list[Metric]:
        return [CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        created = self._created.copy()
        for labels, value in self._values.copy().items():
            family.add_metric(labels, value, created=created.get(labels))
        yield family


class TalliedHistogram:
    """A labelled histogram: `observe(labels, value)`. Buckets as for `prometheus_client.Histogram`
    (a value lands in the first bucket whose upper bound is >= it; `+Inf` is added)."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], buckets: Sequence[float],
                 registry: CollectorRegistry = REGISTRY) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        bounds = sorted(float(b) for b in buckets)
        if bounds[-1] != float("inf"):
            bounds.append(float("inf"))
        self.bounds = tuple(bounds)
        self._bucket_names = [floatToGoString(b) for b in self.bounds]
        # labels -> [sum, count in bucket 0, count in bucket 1, ...] (not cumulative)
        self._observed: dict[tuple[str, ...], list[float]] = {}
        self._created: dict[tuple[str, ...], float] = {}
        registry.register(self)

    def observe(self, labels: tuple[str, ...], value: float) -> None:
        slots = self._observed.get(labels)
        if slots is None:
            slots = self._observed[labels] = [0.0] * (len(self.bounds) + 1)
            self._created[labels] = time.time()
        slots[0] += value
        slots[1 + bisect_left(self.bounds, value)] += 1

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        created = self._created.copy()
        for labels, slots in self._observed.copy().items():
            counts = slots[1:]  # copied: the event loop may add to `slots` meanwhile
            cumulative, buckets = 0.0, []
            for name, count in zip(self._bucket_names, counts, strict=True):
                cumulative += count
                buckets.append((name, cumulative))
            family.add_metric(labels, buckets, slots[0])
            if labels in created:
                family.add_sample(self.name + "_created", dict(zip(self.labelnames, labels, strict=True)),
                                  created[labels])
        yield family
