"""Experiment and Pipeline status: what they refer to must exist here and be Ready."""

from __future__ import annotations

from typing import Any

from berth.control.status import condition
from berth.scheduler.suggest import near_match


def experiment_status(doc: dict[str, Any], models: dict[str, dict[str, Any]],
                      claimed_by: dict[str, str], now: float) -> dict[str, Any]:
    """``models``: this namespace's Model docs by name; ``claimed_by``: default model → experiment name."""
    spec = doc.get("spec") or {}
    ns = doc["metadata"]["namespace"]
    name = doc["metadata"]["name"]
    problems: list[str] = []
    wanted = [("candidate", c.get("name", "")) for c in spec.get("candidates") or []]
    if spec.get("mirror"):
        wanted.append(("mirror", spec["mirror"].get("name", "")))
    if spec.get("default"):
        wanted.append(("default", spec["default"]))
        other = claimed_by.get(spec["default"])
        if other and other != name:
            problems.append(f"default model {spec['default']} is already the default of experiment {other}; "
                            "one model can be the default of only one experiment")
    for role, ref in wanted:
        if "/" in ref:
            problems.append(f"{role} {ref} is in another namespace; experiments use models of {ns} only")
            continue
        model = models.get(ref)
        if model is None:
            guess = near_match(ref, sorted(models))  # this namespace's models only
            hint = f" (did you mean {guess}?)" if guess else ""
            problems.append(f"{role} model {ref} not found in namespace {ns}{hint}")
            continue
        st = model.get("status") or {}
        if st.get("state") != "ModelAvailable":
            problems.append(f"{role} model {ref} is not ready: {st.get('state', 'Unknown')}")
    ok = not problems
    message = "experiment ready" if ok else "; ".join(problems)
    reason = "ExperimentReady" if ok else "ExperimentNotReady"
    default = spec.get("default")
    return {
        "observedGeneration": doc["metadata"].get("generation", 0),
        "holdsDefault": bool(default) and claimed_by.get(str(default)) == name,
        "conditions": [condition("ExperimentReady", ok, reason, message, doc.get("status"), now),
                       condition("Ready", ok, reason, message, doc.get("status"), now)],
        "message": message,
    }


def pipeline_status(doc: dict[str, Any], models: dict[str, dict[str, Any]], now: float) -> dict[str, Any]:
    """Pipelines are validated and stored; serving them is not built yet, and the status says so."""
    steps = [s.get("name", "") for s in (doc.get("spec") or {}).get("steps", [])]
    missing = [s for s in steps if s not in models]
    message = ("pipelines are validated and stored; this version of Berth does not serve them yet "
               f"(steps: {', '.join(steps)})")
    if missing:
        message += f"; step model(s) not found in namespace {doc['metadata']['namespace']}: {', '.join(missing)}"
    return {
        "observedGeneration": doc["metadata"].get("generation", 0),
        "conditions": [condition("Ready", False, "PipelineNotServed", message, doc.get("status"), now)],
        "message": message,
    }
