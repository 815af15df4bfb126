"""Traffic figures for the dashboard, read from the gateway's Prometheus metrics.

    GET /api/v1/ui/traffic?namespace=NS&model=NAME        {samples: [{t, rps, errors, p50, p99}], ...}
    GET /api/v1/ui/traffic?namespace=NS&experiment=NAME   the same, plus {split: {candidate: requests}}

The caller needs read in NS (else 403 before anything is read).  The control plane scrapes the gateway's
``/metrics`` every :data:`INTERVAL` seconds, only while someone asked within :data:`IDLE_STOP` seconds (a
dashboard left closed costs nothing), and keeps per model and experiment a ring of :data:`SAMPLES` samples,
for at most :data:`MAX_SERIES` series (the least recently updated go first): memory is bounded however long
a page stays open and however many names the gateway reports.

The gateway's metrics answer operators only (admins of every namespace), so the control plane mints, on the
first traffic request, an admin token ``control.ui-metrics`` that lives only in its own memory (a new one at
each start, replacing the last; only its hash is stored).  Where the gateway is: ``BERTH_GATEWAY`` in the
control plane's environment, else ``http://127.0.0.1:9000`` (`berth up`'s default).
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

import httpx
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from berth.aiotasks import spawn
from berth.control.auth import Auth
from berth.control.tokens import TokenRegistry
from berth.errors import InvalidInput
from berth.resources.identity import ALL, new_token
from berth.resources.names import check_name

log = logging.getLogger("berth.control.ui_traffic")
INTERVAL = 5.0
IDLE_STOP = 60.0
SAMPLES = 120  # ten minutes at five seconds
MAX_SERIES = 2000
MAX_METRICS_BYTES = 16 * 1024 * 1024
METRICS_TOKEN_NAME = "control.ui-metrics"
Key = tuple[str, str, str]  # (namespace, "model" | "experiment", name)


@dataclass
class Counts:
    """Cumulative figures of one series at one scrape."""

    requests: float = 0.0
    errors: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # le -> cumulative count
    split: dict[str, float] = field(default_factory=dict)  # candidate -> requests (experiments)


def parse(text: str) -> dict[Key, Counts]:
    """The gateway's exposition, summed per model and per experiment (protocols and codes added up)."""
    out: dict[Key, Counts] = {}

    def at(labels: dict[str, str]) -> list[Counts]:
        ns = labels.get("namespace", "")
        if not ns:
            return []
        keys: list[Key] = []
        if labels.get("model"):
            keys.append((ns, "model", labels["model"]))
        if labels.get("experiment"):
            keys.append((ns, "experiment", labels["experiment"]))
        return [out.setdefault(k, Counts()) for k in keys]

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "berth_gateway_requests_total":
                for c in at(s.labels):
                    c.requests += s.value
                    if s.labels.get("experiment") and s.labels.get("candidate"):
                        c.split[s.labels["candidate"]] = c.split.get(s.labels["candidate"], 0.0) + s.value
            elif s.name == "berth_gateway_request_errors_total":
                for c in at(s.labels):
                    c.errors += s.value
            elif s.name == "berth_gateway_request_duration_seconds_bucket":
                le = float(s.labels.get("le", "inf"))
                for c in at(s.labels):
                    c.buckets[le] = c.buckets.get(le, 0.0) + s.value
    # an experiment's split counts only requests routed through it; a model's split is meaningless
    for (_, what, _), c in out.items():
        if what == "model":
            c.split = {}
    return out


def quantile(q: float, buckets: dict[float, float]) -> float | None:
    """Prometheus' histogram_quantile over cumulative buckets (linear within a bucket); None when empty."""
    edges = sorted(buckets.items())
    if not edges or edges[-1][1] <= 0:
        return None
    rank = q * edges[-1][1]
    lower, below = 0.0, 0.0
    for le, count in edges:
        if count >= rank:
            if math.isinf(le):
                return lower
            width = count - below
            return lower + (le - lower) * ((rank - below) / width if width > 0 else 0.0)
        lower, below = le, count
    return lower


