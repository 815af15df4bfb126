"""The namespace's replicas as one plan sees them: indexed by server, with the memory planned so far.

Built once per ``plan()`` call from a Snapshot; mutated only by that call (memory handed out and given
back), so the plan function itself stays pure.
"""

from __future__ import annotations

from itertools import chain

from berth.errors import InvalidInput
from berth.scheduler.index import Candidates
from berth.scheduler.reasons import CapsMemo
from berth.scheduler.snapshot import Rejection, ReplicaInfo, ReplicaRef, ServerInfo, Snapshot

SlotKey = tuple[str, int]


class Slot:
    """One replica of one server in this namespace, plus the memory planned on it so far."""

    __slots__ = ("info", "key", "ref", "server", "index", "offered", "caps", "broken", "per_server", "capacity",
                 "used", "usable", "alone", "kind")

    def __init__(self, info: ReplicaInfo, server: ServerInfo, shapes: Shapes | None = None) -> None:
        """``shapes``: what the capability fields came to for replicas reporting alike (a pool builds 10,000
        Slots, mostly of a few shapes); the same objects are shared, never mutated."""
        self.info = info
        self.ref: ReplicaRef = _new_tuple(ReplicaRef, (info.server, info.index))
        self.key: SlotKey = self.ref  # a ReplicaRef equals (and hashes as) its (server, index) key
        self.server = info.server
        self.index = info.index
        shape_key = (info.capabilities, info.unimportable, server.capabilities)
        shape = shapes.get(shape_key) if shapes is not None else None
        if shape is None:
            shape = _shape(info, server)
            if shapes is not None:
                shapes[shape_key] = shape
        self.offered, self.broken, self.caps, self.per_server, self.kind = shape
        self.capacity = info.memory * (100 + info.overcommit_percent) // 100  # ReplicaInfo.capacity
        self.used = 0
        # may take new models: connected, ready, not draining, and its server is not being deleted
        self.usable = (info.connected and info.ready and not info.draining and not server.deleting
                       and server.inference_server == "mlserver")  # Berth places models only where it runs them
        # (refs, message) of a model placed on this replica alone: built once, shared by every such ModelPlan
        self.alone: tuple[tuple[ReplicaRef], str] | None = None


Shape = tuple[tuple[str, ...], dict[str, str], frozenset[str], bool,
              tuple[frozenset[str], tuple[str, ...], bool, tuple[tuple[str, str], ...]]]
Shapes = dict[tuple[tuple[str, ...], tuple[tuple[str, str], ...], tuple[str, ...]], Shape]
_new_tuple = tuple.__new__


def _shape(info: ReplicaInfo, server: ServerInfo) -> Shape:
    """A Slot's capability fields: (offered, broken, caps, per_server, kind)."""
    # the replica's own report wins; a replica that reports none offers its server's capabilities
    offered: tuple[str, ...] = info.capabilities or server.capabilities
    # claimed capabilities whose runtime the replica's inference server cannot import: not offered after all
    broken: dict[str, str] = {cap: module for cap, module in info.unimportable if cap in offered}
    caps = frozenset(offered) - frozenset(broken)
    per_server = offered == server.capabilities
    # what a capability rejection of this replica depends on, besides its server and index
    return offered, broken, caps, per_server, (caps, offered, per_server, tuple(broken.items()))


def _implied_server(name: str, namespace: str, replicas: list[ReplicaInfo]) -> ServerInfo:
    """A server known only from its agents (e.g. ``berth agent`` started by hand).  Nothing declares
    how many replicas it should have (0 here), so none is reported missing."""
    first = min(replicas, key=lambda r: r.index)
    return ServerInfo(name=name, namespace=namespace, capabilities=first.capabilities, desired_replicas=0)


def _servers(snapshot: Snapshot) -> tuple[dict[str, set[str]], dict[str, ServerInfo]]:
    """Servers of other namespaces by namespace (they only explain cross-namespace references), and this
    namespace's declared servers by name."""
    ns = snapshot.namespace
    foreign: dict[str, set[str]] = {k: set(v) for k, v in snapshot.foreign_servers.items()}
    servers: dict[str, ServerInfo] = {}
    for server in snapshot.servers:
        if server.namespace != ns:  # never a candidate; only explains cross-namespace references
            foreign.setdefault(server.namespace, set()).add(server.name)
            continue
        if server.name in servers:
            raise InvalidInput(f"snapshot of namespace {ns} lists server {server.name} twice; "
                               "each server must appear once")
        servers[server.name] = server
    return foreign, servers


