"""`berth doctor --kube`: every flow Berth needs in a namespace, evaluated against the NetworkPolicies and
namespace labels read from the cluster (berth.kube.netpol), one row per flow."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from berth.cli.context import settings
from berth.cli.doctor_rows import Row
from berth.client.kube import read_network
from berth.errors import BerthError
from berth.kube.flows import check

CHECK = "network policy"


def network_rows(namespace: str, servers: Sequence[str], policies: Sequence[Mapping[str, Any]],
                 namespaces: Mapping[str, Mapping[str, str]], control_namespace: str) -> list[Row]:
    rows = []
    for verdict in check(namespace, servers, policies, namespaces, control_namespace=control_namespace):
        flow = verdict.flow
        if verdict.allowed:
            via = [s.admitted_by for s in (verdict.egress, verdict.ingress) if s.admitted_by]
            detail = f"admitted{' by ' + ', '.join(via) if via else ' (no policy isolates either end)'}"
        else:
            detail = "; ".join(s.reason for s in (verdict.egress, verdict.ingress) if not s.allowed)
        rows.append(Row(CHECK, f"{flow.name} ({flow.port_text})", verdict.allowed, detail))
    return rows


def kube_network_rows(kubeconfig: str | None, context: str | None, namespace: str,
                      control_namespace: str) -> list[Row]:
    try:
        view = read_network(kubeconfig or settings.kubeconfig, context or settings.kube_context, namespace,
                            control_namespace=control_namespace)  # doctor's own flags, else berth's global ones
    except BerthError as exc:
        return [Row(CHECK, f"namespace {namespace}", False, exc.message)]
    if namespace not in view.namespaces:
        return [Row(CHECK, f"namespace {namespace}", False,
                    f"namespace {namespace} does not exist in the cluster at {view.host}; check -n and --context")]
    return network_rows(namespace, view.servers, view.policies, view.namespaces, control_namespace)
