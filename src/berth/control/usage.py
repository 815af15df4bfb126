"""The latest traffic figures the gateways reported (:mod:`berth.wire.usage`), per model.

Pure bookkeeping with the clock passed in: :meth:`UsageBook.record` keeps each gateway's latest report,
and the readers combine every gateway whose report is recent enough:

- :meth:`last_used` - when (on the control plane's monotonic clock) a model last got a request through
  any gateway; None when no gateway has reported it since the control plane started;
- :meth:`load` - the model's load: requests per second, its own requests in flight (time-averaged, summed
  over the gateways) and per replica, each replica's in-flight requests (all its models), the worst p95.

A gateway that stops reporting stops counting towards ``load`` after ``STALE_AFTER_WINDOWS`` of its own
windows (its traffic is unknown, not zero); ``last_used`` keeps the last time seen, since a model that was
used is not made less recent by a gateway going away.

Bounded: at most ``MAX_GATEWAYS`` gateways' reports are kept (stale ones are dropped first; a new gateway
beyond that is refused, :class:`~berth.errors.Unavailable`), and at most ``MAX_TRACKED`` models' last-use
times (the oldest are forgotten first), so a token holder naming made-up gateways or models cannot grow it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from berth.errors import Unavailable
from berth.wire.usage import ModelUsage, UsageReport

STALE_AFTER_WINDOWS = 3.0
MAX_GATEWAYS = 1_000
MAX_TRACKED = 200_000
Key = tuple[str, str]  # (namespace, model)


@dataclass(frozen=True, slots=True)
class ModelLoad:
    """A model's load as the gateways measured it (the recent reports combined)."""

    requests_per_s: float
    inflight: dict[str, float]  # replica REST address -> mean requests in flight there (all its models)
    latency_p95_ms: float | None
    gateways: int  # how many gateways' figures went in
    concurrency: float = 0.0  # the model's own requests in flight, time-averaged, summed over the gateways

    @property
    def inflight_per_replica(self) -> float:
        """The model's own in-flight requests per replica it is routed to (its concurrency over its replicas;
        a replica's sampled figure would count the other models it serves too)."""
        return self.concurrency / max(1, len(self.inflight))


@dataclass(slots=True)
class _Report:
    received: float
    window_s: float
    models: dict[Key, ModelUsage] = field(default_factory=dict)


class UsageBook:
    """Each gateway's latest usage report, and per-model answers combined across gateways."""

    def __init__(self, clock: Callable[[], float], *, max_gateways: int = MAX_GATEWAYS,
                 max_tracked: int = MAX_TRACKED) -> None:
        self._clock = clock
        self._reports: dict[str, _Report] = {}
        self._last_used: dict[Key, float] = {}
        self.max_gateways = max_gateways
        self.max_tracked = max_tracked

    def record(self, gateway: str, report: UsageReport) -> None:
        """Keep ``report`` as ``gateway``'s latest (replacing its previous one)."""
        now = self._clock()
        if gateway not in self._reports and len(self._reports) >= self.max_gateways:
            self._reports = {g: r for g, r in self._reports.items()
                             if now - r.received <= STALE_AFTER_WINDOWS * r.window_s}
            if len(self._reports) >= self.max_gateways:
                raise Unavailable(f"usage report of gateway {gateway!r} not kept: {len(self._reports)} gateways "
                                  f"report already (at most {self.max_gateways}); stop the gateways that are not "
                                  "needed, or give each a stable name", details={"gateway": gateway,
                                                                                 "limit": self.max_gateways})
        models = {(m.namespace, m.name): m for m in report.models}
        self._reports[gateway] = _Report(received=now, window_s=report.window_s, models=models)
        last = self._last_used
        for key, m in models.items():
            if m.requests or m.inflight:
                used = now - m.idle_s
                if used > last.get(key, float("-inf")):
                    last[key] = used
        if len(last) > self.max_tracked:  # forget the least recently used beyond the bound
            keep = sorted(last.items(), key=lambda kv: kv[1])[len(last) - self.max_tracked:]
            self._last_used = dict(keep)

    def last_used(self, namespace: str, name: str) -> float | None:
        return self._last_used.get((namespace, name))

    def forget(self, namespace: str, name: str) -> None:
        """Drop what is known about a deleted model."""
        self._last_used.pop((namespace, name), None)

    def _fresh(self) -> Iterable[_Report]:
        now = self._clock()
        return [r for r in self._reports.values() if now - r.received <= STALE_AFTER_WINDOWS * r.window_s]

    def load(self, namespace: str, name: str) -> ModelLoad | None:
        """The model's combined load, or None when no recent report mentions it."""
        key = (namespace, name)
        rate = 0.0
        inflight: dict[str, float] = {}
        p95: float | None = None
        gateways = 0
        concurrency = 0.0
        for r in self._fresh():
            m = r.models.get(key)
            if m is None:
                continue
            gateways += 1
            rate += m.requests / r.window_s
            concurrency += m.inflight_mean
            for rep in m.replicas:
                inflight[rep.address] = inflight.get(rep.address, 0.0) + rep.inflight_mean
            if m.latency_p95_ms is not None:
                p95 = m.latency_p95_ms if p95 is None else max(p95, m.latency_p95_ms)
        if not gateways:
            return None
        return ModelLoad(requests_per_s=rate, inflight=inflight, latency_p95_ms=p95, gateways=gateways,
                         concurrency=concurrency)

    def reporting(self) -> int:
        """Gateways whose latest report is recent."""
        return len(list(self._fresh()))
