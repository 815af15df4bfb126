"""What a namespace's cluster objects should be, from its Servers, ServerConfigs and SeldonRuntime (pure).

Each object carries ``berth.io/desired-hash``, a hash of what Berth built, so the reconciler rewrites an
object only when Berth's intent changed (an API server fills defaults into what it stores, so comparing
stored specs with built ones would rewrite every object on every pass).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from berth.kube.flows import REPLICA
from berth.kube.policies import tenant_policies
from berth.kube.workloads import SERVER_ACCOUNT, Install, runtime_objects, server_objects, service_account
from berth.resources.podspec import RUNS, inference_server, server_config_for

HASH = "berth.io/desired-hash"
# The kinds the reconciler manages: (apiVersion, kind, plural).
MANAGED = (("v1", "ServiceAccount", "serviceaccounts"), ("v1", "Service", "services"),
           ("apps/v1", "StatefulSet", "statefulsets"), ("apps/v1", "Deployment", "deployments"),
           ("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies"))


def desired_hash(doc: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def _alive(doc: Mapping[str, Any]) -> bool:
    return not (doc.get("metadata") or {}).get("deletionTimestamp")


def desired_objects(namespace: str, servers: Sequence[Mapping[str, Any]], configs: Sequence[Mapping[str, Any]],
                    runtimes: Sequence[Mapping[str, Any]], install: Install, *,
                    storage: Sequence[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
    """Every object Berth wants in ``namespace``, hash-stamped, in an order safe to create them in."""
    out: list[dict[str, Any]] = []
    runtime = next((r for r in sorted(runtimes, key=lambda r: r["metadata"]["name"]) if _alive(r)), None)
    if runtime is not None:
        out += tenant_policies(runtime, install, storage=storage)  # deny first, then admit
        out += runtime_objects(runtime, install)
    served = [s for s in sorted(servers, key=lambda s: s["metadata"]["name"])
              if _alive(s) and inference_server(s, server_config_for(s, configs)) == RUNS]
    if served:
        out.append(service_account(SERVER_ACCOUNT, namespace, REPLICA, None))
    for server in served:
        out += server_objects(server, server_config_for(server, configs), install)
    for doc in out:
        doc["metadata"].setdefault("annotations", {})[HASH] = desired_hash(doc)
    return out
