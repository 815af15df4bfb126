"""The reconcile loop: the one place where plans become I/O.

For each namespace that changed (a resource, an agent event) or still has models that are not
available (on a timer), it builds a snapshot, asks the pure scheduler for a plan, sends load/unload
commands to agents, writes statuses that changed, and republishes the routing table.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from berth.control import rollouts, secrets, status
from berth.control.autoscale_loop import Autoscaler
from berth.control.clock import clock
from berth.control.eviction import Evictor, with_overcommit
from berth.control.experiments import experiment_status
from berth.control.hub import AgentHub, ReplicaModel, ReplicaRecord
from berth.control.metrics import ControlMetrics
from berth.control.pipelines import pipeline_statuses
from berth.control.routes import RoutesPublisher
from berth.control.slices import Slicer, let_go
from berth.control.tenants import runtime_status, server_config_status
from berth.control.usage import UsageBook
from berth.errors import Conflict, NotFound
from berth.resources import instances
from berth.resources.kinds import model_spec, server_spec
from berth.resources.podspec import RUNS, inference_server, server_config_for
from berth.resources.statuses import AnyStatus, ModelStatus
from berth.scheduler import plan
from berth.scheduler.build import SnapshotCache, model_want, snapshot_for
from berth.scheduler.snapshot import ModelPlan, ModelWant, Plan, Policy, ReplicaInfo, ReplicaRef
from berth.store.base import Event, StatusUpdate, Store
from berth.store.offloop import off_loop, on_loop
from berth.wire import agent as wire

log = logging.getLogger("berth.control.reconcile")
POLICY_ANNOTATION = "berth.io/placement-policy"
RETRY_INTERVAL = 2.0  # seconds between timer passes over namespaces with unavailable models
DRAIN_SECONDS = 1.0  # a model leaving a replica stops being routed there this long before it is unloaded
WARMUP_LIMIT = 10.0  # at most this long after start-up, routes wait for declared replicas to reconnect
# After passes that kept the loop busy for t seconds, the reconciler rests min(t * REST_RATIO, MAX_REST) before the
# next (what is marked meanwhile waits for it): under a stream of agent events it would otherwise pass back to
# back and keep the process's threads runnable all the time, and a thread that never sleeps is the one the
# operating system makes wait longest when it wakes (/healthz, docs/responsiveness.md).
REST_RATIO = 0.5
MAX_REST = 0.25  # seconds
BUSY_ENOUGH = 0.02  # passes shorter than this (seconds) need no rest


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
        capabilities=tuple(rec.hello.capabilities),
        memory=max(0, rec.hello.memory - rollouts.extra_copies_memory(rec.models)),
        overcommit_percent=rec.hello.overcommit_percent, connected=rec.connected,
        ready=rec.readiness.ready, address=rec.hello.inference.http,
        last_error=error, error_since=since,
        loaded=tuple(dict.fromkeys(instances.model_of(n)[0] for n, m in rec.models.items()
                                   if m.state in ("LOADED", "LOADING"))),
        unimportable=rec.unimportable)


# Model documents validated once, not every pass (a ModelWant is a pure function of its document: safe to share)
_SNAPSHOTS = SnapshotCache()


def _plan(ns: str, docs: list[dict[str, Any]], replicas: list[ReplicaInfo],
          assignments: dict[str, tuple[ReplicaRef, ...]], policy: Policy, previous: Plan | None) -> Plan:
    """Snapshot and plan (pure: run in a worker thread)."""
    return plan(snapshot_for(ns, docs, replicas, assignments, policy, cache=_SNAPSHOTS), previous=previous)


def _spec_key(doc: dict[str, Any]) -> tuple[Any, Any, Any]:
    """Identifies a model's spec: its uid and generation (a new spec, or a new object, changes it), and the
    replicas planned (autoscaling changes them without a new generation: control/autoscale_loop.py)."""
    meta = doc["metadata"]
    return meta.get("uid"), meta.get("generation"), (doc.get("spec") or {}).get("replicas")


def _replica_inputs(name: str, mp: ModelPlan, records: dict[str, ReplicaRecord],
                    generations: tuple[int, ...] = (1,)) -> tuple[Any, ...]:
    """Everything of the planned replicas that a model's status reads (``status.model_status``): the
    copies of ``generations`` (the desired and the serving one)."""
    rows: list[Any] = []
    for ref in mp.replicas:
        rec = records.get(str(ref))
        if rec is None:
            rows.append(None)
            continue
        copies = [rec.models.get(instances.instance(name, g)) for g in generations]
        rows.append((rec.connected, rec.disconnect_reason, rec.readiness.ready, rec.readiness.error,
                     rec.hello.inference.http,
                     *(None if m is None else (m.state, m.generation, m.attempts, m.message, m.memory, m.duration,
                                               m.inference_seconds) for m in copies)))
    return tuple(rows)


@dataclass
class _Memo:
    """What a model's last status was computed from; equal inputs and an unchanged stored status skip the
    model's status in the next pass (a pass then costs little for models nothing happened to)."""
    spec: tuple[Any, Any, Any]
    fingerprint: str
    want: ModelWant
    inputs: tuple[Any, ...]
    status: ModelStatus | None = None


