"""Pipeline status: PipelineReady with every problem :mod:`berth.resources.pipelines` finds, one per line."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from berth.control.status import condition
from berth.resources.pipelines import TIMEOUT_ANNOTATION, check_namespace
from berth.resources.statuses import Condition, PipelineStatus, PipelineStepStatus
from berth.wire.routes import PipelineRoute

READY_MESSAGE = "pipeline ready"


def pipeline_statuses(ns: str, pipelines: list[dict[str, Any]], models: Mapping[str, Mapping[str, Any]],
                      now: float) -> list[tuple[str, PipelineStatus]]:
    """The status of each of namespace ``ns``'s ``pipelines`` given its Models as they are now (re-evaluated
    on every pass, so a step model becoming ready or going away shows up at once)."""
    by_name = {p["metadata"]["name"]: p for p in pipelines}
    checked = check_namespace(ns, by_name, models)
    out: list[tuple[str, PipelineStatus]] = []
    for name, doc in by_name.items():
        dag, problems = checked[name]
        steps: list[PipelineStepStatus] = []
        for step in dag.steps:
            mine = [p.split(": ", 1)[1] for p in problems if p.startswith(f"step {step.name}: ")]
            steps.append({"name": step.name, "ready": not mine, "message": "; ".join(mine) or "ready"})
        ok = not problems
        message = READY_MESSAGE if ok else "; ".join(problems)
        reason = "PipelineReady" if ok else "PipelineNotReady"
        old = doc.get("status")
        out.append((name, {
            "observedGeneration": doc["metadata"].get("generation", 0),
            "conditions": cast("list[Condition]", [condition("PipelineReady", ok, reason, message, old, now),
                                                   condition("Ready", ok, reason, message, old, now)]),
            "message": message,
            "steps": steps,
        }))
    return out


def is_ready(doc: Mapping[str, Any] | None) -> bool:
    """Whether a Pipeline (or Experiment) document's Ready condition is True."""
    conds = ((doc or {}).get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


def pipeline_routes(ns: str, pipelines: list[dict[str, Any]] | None) -> list[PipelineRoute]:
    """The namespace's pipelines as the routing table carries them (spec as applied, ready per its status)."""
    routes = []
    for doc in pipelines or []:
        annotations = (doc["metadata"].get("annotations") or {})
        routes.append(PipelineRoute(
            namespace=ns, name=doc["metadata"]["name"], spec=doc.get("spec") or {},
            annotations={str(k): str(v) for k, v in annotations.items() if str(k).startswith(TIMEOUT_ANNOTATION)},
            ready=is_ready(doc), reason=(doc.get("status") or {}).get("message", "")))
    return routes