def sample(prev: Counts, cur: Counts, seconds: float, t: float) -> dict[str, Any]:
    """One point of a chart: rates and latency quantiles of what happened between two scrapes."""
    delta = {le: max(0.0, n - prev.buckets.get(le, 0.0)) for le, n in cur.buckets.items()}
    p50, p99 = quantile(0.5, delta), quantile(0.99, delta)
    return {"t": round(t, 3), "rps": max(0.0, cur.requests - prev.requests) / seconds,
            "errors": max(0.0, cur.errors - prev.errors) / seconds,
            "p50": None if p50 is None else round(p50 * 1000, 3), "p99": None if p99 is None else round(p99 * 1000, 3)}


class Traffic:
    """The scrape loop (running only while asked) and the bounded series it keeps."""

    def __init__(self, tokens: TokenRegistry, gateway_url: str | None = None) -> None:
        self.tokens = tokens
        self.gateway_url = (gateway_url or os.environ.get("BERTH_GATEWAY") or "http://127.0.0.1:9000").rstrip("/")
        if "://" not in self.gateway_url:
            self.gateway_url = "http://" + self.gateway_url
        self.series: OrderedDict[Key, deque[dict[str, Any]]] = OrderedDict()
        self.last: dict[Key, Counts] = {}
        self.last_at = 0.0
        self.asked_at = 0.0
        self.error = ""
        self._token: str | None = None
        self._task: asyncio.Task[None] | None = None

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def _ask(self) -> None:
        self.asked_at = time.monotonic()
        if self._task is None or self._task.done():
            self._task = spawn(self._run(), "ui traffic scrape")

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=3.0) as http:
            while time.monotonic() - self.asked_at < IDLE_STOP:
                await self.scrape(http)
                await asyncio.sleep(INTERVAL)
        self.last = {}  # a later start begins afresh (no rate across the idle gap)

    async def scrape(self, http: httpx.AsyncClient) -> None:
        if self._token is None:
            self._token = new_token()
            self.tokens.ensure(METRICS_TOKEN_NAME, self._token, grants={ALL: "admin"})
        try:
            async with http.stream("GET", f"{self.gateway_url}/metrics",
                                   headers={"Authorization": f"Bearer {self._token}"}) as r:
                body = b""
                async for chunk in r.aiter_bytes():
                    body += chunk
                    if len(body) > MAX_METRICS_BYTES:
                        raise ValueError(f"the gateway's metrics exceed {MAX_METRICS_BYTES} bytes")
            if r.status_code != 200:
                raise ValueError(f"HTTP {r.status_code}: {body[:200].decode(errors='replace')}")
            now = time.monotonic()
            counts = parse(body.decode())
        except (httpx.HTTPError, ValueError) as exc:
            why = str(exc) or type(exc).__name__
            self.error = (f"cannot read the gateway's metrics at {self.gateway_url}/metrics: {why}"
                          "; set BERTH_GATEWAY for the control plane if the gateway listens elsewhere")
            return
        self.error = ""
        if self.last and now > self.last_at:
            for key, cur in counts.items():
                point = sample(self.last.get(key, Counts()), cur, now - self.last_at, time.time())
                ring = self.series.pop(key, None) or deque(maxlen=SAMPLES)
                ring.append(point)
                self.series[key] = ring  # most recently updated last
            while len(self.series) > MAX_SERIES:
                self.series.popitem(last=False)
        self.last, self.last_at = counts, now

    def figures(self, key: Key) -> dict[str, Any]:
        self._ask()
        ring = self.series.get(key)
        last = self.last.get(key)
        return {"namespace": key[0], key[1]: key[2], "interval": INTERVAL, "gateway": self.gateway_url,
                "error": self.error or None, "samples": list(ring) if ring else [],
                "requests": last.requests if last else 0.0,  # since the gateway started
                "split": dict(last.split) if last and key[1] == "experiment" else None}


class TrafficAPI:
    def __init__(self, traffic: Traffic, auth: Auth) -> None:
        self.traffic = traffic
        self.auth = auth

    async def handle(self, request: web.Request) -> web.Response:
        q = request.query
        ns = q.get("namespace", "")
        check_name(ns, what="namespace", label=True)
        what = "experiment" if "experiment" in q else "model"
        name = q.get(what, "")
        if not name:
            raise InvalidInput("traffic needs ?namespace=NS&model=NAME or ?namespace=NS&experiment=NAME")
        check_name(name, what=what)
        self.auth.require(request, "read", ns, action="get", kind="Model" if what == "model" else "Experiment",
                          name=name)
        return web.json_response(self.traffic.figures((ns, what, name)))