Written = tuple[str, str, AnyStatus]  # (kind, name, its new status): what a pass writes, in one transaction


class Reconciler:
    def __init__(self, store: Store, hub: AgentHub, routes: RoutesPublisher,
                 on_servers_changed: Callable[[], None] | None = None,
                 metrics: ControlMetrics | None = None, usage: UsageBook | None = None,
                 autoscaler: Autoscaler | None = None) -> None:
        self.store = store
        self.metrics = metrics
        self.usage = usage  # the gateways' latest usage reports (control/usage.py)
        self.autoscaler = autoscaler  # replicas decided from the load (control/autoscale_loop.py)
        self.evictor = Evictor()  # overcommit residency: evictions and reloads (control/eviction.py)
        if metrics is not None:
            metrics.residency = self.evictor.book
        self.hub = hub
        self.routes = routes
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop run() runs on: events are handled there
        self._local = threading.local()  # .writing: this thread is writing our own statuses
        self._on_servers_changed = on_servers_changed
        self.plans: dict[str, Plan] = {}  # last plan per namespace: the next one re-plans incrementally
        self._draining: list[ReplicaModel] = []  # marked DRAINING in the pass under way
        self._memo: dict[str, dict[str, _Memo]] = {}  # namespace -> model -> what its last status came from
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
            busy = time.monotonic()
            for ns in todo:
                try:
                    await self.reconcile(ns)
                except Exception:  # one namespace's trouble must not stop the others
                    log.exception("reconcile of namespace %s failed", ns)
                    self._dirty.add(ns)
            await self._rest(stop, time.monotonic() - busy)
            if not self.routes.warm.is_set() and (
                    self._replicas_back() or time.monotonic() - started > WARMUP_LIMIT):
                # publish every namespace's routes, then open; what is marked meanwhile stays marked
                todo, self._dirty = sorted(self._dirty | await self._all_namespaces()), set()
                for ns in todo:
                    await self.reconcile(ns)
                self.routes.set_warm()

    @staticmethod
    async def _rest(stop: asyncio.Event, busy: float) -> None:
        """After passes that took ``busy`` seconds, rest a part of that (see REST_RATIO) unless stopped."""
        if busy < BUSY_ENOUGH or stop.is_set():
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=min(busy * REST_RATIO, MAX_REST))

    def _unsettled(self) -> set[str]:
        out = set()
        for doc in self.store.list("Model"):
            st = doc.get("status") or {}
            # a rollout under way (or failed, its loads retried with backoff) while the old version serves
            if st.get("state") != status.AVAILABLE or (st.get("rollout") or {}).get("state") not in (None, "Complete"):
                out.add(doc["metadata"]["namespace"])
        return out

    async def reconcile(self, ns: str) -> None:
        self.passes += 1
        now = time.time()
        docs, all_servers, configs = await off_loop(self._read, ns)
        # the loop serves others between models: a pass over 1,000 models is long, and every per-model loop of
        # it (before planning and after) hands the loop back every slice (docs/responsiveness.md)
        slicer = Slicer()
        if self.autoscaler is not None:  # autoscaled Models are planned with the replicas decided
            docs = self.autoscaler.adjust(ns, docs)
        of_kind = await _by_kind(docs, slicer)
        configs += of_kind.get("ServerConfig", [])  # a Server's config may live elsewhere
        models = {d["metadata"]["name"]: d for d in of_kind.get("Model", [])}
        self._forget_departed(ns, of_kind.get("Server", []))
        records = {f"{r.server}/{r.index}": r for r in self.hub.in_namespace(ns)}
        assignments = await _assignments(records, slicer)
        self.evictor.hold_places(ns, assignments)  # an evicted model keeps its place (docs/overcommit.md)
        runtime = next(iter(of_kind.get("SeldonRuntime", [])), None)
        policy = ((runtime or {}).get("metadata", {}).get("annotations") or {}).get(POLICY_ANNOTATION)
        infos: list[ReplicaInfo] = []
        for rec in records.values():  # each reads every model the replica holds
            infos.append(replica_info(rec))
            await slicer.tick()
        # Planning is pure and, for 1,000 models, tens of milliseconds: a worker thread does it while the
        # loop serves (its inputs are this pass's own documents and frozen replica infos).
        result = await asyncio.to_thread(
            _plan, ns, [d for d in docs if d["kind"] != "ServerConfig"] + all_servers + configs,
            with_overcommit(infos, of_kind.get("Server", [])), assignments,
            "spread" if policy == "spread" else "binpack", self.plans.get(ns))
        self.plans[ns] = result
        # which placed models are loaded: sliced like the pass (it reads the live records, so not in a thread)
        await self.evictor.decide_sliced(ns, models, result, records, self.usage, slicer)
        if self.metrics is not None:
            self.metrics.schedule_attempts[ns] += len(result.models)
            for mp in result.models.values():
                await slicer.tick()
                for code in {r.code for r in mp.reasons} if mp.state != "Scheduled" else ():
                    self.metrics.schedule_failures[(ns, code)] += 1
        statuses: list[Written] = []
        memo = self._memo.get(ns, {})
        self._memo[ns] = fresh = {}
        keep: dict[str, set[int]] = {}  # model -> the generations its replicas keep (desired, serving)
        gens = await self._drive_all(ns, models, result, records, memo, slicer)  # loads before statuses
        for name, doc in models.items():
            await slicer.tick()
            mp = result.models[name]
            before = memo.get(name)
            same_spec = before is not None and before.spec == _spec_key(doc)
            fp, gen = gens[name]
            old = doc.get("status") or {}
            want = before.want if before is not None and same_spec else model_want(doc)
            ro = rollouts.decide(name, gen, old.get("servingGeneration") or old.get("artifactGeneration"),
                                 [str(r) for r in mp.replicas], records, want.replicas)
            keep[name] = {ro.desired, ro.serving}
            fresh[name] = memo_now = _Memo(_spec_key(doc), fp, want,
                                           (gen, mp, ro, _replica_inputs(name, mp, records, (gen, ro.serving)),
                                            self.evictor.status_inputs(ns, name),
                                            self.autoscaler.changes(ns, name) if self.autoscaler else None))
            if before is not None and before.inputs == memo_now.inputs and before.status == old:
                memo_now.status = before.status  # nothing it depends on changed: the stored status stands
                continue
            memo_now.status = st = status.model_status(doc, want, mp, records, gen, fp, now)
            rollouts.amend(st, doc, ro, old, now)
            self.evictor.amend(st, doc, ns, old, now)
            if self.autoscaler is not None:
                self.autoscaler.amend(st, ns, name)
            statuses.append(("Model", name, st))
        await self._unload_strays(ns, models, records, slicer, keep)
        await self.evictor.act(ns, records, self.hub, self._draining, DRAIN_SECONDS, keep)
        for doc in of_kind.get("Server", []):
            desired = server_spec(doc).desired_replicas()
            recs = [r for r in records.values() if r.server == doc["metadata"]["name"]]
            server_st = status.server_status(doc, desired, recs, now, server_config_for(doc, configs))
            if self.autoscaler is not None:
                self.autoscaler.amend_server(server_st, ns, doc["metadata"]["name"])
            statuses.append(("Server", doc["metadata"]["name"], server_st))
        # Experiments', Pipelines'... statuses follow from the models' new ones: all go in ONE transaction.
        # Only Experiments and Pipelines read the models (as they will be written): with none, no copies.
        reads_models = bool(of_kind.get("Experiment") or of_kind.get("Pipeline"))
        with_new = await _with_statuses(of_kind.get("Model", []) if reads_models else [], statuses, "Model", slicer)
        statuses += self._configuring_kinds(ns, of_kind, with_new, now)
        fresh_models, experiments, changed_under_us = await off_loop(self._write_and_read, ns, docs, statuses)
        if changed_under_us:
            self._dirty.add(ns)  # next pass sees the new spec
        pipelines = await _with_statuses(of_kind.get("Pipeline", []), statuses, "Pipeline", slicer)
        await self.routes.publish_sliced(ns, fresh_models, records, experiments, runtime,  # sliced like the pass
                                         pipelines=pipelines, slicer=slicer)
        self._start_drains(ns)
        # what only this pass held (its documents, the last pass's memo) freed in slices, not all at once
        await let_go(slicer, docs, *of_kind.values(), of_kind, models, with_new, fresh_models, statuses, memo)

    def _read(self, ns: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        """What a pass over ``ns`` reads (in the store thread): its documents, other namespaces' Servers
        and ServerConfigs."""
        docs = self.store.list(namespace=ns)
        all_servers = [d for d in self.store.list("Server") if d["metadata"]["namespace"] != ns]
        configs = [d for d in self.store.list("ServerConfig") if d["metadata"]["namespace"] != ns]
        return docs, all_servers, configs

    def _start_drains(self, ns: str) -> None:
        """Models marked DRAINING this pass left the routes just published: unload them DRAIN_SECONDS from now."""
        if not self._draining:
            return
        until = time.time() + DRAIN_SECONDS
        for drained in self._draining:
            drained.retry_at = until
        self._draining.clear()
        asyncio.get_running_loop().call_later(DRAIN_SECONDS, self.mark, ns)

    def _forget_departed(self, ns: str, servers: list[dict[str, Any]]) -> None:
        """Drop disconnected replicas whose Server is gone or was scaled below them: nothing to wait for."""
        desired = {d["metadata"]["name"]: server_spec(d).desired_replicas() for d in servers}
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
            if rec is None or not rec.connected or not rec.readiness.ready or self.evictor.blocked(ns, name, str(ref)):
                continue
            inst = instances.instance(name, gen)  # each version loads beside the others, under its own name
            m = rec.models.get(inst)
            if m is not None and m.generation >= gen and m.state in ("LOADED", "LOADING"):
                continue
            attempts = 0
            if m is not None and m.state == "LOAD_FAILED" and m.generation >= gen:
                if m.attempts >= status.MAX_LOAD_ATTEMPTS or now < m.retry_at:
                    continue
                attempts = m.attempts
            if source is None:  # a Secret is read (and unsealed) from the store: in the store thread
                source = (await off_loop(model_source, self.store, ns, doc) if (doc.get("spec") or {}).get("secretName")
                          else model_source(self.store, ns, doc))
            if await self.hub.send(rec, wire.Load(namespace=ns, name=inst, generation=gen, source=source)):
                rec.models[inst] = ReplicaModel("LOADING", gen, attempts=attempts,
                                                retry_at=m.retry_at if m else 0.0)
                self.evictor.load_sent(ns, name, str(ref))

    async def _drive_all(self, ns: str, models: dict[str, dict[str, Any]], result: Plan,
                         records: dict[str, ReplicaRecord], memo: dict[str, _Memo],
                         slicer: Slicer) -> dict[str, tuple[str, int]]:
        """Send every load the plan asks for before any status is computed, so agents start on all of them while
        the pass goes on (docs/loading.md); answers each model's (fingerprint, generation)."""
        gens: dict[str, tuple[str, int]] = {}
        async with self.hub.batch():  # one frame for many loads (control/hub.py)
            for name, doc in models.items():
                await slicer.tick()
                before = memo.get(name)
                fp = before.fingerprint if before is not None and before.spec == _spec_key(doc) else fingerprint(doc)
                old = doc.get("status") or {}
                gen = (old.get("artifactGeneration") if old.get("artifactFingerprint") == fp else None) \
                    or doc["metadata"].get("generation", 1)
                gens[name] = (fp, gen)
                await self._drive(ns, name, doc, result.models[name], records, gen)
        return gens

    async def _unload_strays(self, ns: str, models: dict[str, dict[str, Any]],
                             records: dict[str, ReplicaRecord], slicer: Slicer,
                             keep: dict[str, set[int]] | None = None) -> None:
        plans = self.plans[ns].models
        keep = keep or {}
        for key, rec in records.items():
            if not rec.connected or not rec.readiness.ready:
                continue  # it serves nothing now; if it comes back still holding models, decide then
            for inst, m in list(rec.models.items()):
                await slicer.tick()
                model, generation = instances.model_of(inst)
                wanted = model in models and any(str(r) == key for r in plans[model].replicas) \
                    and generation in keep.get(model, {generation})
                name = inst
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

    def _write_and_read(self, ns: str, docs: list[dict[str, Any]], statuses: list[Written]
                        ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], bool]:
        """In the store thread: write the pass's statuses, then answer the Models and Experiments as stored.
        When every write went through, those are the pass's documents with the statuses written (no re-read
        of the namespace); when one was skipped (its object changed or went), they are read again."""
        written = self._write_statuses(ns, docs, statuses)
        if written is None:
            return self.store.list("Model", ns), self.store.list("Experiment", ns), True
        stored = {(d["kind"], d["metadata"]["name"]): d for d in written}
        models = [stored.get(("Model", d["metadata"]["name"]), d) for d in docs if d["kind"] == "Model"]
        experiments = [stored.get(("Experiment", d["metadata"]["name"]), d) for d in docs
                       if d["kind"] == "Experiment"]
        return models, experiments, False

    def _write_statuses(self, ns: str, docs: list[dict[str, Any]],
                        statuses: list[Written]) -> list[dict[str, Any]] | None:
        """Write the statuses that changed in ONE transaction, each compared-and-swapped against the version
        this pass read (runs in the store thread).  Answers the objects as written, or None when one was
        skipped: its object changed or went."""
        current = {(d["kind"], d["metadata"]["name"]): d for d in docs}
        updates = [StatusUpdate(kind, ns, name, cast("dict[str, Any]", st),
                                current[(kind, name)]["metadata"]["resourceVersion"])
                   for kind, name, st in statuses if current[(kind, name)].get("status") != st]
        if not updates:
            return []
        self._local.writing = True  # the listener, called in this thread, knows these events are ours
        try:
            results = self.store.update_statuses(updates)
        finally:
            self._local.writing = False
        if any(isinstance(r, (Conflict, NotFound)) for r in results):
            return None
        return [r for r in results if isinstance(r, dict)]

    def _configuring_kinds(self, ns: str, of_kind: dict[str, list[dict[str, Any]]],
                           fresh_models: list[dict[str, Any]], now: float) -> list[Written]:
        """Statuses of Experiments, Pipelines, SeldonRuntimes and ServerConfigs.  ``of_kind`` is what this
        pass read at its start, by kind (these kinds are unchanged since); ``fresh_models`` carry new statuses."""
        models = {d["metadata"]["name"]: d for d in fresh_models}
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
        piped = pipeline_statuses(ns, of_kind.get("Pipeline", []), models, now)  # before experiments that use them
        fresh_pipes = {p["metadata"]["name"]: {**p, "status": dict(st)}
                       for p, (_, st) in zip(of_kind.get("Pipeline", []), piped, strict=True)}
        statuses: list[Written] = [
            ("Experiment", e["metadata"]["name"], experiment_status(e, models, claimed, now, fresh_pipes))
            for e in experiments]
        statuses += [("Pipeline", name, st) for name, st in piped]
        servers = of_kind.get("Server", [])
        runtimes = of_kind.get("SeldonRuntime", [])
        configs = of_kind.get("ServerConfig", [])
        names = [d["metadata"]["name"] for d in servers]
        statuses += [("SeldonRuntime", r["metadata"]["name"], runtime_status(r, names, now)) for r in runtimes]
        statuses += [("ServerConfig", c["metadata"]["name"], server_config_status(
            c, [d["metadata"]["name"] for d in servers
                if (d.get("spec") or {}).get("serverConfig") == c["metadata"]["name"]], now)) for c in configs]
        return statuses

