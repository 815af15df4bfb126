"""Incremental re-plan: the same Plan a full ``plan()`` gives, computing only what a change touches.

Why it is the same.  Take a model whose want is unchanged, whose assignment is exactly its previous
placement, which was fully Scheduled, and none of whose replicas is *dirty* (changed, gone, of a
changed server, or newly assigned to some model).  Its replicas are valid as before, and every model
assigned to such a replica was already on it in the previous plan, which fit — so the full plan keeps
it whole, in the same order, and its second pass leaves it alone: its ModelPlan is the previous one.
Every other model is *affected*: its previous memory is taken off the previous totals and it goes
through both passes in name order, as in the full plan.  On a dirty replica every resident is
affected, so there the totals start from zero, as in the full plan; on a clean one any order fits.
Models not fully placed are affected too (their reasons quote figures that may have moved), except one
that no server could take at all whose servers did not change, or whose outcome (which depends on them
alone) is made again from the memo of the changed ones.

Why it is fast.  The pool is built from the previous one (``Pool.successor``): only changed replicas are
rebuilt (every replica of a server whose declaration changed), rejections that depend on servers alone
(``Memos``) are inherited for the servers that did not change, the fit trees start from the previous
plan's with the leaves of servers that gained free memory made unknown, and the placements the basis keeps
are a version of one shared dict (``basis.Placements``), not a copy.  What is left per re-plan is a few
passes over the replicas and the assignments at C speed or close, copying the Plan's own dict, and the
affected models.
"""

from __future__ import annotations

from collections.abc import Mapping
from itertools import repeat

from berth.scheduler.basis import Basis, FailKey, fail_key
from berth.scheduler.placer import Placer
from berth.scheduler.pool import Pool, SlotKey
from berth.scheduler.snapshot import ModelPlan, ModelWant, Plan, Rejection, ReplicaRef, Snapshot

_new_tuple = tuple.__new__  # a ModelPlan built in C, without the NamedTuple's Python-level __new__


def _same_placements(assignments: Mapping[str, tuple[ReplicaRef, ...]],
                     placements: dict[str, tuple[ReplicaRef, ...]]) -> bool:
    """``assignments == placements``, at C speed and without hashing 100,000 names when both are in the
    same order (the control plane hands back what the plan placed): keys and values compared as lists,
    where the same object is equal without a call, and equal ReplicaRefs compare in C."""
    if assignments is placements:
        return True
    if len(assignments) != len(placements):
        return False
    if list(assignments) == list(placements):
        return list(assignments.values()) == list(placements.values())
    return assignments == placements


def _changed(snapshot: Snapshot, wants: dict[str, ModelWant], basis: Basis, dirty: set[SlotKey]) -> set[str]:
    """Models whose want or assignment changed; their assigned replicas become dirty."""
    assignments = snapshot.assignments
    placements = basis.placements.get()
    changed: set[str] = set()
    if wants is not basis.wants:
        for name, want in wants.items():
            old = basis.wants.get(name)
            if old is None or (old is not want and old != want):
                changed.add(name)
    if not _same_placements(assignments, placements):
        for name in assignments.keys() | placements.keys():
            now = wants.get(name)
            if now is None or now.deleting or now.replicas <= 0:
                continue  # the plan of such a model depends on its want alone
            if tuple(assignments.get(name, ())) != placements.get(name, ()):
                changed.add(name)
    for name in changed:
        dirty.update((r.server, r.index) for r in assignments.get(name, ()))
    return changed


def replan(snapshot: Snapshot, wants: dict[str, ModelWant], previous: Plan, basis: Basis) -> Plan | None:
    """The plan of ``snapshot`` reusing ``previous``; None when only a full plan will do."""
    if basis.namespace != snapshot.namespace or basis.policy != snapshot.policy \
            or previous.models is not basis.plans:
        return None
    with basis.lock:
        return _replan(snapshot, wants, previous, basis)


def _replan(snapshot: Snapshot, wants: dict[str, ModelWant], previous: Plan, basis: Basis) -> Plan:
    pool, dirty, changed_servers = Pool.successor(snapshot, basis.pool)
    pool.memos.inherit(basis.memos, changed_servers, sorted(basis.servers) == pool.names)
    affected = _changed(snapshot, wants, basis, dirty)
    # A model no candidate could take ("hopeless") keeps its outcome when the memo it came from still holds
    # (inherited: its servers did not change) and nothing about the model changed; other unsettled models
    # are planned again, as their reasons quote memory figures that may have moved.
    # One whose memo was not inherited (a server changed) and that no server can take still gets its outcome
    # straight from the memo, made again for this pool once per (requirements, pin) (Placer.hopeless_again):
    # the previous ModelPlan when it comes out equal, else a new one, as ``place`` would make it.
    placer = Placer(pool, snapshot.assignments, previous.models, basis.prints)
    still = {id(entry[0]) for entry in pool.memos.hopeless.values()}
    before = {id(entry[0]): entry for entry in basis.memos.hopeless.values()}
    old = previous.models
    redone: dict[str, ModelPlan] = {}
    again = placer.hopeless_again
    moved: dict[FailKey, tuple[FailKey, tuple[Rejection, ...]]] = {}  # groups whose members all have a new outcome
    affected.update(name for name in basis.unsettled_placed if name in wants)
    for group, (reasons, names) in basis.failed.items():  # a few groups, not every model
        reasons_id = group[0]
        if reasons_id in still:
            continue
        # the group's models whose want is the one it was grouped by (the others are affected already)
        todo = [name for name in names if name not in affected and name in wants]
        if not todo:
            continue
        entry = before.get(reasons_id)
        now = None if entry is None or entry[0] is not reasons else again(wants[todo[0]], entry)
        if now is None:
            affected.update(todo)
        elif now is not entry:
            for name in todo:
                redone[name] = _new_tuple(ModelPlan, (name, wants[name].replicas, (), "ScheduleFailed", now[1], now[0]))
            if len(todo) == len(names):
                moved[group] = (fail_key(redone[todo[0]], wants[todo[0]]), now[0])
    for key in dirty:
        affected.update(name for name in basis.residents.get(key, ()) if name in wants)
    removed = [] if wants is basis.wants else [name for name in basis.wants if name not in wants]
    slots = pool.slots
    for slot, used in zip(slots.values(), map(basis.used.get, slots, repeat(0)), strict=True):  # look-ups in C
        slot.used = used
    placements = basis.placements.get()
    loosen = set(changed_servers)  # servers with more free memory than when the previous plan ended
    for name in (*affected, *removed):
        old_want = basis.wants.get(name)
        if old_want is None:
            continue
        for ref in placements.get(name, ()):
            resident = pool.slots.get(ref)
            if resident is not None:
                resident.used -= old_want.memory
                loosen.add(resident.server)
    pool.loosen = loosen
    pool.reset_bounds()  # the placer made above has not asked for a candidate set yet
    order = sorted(affected)
    for name in order:
        placer.keep(wants[name])
    models = dict(old)
    for name in removed:
        del models[name]
    for name in order:
        models[name] = placer.place(wants[name])
    models.update(redone)  # never placed models (they have no replicas: no resident of a dirty one)
    if len(models) != len(old) - len(removed):  # models were added: keep the name order
        models = {name: models[name] for name in sorted(models)}
    return Plan(snapshot.namespace, models,
                basis=basis.successor(snapshot, wants, pool, models, [*affected, *removed, *redone],
                                      placer.prints, moved))
