"""Stored resource dicts → the scheduler's Snapshot.  Pure: no store, no clock.

A resource dict has the shape the store and manifests use:
``{"apiVersion", "kind", "metadata": {"name", "namespace", "deletionTimestamp"?}, "spec": {...}}``.
"""

from __future__ import annotations

import copy
import operator
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

from pydantic import ValidationError

from berth.errors import InvalidManifest
from berth.resources.kinds import ModelSpec, ServerSpec
from berth.resources.manifest import format_validation_error
from berth.resources.podspec import RUNS, agent_capabilities, inference_server, server_config_for
from berth.scheduler.snapshot import (
    ModelWant,
    Policy,
    ReplicaInfo,
    ReplicaRef,
    ServerInfo,
    Snapshot,
)

# What Seldon's default "mlserver" ServerConfig advertises (SELDON_SERVER_CAPABILITIES).
MLSERVER_CAPABILITIES: tuple[str, ...] = (
    "mlserver", "alibi-detect", "alibi-explain", "huggingface", "lightgbm", "mlflow", "python", "sklearn",
    "spark-mlib", "xgboost",
)
# What Seldon's "triton" ServerConfig advertises: a Triton server claims these when nothing else is declared.
TRITON_CAPABILITIES: tuple[str, ...] = (
    "triton", "dali", "fil", "onnx", "openvino", "python", "pytorch", "tensorflow", "tensorrt",
)
DEFAULT_OVERCOMMIT_PERCENT = 10  # Seldon's SELDON_OVERCOMMIT_PERCENTAGE default
S = TypeVar("S", ModelSpec, ServerSpec)


def _meta(doc: Mapping[str, Any]) -> tuple[str, str, bool]:
    meta = doc.get("metadata") or {}
    return str(meta.get("name", "")), str(meta.get("namespace") or "default"), \
        bool(meta.get("deletionTimestamp"))


def _spec(doc: Mapping[str, Any], schema: type[S]) -> S:
    name, namespace, _ = _meta(doc)
    try:
        return schema.model_validate(doc.get("spec") or {})
    except ValidationError as exc:
        label = f"{doc.get('kind', '?')}/{name} in namespace {namespace}"
        raise InvalidManifest(format_validation_error(exc, f"{label}: spec")) from exc


def model_want(doc: Mapping[str, Any]) -> ModelWant:
    """A Model resource as the scheduler needs it."""
    name, namespace, deleting = _meta(doc)
    spec = _spec(doc, ModelSpec)
    return ModelWant(
        name=name,
        namespace=namespace,
        requirements=tuple(spec.requirements),
        memory=spec.memory_bytes(),
        server=spec.server or None,
        replicas=spec.desired_replicas(),
        min_replicas=spec.minReplicas,
        deleting=deleting,
    )


def server_capabilities(spec: ServerSpec, base: Sequence[str] | None = None,
                        kind: str = RUNS) -> tuple[str, ...]:
    """``capabilities`` replaces the base set (the agent's SELDON_SERVER_CAPABILITIES in the podSpecs,
    ``base``, else the stock set of its inference server ``kind``); ``extraCapabilities`` appends to it — as
    Seldon's operator sets the env."""
    if spec.capabilities is not None:
        first: Sequence[str] = spec.capabilities
    elif base is not None:
        first = base
    else:
        first = TRITON_CAPABILITIES if kind == "triton" else MLSERVER_CAPABILITIES
    return tuple(dict.fromkeys([*first, *(spec.extraCapabilities or [])]))


def server_info(doc: Mapping[str, Any], config: Mapping[str, Any] | None = None) -> ServerInfo:
    """A Server resource (with its ServerConfig ``config`` when at hand) as the scheduler needs it."""
    name, namespace, deleting = _meta(doc)
    spec = _spec(doc, ServerSpec)
    kind = inference_server(doc, config)
    return ServerInfo(name=name, namespace=namespace,
                      capabilities=server_capabilities(spec, agent_capabilities(doc, config), kind),
                      desired_replicas=spec.desired_replicas(), deleting=deleting,
                      server_config=spec.serverConfig, inference_server=kind)


def dry_run_replicas(servers: Iterable[ServerInfo], memory: int,
                     overcommit_percent: int = DEFAULT_OVERCOMMIT_PERCENT,
                     memory_of: Mapping[tuple[str, str], int] | None = None,
                     overcommit_of: Mapping[tuple[str, str], int] | None = None) -> list[ReplicaInfo]:
    """Replicas as if every server Berth runs were up: ``desired_replicas`` each, connected and ready
    (``berth plan -f`` with no control plane); each offers ``memory_of[(namespace, name)]``, else ``memory``,
    with ``overcommit_of[(namespace, name)]``, else ``overcommit_percent``.  A server of an inference server
    Berth does not run (Triton) gets none, as the provisioner starts none."""
    sizes, overs = memory_of or {}, overcommit_of or {}
    return [ReplicaInfo(server=s.name, namespace=s.namespace, index=i, capabilities=s.capabilities,
                        memory=sizes.get((s.namespace, s.name), memory),
                        overcommit_percent=overs.get((s.namespace, s.name), overcommit_percent),
                        connected=True, ready=True)
            for s in servers if s.inference_server == RUNS for i in range(s.desired_replicas)]


