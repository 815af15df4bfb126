"""One model as the gateway routes it, compiled once per routing table, and static tables from files.

A :class:`Target` holds everything a request for one model needs, built when the table arrives: the
replicas holding it (their REST address is the replica's identity for balancing), each replica's gRPC
address, the upstream REST request lines and the protobuf field that names the model in a gRPC request.  A
request then costs dictionary lookups, never string building.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml
from pydantic import ValidationError

from berth.errors import InvalidInput, ModelNotReady
from berth.wire import protowire
from berth.wire.routes import ModelRoute, RoutingTable

_KINDS = {"infer": ("POST", "/infer"), "meta": ("GET", ""), "ready": ("GET", "/ready")}


@dataclass(frozen=True, slots=True)
class Target:
    """One model as routed: where it is loaded and the upstream addresses, built once per table."""

    key: tuple[str, str]  # (namespace, name)
    namespace: str
    name: str
    state: str
    reason: str
    addresses: tuple[str, ...]  # REST host:port of the replicas holding it, loaded (the replica's identity)
    grpc: Mapping[str, str]  # REST host:port -> gRPC host:port of the same replica
    lines: Mapping[str, Mapping[str, bytes]]  # kind -> address -> request line and Host header, encoded
    pb_name: bytes  # field 1 (model_name / name) of a gRPC request naming this model, encoded
    idempotent: bool = True  # False: a request already sent is never retried on another replica
    upstream: str = ""  # the inference server's name of the serving version ("" : ``name``; docs/rollouts.md)
    evicted: bool = False  # no copy loaded, one evicted: a request is held while it reloads (routing/wake.py)

    def line(self, address: str, kind: str, version: str | None = None) -> bytes:
        """``METHOD PATH HTTP/1.1`` and the Host header for a ``kind`` request ("infer", "meta", "ready")."""
        if version is None:
            return self.lines[kind][address]
        method, tail = _KINDS[kind]
        path = f"/v2/models/{quote(self.upstream or self.name, safe='')}/versions/{quote(version, safe='')}{tail}"
        return request_line(method, path, address)

    def not_ready(self) -> ModelNotReady:
        """The error for a request while no replica has this model loaded (:class:`ModelEvicted` when a
        request can wake it)."""
        reason = self.reason or "no replica has it loaded"
        return (ModelEvicted if self.evicted else ModelNotReady)(
            f"model {self.name} in namespace {self.namespace} is not ready: {self.state}: {reason}",
            details={"model": self.name, "namespace": self.namespace, "state": self.state,
                     "reason": self.reason})


class ModelEvicted(ModelNotReady):
    """Every copy of the model is evicted (docs/overcommit.md): a transport holds the request and wakes the
    model (:func:`berth.gateway.routing.wake.held`) instead of answering this, when it can."""


def request_line(method: str, path: str, address: str) -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: {address}\r\n".encode()


def compile_route(route: ModelRoute) -> Target:
    grpc: dict[str, str] = {}
    for e in route.endpoints:
        grpc.setdefault(e.http, e.grpc)
    addresses = tuple(grpc)
    base = f"/v2/models/{quote(route.upstream or route.name, safe='')}"
    lines = {kind: {a: request_line(method, base + tail, a) for a in addresses}
             for kind, (method, tail) in _KINDS.items()}
    return Target(key=(route.namespace, route.name), namespace=route.namespace, name=route.name,
                  state=route.state, reason=route.reason, addresses=addresses, grpc=grpc, lines=lines,
                  pb_name=protowire.string_field(1, route.upstream or route.name), idempotent=route.idempotent,
                  upstream=route.upstream, evicted=route.evicted)


def load_routes(path: Path) -> RoutingTable:
    """A static routing table from a JSON or YAML file (``berth gateway --routes FILE``)."""
    try:
        data: Any = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise InvalidInput(f"cannot read routes file {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise InvalidInput(f"routes file {path} is not valid JSON or YAML: {exc}") from exc
    try:
        return RoutingTable.model_validate(data if data is not None else {})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise InvalidInput(f"routes file {path} is not a routing table: {problems}") from exc


def describe_connect_error(who: str, exc: BaseException) -> str:
    """``"<who> refused connection"`` and friends, for a connection that could not be opened."""
    cause = getattr(exc, "os_error", None) or exc.__cause__ or exc
    if isinstance(cause, ConnectionRefusedError):
        return f"{who} refused connection"
    if isinstance(exc, TimeoutError) or isinstance(cause, TimeoutError):
        return f"{who} did not accept a connection in time"
    return f"{who} could not be reached: {getattr(cause, 'strerror', None) or cause}"
