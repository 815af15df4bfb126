"""The reconcile loop: the one place where plans become I/O.

For each namespace that changed (a resource, an agent event) or still has models that are not
available (on a timer), it builds a snapshot, asks the pure scheduler for a plan, sends load/unload
commands to agents, writes statuses that changed, and republishes the routing table.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from berth.control import secrets, status
from berth.control.clock import clock
from berth.control.experiments import experiment_status, pipeline_status
from berth.control.hub import AgentHub, ReplicaModel, ReplicaRecord
from berth.control.metrics import ControlMetrics
from berth.control.routes import RoutesPublisher
from berth.control.tenants import runtime_status, server_config_status
from berth.errors import Conflict, NotFound
from berth.resources.kinds import model_spec, server_spec
from berth.resources.podspec import RUNS, inference_server, server_config_for
from berth.scheduler import plan
from berth.scheduler.build import model_want, snapshot_for
from berth.scheduler.snapshot import ModelPlan, Plan, ReplicaInfo, ReplicaRef
from berth.store.base import Event, StatusUpdate, Store
from berth.store.offloop import off_loop, on_loop
from berth.wire import agent as wire

log = logging.getLogger("berth.control.reconcile")
POLICY_ANNOTATION = "berth.io/placement-policy"
RETRY_INTERVAL = 2.0  # seconds between timer passes over namespaces with unavailable models
DRAIN_SECONDS = 1.0  # a model leaving a replica stops being routed there this long before it is unloaded
WARMUP_LIMIT = 10.0  # at most this long after start-up, routes wait for declared replicas to reconnect


def fingerprint(doc: dict[str, Any]) -> str:
    """What makes a loaded copy of the model stale: artifact, requirements, parameters, secret."""
    spec = doc.get("spec") or {}
    keys = ("storageUri", "artifactVersion", "requirements", "parameters", "secretName", "schemaUri")
    blob = json.dumps({k: spec.get(k) for k in keys}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def replica_info(rec: ReplicaRecord) -> ReplicaInfo:
    if rec.connected:
        error = rec.readiness.error if not rec.readiness.ready else None
        since = clock(rec.readiness.since) if rec.readiness.since and error else None
    else:
        error = rec.disconnect_reason
        since = clock(rec.disconnected_at) if rec.disconnected_at else None
    return ReplicaInfo(
        server=rec.server, namespace=rec.namespace, index=rec.index,
        capabilities=tuple(rec.hello.capabilities), memory=rec.hello.memory,
        overcommit_percent=rec.hello.overcommit_percent, connected=rec.connected,
        ready=rec.readiness.ready, address=rec.hello.inference.http,
        last_error=error, error_since=since,
        loaded=tuple(n for n, m in rec.models.items() if m.state in ("LOADED", "LOADING")))


class Reconciler:
    def __init__(self, store: Store, hub: AgentHub, routes: RoutesPublisher,
                 on_servers_changed: Callable[[], None] | None = None,
                 metrics: ControlMetrics | None = None) -> None:
        self.store = store
        self.metrics = metrics
        self.hub = hub
        self.routes = routes
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop run() runs on: events are handled there
        self._local = threading.local()  # .writing: this thread is writing our own statuses
        self._on_servers_changed = on_servers_changed
        self.plans: dict[str, Plan] = {}  # last plan per namespace: the next one re-plans incrementally
        self._draining: list[ReplicaModel] = []  # marked DRAINING in the pass under way
        self.passes = 0
        store.add_listener(self._on_event)

    def wake(self) -> None:
        self._wake.set()

    def mark(self, namespace: str) -> None:
        self._dirty.add(namespace)
        self._wake.set()

    def _on_event(self, ev: Event) -> None:
        """The store's listener, called in the writer's thread (often the store thread)."""
        if getattr(self._local, "writing", False):
            return  # our own status writes
        on_loop(self._loop, self._handle_event, ev)

    def _handle_event(self, ev: Event) -> None:
        if ev.kind == "Server" and self._on_servers_changed is not None:
            self._on_servers_changed()
        if ev.kind == "Server":
            self._dirty.update(self._namespaces())  # cross-namespace references may change meaning
        self.mark(ev.namespace)

    def _namespaces(self) -> set[str]:
        return {d["metadata"]["namespace"] for d in self.store.list()} | {k[0] for k in self.hub.replicas}

    async def _all_namespaces(self) -> set[str]:
        """:meth:`_namespaces`, the store read in the store thread (the hub is the loop's)."""
        docs = await off_loop(self.store.list)
        return {d["metadata"]["namespace"] for d in docs} | {k[0] for k in self.hub.replicas}

    def _replicas_back(self) -> bool:
        """Every replica a Server declares has an agent connected (after a restart: has reconnected).
        Servers whose inference server Berth does not run have no replicas to wait for."""
        configs = self.store.list("ServerConfig")
        for doc in self.store.list("Server"):
            if inference_server(doc, server_config_for(doc, configs)) != RUNS:
                continue
            ns, name = doc["metadata"]["namespace"], doc["metadata"]["name"]
            for i in range(server_spec(doc).desired_replicas()):
                rec = self.hub.replicas.get((ns, name, i))
                if rec is None or not rec.connected:
                    return False
        return True

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._dirty.update(await self._all_namespaces())
        started = last_timer = time.monotonic()
        while not stop.is_set():
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=RETRY_INTERVAL)
            except TimeoutError:
                pass
            self._wake.clear()
            if time.monotonic() - last_timer >= RETRY_INTERVAL:
                last_timer = time.monotonic()
                self._dirty.update(await off_loop(self._unsettled))
            todo, self._dirty = sorted(self._dirty), set()
            for ns in todo:
                try:
                    await self.reconcile(ns)
                except Exception:  # one namespace's trouble must not stop the others
                    log.exception("reconcile of namespace %s failed", ns)
                    self._dirty.add(ns)
            if not self.routes.warm.is_set() and (
                    self._replicas_back() or time.monotonic() - started > WARMUP_LIMIT):
                # publish every namespace's routes, then open; what is marked meanwhile stays marked
                todo, self._dirty = sorted(self._dirty | await self._all_namespaces()), set()
                for ns in todo:
                    await self.reconcile(ns)
                self.routes.set_warm()

    def _unsettled(self) -> set[str]:
        out = set()
        for doc in self.store.list("Model"):
            if (doc.get("status") or {}).get("state") != status.AVAILABLE:
                out.add(doc["metadata"]["namespace"])
        return out

    async def reconcile(self, ns: str) -> None:
        self.passes += 1
        now = time.time()
        docs, all_servers, configs = await off_loop(self._read, ns)
        configs += [d for d in docs if d["kind"] == "ServerConfig"]  # a Server's config may live elsewhere
        models = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Model"}
        self._forget_departed(ns, docs)
        records = {f"{r.server}/{r.index}": r for r in self.hub.in_namespace(ns)}
        assignments: dict[str, tuple[ReplicaRef, ...]] = {}
        for rec in records.values():
            for name, m in rec.models.items():
                if m.state in ("LOADED", "LOADING"):
                    assignments[name] = (*assignments.get(name, ()), ReplicaRef(rec.server, rec.index))
        runtime = next((d for d in docs if d["kind"] == "SeldonRuntime"), None)
        policy = ((runtime or {}).get("metadata", {}).get("annotations") or {}).get(POLICY_ANNOTATION)
        snap = snapshot_for(ns, [d for d in docs if d["kind"] != "ServerConfig"] + all_servers + configs,
                            [replica_info(r) for r in records.values()],
                            assignments, "spread" if policy == "spread" else "binpack")
        result = plan(snap, previous=self.plans.get(ns))
        self.plans[ns] = result
        if self.metrics is not None:
            self.metrics.schedule_attempts[ns] += len(result.models)
            for mp in result.models.values():
                for code in {r.code for r in mp.reasons} if mp.state != "Scheduled" else ():
                    self.metrics.schedule_failures[(ns, code)] += 1
        statuses: list[tuple[str, str, dict[str, Any]]] = []
        for name, doc in models.items():
            mp = result.models[name]
            fp = fingerprint(doc)
            old = doc.get("status") or {}
            gen = (old.get("artifactGeneration") if old.get("artifactFingerprint") == fp else None) \
                or doc["metadata"].get("generation", 1)
            await self._drive(ns, name, doc, mp, records, gen)
            st = status.model_status(doc, model_want(doc), mp, records, gen, fp, now)
            statuses.append(("Model", name, st))
        await self._unload_strays(ns, models, records)
        for doc in docs:
            if doc["kind"] == "Server":
                desired = server_spec(doc).desired_replicas()
                recs = [r for r in records.values() if r.server == doc["metadata"]["name"]]
                statuses.append(("Server", doc["metadata"]["name"],
                                 status.server_status(doc, desired, recs, now, server_config_for(doc, configs))))
        # Experiments', Pipelines'... statuses follow from the models' new ones: all go in ONE transaction.
        statuses += self._configuring_kinds(ns, docs, self._with_statuses(docs, statuses, "Model"), now)
        fresh_models, experiments, changed_under_us = await off_loop(self._write_and_read, ns, docs, statuses)
        if changed_under_us:
            self._dirty.add(ns)  # next pass sees the new spec
        self.routes.publish_namespace(ns, fresh_models, records, experiments, runtime)
        self._start_drains(ns)

    def _read(self, ns: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        """What a pass over ``ns`` reads (in the store thread): its documents, other namespaces' Servers
        and ServerConfigs."""
        docs = self.store.list(namespace=ns)
        all_servers = [d for d in self.store.list("Server") if d["metadata"]["namespace"] != ns]
        configs = [d for d in self.store.list("ServerConfig") if d["metadata"]["namespace"] != ns]
        return docs, all_servers, configs

    @staticmethod
    def _with_statuses(docs: list[dict[str, Any]], statuses: list[tuple[str, str, dict[str, Any]]],
                       kind: str) -> list[dict[str, Any]]:
        """The documents of ``kind`` as they will be once ``statuses`` are written."""
        new = {name: st for k, name, st in statuses if k == kind}
        return [{**d, "status": new[d["metadata"]["name"]]} if d["metadata"]["name"] in new else d
                for d in docs if d["kind"] == kind]

    def _start_drains(self, ns: str) -> None:
        """Models marked DRAINING this pass left the routes just published: unload them DRAIN_SECONDS from now."""
        if not self._draining:
            return
        until = time.time() + DRAIN_SECONDS
        for drained in self._draining:
            drained.retry_at = until
        self._draining.clear()
        asyncio.get_running_loop().call_later(DRAIN_SECONDS, self.mark, ns)

    def _forget_departed(self, ns: str, docs: list[dict[str, Any]]) -> None:
        """Drop disconnected replicas whose Server is gone or was scaled below them: nothing to wait for."""
        desired = {d["metadata"]["name"]: server_spec(d).desired_replicas() for d in docs if d["kind"] == "Server"}
        for rec in self.hub.in_namespace(ns):
            if not rec.connected and rec.index >= desired.get(rec.server, 0):
                self.hub.forget(rec.key)

    async def _drive(self, ns: str, name: str, doc: dict[str, Any], mp: ModelPlan,
                     records: dict[str, ReplicaRecord], gen: int) -> None:
        """Send the loads a plan asks for that are not done or under way."""
        now = time.time()
        source: wire.ModelSource | None = None
        for ref in mp.replicas:
            rec = records.get(str(ref))
            if rec is None or not rec.connected or not rec.readiness.ready:
                continue
            m = rec.models.get(name)
            if m is not None and m.generation >= gen and m.state in ("LOADED", "LOADING"):
                continue
            attempts = 0
            if m is not None and m.state == "LOAD_FAILED" and m.generation >= gen:
                if m.attempts >= status.MAX_LOAD_ATTEMPTS or now < m.retry_at:
                    continue
                attempts = m.attempts
            if source is None:
                source = model_source(self.store, ns, doc)
            if await self.hub.send(rec, wire.Load(namespace=ns, name=name, generation=gen, source=source)):
                rec.models[name] = ReplicaModel("LOADING", gen, attempts=attempts,
                                                retry_at=m.retry_at if m else 0.0)

    async def _unload_strays(self, ns: str, models: dict[str, dict[str, Any]],
                             records: dict[str, ReplicaRecord]) -> None:
        plans = self.plans[ns].models
        for key, rec in records.items():
            if not rec.connected or not rec.readiness.ready:
                continue  # it serves nothing now; if it comes back still holding models, decide then
            for name, m in list(rec.models.items()):
                wanted = name in models and any(str(r) == key for r in plans[name].replicas)
                if wanted or m.state == "UNLOADING":
                    continue
                if m.state == "LOAD_FAILED":
                    rec.models.pop(name, None)
                    continue
                now = time.time()
                if m.state == "LOADED":
                    # Drain first: the routes published at the end of this pass no longer name this
                    # replica for the model; unload once gateways have had time to follow (the drain
                    # time counts from that publication: see _start_drains).
                    drained = ReplicaModel("DRAINING", m.generation, m.memory, retry_at=now + DRAIN_SECONDS)
                    rec.models[name] = drained
                    self._draining.append(drained)
                    continue
                if m.state == "DRAINING" and now < m.retry_at:
                    continue
                if await self.hub.send(rec, wire.Unload(name=name)):
                    rec.models[name] = ReplicaModel("UNLOADING", m.generation, m.memory)

    def _write_and_read(self, ns: str, docs: list[dict[str, Any]], statuses: list[tuple[str, str, dict[str, Any]]]
                        ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], bool]:
        """In the store thread: write the pass's statuses, then read the Models and Experiments as stored."""
        changed = bool(self._write_statuses(ns, docs, statuses))
        return self.store.list("Model", ns), self.store.list("Experiment", ns), changed

    def _write_statuses(self, ns: str, docs: list[dict[str, Any]],
                        statuses: list[tuple[str, str, dict[str, Any]]]) -> bool:
        """Write the statuses that changed in ONE transaction, each compared-and-swapped against the version
        this pass read (runs in the store thread).  True when one was skipped: its object changed or went."""
        current = {(d["kind"], d["metadata"]["name"]): d for d in docs}
        updates = [StatusUpdate(kind, ns, name, st, current[(kind, name)]["metadata"]["resourceVersion"])
                   for kind, name, st in statuses if current[(kind, name)].get("status") != st]
        if not updates:
            return False
        self._local.writing = True  # the listener, called in this thread, knows these events are ours
        try:
            results = self.store.update_statuses(updates)
        finally:
            self._local.writing = False
        return any(isinstance(r, (Conflict, NotFound)) for r in results)

    def _configuring_kinds(self, ns: str, docs: list[dict[str, Any]], fresh_models: list[dict[str, Any]],
                           now: float) -> list[tuple[str, str, dict[str, Any]]]:
        """Statuses of Experiments, Pipelines, SeldonRuntimes and ServerConfigs.  ``docs`` is what this
        pass read at its start (these kinds are unchanged since); ``fresh_models`` carry new statuses."""
        models = {d["metadata"]["name"]: d for d in fresh_models}
        of_kind: dict[str, list[dict[str, Any]]] = {}
        for d in docs:
            of_kind.setdefault(d["kind"], []).append(d)
        experiments = of_kind.get("Experiment", [])
        claimed: dict[str, str] = {}

        # an experiment that already holds its default keeps it; then the oldest claims it
        def seniority(d: dict[str, Any]) -> tuple[bool, str, str]:
            held = bool((d.get("status") or {}).get("holdsDefault"))
            return (not held, d["metadata"]["creationTimestamp"], d["metadata"]["name"])

        for exp in sorted(experiments, key=seniority):
            default = (exp.get("spec") or {}).get("default")
            if default and default not in claimed:
                claimed[default] = exp["metadata"]["name"]
        statuses = [("Experiment", e["metadata"]["name"], experiment_status(e, models, claimed, now))
                    for e in experiments]
        pipelines = of_kind.get("Pipeline", [])
        statuses += [("Pipeline", p["metadata"]["name"], pipeline_status(p, models, now)) for p in pipelines]
        servers = of_kind.get("Server", [])
        runtimes = of_kind.get("SeldonRuntime", [])
        configs = of_kind.get("ServerConfig", [])
        names = [d["metadata"]["name"] for d in servers]
        statuses += [("SeldonRuntime", r["metadata"]["name"], runtime_status(r, names, now)) for r in runtimes]
        statuses += [("ServerConfig", c["metadata"]["name"], server_config_status(
            c, [d["metadata"]["name"] for d in servers
                if (d.get("spec") or {}).get("serverConfig") == c["metadata"]["name"]], now)) for c in configs]
        return statuses

def model_source(store: Store, ns: str, doc: dict[str, Any]) -> wire.ModelSource:
    spec = model_spec(doc)
    data, error = secrets.resolve(store, ns, spec.secretName)
    return wire.ModelSource(
        storage_uri=spec.storageUri, artifact_version=spec.artifactVersion,
        requirements=list(spec.requirements), memory=spec.memory_bytes(),
        parameters={p.name: p.value for p in spec.parameters or []},
        secret_name=spec.secretName, secret=data, secret_error=error)