class SnapshotCache:
    """Model documents validated once, not on every pass.  A ModelWant is a function of the document's
    name, namespace, deletion state and ``spec`` alone; ``snapshot_for(..., cache=)`` looks each Model up
    by namespace and name, and when its deletion state and ``spec`` equal those it was built from (a plain
    dict comparison, a fraction of a validation), gives back the very ModelWant built before: only new and
    changed documents are validated.  When no model of a namespace changed, the Snapshot gets the very
    ``models`` tuple of last time, which ``plan(..., previous=)`` recognises without comparing any model.

    Bounded: per namespace it holds the models of the last call only.  Thread-safe (the control plane plans
    in worker threads).  It keeps its own copy of each spec, so a caller changing a document afterwards
    cannot make it answer for a spec it did not validate."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # namespace -> (name -> (deleting, spec as validated, want), the last models tuple)
        self._by_ns: dict[str, tuple[dict[str, tuple[bool, Any, ModelWant]], tuple[ModelWant, ...]]] = {}
        self.validated = 0  # documents validated (misses), for tests and the benchmark
        self.reused = 0  # documents answered from the cache

    def models(self, namespace: str, docs: Sequence[Mapping[str, Any]]) -> tuple[ModelWant, ...]:
        """The ModelWants of ``docs`` (Model documents of ``namespace``), in their order."""
        with self._lock:
            old, last = self._by_ns.get(namespace, ({}, ()))
            fresh: dict[str, tuple[bool, Any, ModelWant]] = {}
            wants: list[ModelWant] = []
            validated = 0
            for doc in docs:
                meta = doc.get("metadata") or {}
                name = str(meta.get("name", ""))
                deleting = bool(meta.get("deletionTimestamp"))
                spec = doc.get("spec") or {}
                entry = old.get(name)
                if entry is None or entry[0] != deleting or entry[1] != spec:
                    want = model_want(doc)  # raises InvalidManifest: nothing of this call is kept then
                    entry = (deleting, copy.deepcopy(spec), want)
                    validated += 1
                fresh[name] = entry
                wants.append(entry[2])
            self.validated += validated
            self.reused += len(wants) - validated
            same = not validated and len(wants) == len(last) and all(map(operator.is_, wants, last))
            models = last if same else tuple(wants)
            self._by_ns[namespace] = (fresh, models)
            return models


def snapshot_for(namespace: str, docs: Iterable[Mapping[str, Any]], replicas: Iterable[ReplicaInfo],
                 assignments: Mapping[str, tuple[ReplicaRef, ...]] | None = None,
                 policy: Policy = "binpack", cache: SnapshotCache | None = None) -> Snapshot:
    """The Snapshot of one namespace: its Models and Servers from ``docs`` (each Server with its ServerConfig
    when ``docs`` hold it; other kinds are skipped), its replicas; Servers of other namespaces only go into
    ``foreign_servers``.  Only replicas of a Server declared in ``namespace`` whose inference server Berth
    runs are kept: a server no resource declares (an agent that connected for a name nothing declares), or
    one Berth does not run, is never a placement candidate.  With ``cache``, Models unchanged since the
    cache last saw them are not validated again (see :class:`SnapshotCache`)."""
    docs = list(docs)
    configs = [d for d in docs if d.get("kind") == "ServerConfig"]
    model_docs: list[Mapping[str, Any]] = []
    servers: list[ServerInfo] = []
    foreign: dict[str, list[str]] = {}
    for doc in docs:
        kind = doc.get("kind")
        _, ns, _ = _meta(doc)
        if kind == "Model" and ns == namespace:
            model_docs.append(doc)
        elif kind == "Server" and ns == namespace:
            servers.append(server_info(doc, server_config_for(doc, configs)))
        elif kind == "Server":
            name, _, _ = _meta(doc)
            foreign.setdefault(ns, []).append(name)
    runs = {s.name for s in servers if s.inference_server == RUNS}
    models = cache.models(namespace, model_docs) if cache is not None else tuple(map(model_want, model_docs))
    return Snapshot(
        namespace=namespace,
        models=models,
        servers=tuple(servers),
        replicas=tuple(r for r in replicas if r.namespace == namespace and r.server in runs),
        assignments=dict(assignments or {}),
        policy=policy,
        foreign_servers={ns: tuple(sorted(names)) for ns, names in sorted(foreign.items())},
    )