async def _by_kind(docs: list[dict[str, Any]], slicer: Slicer) -> dict[str, list[dict[str, Any]]]:
    """A pass's documents by kind, in their order (sliced: one pass over every document)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        out.setdefault(d["kind"], []).append(d)
        await slicer.tick()
    return out


async def _assignments(records: dict[str, ReplicaRecord], slicer: Slicer) -> dict[str, tuple[ReplicaRef, ...]]:
    """Model -> the replicas loading or holding it, from the live records (sliced: every model of every replica)."""
    out: dict[str, tuple[ReplicaRef, ...]] = {}
    for rec in records.values():
        ref = ReplicaRef(rec.server, rec.index)
        for inst, m in list(rec.models.items()):
            name = instances.model_of(inst)[0]
            if m.state in ("LOADED", "LOADING") and ref not in out.get(name, ()):
                out[name] = (*out.get(name, ()), ref)
            await slicer.tick()
    return out


async def _with_statuses(docs: list[dict[str, Any]], statuses: list[Written], kind: str,
                         slicer: Slicer) -> list[dict[str, Any]]:
    """``docs`` (all of ``kind``) as they will be once ``statuses`` are written (sliced: copies of each)."""
    if not docs:
        return []
    new: dict[str, AnyStatus] = {}
    for k, name, st in statuses:
        if k == kind:
            new[name] = st
        await slicer.tick()
    out = []
    for d in docs:
        name = d["metadata"]["name"]
        out.append({**d, "status": new[name]} if name in new else d)
        await slicer.tick()
    return out


def model_source(store: Store, ns: str, doc: dict[str, Any]) -> wire.ModelSource:
    spec = model_spec(doc)
    data, error = secrets.resolve(store, ns, spec.secretName)
    return wire.ModelSource(
        storage_uri=spec.storageUri, artifact_version=spec.artifactVersion,
        requirements=list(spec.requirements), memory=spec.memory_bytes(),
        parameters={p.name: p.value for p in spec.parameters or []},
        secret_name=spec.secretName, secret=data, secret_error=error)
