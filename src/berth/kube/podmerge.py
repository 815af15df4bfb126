"""Merging pod specs as Seldon Core v2 merges a ServerConfig's and a Server's ``podSpec``.

Later specs win: a container of the same name is merged field by field (its ``env`` and ``volumeMounts``
entry by entry, by name / mountPath; any other field replaced), a container of a new name is added; a
pod-level field (``nodeSelector``, ``tolerations``, ``affinity``, ``volumes``, ...) is replaced, except
``volumes``, merged by name.  Inputs are never changed.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

_BY = {"env": "name", "volumeMounts": "mountPath", "ports": "name", "volumes": "name", "containers": "name",
       "initContainers": "name"}


def _merge_list(base: Sequence[Any], over: Sequence[Any], key: str, deep: bool) -> list[Any]:
    out = [copy.deepcopy(x) for x in base]
    index = {x.get(key): i for i, x in enumerate(out) if isinstance(x, Mapping)}
    for item in over:
        name = item.get(key) if isinstance(item, Mapping) else None
        if name is not None and name in index:
            out[index[name]] = merge_container(out[index[name]], item) if deep else copy.deepcopy(item)
        else:
            index[name] = len(out)
            out.append(copy.deepcopy(item))
    return out


def merge_container(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for field, value in over.items():
        if field in ("env", "volumeMounts", "ports") and isinstance(value, list):
            out[field] = _merge_list(out.get(field) or [], value, _BY[field], deep=False)
        else:
            out[field] = copy.deepcopy(value)
    return out


def merge_pod_specs(*specs: Mapping[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for spec in specs:
        for field, value in (spec or {}).items():
            if field in ("containers", "initContainers") and isinstance(value, list):
                out[field] = _merge_list(out.get(field) or [], value, "name", deep=True)
            elif field == "volumes" and isinstance(value, list):
                out[field] = _merge_list(out.get(field) or [], value, "name", deep=False)
            else:
                out[field] = copy.deepcopy(value)
    return out
