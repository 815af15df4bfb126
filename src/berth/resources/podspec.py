"""What Berth reads from a Server's or ServerConfig's ``podSpec``: the inference server's memory.

Seldon Core v2 gives each server replica the memory request of its ``mlserver`` container as capacity
(the agent reads it through the downward API).  Berth's local replicas do the same: the memory of the
container named ``mlserver`` (else the only container), its ``resources.requests.memory``, else its
``resources.limits.memory``; a Server's own ``podSpec`` overrides its ServerConfig's, as Seldon merges
them.  Nothing else in a podSpec applies to local replicas.
"""

from __future__ import annotations

from typing import Any

from berth.resources.quantity import parse_quantity

INFERENCE_CONTAINER = "mlserver"
MEMORY_ANNOTATION = "berth.io/replica-memory"


def _container(pod_spec: Any) -> dict[str, Any] | None:
    if not isinstance(pod_spec, dict):
        return None
    containers = [c for c in pod_spec.get("containers") or [] if isinstance(c, dict)]
    named = [c for c in containers if c.get("name") == INFERENCE_CONTAINER]
    if named:
        return named[0]
    return containers[0] if len(containers) == 1 else None


def container_memory(pod_spec: Any, where: str) -> int | None:
    """Bytes of the inference container's memory request (or limit) in ``pod_spec``, or None when unset.
    ``where`` names the field in errors (e.g. ``Server financial-ml/mlserver spec.podSpec``)."""
    container = _container(pod_spec)
    if container is None:
        return None
    resources = container.get("resources") or {}
    for kind in ("requests", "limits"):
        value = (resources.get(kind) or {}).get("memory") if isinstance(resources, dict) else None
        if value is not None:
            name = container.get("name") or "container 0"
            return parse_quantity(value, field=f"{where}.containers[{name}].resources.{kind}.memory")
    return None


def replica_memory(server: dict[str, Any], config: dict[str, Any] | None) -> tuple[int, str] | None:
    """The memory a replica of ``server`` offers from the podSpecs, and where it was read; None when neither
    the Server nor its ServerConfig (``config``) sets one."""
    meta = server["metadata"]
    where = f"Server {meta['namespace']}/{meta['name']} spec.podSpec"
    found = container_memory((server.get("spec") or {}).get("podSpec"), where)
    if found is not None:
        return found, where
    if config is not None:
        where = f"ServerConfig {config['metadata']['namespace']}/{config['metadata']['name']} spec.podSpec"
        found = container_memory((config.get("spec") or {}).get("podSpec"), where)
        if found is not None:
            return found, where
    return None


def server_memory(server: dict[str, Any], config: dict[str, Any] | None, default: int) -> tuple[int, str]:
    """The memory each replica of ``server`` offers, and where it comes from: the ``berth.io/replica-memory``
    annotation, else the podSpecs (:func:`replica_memory`), else ``default``."""
    annotations = server["metadata"].get("annotations") or {}
    if MEMORY_ANNOTATION in annotations:
        return parse_quantity(annotations[MEMORY_ANNOTATION], field=MEMORY_ANNOTATION), \
            f"annotation {MEMORY_ANNOTATION}"
    found = replica_memory(server, config)
    return found if found is not None else (default, "default")


def server_config_for(server: dict[str, Any], configs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The ServerConfig ``server`` names among ``configs``: in its own namespace, else the only one of that name."""
    name = (server.get("spec") or {}).get("serverConfig")
    named = [c for c in configs if c["metadata"]["name"] == name] if name else []
    same = [c for c in named if c["metadata"]["namespace"] == server["metadata"]["namespace"]]
    return same[0] if same else named[0] if len(named) == 1 else None
