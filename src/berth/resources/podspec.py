"""What Berth reads from a Server's and its ServerConfig's ``podSpec``, where Seldon Core v2 reads it.

A Seldon server pod runs an ``agent`` container beside the inference server; the agent sizes the replica
from its environment.  Berth's local replicas follow the same knobs, first found wins:

- memory: the Server's annotation ``berth.io/replica-memory``; the agent's ``MEMORY_REQUEST`` (bytes or a
  quantity, or a ``valueFrom.resourceFieldRef`` to a container's ``requests.memory``/``limits.memory``,
  resolved as the downward API would); the ``mlserver`` container's memory request, else limit; the default.
- overcommit: the Server's annotation ``berth.io/overcommit``; the agent's ``SELDON_OVERCOMMIT_PERCENTAGE``;
  the default (Seldon's 10, or ``berth up --overcommit``).
- capabilities: the Server's ``spec.capabilities``; the agent's ``SELDON_SERVER_CAPABILITIES``; MLServer's
  (``extraCapabilities`` are appended to either: see ``berth.scheduler.build``).
- inference server: the agent's ``SELDON_SERVER_TYPE``; else a ``triton`` container and no ``mlserver``
  one; else ``serverConfig: triton`` when that ServerConfig is not at hand; else MLServer.

Every env knob is read from the Server's ``podSpec`` first, then its ServerConfig's, as Seldon merges the
two (a Server's container or env entry replaces the one of the same name).  Berth runs only MLServer;
a server of any other kind gets no replicas and says why (:func:`unsupported_message`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from berth.errors import InvalidInput
from berth.resources.quantity import parse_quantity

INFERENCE_CONTAINER = "mlserver"
AGENT_CONTAINER = "agent"
SIDECARS = (AGENT_CONTAINER, "rclone")  # never the inference container
MEMORY_ANNOTATION = "berth.io/replica-memory"
OVERCOMMIT_ANNOTATION = "berth.io/overcommit"  # a Server's overcommit percent (docs/overcommit.md)
MEMORY_ENV = "MEMORY_REQUEST"
OVERCOMMIT_ENV = "SELDON_OVERCOMMIT_PERCENTAGE"
CAPABILITIES_ENV = "SELDON_SERVER_CAPABILITIES"
SERVER_TYPE_ENV = "SELDON_SERVER_TYPE"
AGENT_ENV_READ = (MEMORY_ENV, OVERCOMMIT_ENV, CAPABILITIES_ENV, SERVER_TYPE_ENV)
DEFAULT_OVERCOMMIT = 10
MAX_OVERCOMMIT = 1000

# Inference servers Seldon's agent knows (its SELDON_SERVER_TYPE values), and the one Berth runs.
INFERENCE_SERVERS = {"mlserver": "MLServer", "triton": "NVIDIA Triton"}
RUNS = "mlserver"
SERVED_RUNTIMES = "sklearn, xgboost, mlflow, lightgbm, python/custom"
# Requirements only Seldon's Triton ServerConfig offers (Triton backends); MLServer serves none of them.
TRITON_ONLY = frozenset({"triton", "dali", "fil", "onnx", "onnxruntime", "openvino", "tensorflow", "tf",
                         "tensorrt", "pytorch-libtorch", "libtorch"})


def server_label(name: str) -> str:
    return INFERENCE_SERVERS.get(name, name)


def unsupported_message(server_config: str | None, inference_server: str) -> str:
    """Why Berth cannot run a server of ``inference_server`` (from ``server_config``), and what to do."""
    via = f"serverConfig {server_config}" if server_config else "this server"
    return (f"{via} runs {server_label(inference_server)}, which Berth does not run; Berth serves MLServer "
            f"(runtimes: {SERVED_RUNTIMES}); use serverConfig: mlserver")


# -- pod spec access --------------------------------------------------------------------------------
def _containers(pod_spec: Any) -> list[dict[str, Any]]:
    if not isinstance(pod_spec, dict) or not isinstance(pod_spec.get("containers"), list):
        return []
    return [c for c in pod_spec["containers"] if isinstance(c, dict)]


def _named(pod_spec: Any, name: str) -> dict[str, Any] | None:
    found = [c for c in _containers(pod_spec) if c.get("name") == name]
    return found[-1] if found else None


def _container(pod_spec: Any) -> dict[str, Any] | None:
    """The inference container: the one named ``mlserver``, else the only one that is no Seldon sidecar."""
    named = _named(pod_spec, INFERENCE_CONTAINER)
    if named is not None:
        return named
    others = [c for c in _containers(pod_spec) if c.get("name") not in SIDECARS]
    return others[0] if len(others) == 1 else None


def _env(pod_spec: Any, variable: str) -> dict[str, Any] | None:
    """The agent container's env entry for ``variable`` (the last one, as the kubelet takes it)."""
    agent = _named(pod_spec, AGENT_CONTAINER)
    env = agent.get("env") if agent is not None else None
    found = [e for e in env if isinstance(e, dict) and e.get("name") == variable] if isinstance(env, list) else []
    return found[-1] if found else None


