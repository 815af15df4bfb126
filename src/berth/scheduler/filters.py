"""The placement filters, in DESIGN.md's order: namespace, server pin, server alive, capabilities,
memory (replica count is decided by the placer from what these leave).  A server whose inference server
Berth does not run (Triton) is rejected with the server-alive filter, whatever replicas report for it; a
model whose requirements only such a server offers is rejected with the pin, before any server is tried.

Two forms of the same predicates: :func:`find_full` answers "which server can take every replica?"
fast and without words; :func:`evaluate` walks one server replica by replica and records a
:class:`Rejection` for every candidate it turns down.  They must agree; the tests check they do.
"""

from __future__ import annotations

from berth.resources.podspec import RUNS, TRITON_ONLY
from berth.scheduler import reasons
from berth.scheduler.pool import Pool, Slot
from berth.scheduler.snapshot import ModelWant, Rejection


def resolve_pin(model: ModelWant, pool: Pool) -> tuple[str | None, Rejection | None]:
    """Filters 1 and 2: the server ``spec.server`` names (None: any server), or why it cannot be used;
    then whether only a server Berth does not run could meet the model's requirements."""
    pin, rejection = _pin(model, pool)
    if rejection is None and any(r in TRITON_ONLY for r in model.requirements):
        rejection = _unsupported_requirements(model, pool, pin)
    return (None, rejection) if rejection is not None else (pin, None)


def runs(pool: Pool, name: str) -> bool:
    """Whether Berth runs the inference server of ``name``'s replicas (MLServer)."""
    return pool.servers[name].inference_server == RUNS


def _unsupported_requirements(model: ModelWant, pool: Pool, pin: str | None) -> Rejection | None:
    """Triton-only requirements that no server Berth runs here (or the pinned one) offers."""
    offered: set[str] = set()
    declared: list[str] = []
    for name in [pin] if pin is not None else pool.names:
        caps = set(pool.servers[name].capabilities).union(*(s.caps for s in pool.by_server[name]))
        if runs(pool, name):
            offered |= caps
        elif any(r in caps for r in model.requirements if r in TRITON_ONLY):
            declared.append(name)
    needs = tuple(dict.fromkeys(r for r in model.requirements if r in TRITON_ONLY and r not in offered))
    if not needs:
        return None
    return reasons.requires_unsupported_server(needs, pool.namespace, pin, tuple(declared))


def _pin(model: ModelWant, pool: Pool) -> tuple[str | None, Rejection | None]:
    ref = model.server
    if not ref:
        return None, None
    name = ref
    if "/" in ref:
        target_ns, _, name = ref.partition("/")
        if target_ns != pool.namespace:
            known = pool.foreign.get(target_ns)
            exists = None if known is None else name in known
            return None, reasons.cross_namespace(ref, target_ns, name, model.namespace, pool.names, exists)
    if name not in pool.servers:
        return None, reasons.server_not_found(name, pool.namespace, pool.names)
    if not runs(pool, name):
        return None, reasons.unsupported_server(pool.servers[name])
    return name, None


_new_tuple = tuple.__new__


def _fitting(slots: list[Slot], memory: int, kept: list[Slot]) -> list[Slot]:
    return [s for s in slots if s.capacity - s.used >= memory or s in kept]


def find_full(pool: Pool, model: ModelWant, reqs: frozenset[str], pin: str | None,
              kept: list[Slot]) -> tuple[str, list[Slot]] | None:
    """The server that takes all desired replicas (the one holding the model first, then by name),
    with its suitable replicas; None when no server can."""
    by_server, names = pool.eligible(reqs)
    desired, memory = model.replicas, model.memory
    holder = kept[0].server if kept else None
    if holder is not None and runs(pool, holder):
        got = _fitting(by_server.get(holder, []), memory, kept)
        if len(got) >= desired:
            return holder, got
    if pin is None and pool.indexed:
        # the first server by name with ``desired`` fitting replicas, found through the fit index (the
        # holder, already tried, cannot be it: its fitting replicas are a superset of what the index counts)
        return pool.candidates(reqs).tree(desired).first_fit(memory)
    for name in ([pin] if pin is not None else names):
        if name == holder or not runs(pool, name):
            continue
        slots = by_server.get(name)
        if slots is None or len(slots) < desired or (not pool.indexed and pool.maxfree[name] < memory):
            continue
        got = [s for s in slots if s.capacity - s.used >= memory]
        if len(got) >= desired:
            return name, got
        if not pool.indexed:
            pool.tighten(name)
    return None


