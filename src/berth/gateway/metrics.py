"""Prometheus metrics of the gateway, served at ``GET /metrics``.

- ``berth_gateway_requests_total`` and ``berth_gateway_request_errors_total`` (answers with HTTP status
  >= 400 or a gRPC status other than OK), labelled namespace, model, experiment, candidate, protocol
  (``rest`` or ``grpc``) and code (the HTTP status, or the gRPC status name);
- ``berth_gateway_request_duration_seconds``: a histogram with the same labels but code;
- ``berth_gateway_mirror_requests_total``: copies sent to experiment mirrors, by outcome.

``model`` is the model that answered (the candidate, for an experiment).  Requests for names the table
does not hold are counted with empty namespace and model, so unknown names cannot grow the label set.

A request is counted on the answer path in plain Python ints and lists (one dictionary lookup per
label combination, two increments and a bisect), not through ``prometheus_client``'s metric objects,
whose ``inc``/``observe`` take a lock each and cost several times as much; the figures become the
three families above only when ``/metrics`` is scraped (:class:`_Requests`, a collector).  Everything
runs on the gateway's event loop, so nothing else is needed to keep the counts consistent.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

from berth.errors import BerthError

LABELS = ("namespace", "model", "experiment", "candidate", "protocol", "code")
BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST
Labels = tuple[str, str, str, str]
UNROUTED: Labels = ("", "", "", "")
_ROUTED_CODES = frozenset({"ModelNotReady", "ExperimentNotReady"})  # errors about names in the table
_LE = (*(floatToGoString(b) for b in BUCKETS), "+Inf")  # type: ignore[no-untyped-call]
_SUM = len(BUCKETS) + 1  # a histogram is a list: a count per bucket (the last one +Inf), then the sum of values
Key = tuple[Labels, str, str, bool]  # route labels, protocol, code, error


class Metrics:
    """The gateway's counters and histogram in a registry of its own (one per gateway)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # (labels, protocol, code, error) -> [answers, the route's histogram]; histograms per (labels, protocol)
        self._children: dict[Key, list[Any]] = {}
        self._histograms: dict[tuple[Labels, str], list[float]] = {}
        self._created: dict[object, float] = {}  # when each series was first counted (Prometheus' _created)
        self.registry.register(_Requests(self))
        self.mirrors = Counter("berth_gateway_mirror_requests", "Copies of requests sent to experiment "
                               "mirrors, by outcome (the answer is discarded)",
                               ("namespace", "model", "experiment", "protocol", "outcome"),
                               registry=self.registry)
        # answers for the usage meter (berth.gateway.usage), which drains it; None: no meter, nothing kept
        self.usage: list[tuple[Labels, float, bool]] | None = None

    def observe(self, labels: Labels, protocol: str, code: str, error: bool, seconds: float) -> None:
        """Count one answer with ``code`` for the route ``labels`` and record how long it took."""
        key = (labels, protocol, code, error)
        child = self._children.get(key)
        if child is None:
            child = self._child(key)
        child[0] += 1
        histogram = child[1]
        histogram[bisect_left(BUCKETS, seconds)] += 1  # (a bound is inclusive: le="0.001" counts 0.001)
        histogram[_SUM] += seconds
        usage = self.usage
        if usage is not None:
            usage.append((labels, seconds, error))

    def _child(self, key: Key) -> list[Any]:
        labels, protocol, code, _ = key
        route = (labels, protocol)
        histogram = self._histograms.get(route)
        if histogram is None:
            histogram = self._histograms[route] = [0] * _SUM + [0.0]
            self._created[route] = time.time()
        child = self._children[key] = [0, histogram]
        self._created.setdefault((*labels, protocol, code), time.time())
        return child

    def mirrored(self, labels: Labels, protocol: str, outcome: str) -> None:
        namespace, model, experiment, _ = labels
        self.mirrors.labels(namespace, model, experiment, protocol, outcome).inc()

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)


class _Requests(Collector):
    """The request counters and the latency histogram, built from :class:`Metrics`' plain counts when scraped."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return list(self._families())

    def collect(self) -> Iterator[Metric]:
        metrics = self.metrics
        requests, errors, latency = self._families()
        counts: dict[tuple[str, ...], list[int]] = {}  # label values -> [answers, errors]
        for (labels, protocol, code, error), child in list(metrics._children.items()):
            total = counts.setdefault((*labels, protocol, code), [0, 0])
            total[0] += child[0]
            if error:
                total[1] += child[0]
        created = metrics._created
        for values, (answered, failed) in counts.items():
            requests.add_metric(values, answered, created=created.get(values))
            errors.add_metric(values, failed, created=created.get(values))
        for route, histogram in list(metrics._histograms.items()):
            labels, protocol = route
            route_values = [*labels, protocol]
            cumulative = []
            running = 0.0
            for le, count in zip(_LE, histogram, strict=False):
                running += count
                cumulative.append((le, running))
            latency.add_metric(route_values, cumulative, histogram[_SUM])
            stamp = created.get(route)
            if stamp is not None:
                latency.samples.append(Sample(latency.name + "_created",
                                              dict(zip(LABELS, route_values, strict=False)), stamp))
        yield requests
        yield errors
        yield latency

    @staticmethod
    def _families() -> tuple[CounterMetricFamily, CounterMetricFamily, HistogramMetricFamily]:
        return (CounterMetricFamily("berth_gateway_requests", "Requests answered by the gateway", labels=LABELS),
                CounterMetricFamily("berth_gateway_request_errors", "Requests answered with an error", labels=LABELS),
                HistogramMetricFamily("berth_gateway_request_duration_seconds",
                                      "Seconds from routing a request to its answer", labels=LABELS[:-1]))


def error_labels(err: BerthError) -> Labels:
    """Labels for a request that failed before it was routed (names not in the table collapse to empty)."""
    if err.code not in _ROUTED_CODES:
        return UNROUTED
    details = err.details if isinstance(err.details, dict) else {}
    return (str(details.get("namespace", "")), str(details.get("model", "")),
            str(details.get("experiment", "")), "")
