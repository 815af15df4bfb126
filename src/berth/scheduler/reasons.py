"""One constructor per rejection code: the stable code, the figures as data, one complete human line."""

from __future__ import annotations

import functools
from collections.abc import Sequence

from berth.resources import podspec
from berth.resources.quantity import humanize_bytes as _humanize_bytes
from berth.scheduler.snapshot import (
    CROSS_NAMESPACE,
    INSUFFICIENT_MEMORY,
    MISSING_CAPABILITIES,
    NO_REPLICAS,
    NO_SERVERS,
    NOT_ENOUGH_REPLICAS,
    REPLICA_DRAINING,
    REPLICA_NOT_READY,
    REQUIRES_UNSUPPORTED_SERVER,
    RUNTIME_NOT_IMPORTABLE,
    SERVER_DELETING,
    SERVER_NOT_FOUND,
    UNSUPPORTED_SERVER,
    Rejection,
    ReplicaInfo,
    ServerInfo,
)
from berth.scheduler.suggest import did_you_mean, near_match, suggestions

# memory figures repeat across replicas and models (a re-plan writes thousands of them): a pure, cached form
humanize_bytes = functools.lru_cache(maxsize=4096)(_humanize_bytes)


def _names(names: Sequence[str]) -> str:
    return ", ".join(names) if names else "none"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def cross_namespace(reference: str, target_ns: str, name: str, own_ns: str, here: Sequence[str],
                    exists: bool | None) -> Rejection:
    if exists is True:
        where = f"is in namespace {target_ns}"
    elif exists is False:
        where = f"names namespace {target_ns}, which has no server {name} either"
    else:
        where = f"names namespace {target_ns}"
    message = (f"server '{reference}' {where}; a model in {own_ns} can only use servers of its own "
               f"namespace (servers in {own_ns}: {_names(here)})")
    return Rejection(CROSS_NAMESPACE, message, server=reference,
                     data=(("namespace", target_ns), ("name", name), ("exists", exists),
                           ("servers_here", tuple(here))))


def server_not_found(name: str, namespace: str, here: Sequence[str]) -> Rejection:
    message = f"no server named {name} in namespace {namespace}; servers here: {_names(here)}"
    match = near_match(name, here)
    if match is not None:
        message += f" (did you mean {match}?)"
    return Rejection(SERVER_NOT_FOUND, message, server=name,
                     data=(("namespace", namespace), ("servers_here", tuple(here)), ("suggestion", match)))


def no_servers(namespace: str) -> Rejection:
    return Rejection(NO_SERVERS, f"no servers in namespace {namespace}; apply a Server resource there first",
                     data=(("namespace", namespace),))


def server_deleting(server: str) -> Rejection:
    return Rejection(SERVER_DELETING, f"server {server} is being deleted", server=server)


def unsupported_server(server: ServerInfo) -> Rejection:
    """A server whose inference server Berth does not run (Triton): never a candidate."""
    message = f"server {server.name}: {podspec.unsupported_message(server.server_config, server.inference_server)}"
    return Rejection(UNSUPPORTED_SERVER, message, server=server.name,
                     data=(("serverConfig", server.server_config), ("inferenceServer", server.inference_server),
                           ("runs", podspec.RUNS)))


def requires_unsupported_server(needs: tuple[str, ...], namespace: str, pin: str | None,
                                declared_by: tuple[str, ...]) -> Rejection:
    """Requirements that only an inference server Berth does not run offers (``onnx``: Triton), and no
    server Berth runs here (or the pinned one) offers."""
    them = "it" if len(needs) == 1 else "them"
    where = f"server {pin} does not offer {them}" if pin else \
        f"no server Berth runs in namespace {namespace} offers {them}"
    word = "requirement" if len(needs) == 1 else "requirements"
    message = (f"{word} {', '.join(needs)} {'is' if len(needs) == 1 else 'are'} served by "
               f"{podspec.server_label('triton')}, which Berth does not run, and {where}")
    if declared_by:
        message += f" (declared by {', '.join(declared_by)}, which run{'s' if len(declared_by) == 1 else ''} " \
                   "Triton)"
    message += f"; Berth serves MLServer (runtimes: {podspec.SERVED_RUNTIMES})"
    return Rejection(REQUIRES_UNSUPPORTED_SERVER, message, server=pin,
                     data=(("requirements", needs), ("namespace", namespace), ("declaredBy", declared_by)))


def no_replicas(server: str, desired: int, known: int) -> Rejection:
    if desired == 0 and known == 0:
        message = f"server {server} has no replicas (its spec.replicas is 0)"
    else:
        message = f"server {server} has no connected replicas (0 of {max(desired, known)})"
    return Rejection(NO_REPLICAS, message, server=server,
                     data=(("connected", 0), ("desired", desired), ("known", known)))


