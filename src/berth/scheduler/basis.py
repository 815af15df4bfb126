"""What a plan was made from, kept in ``Plan.basis`` so the next plan can compute only what changed."""

from __future__ import annotations

import operator
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import compress

from berth.scheduler.placer import Print
from berth.scheduler.pool import Memos, Pool, SlotKey
from berth.scheduler.snapshot import ModelPlan, ModelWant, Rejection, ReplicaRef, ServerInfo, Snapshot

UNSETTLED = ("ScheduleFailed", "PartiallyScheduled")
_REPLICAS = operator.attrgetter("replicas")
_STATE = operator.attrgetter("state")
_USED = operator.attrgetter("used")
Placed = dict[str, tuple[ReplicaRef, ...]]
# models not placed at all, grouped by what their outcome came from: (id of the ModelPlan's reasons tuple,
# spec.server, requirements) -> (that reasons tuple, the models' names).  Models of one group share their
# outcome in a re-plan (Placer.hopeless_again), so a re-plan looks at groups, not at every model.
FailKey = tuple[int, str | None, tuple[str, ...]]
Failed = dict[FailKey, tuple[tuple[Rejection, ...], frozenset[str]]]


def fail_key(mp: ModelPlan, want: ModelWant) -> FailKey:
    return id(mp.reasons), want.server, want.requirements


def _used(pool: Pool) -> dict[SlotKey, int]:
    """The memory in use on every replica of ``pool``, by key (built in C: 10,000 replicas)."""
    return dict(zip(pool.slots, map(_USED, pool.slots.values()), strict=True))


class Placements:
    """One plan's non-empty placements (model name -> replicas), as a version of a dict shared by the plans
    of a chain of re-plans: a re-plan records only its changes instead of copying 100,000 entries (a copy,
    then the collector walking it, were a tenth of a re-plan).  The dict holds the placements of one
    version, the *root*; every other version links towards it with the changes that lead from the linked
    version to itself.  ``get()`` makes its version the root (applying the changes on the way, and linking
    the old root back with their inverse: Baker's rerooting), so a chain re-planned one plan after another
    costs the changes alone.  Callers hold the chain's ``Basis.lock``: the dict is shared."""

    __slots__ = ("data", "link", "diff")

    def __init__(self, data: Placed | None, link: Placements | None = None,
                 diff: dict[str, tuple[ReplicaRef, ...]] | None = None) -> None:
        self.data = data  # the shared dict, while this version is the root; else None
        self.link = link
        self.diff = diff  # name -> replicas (empty: not placed) that turn ``link``'s placements into these

    def get(self) -> Placed:
        """This version's placements (the shared dict: read it, never keep or change it)."""
        path: list[Placements] = []
        node = self
        while node.link is not None:
            path.append(node)
            node = node.link
        data = node.data
        assert data is not None
        for version in reversed(path):  # the version next to the root first
            prev, diff = version.link, version.diff
            assert prev is not None and diff is not None
            inverse = {name: data.get(name, ()) for name in diff}
            for name, refs in diff.items():
                if refs:
                    data[name] = refs
                else:
                    data.pop(name, None)
            prev.data, prev.link, prev.diff = None, version, inverse
            version.data, version.link, version.diff = data, None, None
        return data

    def then(self, diff: dict[str, tuple[ReplicaRef, ...]]) -> Placements:
        """The version with ``diff`` applied to this one."""
        return Placements(None, self, diff)


