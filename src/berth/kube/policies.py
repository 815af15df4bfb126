"""The NetworkPolicies Berth generates: deny by default for its pods, then exactly the flows it needs.

In a tenant namespace (owned by its SeldonRuntime):

=========================== ============================================================================
policy                      admits
=========================== ============================================================================
berth-default-deny          nothing: every Berth pod is isolated for ingress and egress
berth-server                ingress: the gateway → REST and gRPC ports; egress: → control plane, DNS,
                            and the storage peers the install names (none by default)
berth-gateway               ingress: clients (pods of this namespace by default) → REST and gRPC ports;
                            egress: → the namespace's server pods' REST and gRPC ports, control plane, DNS
=========================== ============================================================================

In the control plane's namespace, ``berth-control-plane`` admits agents and gateways of any namespace to
the control port and nothing else.  DNS (kube-dns on port 53) is admitted because the control plane is
reached by its Service name.  Checked flow by flow with :mod:`berth.kube.netpol` in the tests.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from berth.kube.flows import COMPONENT, CONTROL_PLANE, GATEWAY, NAME, REPLICA
from berth.kube.netpol import NAME_LABEL
from berth.kube.workloads import Install, _meta

DNS_PEER = {"namespaceSelector": {"matchLabels": {NAME_LABEL: "kube-system"}},
            "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}
DNS_PORTS = [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]
BERTH = {NAME: "berth"}


def _tcp(*ports: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": p} for p in ports]


def _pods(component: str) -> dict[str, Any]:
    return {"matchLabels": {COMPONENT: component}}


def _control_peer(install: Install) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {NAME_LABEL: install.control_namespace}},
            "podSelector": _pods(CONTROL_PLANE)}


def _policy(name: str, namespace: str, owner: Mapping[str, Any] | None, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": _meta(name, namespace, BERTH, owner), "spec": spec}


def tenant_policies(runtime: Mapping[str, Any], install: Install, *,
                    clients: Sequence[Mapping[str, Any]] | None = None,
                    storage: Sequence[Mapping[str, Any]] = ()) -> list[dict[str, Any]]:
    """A tenant namespace's policies; ``clients``: peers admitted to the gateway (default: its own pods);
    ``storage``: peers (and ports) the agents may fetch artifacts from, as ``{"to": [...], "ports": [...]}``."""
    ns = runtime["metadata"]["namespace"]
    p = install.ports
    replica_ports = _tcp(p.replica_http, p.replica_grpc)
    gateway_ports = _tcp(p.gateway_http, p.gateway_grpc)
    to_control = {"to": [_control_peer(install)], "ports": _tcp(p.control)}
    dns = {"to": [DNS_PEER], "ports": DNS_PORTS}
    return [
        _policy("berth-default-deny", ns, runtime, {"podSelector": {"matchLabels": dict(BERTH)},
                                                    "policyTypes": ["Ingress", "Egress"]}),
        _policy("berth-server", ns, runtime, {
            "podSelector": _pods(REPLICA), "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [{"podSelector": _pods(GATEWAY)}], "ports": replica_ports}],
            "egress": [to_control, dns, *[dict(s) for s in storage]]}),
        _policy("berth-gateway", ns, runtime, {
            "podSelector": _pods(GATEWAY), "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"from": [dict(c) for c in clients] if clients is not None else [{"podSelector": {}}],
                         "ports": gateway_ports}],
            "egress": [{"to": [{"podSelector": _pods(REPLICA)}], "ports": replica_ports}, to_control, dns]}),
    ]


def control_plane_policies(install: Install) -> list[dict[str, Any]]:
    """The control plane's namespace: agents and gateways of any namespace → the control port, and no other
    ingress.  Its egress (to the API server, whose address differs per cluster) is not restricted."""
    spec = {
        "podSelector": _pods(CONTROL_PLANE), "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {"matchExpressions": [
            {"key": COMPONENT, "operator": "In", "values": [REPLICA, GATEWAY]}]}}],
            "ports": _tcp(install.ports.control)}],
    }
    return [_policy("berth-control-plane", install.control_namespace, None, spec)]