def _where(doc: Mapping[str, Any]) -> str:
    meta = doc["metadata"]
    return f"{doc.get('kind', 'Server')} {meta['namespace']}/{meta['name']} spec.podSpec"


def _pod_specs(server: Mapping[str, Any], config: Mapping[str, Any] | None) -> list[tuple[Any, str]]:
    """(podSpec, where) of the Server, then of its ServerConfig: the order Seldon's merge gives."""
    out = [((server.get("spec") or {}).get("podSpec"), _where({**server, "kind": "Server"}))]
    if config is not None:
        out.append(((config.get("spec") or {}).get("podSpec"), _where({**config, "kind": "ServerConfig"})))
    return out


def _agent_env(specs: list[tuple[Any, str]], variable: str) -> tuple[dict[str, Any], str] | None:
    for pod_spec, where in specs:
        entry = _env(pod_spec, variable)
        if entry is not None:
            return entry, f"{where}.containers[{AGENT_CONTAINER}].env[{variable}]"
    return None


# -- values, each error naming its field and the form accepted -----------------------------------
def _describe(value: object) -> str:
    return repr(value) if not isinstance(value, str) else f'"{value}"'


def parse_memory(value: object, path: str) -> int:
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        try:
            return parse_quantity(value, field=path)
        except InvalidInput:
            pass
    raise InvalidInput(f"{path}: expected bytes or a Kubernetes quantity (e.g. 1073741824, 1Gi, 1.5G), "
                       f"got {_describe(value)}")


def parse_overcommit(value: object, path: str) -> int:
    text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else ""
    if text.isdigit() and int(text) <= MAX_OVERCOMMIT:
        return int(text)
    raise InvalidInput(f"{path}: expected a whole number of percent from 0 to {MAX_OVERCOMMIT} "
                       f'(e.g. "{DEFAULT_OVERCOMMIT}"), got {_describe(value)}')


def parse_server_type(value: object, path: str) -> str:
    if isinstance(value, str) and value.strip() in INFERENCE_SERVERS:
        return value.strip()
    raise InvalidInput(f"{path}: expected one of {', '.join(INFERENCE_SERVERS)} (the inference servers "
                       f"Seldon's agent knows), got {_describe(value)}")


def _field_ref(entry: dict[str, Any], path: str) -> tuple[str | None, str] | None:
    """A MEMORY_REQUEST ``valueFrom.resourceFieldRef``: (containerName or None for the agent itself,
    resource); None when the entry holds no resourceFieldRef.  Errors for the ones the agent cannot read
    as bytes."""
    value_from = entry.get("valueFrom")
    ref = value_from.get("resourceFieldRef") if isinstance(value_from, dict) else None
    if not isinstance(ref, dict):
        return None
    where = f"{path}.valueFrom.resourceFieldRef"
    resource = ref.get("resource")
    if resource not in ("requests.memory", "limits.memory"):
        raise InvalidInput(f"{where}.resource: expected requests.memory or limits.memory (the agent reads "
                           f"{MEMORY_ENV} as bytes), got {_describe(resource)}")
    divisor = ref.get("divisor")
    if divisor is not None and parse_memory(divisor, f"{where}.divisor") != 1:
        raise InvalidInput(f"{where}.divisor: expected 1 or none (the agent reads {MEMORY_ENV} as bytes), "
                           f"got {_describe(divisor)}")
    name = ref.get("containerName")
    if name is not None and not isinstance(name, str):
        raise InvalidInput(f"{where}.containerName: expected a container name, got {_describe(name)}")
    return name or None, str(resource)