def _shares_infos(reps: tuple[ReplicaInfo, ...], old: Pool) -> bool:
    """Whether ``reps`` look like the old pool's own ReplicaInfo objects (its first replica of the namespace
    is): then unchanged replicas are found by identity.  A caller building new infos every time (equal or
    not) gets the one-by-one comparison, without building the identity index for nothing."""
    for rep in reps:
        if rep.namespace == old.namespace:
            slot = old.slots.get((rep.server, rep.index))
            return slot is not None and slot.info is rep
    return False


def _twice(rep: ReplicaInfo) -> None:
    raise InvalidInput(f"snapshot of namespace {rep.namespace} lists replica {rep.server}/{rep.index} "
                       "twice; each replica must appear once")


class Memos:
    """Rejections that depend on no memory figure, only on servers and their replicas' reports."""

    def __init__(self) -> None:
        # by (requirements, server): the capability rejections of that server's replicas, by replica index
        self.caps_rejections: dict[tuple[tuple[str, ...], str], dict[int, Rejection]] = {}
        self.caps_memo: CapsMemo = {}
        # by (requirements, server), for servers with no usable capable replica: rejections and lines
        self.unfit: dict[tuple[tuple[str, ...], str], tuple[list[Rejection], list[str]]] = {}
        # by (requirements, pin), when no candidate server has one: a failed model's reasons and message
        self.hopeless: dict[tuple[tuple[str, ...], str | None], tuple[tuple[Rejection, ...], str]] = {}

    def inherit(self, old: Memos, changed: set[str], same_servers: bool) -> None:
        """Take ``old``'s entries that still hold: those of servers not in ``changed`` (their declaration
        and every replica report are as they were), and models' whole outcomes only when no server changed."""
        self.caps_memo.update(old.caps_memo)
        self.caps_rejections.update((k, v) for k, v in old.caps_rejections.items() if k[1] not in changed)
        self.unfit.update((k, v) for k, v in old.unfit.items() if k[1] not in changed)
        if same_servers and not changed:
            self.hopeless.update(old.hopeless)
        else:
            self.hopeless.update((k, v) for k, v in old.hopeless.items() if k[1] is not None and k[1] not in changed)


