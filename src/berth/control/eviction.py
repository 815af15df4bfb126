"""The reconciler's side of overcommit: residency decided per replica each pass, and turned into I/O.

Per pass over a namespace (:class:`Evictor`, called by :mod:`berth.control.reconcile`):

- :meth:`Evictor.decide` builds each ready replica's residents (the models the plan puts there, with their
  effective memory, recency, pins and wakes) and asks :func:`berth.control.residency.decide`;
- the reconciler's loads skip models residency leaves out (:meth:`Evictor.blocked`) and report the loads of
  evicted models they send (:meth:`Evictor.load_sent`: a reload);
- :meth:`Evictor.act` drains loaded models residency evicts (their routes go first, as for any unload)
  and then unloads them with ``keep_artifact`` (the agent keeps the artifact for the reload);
- :meth:`Evictor.drop_unwanted` removes kept artifacts no longer wanted (the model deleted or moved away, even
  while the agent was disconnected: its hello lists what it keeps; or a rollout past their generation);
- :meth:`Evictor.amend` writes evictions into the model's status (``Evicted`` replica rows with the reason;
  the model stays available: the next request reloads it).

Recency comes from the gateways' usage reports (:class:`berth.control.usage.UsageBook`, on the control
plane's monotonic clock, as this module's times are); without usage, from load times.  See docs/overcommit.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Generator, Iterable
from typing import Any, cast

from berth.control import residency, status
from berth.control.clock import rfc3339
from berth.control.hub import AgentHub, ReplicaModel, ReplicaRecord
from berth.control.rollouts import extra_copies_memory
from berth.control.slices import Slicer
from berth.control.usage import UsageBook
from berth.resources.instances import model_of
from berth.resources.quantity import parse_quantity
from berth.resources.statuses import ModelMemory, ModelReplicaStatus, ModelStatus, ReplicaEviction
from berth.scheduler.snapshot import Plan, ReplicaInfo, ReplicaRef
from berth.wire import agent as wire

log = logging.getLogger("berth.control.eviction")
LIVE = ("LOADED", "LOADING", "DRAINING")


def declared_memory(doc: dict[str, Any]) -> int:
    value = (doc.get("spec") or {}).get("memory")
    if value is None:
        return 0
    try:
        return parse_quantity(value, field="spec.memory")
    except Exception:  # refused at apply; a stored bad value counts as undeclared
        return 0


def with_overcommit(infos: Iterable[ReplicaInfo], docs: Iterable[dict[str, Any]]) -> list[ReplicaInfo]:
    """Replica infos with their Server's ``berth.io/overcommit`` annotation in place of what the agent said."""
    over = {d["metadata"]["name"]: pct for d in docs if d["kind"] == "Server"
            and (pct := residency.server_overcommit(d["metadata"].get("annotations"))) is not None}
    return [dataclasses.replace(i, overcommit_percent=over[i.server]) if i.server in over else i for i in infos]


