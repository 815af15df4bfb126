"""Resource status as users read it: conditions, state, replicas, reasons, history.

Built from the scheduler's plan and the hub's replica records; written by the reconciler only when it
changed, so watches see real transitions, not churn.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from berth.control.clock import clock, rfc3339
from berth.control.control_view import control_plane_status
from berth.control.hub import ReplicaRecord
from berth.resources.instances import instance, model_of
from berth.resources.podspec import RUNS, inference_server, server_label, unsupported_message
from berth.resources.statuses import (
    Condition,
    HistoryEntry,
    ModelReplicaStatus,
    ModelState,
    ModelStatus,
    PlacementReason,
    ReplicaState,
    ServerReplicaStatus,
    ServerStatus,
    UnavailableCapability,
    conditions_of,
)
from berth.scheduler.snapshot import ModelPlan, ModelWant

AVAILABLE: ModelState = "ModelAvailable"
PROGRESSING: ModelState = "ModelProgressing"
SCHEDULE_FAILED: ModelState = "ScheduleFailed"
LOAD_FAILED: ModelState = "LoadFailed"
TERMINATING: ModelState = "ModelTerminating"
HISTORY_LIMIT = 20
MAX_LOAD_ATTEMPTS = 10
UNSUPPORTED = "UnsupportedServerConfig"  # a Server or ServerConfig of an inference server Berth does not run


def condition(kind: str, ok: bool, reason: str, message: str, old: Mapping[str, Any] | None,
              now: float) -> Condition:
    """A Kubernetes condition; lastTransitionTime moves only when status flips.  ``old``: the previous
    status (any kind's), whose condition of this ``kind`` gives the time of the last flip."""
    status: Any = "True" if ok else "False"
    prev = next((c for c in conditions_of({"status": old}) if c.get("type") == kind), None)
    since = prev["lastTransitionTime"] if prev and prev.get("status") == status else rfc3339(now)
    return {"type": kind, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": since}


def _replica_line(ref: str, rec: ReplicaRecord | None, name: str, gen: int) -> tuple[ReplicaState, str]:
    """(replica state, human line) for one planned replica of a model."""
    if rec is None or not rec.connected:
        why = rec.disconnect_reason if rec is not None else "no agent connected"
        return "Unavailable", f"replica {ref}: {why}"
    if not rec.readiness.ready:
        return "Unavailable", (f"replica {ref}: inference server {rec.hello.inference.http} not ready: "
                               f"{rec.readiness.error or 'not ready'}")
    m = rec.models.get(instance(name, gen))
    if m is None:
        return "Pending", f"replica {ref}: load requested"
    if m.state == "LOAD_FAILED" and m.generation >= gen:
        extra = (f" (gave up after {m.attempts} attempts; change the model to retry)"
                 if m.attempts >= MAX_LOAD_ATTEMPTS else f" (attempt {m.attempts}, retrying)")
        return "LoadFailed", f"replica {ref}: load failed: {m.message}{extra}"
    if m.state == "LOADED" and m.generation >= gen:
        return "Loaded", f"replica {ref}: loaded"
    return "Loading", f"replica {ref}: loading (generation {gen})"


def model_status(doc: dict[str, Any], want: ModelWant, mp: ModelPlan, records: dict[str, ReplicaRecord],
                 artifact_gen: int, fingerprint: str, now: float) -> ModelStatus:
    old = doc.get("status") or {}
    name = want.name
    replica_status: dict[str, ModelReplicaStatus] = {}
    lines: list[str] = []
    available = 0
    failed: list[str] = []
    for ref in mp.replicas:
        key = str(ref)
        rec = records.get(key)
        replica_state, line = _replica_line(key, rec, name, artifact_gen)
        m = rec.models.get(instance(name, artifact_gen)) if rec is not None else None
        replica_status[key] = {"state": replica_state, "message": line, "memory": m.memory if m else 0,
                               "loadSeconds": m.duration if m else 0.0,
                               "inferenceLoadSeconds": m.inference_seconds if m else 0.0,
                               "address": rec.hello.inference.http if rec is not None else ""}
        if replica_state == "Loaded":
            available += 1
        else:
            lines.append(line)
        if replica_state == "LoadFailed":
            failed.append(line)
    enough = max(1, want.min_replicas or 0) if want.min_replicas is not None else want.replicas
    state: ModelState
    if want.replicas == 0:
        state, reason, message = AVAILABLE, "ScaledToZero", "model scaled to 0 replicas"
    elif mp.state == "ScheduleFailed":
        state, reason, message = SCHEDULE_FAILED, "ScheduleFailed", mp.message
    elif failed and available < enough:
        state, reason, message = LOAD_FAILED, "LoadFailed", "; ".join(failed)
    elif available >= enough and available > 0:
        state, reason = AVAILABLE, "ModelAvailable"
        message = f"available on {available} of {want.replicas} replica(s)"
        if mp.state == "PartiallyScheduled":
            message += "; " + mp.message
        elif lines:
            message += "; " + "; ".join(lines)
    else:
        state, reason = PROGRESSING, "ModelProgressing"
        message = "; ".join(lines) if lines else "waiting for replicas"
        if mp.state == "PartiallyScheduled":
            message += "; " + mp.message
    ready = state == AVAILABLE
    history: list[HistoryEntry] = list(old.get("history") or [])
    if not history or history[-1].get("state") != state or history[-1].get("message") != message:
        history.append({"time": rfc3339(now), "state": state, "message": message})
        history = history[-HISTORY_LIMIT:]
    return {
        "observedGeneration": doc["metadata"].get("generation", 0),
        "state": state,
        "reason": reason,
        "message": message,
        "replicas": want.replicas,
        "availableReplicas": available,
        "conditions": [
            condition("ModelReady", ready, reason, message, old, now),
            condition("Ready", ready, reason, message, old, now),
            condition("Scheduled", mp.state != "ScheduleFailed", mp.state,
                      mp.message or "scheduled", old, now),
        ],
        "placement": {"server": mp.server, "replicas": [r.index for r in mp.replicas],
                      "state": mp.state, "reasons": [cast(PlacementReason, r.as_dict()) for r in mp.reasons]},
        "replicaStatus": replica_status,
        "artifactGeneration": artifact_gen,
        "artifactFingerprint": fingerprint,
        "history": history,
    }


def server_status(doc: dict[str, Any], desired: int, records: list[ReplicaRecord],
                  now: float, config: Mapping[str, Any] | None = None) -> ServerStatus:
    """``config``: the Server's ServerConfig when at hand (else its kind is judged from the Server alone)."""
    kind = inference_server(doc, config)
    if kind != RUNS:
        return _unsupported_server_status(doc, desired, kind, now)
    old = doc.get("status") or {}
    by_index = {r.index: r for r in records}
    rows: list[ServerReplicaStatus] = []
    problems: list[str] = []
    ready_count = 0
    loaded: set[str] = set()
    claims: dict[str, list[int]] = {}  # "torch but its MLServer cannot import torch (...)" -> replica indices
    for index in range(max([desired, *[i + 1 for i in by_index]])):
        rec = by_index.get(index)
        if rec is None:
            rows.append({"index": index, "connected": False, "ready": False,
                         "message": "no agent connected yet"})
            if index < desired:
                problems.append(f"replica {index}: no agent connected yet")
            continue
        models = sorted({model_of(n)[0] for n, m in rec.models.items() if m.state == "LOADED"})
        loaded.update(models)
        ok = rec.connected and rec.readiness.ready
        ready_count += ok
        if not rec.connected:
            msg = f"agent disconnected since {clock(rec.disconnected_at or now)}: {rec.disconnect_reason}"
        elif not rec.readiness.ready:
            since = f" since {clock(rec.readiness.since)}" if rec.readiness.since else ""
            msg = (f"inference server {rec.hello.inference.http} not ready: "
                   f"{rec.readiness.error or 'not ready'}{since}")
        else:
            msg = "ready"
        if not ok and index < desired:
            problems.append(f"replica {index}: {msg}")
        for p in rec.hello.unavailable if rec.connected else ():
            claims.setdefault(f"{p.capability} but its MLServer cannot import {p.module} ({p.error})", []).append(index)
        row: ServerReplicaStatus = {
            "index": index, "connected": rec.connected, "ready": rec.readiness.ready,
            "address": rec.hello.inference.http, "memory": rec.hello.memory,
            "capabilities": rec.hello.capabilities, "models": models, "message": msg,
            "unavailableCapabilities": [cast(UnavailableCapability, p.model_dump()) for p in rec.hello.unavailable]}
        if rec.control is not None:  # the agent's own view of the control plane (docs/doctor.md)
            row["controlPlane"] = control_plane_status(rec.control)
        rows.append(row)
    ready = desired > 0 and ready_count >= desired
    message = (f"{ready_count} of {desired} replica(s) ready" + ("; " + "; ".join(problems) if problems else ""))
    name = doc["metadata"].get("name", "")
    every = sorted(i for i, r in by_index.items() if r.connected)
    claim_lines = [f"server {name}{'' if idx == every else ' replica ' + ', '.join(map(str, idx))} claims {text}"
                   for text, idx in claims.items()]
    caps_message = "; ".join(claim_lines) or "every claimed capability's runtime is importable where checked"
    return {
        "observedGeneration": doc["metadata"].get("generation", 0),
        "replicas": desired,
        "readyReplicas": ready_count,
        "loadedModels": len(loaded),
        "conditions": [condition("Ready", ready, "ServerReady" if ready else "ServerNotReady",
                                 message, old, now),
                       condition("CapabilitiesAvailable", not claim_lines,
                                 "RuntimeNotImportable" if claim_lines else "RuntimesImportable", caps_message,
                                 old, now)],
        "replicaStatus": rows,
    }



def _unsupported_server_status(doc: dict[str, Any], desired: int, kind: str, now: float) -> ServerStatus:
    """A Server whose inference server Berth does not run: no replicas are started, never Ready."""
    message = unsupported_message((doc.get("spec") or {}).get("serverConfig"), kind)
    rows: list[ServerReplicaStatus] = [
        {"index": i, "connected": False, "ready": False,
         "message": f"not started: Berth does not run {server_label(kind)}"} for i in range(desired)]
    return {
        "observedGeneration": doc["metadata"].get("generation", 0),
        "replicas": desired,
        "readyReplicas": 0,
        "loadedModels": 0,
        "conditions": [condition("Ready", False, UNSUPPORTED, message, doc.get("status"), now)],
        "replicaStatus": rows,
    }