# -- the knobs -------------------------------------------------------------------------------------
def container_memory(pod_spec: Any, where: str) -> int | None:
    """Bytes of the inference container's memory request (or limit) in ``pod_spec``, or None when unset.
    ``where`` names the field in errors (e.g. ``Server financial-ml/mlserver spec.podSpec``)."""
    found = _container_memory(_container(pod_spec), where, ("requests", "limits"))
    return found[0] if found is not None else None


def _container_memory(container: dict[str, Any] | None, where: str, kinds: tuple[str, ...]
                      ) -> tuple[int, str] | None:
    if container is None:
        return None
    resources = container.get("resources")
    for kind in kinds:
        values = resources.get(kind) if isinstance(resources, dict) else None
        value = values.get("memory") if isinstance(values, dict) else None
        if value is not None:
            path = f"{where}.containers[{container.get('name') or 'container 0'}].resources.{kind}.memory"
            return parse_quantity(value, field=path), path
    return None


def replica_memory(server: Mapping[str, Any], config: Mapping[str, Any] | None) -> tuple[int, str] | None:
    """The memory a replica of ``server`` offers from the podSpecs, and the field it was read from; None
    when neither the Server nor its ServerConfig (``config``) sets one (see the module's rule)."""
    specs = _pod_specs(server, config)
    env = _agent_env(specs, MEMORY_ENV)
    if env is not None:
        entry, path = env
        if "value" in entry and entry["value"] is not None:
            return parse_memory(entry["value"], f"{path}.value"), path
        ref = _field_ref(entry, path)
        if ref is not None:
            name, resource = ref
            found = _referenced_memory(specs, name or AGENT_CONTAINER, resource, path)
            if found is not None:
                return found[0], f"{found[1]} via agent env {MEMORY_ENV}"
    for pod_spec, where in specs:
        found = _container_memory(_container(pod_spec), where, ("requests", "limits"))
        if found is not None:
            return found
    return None


def _referenced_memory(specs: list[tuple[Any, str]], name: str, resource: str, path: str
                       ) -> tuple[int, str] | None:
    """What the downward API gives for ``resource`` of container ``name`` (a request defaults to the limit)."""
    kinds = ("requests", "limits") if resource == "requests.memory" else ("limits",)
    seen = False
    for pod_spec, where in specs:
        container = _named(pod_spec, name)
        seen = seen or container is not None
        found = _container_memory(container, where, kinds)
        if found is not None:
            return found
    if not seen and len(specs) > 1:  # with both pod specs at hand, a missing container is a mistake
        names = sorted({str(c.get("name")) for p, _ in specs for c in _containers(p)})
        raise InvalidInput(f"{path}.valueFrom.resourceFieldRef.containerName: no container named {name} in the "
                           f"pod spec (containers: {', '.join(names) or 'none'})")
    return None


def overcommit(server: Mapping[str, Any], config: Mapping[str, Any] | None) -> tuple[int, str] | None:
    """The agent's SELDON_OVERCOMMIT_PERCENTAGE (a literal value) and its field, or None when unset."""
    env = _agent_env(_pod_specs(server, config), OVERCOMMIT_ENV)
    if env is None or env[0].get("value") is None:
        return None
    entry, path = env
    return parse_overcommit(entry["value"], f"{path}.value"), path