class Evictor:
    def __init__(self, clock: Callable[[], float] = time.monotonic,
                 min_resident_s: float = residency.MIN_RESIDENT_S) -> None:
        self.usage: UsageBook | None = None  # set for each pass from the reconciler's
        self.clock = clock
        self.min_resident_s = min_resident_s
        self.book = residency.ResidencyBook()
        self.decisions: dict[str, dict[str, residency.Residency]] = {}  # namespace -> replica key -> decision
        self._declared_memo: dict[tuple[str, str], tuple[Any, int]] = {}  # spec.memory as written, in bytes
        # per (namespace, replica key): (the connection's start, instance -> generation) of the artifacts the
        # agent keeps for evicted models; seeded from each connection's hello, kept up to date by this pass
        self.kept: dict[tuple[str, str], tuple[float, dict[str, int]]] = {}
        self._placed: dict[str, dict[str, set[str]]] = {}  # namespace -> model -> replica keys the plan puts it on

    # -- the decision ------------------------------------------------------------------------------
    def hold_places(self, ns: str, assignments: dict[str, tuple[ReplicaRef, ...]]) -> None:
        """An evicted model keeps its place (its artifact is on that replica's disk): the scheduler sees it
        where it was, as it sees loaded models."""
        for (n, model, key), _ in self.book.evicted.items():
            if n != ns:
                continue
            server, _, index = key.rpartition("/")
            ref = ReplicaRef(server, int(index))
            if ref not in assignments.get(model, ()):
                assignments[model] = (*assignments.get(model, ()), ref)

    def decide(self, ns: str, models: dict[str, dict[str, Any]], plan: Plan,
               records: dict[str, ReplicaRecord], usage: UsageBook | None = None) -> None:
        """Which placed models each ready replica of ``ns`` loads, in one go (see :meth:`decide_sliced`)."""
        steps = self._decide(ns, models, plan, records, usage)
        try:
            request = next(steps)
            while True:
                request = steps.send(request[0](*request[1:]) if request is not None else None)
        except StopIteration:
            pass

    async def decide_sliced(self, ns: str, models: dict[str, dict[str, Any]], plan: Plan,
                            records: dict[str, ReplicaRecord], usage: UsageBook | None, slicer: Slicer) -> None:
        """:meth:`decide` on the event loop without holding it: the loop is handed back between models (per
        ``slicer``), and the rule of an overcommitted replica (pure, tens of milliseconds over 1,000 models)
        runs in a worker thread.  Same decisions as :meth:`decide` (one ``now`` for the pass)."""
        steps = self._decide(ns, models, plan, records, usage)
        try:
            request = next(steps)
            while True:
                if request is None:
                    await slicer.tick()
                    request = steps.send(None)
                else:
                    request = steps.send(await asyncio.to_thread(*request))
        except StopIteration:
            pass

    def _decide(self, ns: str, models: dict[str, dict[str, Any]], plan: Plan, records: dict[str, ReplicaRecord],
                usage: UsageBook | None) -> Generator[tuple[Any, ...] | None, Any, None]:
        """The decision, as steps: it yields None between items (a driver may hand the loop back there), or
        ``(fn, *args)``: a pure call whose result the driver sends back."""
        self.usage = usage
        now = self.clock()
        placed: dict[str, list[tuple[str, bool]]] = {}  # replica key -> (model, pinned there)
        keep_pairs: set[tuple[str, str]] = set()
        on: dict[str, set[str]] = {}  # model -> the replica keys the plan puts it on
        for name, mp in plan.models.items():
            yield None
            doc = models.get(name)
            if doc is None:
                continue
            pin = residency.pinned(doc["metadata"].get("annotations"))
            floor = (doc.get("spec") or {}).get("minReplicas") or 0
            keys = on[name] = set()
            for i, ref in enumerate(mp.replicas):
                key = str(ref)
                placed.setdefault(key, []).append((name, pin or i < floor))
                keep_pairs.add((name, key))
                keys.add(key)
        self._placed[ns] = on
        self.book.forget(ns, keep_pairs)
        for gone in [k for k in self._declared_memo if k[0] == ns and k[1] not in models]:
            del self._declared_memo[gone]
        yield None
        decisions: dict[str, residency.Residency] = {}
        for key, names in placed.items():
            rec = records.get(key)
            if rec is None or not rec.connected or not rec.readiness.ready:
                continue
            by_model: dict[str, list[ReplicaModel]] = {}
            for inst, m in list(rec.models.items()):
                by_model.setdefault(model_of(inst)[0], []).append(m)
            seen = []
            for name, pin in names:
                yield None
                mem, loaded, live = self._observe(ns, key, name, models[name], by_model.get(name, ()), now)
                failed = not loaded and any(m.state == "LOAD_FAILED" for m in by_model.get(name, ()))
                if failed:
                    self.book.failed(ns, name)  # the requests it held were answered with the error
                seen.append((name, pin, mem, loaded, live, failed))
            memory = max(0, rec.hello.memory - extra_copies_memory(rec.models))
            if sum(s[2] for s in seen) <= memory:  # everything fits (the usual case): nothing to decide
                decisions[key] = residency.Residency(tuple(n for n, *_ in seen), {}, sum(s[2] for s in seen))
                continue
            residents = []
            for name, pin, mem, loaded, live, failed in seen:
                yield None
                residents.append(self._resident(ns, key, name, pin, mem, loaded, live, now, failed))
            decided: residency.Residency = yield (residency.decide, memory, residents, now, self.min_resident_s)
            decisions[key] = decided
            for name, why in decided.evict.items():
                k = (ns, name, key)
                known = self.book.evicted.get(k)
                if known is None or known.reloading:  # the reason it was first evicted for stands until it reloads
                    self.book.evict(k, residency.Evicted(why, time.time(), unloaded=False))
        self.decisions[ns] = decisions

    def _declared(self, ns: str, name: str, doc: dict[str, Any]) -> int:
        raw = (doc.get("spec") or {}).get("memory")
        known = self._declared_memo.get((ns, name))
        if known is None or known[0] != raw:
            known = self._declared_memo[(ns, name)] = (raw, declared_memory(doc))
        return known[1]

    def _observe(self, ns: str, key: str, name: str, doc: dict[str, Any], copies: Iterable[ReplicaModel],
                 now: float) -> tuple[int, bool, int]:
        """Book what one placed model's copies on a replica say; (effective memory, loaded or loading, live copies)."""
        k = (ns, name, key)
        book = self.book
        book.first_seen.setdefault(k, now)
        live = [m for m in copies if m.state in LIVE]
        loaded = any(m.state in ("LOADED", "LOADING") for m in live)
        measured = 0
        if any(m.state == "LOADED" for m in live):
            book.loaded(k, now)
            ev = book.evicted.get(k)
            if ev is not None and ev.reloading:
                book.drop(k)
            measured = max(m.memory for m in live if m.state == "LOADED")
        elif not loaded:
            book.loaded_at.pop(k, None)
        return residency.effective_memory(self._declared(ns, name, doc), measured), loaded, len(live)

    def _resident(self, ns: str, key: str, name: str, pin: bool, memory: int, loaded: bool, live: int,
                  now: float, failed: bool) -> residency.Resident:
        k = (ns, name, key)
        book = self.book
        used = self.usage.last_used(ns, name) if self.usage is not None else None
        woken = book.woken(ns, name, now)
        loaded_at = book.loaded_at.get(k)
        first = book.first_seen[k]
        recency = max(x for x in (used, loaded_at if loaded_at is not None else first, woken) if x is not None)
        return residency.Resident(name=name, memory=memory, loaded=loaded, recency=recency, pinned=pin, woken=woken,
                                  loaded_at=loaded_at, locked=live > 1, failed=failed)

    def blocked(self, ns: str, name: str, key: str) -> bool:
        """Whether residency keeps ``name`` off replica ``key`` now (no load is sent)."""
        decided = self.decisions.get(ns, {}).get(key)
        return decided is not None and name in decided.evict

    def load_sent(self, ns: str, name: str, key: str) -> None:
        ev = self.book.evicted.get((ns, name, key))
        if ev is not None and not ev.reloading:
            ev.reloading = True
            if ev.unloaded:
                self.book.reloads[ns] += 1
                log.info("reloading evicted model %s/%s on replica %s", ns, name, key)

    # -- the I/O ------------------------------------------------------------------------------------
    def _kept_on(self, ns: str, key: str, rec: ReplicaRecord) -> dict[str, int]:
        """The artifacts replica ``key`` keeps for evicted models: as its hello said when it (re)connected, then
        as this module's unloads and loads changed them."""
        known = self.kept.get((ns, key))
        if known is None or known[0] != rec.connected_at:
            known = self.kept[(ns, key)] = (rec.connected_at, {m.name: m.generation for m in rec.hello.kept})
        return known[1]

    async def drop_unwanted(self, ns: str, records: dict[str, ReplicaRecord], hub: AgentHub,
                            keep: dict[str, set[int]]) -> None:
        """Kept artifacts never leak: one is wanted while its model exists, is placed on that replica, and its
        generation is one the model keeps (desired or serving: ``keep``, the reconciler's); any other (the model
        deleted or moved away, even while the agent was disconnected, or a rollout finished past it) is unloaded
        without ``keep_artifact``, which removes its files."""
        placed = self._placed.get(ns, {})
        for key in [k for n, k in self.kept if n == ns and k not in records]:
            del self.kept[(ns, key)]  # the replica is gone: a new connection says again what it keeps
        for key, rec in records.items():
            if not rec.connected:
                continue
            kept = self._kept_on(ns, key, rec)
            for inst, generation in list(kept.items()):
                m = rec.models.get(inst)
                if m is not None and m.state in ("LOADING", "LOADED"):
                    del kept[inst]  # loaded again: the agent's load turned the kept copy into the loaded one
                    continue
                model, gen = model_of(inst)
                if key in placed.get(model, ()) and gen in keep.get(model, ()):
                    continue
                if await hub.send(rec, wire.Unload(name=inst)):
                    del kept[inst]
                    log.info("removing the kept artifact of %s/%s (generation %d) from replica %s: %s", ns, inst,
                             generation, key, "no longer wanted there" if model in placed else "the model is gone")

    async def act(self, ns: str, records: dict[str, ReplicaRecord], hub: AgentHub,
                  draining: list[ReplicaModel], drain_s: float, keep: dict[str, set[int]] | None = None) -> None:
        """Drain loaded models residency evicts; unload those drained (keeping their artifact); remove kept
        artifacts no longer wanted (``keep``: model -> the generations it keeps, as the reconciler decided)."""
        if keep is not None:
            await self.drop_unwanted(ns, records, hub, keep)
        now = time.time()
        for key, decided in self.decisions.get(ns, {}).items():
            rec = records.get(key)
            if rec is None or not decided.evict:
                continue
            for inst, m in list(rec.models.items()):
                name = model_of(inst)[0]
                ev = self.book.evicted.get((ns, name, key))
                if name not in decided.evict or ev is None:
                    continue
                if m.state == "LOADED":
                    drained = ReplicaModel("DRAINING", m.generation, m.memory, retry_at=now + drain_s)
                    rec.models[inst] = drained
                    draining.append(drained)
                    ev.instance, ev.unloaded = inst, True
                    ev.at = now
                    self.book.evictions[ns] += 1
                    log.info("evicting model %s/%s from replica %s: %s", ns, name, key, ev.eviction.reason)
                elif m.state == "DRAINING" and now >= m.retry_at \
                        and await hub.send(rec, wire.Unload(name=inst, keep_artifact=True)):
                    rec.models[inst] = ReplicaModel("UNLOADING", m.generation, m.memory)
                    self._kept_on(ns, key, rec)[inst] = m.generation

    # -- status -------------------------------------------------------------------------------------
    def status_inputs(self, ns: str, name: str) -> tuple[Any, ...]:
        """What :meth:`amend` reads of ``name`` (for the reconciler's status memo)."""
        found = self.book.evictions_of(ns, name)
        return tuple(sorted((k, e.eviction.reason, e.unloaded, e.reloading) for k, e in found.items())) if found else ()

    def amend(self, st: ModelStatus, doc: dict[str, Any], ns: str, old: dict[str, Any], now: float) -> None:
        """Evicted replicas in the status: their rows say ``Evicted`` and why; a model whose planned copies
        are all loaded or evicted is available (Seldon keeps such a model Available): the next request
        reloads it while the gateway holds the request."""
        name = doc["metadata"]["name"]
        rows = st["replicaStatus"]
        declared = declared_memory(doc)
        measured = max((r.get("memory", 0) for r in rows.values()), default=0)
        if declared or measured:
            st["memory"] = cast(ModelMemory, {"declared": declared, "measured": measured,
                                              "effective": residency.effective_memory(declared, measured)})
        evictions = {k: e for k, e in self.book.evictions_of(ns, name).items() if k in rows}
        if not evictions:
            return
        evicted = reloading = 0
        for key, e in evictions.items():
            row = rows[key]
            if row["state"] in ("Loaded", "LoadFailed"):  # a failed reload shows as the failure it is
                continue
            ev = e.eviction
            info: ReplicaEviction = {"reason": ev.reason, "neededBy": ev.needed_by, "neededMemory": ev.needed_memory,
                                     "memory": ev.memory, "time": rfc3339(e.at), "unloaded": e.unloaded}
            if e.reloading:
                reloading += 1
                rows[key] = cast(ModelReplicaStatus, {**row, "state": "Loading", "eviction": info,
                                                      "message": f"replica {key}: reloading (evicted earlier)"})
            else:
                evicted += 1
                what = "evicted" if e.unloaded else "not loaded (no room)"
                rows[key] = cast(ModelReplicaStatus, {**row, "state": "Evicted", "eviction": info,
                                                      "message": f"replica {key}: {what}: {ev.reason}"})
        if not evicted and not reloading:
            return
        loaded = sum(1 for r in rows.values() if r["state"] == "Loaded")
        if any(r["state"] not in ("Loaded", "Evicted", "Loading") for r in rows.values()) or \
                st["state"] not in (status.AVAILABLE, status.PROGRESSING):
            return
        reason = "Reloading" if reloading and not loaded else "Evicted"
        first = next(iter(e.eviction.reason for e in evictions.values()))
        message = (f"loaded on {loaded} of {st['replicas']} replica(s); "
                   + (f"reloading on {reloading} (woken by a request); " if reloading else "")
                   + (f"evicted on {evicted}: {first}" if evicted else "")).rstrip("; ")
        st["state"], st["reason"], st["message"] = status.AVAILABLE, reason, message
        st["conditions"] = [status.condition("ModelReady", True, reason, message, old, now),
                            status.condition("Ready", True, reason, message, old, now),
                            *[c for c in st["conditions"] if c["type"] == "Scheduled"]]
        history = list(st["history"])
        if history and history[-1].get("state") != status.AVAILABLE and history[-1] not in (old.get("history") or []):
            history.pop()  # model_status's entry described the copies as loading: it is not what happened
        if not history or history[-1].get("state") != status.AVAILABLE or history[-1].get("message") != message:
            history.append({"time": rfc3339(now), "state": status.AVAILABLE, "message": message})
        st["history"] = history[-status.HISTORY_LIMIT:]
