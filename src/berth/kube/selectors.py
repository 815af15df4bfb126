"""Kubernetes label selectors (``matchLabels`` + ``matchExpressions``): matching and a one-line rendering.

Semantics as the API server's ``metav1.LabelSelector``: every ``matchLabels`` pair and every expression
must hold; an empty selector (``{}``) selects everything.  Operators: ``In`` (key present, value listed),
``NotIn`` (key absent or value not listed), ``Exists``, ``DoesNotExist``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from berth.errors import InvalidInput

Labels = Mapping[str, str]
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


def _expression(expr: Any, where: str) -> tuple[str, str, list[str]]:
    if not isinstance(expr, Mapping) or not isinstance(expr.get("key"), str):
        raise InvalidInput(f"{where}: a matchExpressions entry needs a key string, got {expr!r}")
    op = expr.get("operator")
    if op not in OPERATORS:
        raise InvalidInput(f"{where}: operator {op!r} for key {expr['key']!r} is not one of {', '.join(OPERATORS)}")
    values = [str(v) for v in (expr.get("values") or [])]
    if op in ("In", "NotIn") and not values:
        raise InvalidInput(f"{where}: operator {op} for key {expr['key']!r} needs values")
    return str(expr["key"]), str(op), values


def matches(selector: Mapping[str, Any] | None, labels: Labels, where: str = "selector") -> bool:
    """Whether ``labels`` satisfy ``selector`` (None or ``{}`` selects everything)."""
    if not selector:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != str(value):
            return False
    for raw in selector.get("matchExpressions") or []:
        key, op, values = _expression(raw, where)
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


def render(selector: Mapping[str, Any] | None) -> str:
    """``app=x,tier in (a,b),!debug``, kubectl's selector syntax; ``{}`` reads as ``(everything)``."""
    if not selector:
        return "(everything)"
    parts = [f"{k}={v}" for k, v in (selector.get("matchLabels") or {}).items()]
    for raw in selector.get("matchExpressions") or []:
        key, op, values = _expression(raw, "selector")
        parts.append({"In": f"{key} in ({','.join(values)})", "NotIn": f"{key} notin ({','.join(values)})",
                      "Exists": key, "DoesNotExist": f"!{key}"}[op])
    return ",".join(parts) or "(everything)"


def render_labels(labels: Labels) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "(none)"


def missing(selector: Mapping[str, Any] | None, labels: Labels) -> list[str]:
    """The terms of ``selector`` that ``labels`` fail, rendered (empty when it matches)."""
    if not selector:
        return []
    out = [f"{k}={v}" for k, v in (selector.get("matchLabels") or {}).items() if labels.get(k) != str(v)]
    for raw in selector.get("matchExpressions") or []:
        if not matches({"matchExpressions": [raw]}, labels):
            out.append(render({"matchExpressions": [raw]}))
    return out
