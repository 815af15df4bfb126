"""The gateway's usage meter: what traffic each model had, posted to the control plane every few seconds.

Two sources, neither of which adds work to a request beyond one list append:

- answers: :meth:`berth.gateway.metrics.Metrics.observe` appends ``(labels, seconds, error)`` to
  ``Metrics.usage``; the meter drains that list at each sample (every ``sample_s``) into per-model figures
  for the window: answers, errors, the time of the last one (to the sample), latencies (at most
  ``MAX_LATENCIES`` per model and window, a uniform reservoir) for p50/p95, and the seconds they took
  summed: over the window's length, the model's own requests in flight on average (Little's law);
- load: at each sample the meter reads the forwarding :class:`~berth.gateway.forwarding.balance.Balancer`'s
  requests in flight to every replica in the routing table; their mean over the window's samples is a
  replica's time-averaged load.  The balancer counts per replica, not per model: a replica serving
  several busy models shows their sum, which is why autoscaling reads the model's own figure.

:meth:`UsageMeter.report` turns the window into a :class:`~berth.wire.usage.UsageReport` (models with
answers in the window, or requests in flight to their replicas) and starts the next window;
:func:`post_usage` sends reports to the control plane until the gateway stops (a guarded task).
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from berth.errors import Unavailable
from berth.gateway.forwarding.balance import Balancer
from berth.gateway.metrics import Metrics
from berth.gateway.routing.router import Router
from berth.gateway.routing.table import describe_connect_error
from berth.gateway.routing.watch import bearer_headers
from berth.wire.usage import (
    MAX_MODELS_PER_REPORT,
    MAX_REPLICAS_PER_MODEL,
    USAGE_PATH,
    ModelUsage,
    ReplicaLoad,
    UsageReport,
)

log = logging.getLogger("berth.gateway.usage")
MAX_LATENCIES = 2_048  # latencies kept per model and window (a reservoir beyond)
Key = tuple[str, str]


@dataclass(slots=True)
class _Window:
    """One model's answers in the current window."""

    requests: int = 0
    errors: int = 0
    busy: float = 0.0  # seconds its answers took, summed
    last: float = 0.0  # the meter's clock at the sample that saw its latest answer
    latencies: list[float] = field(default_factory=list)


