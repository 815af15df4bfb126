"""The namespace's replicas as one plan sees them: indexed by server, with the memory planned so far.

Built once per ``plan()`` call from a Snapshot; mutated only by that call (memory handed out and given
back), so the plan function itself stays pure.
"""

from __future__ import annotations

from berth.errors import InvalidInput
from berth.scheduler.reasons import CapsMemo
from berth.scheduler.snapshot import Rejection, ReplicaInfo, ServerInfo, Snapshot

SlotKey = tuple[str, int]


class Slot:
    """One replica of one server in this namespace, plus the memory planned on it so far."""

    __slots__ = ("info", "key", "ref", "server", "index", "offered", "caps", "per_server", "capacity", "used",
                 "usable")

    def __init__(self, info: ReplicaInfo, server: ServerInfo) -> None:
        self.info = info
        self.key: SlotKey = (info.server, info.index)
        self.ref = info.ref
        self.server = info.server
        self.index = info.index
        # the replica's own report wins; a replica that reports none offers its server's capabilities
        self.offered: tuple[str, ...] = info.capabilities or server.capabilities
        self.caps = frozenset(self.offered)
        self.per_server = self.offered == server.capabilities
        self.capacity = info.capacity
        self.used = 0
        # may take new models: connected, ready, not draining, and its server is not being deleted
        self.usable = (info.connected and info.ready and not info.draining and not server.deleting
                       and server.inference_server == "mlserver")  # Berth places models only where it runs them


def _implied_server(name: str, namespace: str, replicas: list[ReplicaInfo]) -> ServerInfo:
    """A server known only from its agents (e.g. ``berth agent`` started by hand).  Nothing declares
    how many replicas it should have (0 here), so none is reported missing."""
    first = min(replicas, key=lambda r: r.index)
    return ServerInfo(name=name, namespace=namespace, capabilities=first.capabilities, desired_replicas=0)


class Pool:
    def __init__(self, snapshot: Snapshot) -> None:
        ns = snapshot.namespace
        self.namespace = ns
        self.policy = snapshot.policy
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
        self.foreign = foreign
        grouped: dict[str, list[ReplicaInfo]] = {}
        seen: set[SlotKey] = set()
        for rep in snapshot.replicas:
            if rep.namespace != ns:
                continue
            if (rep.server, rep.index) in seen:
                raise InvalidInput(f"snapshot of namespace {ns} lists replica {rep.server}/{rep.index} "
                                   "twice; each replica must appear once")
            seen.add((rep.server, rep.index))
            grouped.setdefault(rep.server, []).append(rep)
        for name, reps in grouped.items():
            if name not in servers:
                servers[name] = _implied_server(name, ns, reps)
        self.servers = servers
        self.names: list[str] = sorted(servers)
        self.by_server: dict[str, list[Slot]] = {}
        self.slots: dict[SlotKey, Slot] = {}
        for name in self.names:
            reps = sorted(grouped.get(name, ()), key=lambda r: r.index)
            slots = [Slot(r, servers[name]) for r in reps]
            self.by_server[name] = slots
            for slot in slots:
                self.slots[slot.key] = slot
        # per server, an upper bound of the free memory of its usable replicas: handing memory out
        # leaves it loose (tightened lazily by the search), giving memory back raises it
        self.maxfree: dict[str, int] = {}
        for name in self.names:
            self.tighten(name)
        self._eligible: dict[frozenset[str], tuple[dict[str, list[Slot]], list[str]]] = {}
        # rejections that depend on no memory figure, built once per plan: by (requirements, server)
        # the capability rejections of that server's replicas, by replica index
        self.caps_rejections: dict[tuple[tuple[str, ...], str], dict[int, Rejection]] = {}
        self.caps_memo: CapsMemo = {}
        # by (requirements, server), for servers with no usable capable replica: rejections and lines
        self.unfit: dict[tuple[tuple[str, ...], str], tuple[list[Rejection], list[str]]] = {}
        # by (requirements, pin), when no candidate server has one: a failed model's reasons and message
        self.hopeless: dict[tuple[tuple[str, ...], str | None], tuple[tuple[Rejection, ...], str]] = {}

    def tighten(self, server: str) -> int:
        """Recompute the most free memory any usable replica of ``server`` has (and remember it)."""
        best = max((s.capacity - s.used for s in self.by_server[server] if s.usable), default=-1)
        self.maxfree[server] = best
        return best

    def eligible(self, reqs: frozenset[str]) -> tuple[dict[str, list[Slot]], list[str]]:
        """Usable replicas offering every requirement, by server; and those servers in name order."""
        hit = self._eligible.get(reqs)
        if hit is None:
            by: dict[str, list[Slot]] = {}
            for name in self.names:
                slots = [s for s in self.by_server[name] if s.usable and reqs <= s.caps]
                if slots:
                    by[name] = slots
            hit = (by, list(by))
            self._eligible[reqs] = hit
        return hit

    def take(self, slots: list[Slot], memory: int) -> None:
        for slot in slots:
            slot.used += memory

    def give_back(self, slots: list[Slot], memory: int) -> None:
        for slot in slots:
            slot.used -= memory
            if slot.usable and slot.capacity - slot.used > self.maxfree[slot.server]:
                self.maxfree[slot.server] = slot.capacity - slot.used

    def order(self, slots: list[Slot], kept: list[Slot]) -> list[Slot]:
        """Candidate order: replicas already holding the model, then the policy, then replica index."""
        held = [s for s in kept if s in slots]
        rest = [s for s in slots if s not in kept]
        if self.policy == "spread":
            rest.sort(key=lambda s: (-(s.capacity - s.used), s.index))
        else:
            rest.sort(key=lambda s: (s.capacity - s.used, s.index))
        return held + rest
