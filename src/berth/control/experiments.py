"""Experiment status: what it refers to (models, or pipelines with ``resourceType: pipeline``) must exist here
and be Ready (checked by :mod:`berth.scheduler.references`).  Pipelines' own status is
:mod:`berth.control.pipelines`."""

from __future__ import annotations

from typing import Any

from berth.control.status import condition
from berth.resources.statuses import ExperimentStatus
from berth.scheduler.references import experiment_problems


def experiment_status(doc: dict[str, Any], models: dict[str, dict[str, Any]],
                      claimed_by: dict[str, str], now: float,
                      pipelines: dict[str, dict[str, Any]] | None = None) -> ExperimentStatus:
    """``models``: this namespace's Model docs by name; ``claimed_by``: default model → experiment name;
    ``pipelines``: its Pipeline docs by name with their new statuses (for ``resourceType: pipeline``)."""
    spec = doc.get("spec") or {}
    name = doc["metadata"]["name"]
    problems = experiment_problems(doc, models, claimed_by, pipelines)
    ok = not problems
    message = "experiment ready" if ok else "; ".join(problems)
    reason = "ExperimentReady" if ok else "ExperimentNotReady"
    default = spec.get("default")
    piped = spec.get("resourceType") == "pipeline"  # a pipeline's default is NAME.pipeline: no model is claimed
    return {
        "observedGeneration": doc["metadata"].get("generation", 0),
        "holdsDefault": not piped and bool(default) and claimed_by.get(str(default)) == name,
        "conditions": [condition("ExperimentReady", ok, reason, message, doc.get("status"), now),
                       condition("Ready", ok, reason, message, doc.get("status"), now)],
        "message": message,
    }
