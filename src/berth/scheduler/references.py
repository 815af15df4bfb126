"""What Experiments refer to, checked: pure, shared by the control plane's status and `berth plan`.

An experiment's candidates, mirror and default must be models (``resourceType: pipeline``: pipelines) of its
own namespace, each ready; one model can be the default of one experiment only.  Each problem is one line.
Pipelines are checked by :mod:`berth.resources.pipelines`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from berth.scheduler.suggest import near_match


def _ready(doc: Mapping[str, Any]) -> bool:
    conds = (doc.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conds)


def experiment_problems(doc: Mapping[str, Any], models: Mapping[str, Mapping[str, Any]],
                        claimed_by: Mapping[str, str],
                        pipelines: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    """Every reason ``doc`` (an Experiment) is not ready; [] when it is.  ``models``: the namespace's Model
    docs by name (``status.state``); ``claimed_by``: default model → experiment holding it; ``pipelines``: the
    namespace's Pipeline docs by name with their statuses (for ``resourceType: pipeline``)."""
    spec = doc.get("spec") or {}
    ns = doc["metadata"]["namespace"]
    name = doc["metadata"]["name"]
    piped = spec.get("resourceType") == "pipeline"
    kind = "pipeline" if piped else "model"
    problems: list[str] = []
    wanted = [("candidate", c.get("name", "")) for c in spec.get("candidates") or []]
    if spec.get("mirror"):
        wanted.append(("mirror", spec["mirror"].get("name", "")))
    if spec.get("default"):
        wanted.append(("default", spec["default"]))
        other = claimed_by.get(spec["default"])
        if not piped and other and other != name:
            problems.append(f"default model {spec['default']} is already the default of experiment {other}; "
                            "one model can be the default of only one experiment")
    known = (pipelines or {}) if piped else models
    for role, ref in wanted:
        if "/" in ref:
            problems.append(f"{role} {ref} is in another namespace; experiments use {kind}s of {ns} only")
            continue
        found = known.get(ref)
        if found is None:
            guess = near_match(ref, sorted(known))  # this namespace's names only
            hint = f" (did you mean {guess}?)" if guess else ""
            problems.append(f"{role} {kind} {ref} not found in namespace {ns}{hint}")
            continue
        st = found.get("status") or {}
        if piped and not _ready(found):
            problems.append(f"{role} pipeline {ref} is not ready: {st.get('message') or 'no status yet'}")
        elif not piped and st.get("state") != "ModelAvailable":
            problems.append(f"{role} model {ref} is not ready: {st.get('state', 'Unknown')}")
    return problems