@dataclass(frozen=True)
class Basis:
    namespace: str
    policy: str
    models: tuple[ModelWant, ...]  # snapshot.models as given: the same object means no model changed
    wants: dict[str, ModelWant]
    servers: dict[str, ServerInfo]  # effective, implied servers included
    used: dict[SlotKey, int]  # memory the plan put on each replica
    placements: Placements  # the plan's non-empty placements (``placements.get()``, under ``lock``)
    # models not fully placed: those with some replicas are re-planned every time; those with none, by group
    unsettled_placed: frozenset[str]
    failed: Failed  # (the reasons tuples they hold keep their ids from being reused)
    residents: dict[SlotKey, frozenset[str]]  # models placed on each replica
    plans: dict[str, ModelPlan]  # the very dict of the Plan this basis belongs to
    memos: Memos  # the pool's rejections that depend on servers alone: reused for servers that did not change
    # the plan's pool: the next pool shares its Slots where nothing changed (Pool.successor); as every
    # re-plan rewrites their ``used``, the plans of one chain re-plan one at a time, under ``lock``
    pool: Pool
    lock: threading.Lock
    # pinned models that failed: what their outcome depended on (Placer._pinned_print), for the next re-plan
    prints: dict[str, Print]

    @classmethod
    def of(cls, snapshot: Snapshot, wants: dict[str, ModelWant], pool: Pool,
           models: dict[str, ModelPlan], prints: dict[str, Print]) -> Basis:
        """The basis of a full plan."""
        refs_list = list(map(_REPLICAS, models.values()))  # C-speed passes: no Python step per model
        placements = dict(compress(zip(models, refs_list, strict=True), refs_list))
        # residents by replica: models placed alone on one replica share its refs tuple (Slot.alone), so
        # names are grouped by refs object first and each group's replicas are looked at once
        groups: dict[int, tuple[tuple[ReplicaRef, ...], list[str]]] = {}
        for name, refs in placements.items():
            group = groups.get(id(refs))
            if group is None:
                groups[id(refs)] = (refs, [name])
            else:
                group[1].append(name)
        lists: dict[SlotKey, list[str]] = {}
        for refs, names in groups.values():
            for ref in refs:  # a ReplicaRef equals (and hashes as) its (server, index) key
                found = lists.get(ref)
                if found is None:
                    lists[ref] = list(names)
                else:
                    found.extend(names)
        placed: list[str] = []
        failing: dict[FailKey, tuple[tuple[Rejection, ...], list[str]]] = {}
        for name in compress(models, map(UNSETTLED.__contains__, map(_STATE, models.values()))):
            mp = models[name]
            if mp.replicas:
                placed.append(name)
                continue
            key = fail_key(mp, wants[name])
            members = failing.get(key)
            if members is None:
                failing[key] = (mp.reasons, [name])
            else:
                members[1].append(name)
        failed = {key: (reasons, frozenset(names)) for key, (reasons, names) in failing.items()}
        return cls(snapshot.namespace, snapshot.policy, snapshot.models, wants, pool.servers,
                   _used(pool), Placements(placements), frozenset(placed), failed,
                   {k: frozenset(v) for k, v in lists.items()}, models, pool.memos, pool, threading.Lock(),
                   prints)

    def successor(self, snapshot: Snapshot, wants: dict[str, ModelWant], pool: Pool,
                  models: dict[str, ModelPlan], changed: Iterable[str], prints: dict[str, Print],
                  moved: dict[FailKey, tuple[FailKey, tuple[Rejection, ...]]] | None = None) -> Basis:
        """The basis of an incremental plan: this one with the ``changed`` models' placements redone.  ``moved``:
        groups of failed models whose every member has a new outcome, the same (old key -> new key and reasons);
        their members are among ``changed``."""
        placements = self.placements.get()
        diff: dict[str, tuple[ReplicaRef, ...]] = {}
        placed = set(self.unsettled_placed)
        failed = dict(self.failed)
        wholesale: set[str] = set()  # models of the groups moved as a whole: nothing else to do for them
        for was, (now, reasons) in (moved or {}).items():
            movers = failed.pop(was)[1]
            wholesale |= movers
            other = failed.get(now)
            failed[now] = (reasons, movers if other is None else other[1] | movers)
        regrouped: dict[FailKey, set[str]] = {}  # groups changed (copied on first change)
        touched: dict[SlotKey, set[str]] = {}

        def group_set(key: FailKey, reasons: tuple[Rejection, ...]) -> set[str]:
            found = regrouped.get(key)
            if found is None:
                old = failed.get(key)
                found = regrouped[key] = set(old[1]) if old is not None else set()
                failed[key] = (reasons, frozenset())  # its names are set below
            return found

        def resident_set(key: SlotKey) -> set[str]:
            found = touched.get(key)
            if found is None:
                found = touched[key] = set(self.residents.get(key, ()))
            return found

        for name in changed:
            diff[name] = ()
            if name in wholesale:
                continue  # not placed before or after; its group moved above
            for ref in placements.get(name, ()):
                resident_set(ref).discard(name)
            if name in placed:
                placed.discard(name)
            else:
                before, want_before = self.plans.get(name), self.wants.get(name)
                if before is not None and want_before is not None and before.state in UNSETTLED:
                    group_set(fail_key(before, want_before), before.reasons).discard(name)
            mp = models.get(name)
            if mp is None:
                continue
            if mp.replicas:
                diff[name] = mp.replicas
                for ref in mp.replicas:
                    resident_set(ref).add(name)
            if mp.state in UNSETTLED:
                if mp.replicas:
                    placed.add(name)
                else:
                    group_set(fail_key(mp, wants[name]), mp.reasons).add(name)
        for group, members in regrouped.items():
            if members:
                failed[group] = (failed[group][0], frozenset(members))
            else:
                del failed[group]
        kept_prints = {name: p for name, p in self.prints.items() if name not in diff}
        kept_prints.update(prints)
        residents = dict(self.residents)
        for key, names in touched.items():
            if names:
                residents[key] = frozenset(names)
            else:
                residents.pop(key, None)
        return Basis(snapshot.namespace, snapshot.policy, snapshot.models, wants, pool.servers,
                     _used(pool),
                     self.placements.then(diff), frozenset(placed), failed, residents, models, pool.memos, pool,
                     self.lock, kept_prints)
