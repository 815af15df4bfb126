"""Incremental re-plan: the same Plan a full ``plan()`` gives, computing only what a change touches.

Why it is the same.  Take a model whose want is unchanged, whose assignment is exactly its previous
placement, which was fully Scheduled, and none of whose replicas is *dirty* (changed, gone, of a
changed server, or newly assigned to some model).  Its replicas are valid as before, and every model
assigned to such a replica was already on it in the previous plan, which fit — so the full plan keeps
it whole, in the same order, and its second pass leaves it alone: its ModelPlan is the previous one.
Every other model is *affected*: its previous memory is taken off the previous totals and it goes
through both passes in name order, as in the full plan.  On a dirty replica every resident is
affected, so there the totals start from zero, as in the full plan; on a clean one any order fits.
Models not fully placed are always affected: their reasons quote figures that may have moved.
"""

from __future__ import annotations

from berth.scheduler.basis import Basis
from berth.scheduler.placer import Placer
from berth.scheduler.pool import Pool, SlotKey
from berth.scheduler.snapshot import ModelWant, Plan, Snapshot


def _dirty_replicas(pool: Pool, basis: Basis) -> set[SlotKey]:
    dirty: set[SlotKey] = set()
    for key, slot in pool.slots.items():
        old = basis.replicas.get(key)
        if old is None or (old is not slot.info and old != slot.info):
            dirty.add(key)
    dirty.update(key for key in basis.replicas if key not in pool.slots)
    for name in pool.servers.keys() | basis.servers.keys():
        new_server, old_server = pool.servers.get(name), basis.servers.get(name)
        if new_server is not old_server and new_server != old_server:
            dirty.update(s.key for s in pool.by_server.get(name, ()))
            dirty.update(key for key in basis.replicas if key[0] == name)
    return dirty


def _changed(snapshot: Snapshot, wants: dict[str, ModelWant], basis: Basis, dirty: set[SlotKey]) -> set[str]:
    """Models whose want or assignment changed; their assigned replicas become dirty."""
    assignments = snapshot.assignments
    changed: set[str] = set()
    if wants is not basis.wants:
        for name, want in wants.items():
            old = basis.wants.get(name)
            if old is None or (old is not want and old != want):
                changed.add(name)
    if assignments != basis.placements:
        for name in assignments.keys() | basis.placements.keys():
            now = wants.get(name)
            if now is None or now.deleting or now.replicas <= 0:
                continue  # the plan of such a model depends on its want alone
            if tuple(assignments.get(name, ())) != basis.placements.get(name, ()):
                changed.add(name)
    for name in changed:
        dirty.update((r.server, r.index) for r in assignments.get(name, ()))
    return changed


def replan(snapshot: Snapshot, wants: dict[str, ModelWant], previous: Plan, basis: Basis) -> Plan | None:
    """The plan of ``snapshot`` reusing ``previous``; None when only a full plan will do."""
    if basis.namespace != snapshot.namespace or basis.policy != snapshot.policy \
            or previous.models is not basis.plans:
        return None
    pool = Pool(snapshot)
    dirty = _dirty_replicas(pool, basis)
    affected = _changed(snapshot, wants, basis, dirty)
    affected.update(name for name in basis.unsettled if name in wants)
    for key in dirty:
        affected.update(name for name in basis.residents.get(key, ()) if name in wants)
    removed = [] if wants is basis.wants else [name for name in basis.wants if name not in wants]
    for key, slot in pool.slots.items():
        slot.used = basis.used.get(key, 0)
    for name in (*affected, *removed):
        old_want = basis.wants.get(name)
        if old_want is None:
            continue
        for ref in basis.placements.get(name, ()):
            resident = pool.slots.get((ref.server, ref.index))
            if resident is not None:
                resident.used -= old_want.memory
    for name in pool.names:
        pool.tighten(name)
    old = previous.models
    placer = Placer(pool, snapshot.assignments, old)
    order = sorted(affected)
    for name in order:
        placer.keep(wants[name])
    models = dict(old)
    for name in removed:
        del models[name]
    for name in order:
        models[name] = placer.place(wants[name])
    if len(models) != len(old) - len(removed):  # models were added: keep the name order
        models = {name: models[name] for name in sorted(models)}
    return Plan(snapshot.namespace, models,
                basis=basis.successor(snapshot, wants, pool, models, [*affected, *removed]))
