"""Prometheus metrics of the control plane at ``GET /metrics``.

Models by state are counted as the store writes them (its listener): a scrape on the event loop reads a
small table, not 1,000 documents (one scrape that listed them held the loop 390 ms).  Agents are read from the
hub when scraped; counters are kept by the reconciler.  Each control plane has its own registry, so several can
live in one process (tests).
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from berth.control.autoscale_loop import Autoscaler
from berth.control.hub import AgentHub
from berth.control.residency import ResidencyBook
from berth.store.base import Event, Store

TOMBSTONES = 10_000  # deleted models remembered (an older write of one, reported late, is not counted again)


def _revision(doc: dict[str, Any]) -> int:
    try:
        return int(doc["metadata"].get("resourceVersion") or 0)
    except ValueError:  # opaque (a cluster's): what the listener reports next is newer anyway
        return 0


class ControlMetrics(Collector):
    def __init__(self, store: Store, hub: AgentHub) -> None:
        self.store = store
        self.hub = hub
        self.schedule_attempts: Counter[str] = Counter()  # by namespace
        self.schedule_failures: Counter[tuple[str, str]] = Counter()  # by (namespace, reason code)
        self.loads: Counter[tuple[str, str]] = Counter()  # by (namespace, outcome)
        self.residency: ResidencyBook | None = None  # evictions, reloads, wakes (set by the reconciler)
        self.autoscaler: Autoscaler | None = None  # its decisions (control/autoscale_loop.py)
        self.usage_reports: Counter[str] = Counter()  # gateways' usage reports by outcome (control/usage_api.py)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        # (namespace, model) -> (revision, state): kept by the store's listener, in the writer's thread
        self._lock = threading.Lock()
        self._states: dict[tuple[str, str], tuple[int, str]] = {}
        self._deleted: OrderedDict[tuple[str, str], int] = OrderedDict()  # -> revision of the deletion
        store.add_listener(self._on_event)
        for doc in store.list("Model"):
            self._on_event(Event("ADDED", _revision(doc), doc))

    def _on_event(self, ev: Event) -> None:
        """A Model written or deleted: its state in the table.  Listeners of two writer threads may report
        out of order: an event older than what is known of the model is ignored."""
        if ev.kind != "Model":
            return
        key = (ev.namespace, ev.name)
        with self._lock:
            known = self._states.get(key)
            gone = self._deleted.get(key)
            if (known is not None and known[0] > ev.revision) or (gone is not None and gone > ev.revision):
                return
            if ev.type == "DELETED":
                self._states.pop(key, None)
                self._deleted[key] = ev.revision
                self._deleted.move_to_end(key)
                while len(self._deleted) > TOMBSTONES:
                    self._deleted.popitem(last=False)
                return
            self._deleted.pop(key, None)
            self._states[key] = (ev.revision, (ev.object.get("status") or {}).get("state", "ModelProgressing"))

    def model_states(self) -> Counter[tuple[str, str]]:
        """Models by (namespace, state), from the table the listener keeps."""
        with self._lock:
            states = list(self._states.items())
        return Counter((ns, state) for (ns, _), (_, state) in states)

    def close(self) -> None:
        self.store.remove_listener(self._on_event)

    def collect(self) -> Iterator[Metric]:
        states = GaugeMetricFamily("berth_models", "Models by namespace and state",
                                   labels=["namespace", "state"])
        for (ns, state), n in sorted(self.model_states().items()):
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
        yield from self._residency()
        yield from self._autoscaling()

    def _residency(self) -> Iterator[Metric]:
        """Overcommit (docs/overcommit.md): loaded models unloaded for room, evicted ones loaded again, wakes."""
        book = self.residency
        for name, text, counts in (
                ("berth_model_evictions", "Loaded models unloaded to make room (artifact kept)",
                 book and book.evictions),
                ("berth_model_reloads", "Evicted models loaded again", book and book.reloads),
                ("berth_model_wakes", "Wake requests from gateways for evicted models (coalesced ones not "
                                      "counted)", book and book.wakes_total)):
            family = CounterMetricFamily(name, text, labels=["namespace"])
            for ns, n in sorted((counts or {}).items()):
                family.add_metric([ns], n)
            yield family

    def _autoscaling(self) -> Iterator[Metric]:
        """Autoscaling decisions (docs/autoscaling.md) and the usage reports they follow."""
        decisions = CounterMetricFamily("berth_autoscale_decisions", "Autoscaling decisions, by direction",
                                        labels=["namespace", "kind", "direction"])
        for labels, n in sorted((self.autoscaler.decisions if self.autoscaler else {}).items()):
            decisions.add_metric(list(labels), n)
        yield decisions
        reports = CounterMetricFamily("berth_usage_reports", "Gateways' usage reports, by outcome (accepted, "
                                      "refused, invalid)", labels=["outcome"])
        for outcome, n in sorted(self.usage_reports.items()):
            reports.add_metric([outcome], n)
        yield reports

    async def handler(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