@dataclass(slots=True)
class _Replica:
    total: int = 0  # requests in flight, summed over the window's samples
    most: int = 0


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` (nearest rank on the sorted values; ``values`` not empty)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.5) - 1))]


class UsageMeter:
    """Per-model answers and per-replica load of one gateway over the current window."""

    def __init__(self, metrics: Metrics, balancer: Balancer, router: Router, *,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None) -> None:
        self.metrics = metrics
        self.balancer = balancer
        self.router = router
        self.clock = clock
        self.rng = rng or random.Random()
        metrics.usage = []  # observe() starts keeping answers for us
        self._windows: dict[Key, _Window] = {}
        self._last: dict[Key, float] = {}  # models answered in an earlier window: their last answer
        self._replicas: dict[str, _Replica] = {}
        self._samples = 0
        self._started = clock()
        self._endpoints: dict[Key, tuple[str, ...]] = {}
        self._addresses: tuple[str, ...] = ()
        router.listeners.append(self.table_changed)
        self.table_changed()

    def close(self) -> None:
        """Stop keeping answers (the gateway is stopping)."""
        self.metrics.usage = None

    def table_changed(self) -> None:
        """Index the replicas of every model in the new table (the addresses sampled)."""
        table = self.router.table
        routes = table.models if table is not None else []
        self._endpoints = {(r.namespace, r.name): tuple(dict.fromkeys(e.http for e in r.endpoints)) for r in routes}
        self._addresses = tuple(dict.fromkeys(a for eps in self._endpoints.values() for a in eps))
        known = set(self._endpoints)
        self._last = {k: t for k, t in self._last.items() if k in known}

    def sample(self) -> None:
        """Drain the answers observed since the last sample and read the replicas' requests in flight."""
        now = self.clock()
        pending = self.metrics.usage
        if pending:
            self.metrics.usage = []  # observe() appends to the new list from here on
            windows, known = self._windows, self._endpoints
            for labels, seconds, error in pending:
                key = (labels[0], labels[1])
                w = windows.get(key)
                if w is None:
                    if key not in known:
                        continue  # not a model of the table (a pipeline, a name that failed): nothing to scale
                    w = windows[key] = _Window()
                w.requests += 1
                w.errors += error
                w.busy += seconds
                w.last = now
                if len(w.latencies) < MAX_LATENCIES:
                    w.latencies.append(seconds)
                else:  # a uniform sample of the window's answers
                    slot = self.rng.randrange(w.requests)
                    if slot < MAX_LATENCIES:
                        w.latencies[slot] = seconds
        outstanding = self.balancer.outstanding
        replicas = self._replicas
        for address in self._addresses:
            n = outstanding(address)
            if n:
                r = replicas.get(address)
                if r is None:
                    r = replicas[address] = _Replica()
                r.total += n
                r.most = max(r.most, n)
        self._samples += 1

    def report(self, gateway: str) -> UsageReport:
        """The window as a report (answered models, and models with requests in flight), and a new window."""
        self.sample()
        now = self.clock()
        window_s = max(now - self._started, 1e-3)
        samples = max(self._samples, 1)
        outstanding = self.balancer.outstanding
        models: list[ModelUsage] = []
        keys = set(self._windows) | {k for k, eps in self._endpoints.items()
                                     if any(a in self._replicas for a in eps)}
        for key in keys:
            w = self._windows.get(key)
            eps = self._endpoints.get(key, ())[:MAX_REPLICAS_PER_MODEL]
            inflight = sum(outstanding(a) for a in eps)
            last = w.last if w is not None else self._last.get(key)
            lat = w.latencies if w is not None else []
            models.append(ModelUsage(
                namespace=key[0], name=key[1], requests=w.requests if w else 0, errors=w.errors if w else 0,
                idle_s=max(0.0, now - last) if last is not None else window_s, inflight=inflight,
                inflight_mean=min(w.busy / window_s, 1e9) if w else 0.0,
                latency_p50_ms=percentile(lat, 0.5) * 1000 if lat else None,
                latency_p95_ms=percentile(lat, 0.95) * 1000 if lat else None,
                replicas=[ReplicaLoad(address=a, inflight_mean=self._replicas[a].total / samples,
                                      inflight_max=self._replicas[a].most) if a in self._replicas
                          else ReplicaLoad(address=a, inflight_mean=0.0, inflight_max=0) for a in eps]))
        if len(models) > MAX_MODELS_PER_REPORT:  # the busiest first; the rest wait for a quieter window
            models.sort(key=lambda m: (m.requests + m.inflight), reverse=True)
            del models[MAX_MODELS_PER_REPORT:]
        for key, w in self._windows.items():
            self._last[key] = w.last
        self._windows = {}
        self._replicas = {}
        self._samples = 0
        self._started = now
        return UsageReport(gateway=gateway, window_s=min(window_s, 3600.0), models=models)


async def post_usage(meter: UsageMeter, control_url: str, token: str | None, gateway: str, stop: asyncio.Event, *,
                     interval: float, connect_timeout: float = 5.0, tls: ssl.SSLContext | None = None,
                     token_file: Path | None = None) -> None:
    """Sample every ``interval / 8`` seconds and post a report every ``interval`` seconds until ``stop``
    (``tls``: the context that verifies an https:// control plane, as the routes watch's; ``token_file``: read
    at every post, so a rotated token is used from the next report on).

    A report that cannot be delivered is dropped (the next one carries the next window; the control plane
    treats a silent gateway's traffic as unknown); the first failure after a success is logged as a
    warning, the rest at debug level until a post goes through again."""
    url = control_url.rstrip("/") + USAGE_PATH
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    tick = min(max(interval / 8, 0.05), 0.5)
    timeout = aiohttp.ClientTimeout(total=max(interval * 2, 5.0), connect=connect_timeout)
    failing = False
    connector = aiohttp.TCPConnector(ssl=tls if tls is not None else True)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
        next_post = meter.clock() + interval
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=tick)
                break
            except TimeoutError:
                pass
            meter.sample()
            if meter.clock() < next_post:
                continue
            next_post = meter.clock() + interval
            body = meter.report(gateway).model_dump_json(exclude_defaults=True)
            try:
                async with session.post(url, data=body, headers=bearer_headers(headers, token_file)) as resp:
                    problem = (f"the control plane answered {resp.status}: {(await resp.text())[:300]}"
                               if resp.status >= 400 else None)
            except (OSError, aiohttp.ClientError, TimeoutError) as exc:
                problem = describe_connect_error("the control plane", exc)
            except Unavailable as exc:  # the token file cannot be read (now): this report is dropped
                problem = exc.message
            if problem is not None:
                (log.debug if failing else log.warning)("usage report to %s not delivered: %s", url, problem)
            elif failing:
                log.info("usage reports reach %s again", url)
            failing = problem is not None