def agent_capabilities(server: Mapping[str, Any], config: Mapping[str, Any] | None) -> tuple[str, ...] | None:
    """The agent's SELDON_SERVER_CAPABILITIES (comma separated), or None when unset."""
    env = _agent_env(_pod_specs(server, config), CAPABILITIES_ENV)
    value = env[0].get("value") if env is not None else None
    if not isinstance(value, str):
        return None
    return tuple(dict.fromkeys(c.strip() for c in value.split(",") if c.strip()))


def inference_server(server: Mapping[str, Any], config: Mapping[str, Any] | None) -> str:
    """Which inference server the replicas of ``server`` run (``mlserver``, ``triton``, ...).  Never raises:
    a value Seldon's agent would refuse is refused at apply (:func:`pod_spec_problems`)."""
    specs = _pod_specs(server, config)
    env = _agent_env(specs, SERVER_TYPE_ENV)
    value = env[0].get("value") if env is not None else None
    if isinstance(value, str) and value.strip():
        return value.strip().lower()
    return _kind_from_containers(specs) or (
        "triton" if config is None and (server.get("spec") or {}).get("serverConfig") == "triton" else RUNS)


def _kind_from_containers(specs: list[tuple[Any, str]]) -> str | None:
    names = [c.get("name") for p, _ in specs for c in _containers(p)]
    return "triton" if "triton" in names and INFERENCE_CONTAINER not in names else None


def config_inference_server(config: Mapping[str, Any]) -> str:
    """Which inference server a ServerConfig's replicas run."""
    return inference_server({"metadata": config["metadata"], "spec": {}}, config)


@dataclass(frozen=True)
class ReplicaShape:
    """What each replica of a Server offers, and where each figure came from."""

    memory: int
    memory_from: str
    overcommit: int
    overcommit_from: str
    inference_server: str = RUNS
    unsupported: str | None = None  # why Berth does not run this server's replicas; None when it does


def replica_shape(server: Mapping[str, Any], config: Mapping[str, Any] | None, *, memory: tuple[int, str],
                  overcommit_percent: tuple[int, str] = (DEFAULT_OVERCOMMIT, "default")) -> ReplicaShape:
    """The one rule for ``berth plan`` and the local provisioner.  ``memory`` and ``overcommit_percent``
    are the defaults with their source (e.g. ``(2 << 30, "--replica-memory")``).  InvalidInput names the
    field of a bad value and the form it accepts."""
    annotations = server["metadata"].get("annotations") or {}
    if MEMORY_ANNOTATION in annotations:
        mem = (parse_memory(annotations[MEMORY_ANNOTATION], f"metadata.annotations[{MEMORY_ANNOTATION}]"),
               f"annotation {MEMORY_ANNOTATION}")
    else:
        mem = replica_memory(server, config) or memory
    if OVERCOMMIT_ANNOTATION in annotations:
        over = (parse_overcommit(annotations[OVERCOMMIT_ANNOTATION], f"metadata.annotations[{OVERCOMMIT_ANNOTATION}]"),
                f"annotation {OVERCOMMIT_ANNOTATION}")
    else:
        over = overcommit(server, config) or overcommit_percent
    kind = inference_server(server, config)
    why = None if kind == RUNS else unsupported_message((server.get("spec") or {}).get("serverConfig"), kind)
    return ReplicaShape(mem[0], mem[1], over[0], over[1], kind, why)


