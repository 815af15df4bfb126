"""``plan(snapshot) -> Plan``: where every model of one namespace should be, and why not elsewhere.

Deterministic and pure.  Two passes over the models in name order: first every model keeps the
replicas it is assigned to that are still valid (their memory is deducted), then the rest are placed —
the server already holding the model if it can take every replica, else the first server by name that
can, else (with ``minReplicas``) the one that takes the most.

``plan(snapshot, previous)`` gives exactly the same Plan, faster: models untouched since ``previous``
keep their ModelPlan and only the models the change touches are planned again (see ``replan``).
"""

from __future__ import annotations

import operator

from berth.errors import InvalidInput
from berth.scheduler.basis import Basis
from berth.scheduler.collector import collector_paused
from berth.scheduler.placer import Placer
from berth.scheduler.pool import Pool
from berth.scheduler.replan import replan
from berth.scheduler.snapshot import ModelWant, Plan, Snapshot

_NAME = operator.attrgetter("name")
_NAMESPACE = operator.attrgetter("namespace")


def models_by_name(snapshot: Snapshot) -> dict[str, ModelWant]:
    """The snapshot's models by name; each must be of the snapshot's namespace and appear once."""
    ns = snapshot.namespace
    models = snapshot.models
    # the usual case checked at C speed (a loop over 100,000 models was 50 ms): one namespace, distinct names
    wants: dict[str, ModelWant] = dict(zip(map(_NAME, models), models, strict=True))
    if len(wants) == len(models) and (not models or set(map(_NAMESPACE, models)) == {ns}):
        return wants
    wants = {}
    for model in snapshot.models:
        if model.namespace != ns:
            raise InvalidInput(f"snapshot of namespace {ns} holds model {model.namespace}/{model.name}; "
                               "plan each namespace with its own snapshot")
        if model.name in wants:
            raise InvalidInput(f"snapshot of namespace {ns} lists model {model.name} twice; "
                               "each model must appear once")
        wants[model.name] = model
    return wants


def plan(snapshot: Snapshot, previous: Plan | None = None) -> Plan:
    """Place every model of ``snapshot``; ``previous`` (an earlier plan) only makes it faster."""
    with collector_paused():
        return _plan(snapshot, previous)


def _plan(snapshot: Snapshot, previous: Plan | None) -> Plan:
    basis = previous.basis if previous is not None else None
    if isinstance(basis, Basis) and snapshot.models is basis.models and snapshot.namespace == basis.namespace:
        wants = basis.wants  # the very same models: already checked when that plan was made
    else:
        wants = models_by_name(snapshot)
    if previous is not None and isinstance(basis, Basis):
        quick = replan(snapshot, wants, previous, basis)
        if quick is not None:
            return quick
    return _full(snapshot, wants, previous, Pool(snapshot))


def plan_by_scan(snapshot: Snapshot) -> Plan:
    """The same plan as ``plan(snapshot)``, found the straightforward way: every server tried in name order
    for every model, no index.  Slow (models x servers); the reference the index is tested against."""
    return _full(snapshot, models_by_name(snapshot), None, Pool(snapshot, indexed=False))


def _full(snapshot: Snapshot, wants: dict[str, ModelWant], previous: Plan | None, pool: Pool) -> Plan:
    placer = Placer(pool, snapshot.assignments, previous.models if previous is not None else {})
    names = sorted(wants)
    assignments = snapshot.assignments
    for name in names:
        if name in assignments:  # keep() has nothing to do for a model with no assignment
            placer.keep(wants[name])
    models = placer.place_all(names, wants)
    return Plan(snapshot.namespace, models, basis=Basis.of(snapshot, wants, pool, models, placer.prints))
