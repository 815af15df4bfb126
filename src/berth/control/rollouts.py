"""Updates that drop nothing: a change of artifact is a new version that loads beside the serving one.

A model's copy on a replica is an *instance* in MLServer, named after its artifact generation
(:func:`instance`): generation 1 keeps the model's own name, later ones are ``NAME_GEN``.  ``_`` never
appears in a DNS-1123 name, so an instance name cannot collide with another model's.  The routing table names
the instance that serves (``ModelRoute.upstream``); gateways rewrite the REST path and the gRPC
``model_name`` to it.  Per model and pass (:func:`decide`):

* the *desired* generation is the spec's artifact generation; the *serving* one is stored in the status
  (``servingGeneration``) and is what routes point to;
* while the desired instance is not LOADED on every planned replica that is up, the serving one keeps
  serving; once it is, the serving generation becomes the desired one in one pass (the routes published at
  the end of that pass switch every gateway at once), and the old instance drains, then unloads;
* a desired instance that fails to load leaves the old one serving; the status says so with MLServer's error.

See docs/rollouts.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from berth.control import status
from berth.control.clock import rfc3339
from berth.control.hub import ReplicaModel, ReplicaRecord
from berth.resources.instances import instance, model_of
from berth.resources.statuses import ModelRollout, ModelStatus

ARTIFACT_FIELDS = ("storageUri", "artifactVersion", "requirements", "parameters", "secretName", "schemaUri")
COMPLETE, PROGRESSING, FAILED = "Complete", "Progressing", "Failed"


def artifact(doc: Mapping[str, Any]) -> dict[str, Any]:
    """The spec fields that make a version (what ``berth rollout undo`` re-applies)."""
    spec = doc.get("spec") or {}
    return {k: spec[k] for k in ARTIFACT_FIELDS if spec.get(k) is not None}


def extra_copies_memory(models: Mapping[str, ReplicaModel]) -> int:
    """Bytes a replica holds for versions beside a model's first copy (two copies live during a switch): the
    scheduler reserves a model's memory once, so this much is taken off what the replica offers."""
    largest: dict[str, int] = {}
    total = 0
    for inst, m in models.items():
        if m.state not in ("LOADED", "LOADING", "DRAINING"):
            continue
        name = model_of(inst)[0]
        if name in largest:
            total += min(largest[name], m.memory)
            largest[name] = max(largest[name], m.memory)
        else:
            largest[name] = m.memory
    return total


@dataclass(frozen=True)
class Rollout:
    desired: int
    serving: int
    state: str  # Complete, Progressing, Failed
    serving_on: int  # replicas where the serving instance is loaded
    failure: str = ""  # why the desired version is not serving (MLServer's error per replica)


def _live(rec: ReplicaRecord | None) -> bool:
    return rec is not None and rec.connected and rec.readiness.ready


def _state(rec: ReplicaRecord | None, inst: str) -> ReplicaModel | None:
    return rec.models.get(inst) if rec is not None else None


def decide(name: str, desired: int, previous: int | None, planned: list[str],
           records: Mapping[str, ReplicaRecord], replicas: int = 1) -> Rollout:
    """Which generation serves ``name`` after this pass. ``previous``: the serving generation stored in the
    status (None: a new model); ``planned``: the replica keys the plan puts it on; ``replicas``: how many it
    wants (0: scaled to zero, nothing to load, the rollout is complete)."""
    if replicas == 0:
        return Rollout(desired, desired, COMPLETE, 0)
    live = [k for k in planned if _live(records.get(k))]
    new = instance(name, desired)
    loaded = sum(1 for k in live if (m := _state(records.get(k), new)) and m.state == "LOADED")
    failures = [f"replica {k}: load failed: {m.message}" for k in planned
                if (m := _state(records.get(k), new)) and m.state == "LOAD_FAILED" and m.generation >= desired]
    switched = bool(live) and loaded >= len(live)
    if previous is None or previous == desired or switched:
        return Rollout(desired, desired, COMPLETE if switched else PROGRESSING, loaded)
    old = instance(name, previous)
    old_on = sum(1 for k in live if (m := _state(records.get(k), old)) and m.state == "LOADED")
    if old_on == 0:  # nothing of the old version serves any more: the new one is all there is
        return Rollout(desired, desired, FAILED if failures else PROGRESSING, loaded, "; ".join(failures))
    return Rollout(desired, previous, FAILED if failures else PROGRESSING, old_on, "; ".join(failures))


def amend(st: ModelStatus, doc: Mapping[str, Any], ro: Rollout, old: Mapping[str, Any], now: float) -> None:
    """Write the rollout into a model's status: ``servingGeneration``, ``rollout`` (with the previous version's
    artifact, for ``berth rollout undo``); while an older version serves, the model is available and says so."""
    before = old.get("rollout") or {}
    current = before.get("current") or {}
    mine = {"generation": ro.desired, "artifact": artifact(doc)}
    previous = before.get("previous")
    if current and current.get("generation") != ro.desired:
        previous = current
    if ro.serving == ro.desired:
        message = (f"generation {ro.desired} serves" if ro.state == COMPLETE
                   else f"generation {ro.desired} is loading" if ro.state == PROGRESSING
                   else f"generation {ro.desired} failed to load: {ro.failure}")
    else:
        message = (f"generation {ro.serving} keeps serving on {ro.serving_on} replica(s): generation "
                   f"{ro.desired} " + (f"failed to load: {ro.failure}" if ro.state == FAILED else "is loading"))
    st["servingGeneration"] = ro.serving
    st["rollout"] = cast(ModelRollout, {"desiredGeneration": ro.desired, "servingGeneration": ro.serving,
                                        "state": ro.state, "message": message, "current": mine,
                                        "previous": previous})
    if ro.serving == ro.desired:
        return
    reason = "RolloutFailed" if ro.state == FAILED else "RolloutProgressing"
    st["state"], st["reason"], st["message"] = status.AVAILABLE, reason, message
    st["availableReplicas"] = ro.serving_on
    st["conditions"] = [
        status.condition("ModelReady", True, reason, message, old, now),
        status.condition("Ready", True, reason, message, old, now),
        *[c for c in st["conditions"] if c["type"] == "Scheduled"]]
    history = list(old.get("history") or [])  # what model_status appended described the new version alone
    if not history or history[-1].get("state") != status.AVAILABLE or history[-1].get("message") != message:
        history.append({"time": rfc3339(now), "state": status.AVAILABLE, "message": message})
    st["history"] = history[-status.HISTORY_LIMIT:]