class Pool:
    """``indexed`` (the default) finds fitting servers through :mod:`berth.scheduler.index`; without it,
    by scanning servers in name order (the straightforward reference the tests compare it with)."""

    _info_index: dict[int, Slot] | None

    def __init__(self, snapshot: Snapshot, indexed: bool = True) -> None:
        ns = snapshot.namespace
        self.indexed = indexed
        self.namespace = ns
        self.policy = snapshot.policy
        self.foreign, servers = _servers(snapshot)
        grouped: dict[str, list[ReplicaInfo]] = {}
        seen: set[SlotKey] = set()
        for rep in snapshot.replicas:
            if rep.namespace != ns:
                continue
            if (rep.server, rep.index) in seen:
                _twice(rep)
            seen.add((rep.server, rep.index))
            grouped.setdefault(rep.server, []).append(rep)
        for name, reps in grouped.items():
            if name not in servers:
                servers[name] = _implied_server(name, ns, reps)
        self.servers = servers
        self.names: list[str] = sorted(servers)
        self.by_server: dict[str, list[Slot]] = {}
        self.slots: dict[SlotKey, Slot] = {}
        shapes: Shapes = {}
        for name in self.names:
            reps = sorted(grouped.get(name, ()), key=lambda r: r.index)
            slots = [Slot(r, servers[name], shapes) for r in reps]
            self.by_server[name] = slots
            for slot in slots:
                self.slots[slot.key] = slot
        self._caches()

    @classmethod
    def successor(cls, snapshot: Snapshot, old: Pool) -> tuple[Pool, set[SlotKey], set[str]]:
        """The pool of ``snapshot`` built from ``old`` (a pool of the same namespace): the Slot objects of
        replicas whose report and server declaration did not change are ``old``'s own (their ``used`` is reset
        by the caller): a lost or changed replica rebuilds that replica alone, a changed declaration its
        server's.  Also returns the dirty replicas (changed, new, gone, or of a redeclared server) and the
        changed servers (declaration changed, or a dirty replica): their memos and candidate sets are redone."""
        ns = snapshot.namespace
        self = cls.__new__(cls)
        self.indexed, self.namespace, self.policy = old.indexed, ns, snapshot.policy
        self.foreign, servers = _servers(snapshot)
        old_slots = old.slots
        changed: set[str] = set()
        implied: dict[str, list[ReplicaInfo]] = {}
        infos: tuple[ReplicaInfo, ...] = snapshot.replicas
        ids = list(map(id, infos))
        same: set[int] = set()
        if _shares_infos(infos, old) and len(set(ids)) == len(ids) and old.by_server.keys() <= servers.keys():
            # the very ReplicaInfo objects of the old pool are unchanged replicas of declared servers: found
            # by identity at C speed; only the other reports are looked at one by one
            by_info = old._by_info()
            same = by_info.keys() & set(ids)
            infos = () if len(same) == len(ids) else tuple(r for r in infos if id(r) not in same)
        seen: set[SlotKey] = set()
        fresh_keys: set[SlotKey] = set()  # replicas new or reported differently
        for rep in infos:
            if rep.namespace != ns:
                continue
            key = (rep.server, rep.index)
            slot = old_slots.get(key)
            if key in seen or (slot is not None and id(slot.info) in same):
                _twice(rep)
            seen.add(key)
            if rep.server not in servers:
                implied.setdefault(rep.server, []).append(rep)
            if slot is None or (slot.info is not rep and slot.info != rep):
                changed.add(rep.server)
                fresh_keys.add(key)
        if same:
            by_info = old._by_info()
            gone = {by_info[i].key for i in by_info.keys() - same} - seen  # the set difference at C speed
        else:
            gone = old_slots.keys() - seen
        changed.update(key[0] for key in gone)
        for name, reps in implied.items():
            servers[name] = _implied_server(name, ns, reps)
        redeclared: set[str] = set()  # servers whose declaration changed (or implied, now or before)
        for name in servers.keys() | old.servers.keys():
            new_server, old_server = servers.get(name), old.servers.get(name)
            if new_server is not old_server and new_server != old_server:
                redeclared.add(name)
        changed |= redeclared
        self.servers = servers
        self.names = old.names if servers.keys() == old.servers.keys() else sorted(servers)
        by_server = dict(old.by_server)
        slots = dict(old_slots)
        # dirty: every replica of a redeclared server (its Slots depend on the declaration); of a server
        # whose declaration is as it was, only its new, changed and gone replicas (the others keep their Slot)
        dirty: set[SlotKey] = set(gone) | fresh_keys
        for name in changed:
            for slot in by_server.pop(name, ()):
                if name in redeclared or name not in servers:
                    dirty.add(slot.key)
                    del slots[slot.key]
                elif slot.key in dirty:
                    del slots[slot.key]
        if changed:
            shapes: Shapes = {}
            grouped: dict[str, list[ReplicaInfo]] = {}
            if same:  # unchanged reports are old Slots' own: the changed servers' are found through those Slots
                for name in changed:
                    for slot in old.by_server.get(name, ()):
                        if id(slot.info) in same:
                            grouped.setdefault(name, []).append(slot.info)
            for rep in infos if same else snapshot.replicas:  # the reports not found by identity
                if rep.server in changed and rep.namespace == ns:
                    grouped.setdefault(rep.server, []).append(rep)
            for name in changed:
                if name not in servers:
                    continue
                again = name in redeclared
                fresh = [Slot(r, servers[name], shapes) if again or (r.server, r.index) in dirty
                         else old_slots[(r.server, r.index)]
                         for r in sorted(grouped.get(name, ()), key=lambda r: r.index)]
                by_server[name] = fresh
                for slot in fresh:
                    if again or slot.key in dirty:
                        slots[slot.key] = slot
                        dirty.add(slot.key)
        self.by_server = {name: by_server[name] for name in self.names} if changed else by_server
        self.slots = slots
        self._caches()
        self._prior = (old._eligible, changed)
        if old.indexed:
            self._prior_candidates = old._candidates
        return self, dirty, changed

    def _by_info(self) -> dict[int, Slot]:
        """Slots by the identity of their ReplicaInfo (each Slot holds its info, so no id is reused)."""
        found = self._info_index
        if found is None:
            found = self._info_index = {id(slot.info): slot for slot in self.slots.values()}
        return found

    def _caches(self) -> None:
        self._info_index = None
        # scan mode: per server, an upper bound of the free memory of its usable replicas: handing memory
        # out leaves it loose (tightened lazily by the search), giving memory back raises it
        self.maxfree: dict[str, int] = {}
        self._eligible: dict[frozenset[str], tuple[dict[str, list[Slot]], list[str]]] = {}
        # a successor pool: the previous pool's eligible sets and the servers changed since (see eligible)
        self._prior: tuple[dict[frozenset[str], tuple[dict[str, list[Slot]], list[str]]], set[str]] | None = None
        # indexed mode: candidate sets by requirements (requirements with the same candidates share one),
        # and for each server the candidate sets it is in (their trees learn when its free memory rises)
        self._candidates: dict[frozenset[str], Candidates] = {}
        self._shared: dict[tuple[Slot, ...], Candidates] = {}
        self._member_of: dict[str, list[Candidates]] = {}
        # a successor pool: the previous pool's candidate sets as its plan left them, whose fit trees are
        # carried over (see candidates); ``loosen``: servers whose replicas may have more free memory now
        # than when that plan ended (set by the re-plan before it asks for a candidate set)
        self._prior_candidates: dict[frozenset[str], Candidates] = {}
        self.loosen: set[str] = set()
        self.reset_bounds()
        # rejections that depend on no memory figure, built once per plan (see Memos)
        self.memos = Memos()
        self.caps_rejections = self.memos.caps_rejections
        self.caps_memo = self.memos.caps_memo
        self.unfit = self.memos.unfit
        self.hopeless = self.memos.hopeless

    def reset_bounds(self) -> None:
        """Memory was set by hand (``used`` of many slots): recompute the bounds the searches rely on."""
        if self.indexed:
            self._candidates.clear()
            self._shared.clear()
            self._member_of.clear()
        else:
            for name in self.names:
                self.tighten(name)

    def tighten(self, server: str) -> int:
        """Recompute the most free memory any usable replica of ``server`` has (and remember it)."""
        best = max((s.capacity - s.used for s in self.by_server[server] if s.usable), default=-1)
        self.maxfree[server] = best
        return best

    def eligible(self, reqs: frozenset[str]) -> tuple[dict[str, list[Slot]], list[str]]:
        """Usable replicas offering every requirement, by server; and those servers in name order."""
        hit = self._eligible.get(reqs)
        if hit is None:
            before = self._prior[0].get(reqs) if self._prior is not None else None
            by: dict[str, list[Slot]] = {}
            if before is not None and self._prior is not None:
                # unchanged servers' Slots are the previous pool's own: only changed servers are looked at again
                by = dict(before[0])
                added = False
                for name in self._prior[1]:
                    slots = [s for s in self.by_server.get(name, ()) if s.usable and reqs <= s.caps]
                    if slots:
                        added = added or name not in by
                        by[name] = slots
                    else:
                        by.pop(name, None)
                if added:
                    by = {name: by[name] for name in sorted(by)}
            else:
                for name in self.names:
                    slots = [s for s in self.by_server[name] if s.usable and reqs <= s.caps]
                    if slots:
                        by[name] = slots
            hit = (by, list(by))
            self._eligible[reqs] = hit
        return hit

    def candidates(self, reqs: frozenset[str]) -> Candidates:
        """The candidate set of ``reqs`` with its fit trees (indexed mode)."""
        found = self._candidates.get(reqs)
        if found is None:
            by_server, names = self.eligible(reqs)
            key = tuple(chain.from_iterable(by_server.values()))  # the candidate Slots (in name order)
            found = self._shared.get(key)
            if found is None:
                before = self._prior_candidates.get(reqs)
                if before is not None and before.names == names:
                    found = Candidates.derived(before, by_server, names, self.loosen)
                else:
                    found = Candidates(by_server, names)
                self._shared[key] = found
                for name in names:
                    self._member_of.setdefault(name, []).append(found)
            self._candidates[reqs] = found
        return found

    def take(self, slots: list[Slot], memory: int) -> None:
        for slot in slots:
            slot.used += memory

    def give_back(self, slots: list[Slot], memory: int) -> None:
        for slot in slots:
            slot.used -= memory
            if not slot.usable:
                continue
            if self.indexed:
                for cands in self._member_of.get(slot.server, ()):
                    for tree in cands.trees.values():
                        tree.loosen(slot.server)
            elif slot.capacity - slot.used > self.maxfree[slot.server]:
                self.maxfree[slot.server] = slot.capacity - slot.used

    def pick(self, slots: list[Slot], kept: list[Slot], n: int) -> list[Slot]:
        """The first ``n`` of :meth:`order` (one replica, nothing kept: no sort)."""
        if n == 1 and not kept and slots:
            if self.policy == "spread":
                return [min(slots, key=_spread_key)]
            return [min(slots, key=_binpack_key)]
        return self.order(slots, kept)[:n]

    def order(self, slots: list[Slot], kept: list[Slot]) -> list[Slot]:
        """Candidate order: replicas already holding the model, then the policy, then replica index."""
        held = [s for s in kept if s in slots]
        rest = [s for s in slots if s not in kept]
        if self.policy == "spread":
            rest.sort(key=_spread_key)
        else:
            rest.sort(key=_binpack_key)
        return held + rest


def _binpack_key(slot: Slot) -> tuple[int, int]:
    return slot.capacity - slot.used, slot.index


def _spread_key(slot: Slot) -> tuple[int, int]:
    return slot.used - slot.capacity, slot.index
