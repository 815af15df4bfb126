"""The autoscaler: every ``interval`` seconds, a decision (:mod:`berth.control.autoscale`) for each Model
whose ``maxReplicas`` is above its lower bound, from the gateways' usage reports, and for each such Server,
from the reconciler's last plan of its namespace (models waiting for room); a namespace where one changed is
marked for the reconciler, and a Server's change wakes the provisioner.

The decided count never changes the user's spec: the reconciler plans with :meth:`Autoscaler.adjust`'s
copies of the documents (``spec.replicas`` replaced by the decision), the provisioners run
:meth:`Autoscaler.server_replicas` replicas (local processes; a StatefulSet's ``replicas`` on Kubernetes),
and the decisions go into ``status.autoscaling`` (:meth:`Autoscaler.amend`), which a restarted control plane
resumes from.  Each decision is logged, kept among the status's last events, and counted
(``berth_autoscale_decisions_total{namespace,kind,direction}``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from berth.control import autoscale
from berth.control.autoscale import Bounds, Scaling, Targets
from berth.control.clock import rfc3339
from berth.control.usage import UsageBook
from berth.resources.statuses import ModelStatus, ServerStatus
from berth.scheduler.snapshot import Plan
from berth.store.base import Event, Store
from berth.store.offloop import off_loop, on_loop

log = logging.getLogger("berth.control.autoscale")
INTERVAL = 1.0  # seconds between decisions
RESYNC = 60.0  # seconds between full listings of the documents followed (events keep them current between)
KINDS = ("Model", "Server")
Key = tuple[str, str]


class Autoscaler:
    """Decisions for the autoscaled Models, and what the reconciler asks of them."""

    def __init__(self, store: Store, usage: UsageBook, mark: Callable[[str], None], *,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.store = store
        self.usage = usage
        self.mark = mark
        self.clock = clock
        self.wall = wall
        self.models: dict[Key, Scaling] = {}
        self.servers: dict[Key, Scaling] = {}
        self.problems: dict[tuple[str, str, str], tuple[str, ...]] = {}  # (kind, namespace, name) -> problems
        self.plans: Mapping[str, Plan] = {}  # the reconciler's last plan per namespace
        self.on_server_change: Callable[[str], None] | None = None  # wakes the provisioner (a namespace)
        self.decisions: Counter[tuple[str, str, str]] = Counter()  # (namespace, kind, direction)
        self._docs: dict[tuple[str, str, str], dict[str, Any]] = {}  # (kind, namespace, name) -> document
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- for the reconciler -------------------------------------------------------------------------------

    def adjust(self, ns: str, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``docs`` with each autoscaled Model's ``spec.replicas`` set to the decision (copies; others as are)."""
        out = []
        for d in docs:
            kind = d.get("kind")
            found = self.models if kind == "Model" else self.servers if kind == "Server" else {}
            s = found.get((ns, d["metadata"]["name"]))
            if s is not None and (d.get("spec") or {}).get("replicas") != s.replicas:
                d = {**d, "spec": {**d["spec"], "replicas": s.replicas}}
            out.append(d)
        return out

    def changes(self, ns: str, name: str) -> int:
        """How many decisions the model has had (an input of its status)."""
        s = self.models.get((ns, name))
        return -1 if s is None else s.changes

    def amend(self, st: ModelStatus, ns: str, name: str) -> None:
        """Put the model's autoscaling state into its new status (absent when it does not autoscale)."""
        s = self.models.get((ns, name))
        if s is not None:
            st["autoscaling"] = s.status(self.problems.get(("Model", ns, name), ()))

    def amend_server(self, st: ServerStatus, ns: str, name: str) -> None:
        s = self.servers.get((ns, name))
        if s is not None:
            st["autoscaling"] = s.status(self.problems.get(("Server", ns, name), ()))

    def server_replicas(self, ns: str, name: str) -> int | None:
        """The replicas decided for an autoscaled Server (None: it does not autoscale; run its spec's)."""
        s = self.servers.get((ns, name))
        return None if s is None else s.replicas

    # --- the loop -----------------------------------------------------------------------------------------

    def tick(self, models: Sequence[dict[str, Any]], servers: Sequence[dict[str, Any]] = ()) -> set[str]:
        """One decision per autoscaled Model and Server; answers the namespaces where one changed."""
        now = self.clock()
        reporting = self.usage.reporting() > 0
        changed: set[str] = set()
        for kind, docs, states in (("Model", models, self.models), ("Server", servers, self.servers)):
            seen: set[Key] = set()
            for doc in docs:
                meta = doc["metadata"]
                key = (meta["namespace"], meta["name"])
                spec = doc.get("spec") or {}
                bounds = Bounds.of(spec)
                if bounds is None or meta.get("deletionTimestamp"):
                    continue
                seen.add(key)
                s = states.get(key)
                if s is None:
                    s = states[key] = autoscale.start(spec, bounds, (doc.get("status") or {}).get("autoscaling"))
                    self._changed(kind, key, changed)  # its first status, and plans with its decided count
                s.bounds = bounds
                targets = Targets.of(meta.get("annotations"))
                if self.problems.get((kind, *key), ()) != targets.problems:
                    self.problems[(kind, *key)] = targets.problems
                    changed.add(key[0])
                d = (autoscale.decide(s, self.usage.load(*key), reporting, targets, now) if kind == "Model"
                     else self._decide_server(s, key, targets, now))
                if d is None:
                    continue
                s.record(d, rfc3339(self.wall()))
                self.decisions[(key[0], kind, d.direction)] += 1
                log.info("autoscaling %s %s/%s %s from %d to %d replicas: %s", kind.lower(), key[0], key[1],
                         d.direction, d.previous, d.replicas, d.reason)
                self._changed(kind, key, changed)
            for key in [k for k in states if k not in seen]:  # deleted, or no longer autoscaled
                del states[key]
                self.problems.pop((kind, *key), None)
                self._changed(kind, key, changed)
        return changed

    def _decide_server(self, s: Scaling, key: Key, targets: Targets, now: float) -> autoscale.Decision | None:
        plan = self.plans.get(key[0])
        wanting, starting = autoscale.room_wanted(plan, key[1])
        last_empty = not autoscale.holds_models(plan, key[1], s.replicas - 1)
        return autoscale.decide_server(s, wanting, starting, last_empty, targets, now)

    def _changed(self, kind: str, key: Key, changed: set[str]) -> None:
        changed.add(key[0])
        if kind == "Server" and self.on_server_change is not None:
            self.on_server_change(key[0])

    # --- the documents it follows: Models and Servers that set maxReplicas, kept from the store's events ----

    def _note(self, ev: Event) -> None:
        if ev.kind not in KINDS:
            return
        key = (ev.kind, ev.namespace, ev.name)
        if ev.type != "DELETED" and (ev.object.get("spec") or {}).get("maxReplicas") is not None:
            self._docs[key] = ev.object
        else:
            self._docs.pop(key, None)

    def _on_event(self, ev: Event) -> None:
        """The store's listener (in the writer's thread): noted on the loop."""
        on_loop(self._loop, self._note, ev)

    def _list(self) -> dict[tuple[str, str, str], dict[str, Any]]:
        """In the store thread: every Model and Server that sets maxReplicas."""
        return {(d["kind"], d["metadata"]["namespace"], d["metadata"]["name"]): d for kind in KINDS
                for d in self.store.list(kind) if (d.get("spec") or {}).get("maxReplicas") is not None}

    async def run(self, stop: asyncio.Event, interval: float = INTERVAL) -> None:
        """Decide every ``interval`` seconds over the documents that set maxReplicas: listed once (and again every
        ``RESYNC`` seconds), followed through the store's events in between (no full listing per decision)."""
        self._loop = asyncio.get_running_loop()
        self.store.add_listener(self._on_event)
        try:
            listed = 0.0
            while not stop.is_set():
                if self.clock() - listed >= RESYNC:
                    self._docs = await off_loop(self._list)
                    listed = self.clock()
                docs = list(self._docs.values())
                changed = self.tick([d for d in docs if d["kind"] == "Model"],
                                    [d for d in docs if d["kind"] == "Server"])
                for ns in sorted(changed):
                    self.mark(ns)
                try:
                    await asyncio.wait_for(stop.wait(), timeout=interval)
                except TimeoutError:
                    pass
        finally:
            self.store.remove_listener(self._on_event)