def evaluate(pool: Pool, model: ModelWant, reqs: frozenset[str], name: str, kept: list[Slot],
             out: list[Rejection]) -> list[Slot]:
    """Filters 3-5 on one server: its suitable replicas; a rejection in ``out`` for each other one."""
    server = pool.servers[name]
    if server.deleting:
        out.append(reasons.server_deleting(name))
        return []
    if server.inference_server != RUNS:
        out.append(reasons.unsupported_server(server))
        return []
    slots = pool.by_server[name]
    if not any(s.info.connected for s in slots):
        out.append(reasons.no_replicas(name, server.desired_replicas, len(slots)))
        out.extend(reasons.replica_not_ready(s.info) for s in slots)
        return []
    caps = _capability_rejections(pool, model, reqs, name)
    suitable: list[Slot] = []
    for slot in slots:
        info = slot.info
        if slot in kept:
            suitable.append(slot)
        elif not (info.connected and info.ready):
            out.append(reasons.replica_not_ready(info))
        elif info.draining:
            out.append(reasons.replica_draining(info))
        elif slot.index in caps:
            out.append(caps[slot.index])
        elif slot.capacity - slot.used < model.memory:
            out.append(reasons.insufficient_memory(info, slot.capacity, slot.used, model.memory))
        else:
            suitable.append(slot)
    known = {s.index for s in slots}
    out.extend(reasons.replica_missing(name, i) for i in range(server.desired_replicas) if i not in known)
    return suitable


def uniform_incapable(pool: Pool, model: ModelWant, reqs: frozenset[str], name: str
                      ) -> tuple[list[Rejection], list[str]] | None:
    """``evaluate`` and ``server_lines`` of a server, nothing kept, in the common case of a server that
    lacks the requirements: every replica of it connected, ready, not draining, reporting its server's
    capabilities (none unimportable), with the indexes 0..n-1 covering its declared replicas.  The
    rejections are then one per replica, worded alike, and the lines that one sentence.  None when the
    server is not such a case (``evaluate`` then words it), or when some replica offers the requirements.
    A model pinned to a server of another kind (one in twenty of 100,000 in the bench) asks this once per
    (requirements, server)."""
    server = pool.servers[name]
    slots = pool.by_server[name]
    if server.deleting or server.inference_server != RUNS or not slots or slots[-1].index != len(slots) - 1 \
            or server.desired_replicas > len(slots):
        return None
    for slot in slots:
        info = slot.info
        if not (info.connected and info.ready) or info.draining or not slot.per_server or slot.broken \
                or reqs <= slot.caps:
            return None
    caps = slots[0].caps  # every replica offers its server's capabilities, none broken: the same set
    missing = tuple(dict.fromkeys(r for r in model.requirements if r not in caps))
    first = reasons.missing_capabilities(name, slots[0].index, missing, slots[0].offered, True, pool.caps_memo)
    code, message, _, _, data = first
    out = [first]
    out.extend(_new_tuple(Rejection, (code, message, name, slot.index, data)) for slot in slots[1:])
    return out, [message]


def _capability_rejections(pool: Pool, model: ModelWant, reqs: frozenset[str], name: str
                           ) -> dict[int, Rejection]:
    """Filter 4 for every replica of a server (memoised: many models share requirements)."""
    key = (model.requirements, name)
    found = pool.caps_rejections.get(key)
    if found is None:
        found = {}
        # replicas of one server mostly report the same capabilities: the words are made once per kind
        # of replica, then one Rejection per replica (a pinned model of 100,000 may be the first to ask)
        made: dict[tuple[frozenset[str], tuple[str, ...], bool, tuple[tuple[str, str], ...]],
                   tuple[tuple[str, ...], Rejection | None]] = {}  # kind of replica -> its words
        for slot in pool.by_server[name]:
            if reqs <= slot.caps:
                continue
            kind = slot.kind
            how = made.get(kind)
            if how is None:
                missing = tuple(dict.fromkeys(r for r in model.requirements if r not in slot.caps))
                absent = tuple(r for r in missing if r not in slot.broken)
                how = made[kind] = (absent, reasons.missing_capabilities(
                    name, slot.index, absent, slot.offered, slot.per_server, pool.caps_memo)) if absent \
                    else (missing, None)
            names, first = how
            if first is None:
                found[slot.index] = reasons.runtime_not_importable(
                    name, slot.index, tuple((r, slot.broken[r]) for r in names), slot.per_server)
            elif first.replica == slot.index:
                found[slot.index] = first
            elif slot.per_server:  # the message names the server, not the replica: only the index differs
                found[slot.index] = _new_tuple(Rejection, (first.code, first.message, first.server, slot.index,
                                                           first.data))
            else:
                found[slot.index] = reasons.missing_capabilities(name, slot.index, names, slot.offered,
                                                                 slot.per_server, pool.caps_memo)
        pool.caps_rejections[key] = found
    return found


def server_size(pool: Pool, name: str) -> int:
    """How many replicas a server has, for "(of N)": declared, or known when more are reporting."""
    return max(pool.servers[name].desired_replicas, len(pool.by_server[name]))