def _not_ready(server: str, index: int, detail: str, info: ReplicaInfo | None) -> Rejection:
    data: tuple[tuple[str, object], ...] = (("detail", detail),)
    if info is not None:
        data += (("connected", info.connected), ("ready", info.ready), ("address", info.address),
                 ("error", info.last_error), ("since", info.error_since))
    else:
        data += (("connected", False), ("ready", False))
    return Rejection(REPLICA_NOT_READY, f"server {server}: replica {index}: {detail}", server=server,
                     replica=index, data=data)


def _since(info: ReplicaInfo) -> str:
    return f" since {info.error_since}" if info.error_since else ""


def replica_not_ready(info: ReplicaInfo) -> Rejection:
    """A known replica whose agent is disconnected, or whose inference server is not ready."""
    if not info.connected:
        detail = "agent not connected"
        if info.last_error:
            detail += f" (last error: {info.last_error}{_since(info)})"
    else:
        where = f"inference server {info.address}" if info.address else "inference server"
        detail = f"{where} not ready"
        if info.last_error:
            detail += f": {info.last_error}"
        detail += _since(info)
    return _not_ready(info.server, info.index, detail, info)


def replica_missing(server: str, index: int) -> Rejection:
    """A replica the Server declares but no agent ever reported."""
    return _not_ready(server, index, "no agent connected", None)


def replica_draining(info: ReplicaInfo) -> Rejection:
    return Rejection(REPLICA_DRAINING, f"server {info.server}: replica {info.index} is draining",
                     server=info.server, replica=info.index)


def _capability_text(missing: tuple[str, ...], offered: tuple[str, ...], per_server: bool
                     ) -> tuple[str, tuple[tuple[str, str], ...]]:
    pairs = suggestions(missing, offered)
    hint = did_you_mean(pairs)
    word = "capability" if len(missing) == 1 else "capabilities"
    offers = "server offers" if per_server else "replica offers"
    text = f"lacks {word} {', '.join(missing)} ({hint + ' ' if hint else ''}{offers}: {_names(offered)})"
    return text, pairs


CapsMemo = dict[tuple[tuple[str, ...], tuple[str, ...], bool], tuple[str, tuple[tuple[str, str], ...]]]


def missing_capabilities(server: str, index: int, missing: tuple[str, ...], offered: tuple[str, ...],
                         per_server: bool, memo: CapsMemo | None = None) -> Rejection:
    """``per_server``: the replica offers exactly its server's capabilities, so name the server.
    ``memo`` spares recomputing the near matches for replicas and models that share them."""
    key = (missing, offered, per_server)
    found = memo.get(key) if memo is not None else None
    if found is None:
        found = _capability_text(missing, offered, per_server)
        if memo is not None:
            memo[key] = found
    text, pairs = found
    who = f"server {server}" if per_server else f"server {server} replica {index}"
    return Rejection(MISSING_CAPABILITIES, f"{who} {text}", server=server, replica=index,
                     data=(("missing", missing), ("offered", offered), ("suggestions", pairs)))


def runtime_not_importable(server: str, index: int, broken: tuple[tuple[str, str], ...], per_server: bool
                           ) -> Rejection:
    """The replica claims every requirement, but its agent found the runtime of some missing from its MLServer:
    ``server X claims torch but its MLServer cannot import torch``."""
    who = f"server {server}" if per_server else f"server {server} replica {index}"
    caps = ", ".join(c for c, _ in broken)
    modules = ", ".join(dict.fromkeys(m for _, m in broken))
    return Rejection(RUNTIME_NOT_IMPORTABLE, f"{who} claims {caps} but its MLServer cannot import {modules} "
                     "(install the runtime beside MLServer, or remove the claim from the Server)",
                     server=server, replica=index,
                     data=(("capabilities", tuple(c for c, _ in broken)), ("modules", tuple(m for _, m in broken))))


def memory_breakdown(memory: int, overcommit: int, used: int) -> str:
    base = (f"{humanize_bytes(memory)} + {overcommit}% overcommit" if overcommit
            else f"{humanize_bytes(memory)} capacity")
    return f"{base}, {humanize_bytes(used)} used"


def insufficient_memory(info: ReplicaInfo, capacity: int, used: int, need: int) -> Rejection:
    free = capacity - used
    message = (f"replica {info.server}/{info.index} has {humanize_bytes(free)} free "
               f"({memory_breakdown(info.memory, info.overcommit_percent, used)}); "
               f"model needs {humanize_bytes(need)}")
    return Rejection(INSUFFICIENT_MEMORY, message, server=info.server, replica=info.index,
                     data=(("need", need), ("free", free), ("capacity", capacity), ("used", used),
                           ("memory", info.memory), ("overcommit_percent", info.overcommit_percent)))


def not_enough_replicas(server: str, need: int, suitable: int, total: int) -> Rejection:
    message = (f"model needs {_plural(need, 'replica')} on one server; "
               f"server {server} has {suitable} suitable replica{'' if suitable == 1 else 's'} (of {total})")
    return Rejection(NOT_ENOUGH_REPLICAS, message, server=server,
                     data=(("need", need), ("suitable", suitable), ("total", total)))
