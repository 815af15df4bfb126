"""Prometheus metrics of the gateway, served at ``GET /metrics``.

- ``berth_gateway_requests_total`` and ``berth_gateway_request_errors_total`` (answers with HTTP status
  >= 400 or a gRPC status other than OK), labelled namespace, model, experiment, candidate, protocol
  (``rest`` or ``grpc``) and code (the HTTP status, or the gRPC status name);
- ``berth_gateway_request_duration_seconds``: a histogram with the same labels but code;
- ``berth_gateway_mirror_requests_total``: copies sent to experiment mirrors, by outcome.

``model`` is the model that answered (the candidate, for an experiment).  Requests for names the table
does not hold are counted with empty namespace and model, so unknown names cannot grow the label set.
The labelled children are looked up once per label combination and cached, so a request costs one
dictionary lookup and three increments.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from berth.errors import BerthError

LABELS = ("namespace", "model", "experiment", "candidate", "protocol", "code")
BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
CONTENT_TYPE = CONTENT_TYPE_LATEST
Labels = tuple[str, str, str, str]
UNROUTED: Labels = ("", "", "", "")
_ROUTED_CODES = frozenset({"ModelNotReady", "ExperimentNotReady"})  # errors about names in the table


class Metrics:
    """The gateway's counters and histogram in a registry of its own (one per gateway)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("berth_gateway_requests", "Requests answered by the gateway", LABELS,
                                registry=self.registry)
        self.errors = Counter("berth_gateway_request_errors", "Requests answered with an error", LABELS,
                              registry=self.registry)
        self.latency = Histogram("berth_gateway_request_duration_seconds",
                                 "Seconds from routing a request to its answer", LABELS[:-1],
                                 buckets=BUCKETS, registry=self.registry)
        self.mirrors = Counter("berth_gateway_mirror_requests", "Copies of requests sent to experiment "
                               "mirrors, by outcome (the answer is discarded)",
                               ("namespace", "model", "experiment", "protocol", "outcome"),
                               registry=self.registry)
        self._children: dict[tuple[Labels, str, str, bool], tuple[Any, Any, Any]] = {}
        # answers for the usage meter (berth.gateway.usage), which drains it; None: no meter, nothing kept
        self.usage: list[tuple[Labels, float, bool]] | None = None

    def observe(self, labels: Labels, protocol: str, code: str, error: bool, seconds: float) -> None:
        """Count one answer with ``code`` for the route ``labels`` and record how long it took."""
        key = (labels, protocol, code, error)
        children = self._children.get(key)
        if children is None:
            children = self._child(key)
        children[0].inc()
        if error:
            children[1].inc()
        children[2].observe(seconds)
        usage = self.usage
        if usage is not None:
            usage.append((labels, seconds, error))

    def _child(self, key: tuple[Labels, str, str, bool]) -> tuple[Any, Any, Any]:
        labels, protocol, code, _ = key
        values = (*labels, protocol, code)
        children = (self.requests.labels(*values), self.errors.labels(*values),
                    self.latency.labels(*labels, protocol))
        self._children[key] = children
        return children

    def mirrored(self, labels: Labels, protocol: str, outcome: str) -> None:
        namespace, model, experiment, _ = labels
        self.mirrors.labels(namespace, model, experiment, protocol, outcome).inc()

    def exposition(self) -> bytes:
        """The text format Prometheus scrapes."""
        return generate_latest(self.registry)


def error_labels(err: BerthError) -> Labels:
    """Labels for a request that failed before it was routed (names not in the table collapse to empty)."""
    if err.code not in _ROUTED_CODES:
        return UNROUTED
    details = err.details if isinstance(err.details, dict) else {}
    return (str(details.get("namespace", "")), str(details.get("model", "")),
            str(details.get("experiment", "")), "")
