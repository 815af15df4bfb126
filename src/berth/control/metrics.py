"""Prometheus metrics of the control plane at ``GET /metrics``.

Gauges are read from the store and the hub when scraped (never stale); counters are kept by the
reconciler.  Each control plane has its own registry, so several can live in one process (tests).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from berth.control.hub import AgentHub
from berth.store.base import Store


class ControlMetrics(Collector):
    def __init__(self, store: Store, hub: AgentHub) -> None:
        self.store = store
        self.hub = hub
        self.schedule_attempts: Counter[str] = Counter()  # by namespace
        self.schedule_failures: Counter[tuple[str, str]] = Counter()  # by (namespace, reason code)
        self.loads: Counter[tuple[str, str]] = Counter()  # by (namespace, outcome)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def collect(self) -> Iterator[Metric]:
        states = GaugeMetricFamily("berth_models", "Models by namespace and state",
                                   labels=["namespace", "state"])
        by_state: Counter[tuple[str, str]] = Counter()
        for doc in self.store.list("Model"):
            state = (doc.get("status") or {}).get("state", "ModelProgressing")
            by_state[(doc["metadata"]["namespace"], state)] += 1
        for (ns, state), n in sorted(by_state.items()):
            states.add_metric([ns, state], n)
        yield states
        agents = GaugeMetricFamily("berth_agents_connected", "Agents connected, by namespace and server",
                                   labels=["namespace", "server", "ready"])
        by_server: Counter[tuple[str, str, str]] = Counter()
        for rec in self.hub.replicas.values():
            if rec.connected:
                by_server[(rec.namespace, rec.server, str(rec.readiness.ready).lower())] += 1
        for labels, n in sorted(by_server.items()):
            agents.add_metric(list(labels), n)
        yield agents
        attempts = CounterMetricFamily("berth_schedule_attempts", "Models planned by the scheduler",
                                       labels=["namespace"])
        for ns, n in sorted(self.schedule_attempts.items()):
            attempts.add_metric([ns], n)
        yield attempts
        failures = CounterMetricFamily("berth_schedule_failures", "Rejections of models not fully placed, by code",
                                       labels=["namespace", "reason"])
        for (ns, code), n in sorted(self.schedule_failures.items()):
            failures.add_metric([ns, code], n)
        yield failures
        loads = CounterMetricFamily("berth_model_loads", "Load outcomes reported by agents",
                                    labels=["namespace", "outcome"])
        for (ns, outcome), n in sorted(self.loads.items()):
            loads.add_metric([ns, outcome], n)
        yield loads

    async def handler(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