def server_config_for(server: Mapping[str, Any], configs: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The ServerConfig ``server`` names among ``configs``: in its own namespace, else the only one of that name."""
    name = (server.get("spec") or {}).get("serverConfig")
    named = [c for c in configs if c["metadata"]["name"] == name] if name else []
    same = [c for c in named if c["metadata"]["namespace"] == server["metadata"]["namespace"]]
    return same[0] if same else named[0] if len(named) == 1 else None


# -- at apply: values refused, fields kept but not used ----------------------------------------------
def pod_spec_problems(pod_spec: Any) -> list[str]:
    """Bad knob values in one podSpec (paths relative to it), as Seldon's agent would refuse them."""
    problems: list[str] = []
    where = "spec.podSpec"
    checks: list[tuple[str, Any]] = []
    container = _container(pod_spec)
    if container is not None:
        checks.append(("container", container))
    for variable in (MEMORY_ENV, OVERCOMMIT_ENV, SERVER_TYPE_ENV):
        entry = _env(pod_spec, variable)
        if entry is not None:
            checks.append((variable, entry))
    for what, item in checks:
        try:
            if what == "container":
                _container_memory(item, where, ("requests",))
                _container_memory(item, where, ("limits",))
                continue
            path = f"{where}.containers[{AGENT_CONTAINER}].env[{what}]"
            if item.get("value") is not None:
                parse = {MEMORY_ENV: parse_memory, OVERCOMMIT_ENV: parse_overcommit,
                         SERVER_TYPE_ENV: parse_server_type}[what]
                parse(item["value"], f"{path}.value")
            elif what == MEMORY_ENV:
                _field_ref(item, path)
        except InvalidInput as exc:
            problems.append(exc.message)
    return problems


POD_REASON = "not used by local replicas (Berth runs each replica as processes on this machine)"
SIDECAR_REASON = ("not run by local replicas (Berth runs each replica as its own agent and an MLServer "
                  "process; the agent fetches artifacts itself)")
AGENT_REASON = (f"not used by local replicas (Berth runs its own agent, on ports and addresses it chooses; "
                f"of the agent's env it reads {', '.join(AGENT_ENV_READ)})")
INFERENCE_REASON = ("not used by local replicas (Berth runs the MLServer installed beside it, with its own "
                    "settings and ports and no resource limits; of this container it reads only the memory "
                    "request, else the limit)")


def unread_fields(pod_spec: Any) -> list[tuple[str, str]]:
    """(path under the podSpec, what Berth does instead) for every field of ``pod_spec`` local replicas do
    not use: pod-level fields one by one; per container, the fields it sets that are not read."""
    if not isinstance(pod_spec, dict):
        return []
    out = [(str(key), POD_REASON) for key in pod_spec if key != "containers"]
    inference = _container(pod_spec)
    for container in _containers(pod_spec):
        name = container.get("name") or "container"
        if container.get("name") == AGENT_CONTAINER:
            fields = [str(k) for k in container if k not in ("name", "env")] + _unread_env(container.get("env"))
            reason = AGENT_REASON
        elif container is inference:
            fields = [str(k) for k in container if k not in ("name", "resources")] + _unread_resources(container)
            reason = INFERENCE_REASON
        else:
            out.append((f"containers[{name}]", SIDECAR_REASON))
            continue
        if fields:
            out.append((f"containers[{name}]: {', '.join(fields)}", reason))
    return out


def _unread_env(env: Any) -> list[str]:
    if not isinstance(env, list):
        return ["env"] if env is not None else []
    unread: list[str] = []
    for entry in env:
        name = entry.get("name") if isinstance(entry, dict) else None
        if name not in AGENT_ENV_READ:
            unread.append(str(name))
        elif entry.get("value") is None and not (name == MEMORY_ENV and _has_field_ref(entry)):
            unread.append(f"{name}.valueFrom")  # e.g. a configMapKeyRef: nothing local to resolve it from
    return [f"env[{', '.join(unread)}]"] if unread else []


def _has_field_ref(entry: dict[str, Any]) -> bool:
    value_from = entry.get("valueFrom")
    return isinstance(value_from, dict) and isinstance(value_from.get("resourceFieldRef"), dict)


def _unread_resources(container: dict[str, Any]) -> list[str]:
    resources = container.get("resources")
    if not isinstance(resources, dict):
        return [] if resources is None else ["resources"]
    out: list[str] = []
    for kind, values in resources.items():
        if kind not in ("requests", "limits") or not isinstance(values, dict):
            out.append(f"resources.{kind}")
            continue
        requests = resources.get("requests")
        for key in values:
            used = key == "memory" and (kind == "requests" or not isinstance(requests, dict)
                                        or "memory" not in requests)
            if not used:
                out.append(f"resources.{kind}.{key}")
    return out
