"""CustomResourceDefinitions for Seldon Core v2's kinds, generated from Berth's own schemas.

The ``spec`` of each CRD is :mod:`berth.resources.kinds`' pydantic schema made structural
(:mod:`berth.kube.openapi`); nothing is copied from Seldon's CRDs.  Every spec object keeps unknown fields
(``x-kubernetes-preserve-unknown-fields``), because Berth keeps and warns about fields it does not act on,
so every field Seldon's CRDs accept is accepted, and the fields Berth reads are typed as Berth reads them
(``spec.replicas: "three"`` is refused by the API server as Berth refuses it).  ``podSpec`` and the other
embedded Kubernetes objects are kept whole rather than spelled out, which keeps each CRD a few kilobytes:
small enough for a client-side ``kubectl apply`` (its last-applied annotation must stay under 256 KiB).

Printer columns are Seldon's, pointed at the status fields Berth writes (``berth.control.status``), so
``kubectl get models`` shows READY, DESIRED REPLICAS and AVAILABLE REPLICAS as ``berth get`` does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from berth.kube.openapi import PRESERVE, structural
from berth.resources.kinds import KIND_ALIASES, SELDON_API, SPEC_SCHEMAS

GROUP, VERSION = SELDON_API.split("/")
PART_OF = {"app.kubernetes.io/part-of": "berth"}
# client-side apply keeps the whole object in an annotation, and all annotations share this budget.
ANNOTATION_BUDGET = 256 * 1024


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    path: str
    description: str = ""
    priority: int = 0

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.path}
        if self.description:
            out["description"] = self.description
        if self.priority:
            out["priority"] = self.priority
        return out


def _ready(condition: str) -> str:
    return f'.status.conditions[?(@.type=="{condition}")].status'


def _message(condition: str) -> str:
    return f'.status.conditions[?(@.type=="{condition}")].message'


AGE = Column("Age", "date", ".metadata.creationTimestamp")
COLUMNS: dict[str, tuple[Column, ...]] = {
    "Model": (
        Column("Ready", "string", _ready("ModelReady"), "Model ready status"),
        Column("Desired Replicas", "integer", ".status.replicas", "Number of desired replicas"),
        Column("Available Replicas", "integer", ".status.availableReplicas",
               "Number of replicas available to receive inference requests"),
        AGE,
        Column("Reason", "string", _message("ModelReady"), "Why the model is (not) ready", priority=1),
    ),
    "Server": (
        Column("Ready", "string", _ready("Ready"), "Server ready status"),
        Column("Replicas", "integer", ".status.replicas", "Number of replicas"),
        Column("Loaded Models", "integer", ".status.loadedModels", "Number of models loaded"),
        AGE,
    ),
    "ServerConfig": (AGE,),
    "Experiment": (
        Column("Experiment Ready", "string", _ready("ExperimentReady"), "Experiment ready status"),
        Column("Message", "string", _message("ExperimentReady"), "Status message"),
        AGE,
    ),
    "Pipeline": (
        Column("Ready", "string", _ready("Ready"), "Pipeline ready status"),
        Column("Message", "string", _message("Ready"), "Status message"),
        AGE,
    ),
    "SeldonRuntime": (
        Column("Ready", "string", _ready("Ready"), "Runtime ready status"),
        AGE,
    ),
}
# Kinds with a replica count the scale subresource (kubectl scale, HorizontalPodAutoscaler) drives.
SCALED = ("Model", "Server")

_CONDITION: dict[str, Any] = {
    "type": "object",
    "required": ["type", "status"],
    "properties": {
        "type": {"type": "string"},
        "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
        "reason": {"type": "string"},
        "message": {"type": "string"},
        "lastTransitionTime": {"type": "string"},
        "severity": {"type": "string"},
    },
    PRESERVE: True,
}
_STATUS: dict[str, Any] = {
    "type": "object",
    "description": "Written by Berth's control plane through the status subresource.",
    "properties": {
        "observedGeneration": {"type": "integer", "format": "int64"},
        "conditions": {"type": "array", "items": _CONDITION},
        "replicas": {"type": "integer", "format": "int32"},
        "availableReplicas": {"type": "integer", "format": "int32"},
        "loadedModels": {"type": "integer", "format": "int32"},
        "selector": {"type": "string"},
    },
    PRESERVE: True,
}


def plural(kind: str) -> str:
    return kind.lower() + "s"


def short_names(kind: str) -> list[str]:
    long = {kind.lower(), plural(kind)}
    return sorted(a for a, k in KIND_ALIASES.items() if k == kind and a not in long)


def spec_schema(kind: str) -> dict[str, Any]:
    out = structural(SPEC_SCHEMAS[kind].model_json_schema())
    out["description"] = f"The {kind}'s desired state, as Seldon Core v2 writes it; Berth keeps unknown fields."
    return out


def crd(kind: str) -> dict[str, Any]:
    """The CustomResourceDefinition of one Seldon kind."""
    subresources: dict[str, Any] = {"status": {}}
    if kind in SCALED:
        subresources["scale"] = {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
                                 "labelSelectorPath": ".status.selector"}
    schema = {
        "type": "object",
        "description": f"A Seldon Core v2 {kind}, served by Berth.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": spec_schema(kind),
            "status": _STATUS,
        },
    }
    names: dict[str, Any] = {"kind": kind, "listKind": f"{kind}List", "plural": plural(kind),
                             "singular": kind.lower()}
    if short_names(kind):
        names["shortNames"] = short_names(kind)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural(kind)}.{GROUP}", "labels": dict(PART_OF)},
        "spec": {
            "group": GROUP,
            "names": names,
            "scope": "Namespaced",
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": schema},
                "subresources": subresources,
                "additionalPrinterColumns": [c.as_dict() for c in COLUMNS[kind]],
            }],
        },
    }


def all_crds() -> list[dict[str, Any]]:
    return [crd(kind) for kind in SPEC_SCHEMAS]


def last_applied_size(doc: dict[str, Any]) -> int:
    """Bytes of the annotation a client-side ``kubectl apply`` would store for ``doc``."""
    return len(json.dumps(doc, separators=(",", ":")).encode())
