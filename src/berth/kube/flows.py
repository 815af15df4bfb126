"""The network flows Berth needs in a namespace, between pods labelled as Berth labels them.

Labels are the recommended ``app.kubernetes.io/*`` ones plus ``berth.io/server`` on a Server's pods; the
provisioner's builders label pods with :func:`pod_labels`, and the generated NetworkPolicies and the
doctor's evaluation select them the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from berth.kube.netpol import Endpoint, Flow, Verdict, evaluate
from berth.kube.selectors import Labels

NAME = "app.kubernetes.io/name"
COMPONENT = "app.kubernetes.io/component"
SERVER = "berth.io/server"
CONTROL_PLANE, GATEWAY, REPLICA = "control-plane", "gateway", "server"


@dataclass(frozen=True)
class Ports:
    control: int = 9004  # the control API, where agents enrol and gateways read routes
    gateway_http: int = 9000
    gateway_grpc: int = 9001
    replica_http: int = 8080  # a replica pod's inference ports: the agent's relay on the pod's IP
    replica_grpc: int = 8081
    mlserver_http: int = 9500  # MLServer's own ports, on the pod's 127.0.0.1 only (never in a policy)
    mlserver_grpc: int = 9501


def pod_labels(component: str, server: str | None = None) -> dict[str, str]:
    labels = {NAME: "berth", COMPONENT: component}
    if server is not None:
        labels[SERVER] = server
    return labels


def needed_flows(namespace: str, servers: Sequence[str], *, control_namespace: str,
                 clients: Sequence[Endpoint] = (), ports: Ports = Ports()) -> list[Flow]:
    """Every flow Berth needs for ``namespace``: agents and gateway → control plane, gateway → each Server's
    replicas (REST and gRPC), clients → gateway (default: any pod of the namespace)."""
    control = Endpoint(f"control-plane pods of {control_namespace}", control_namespace, pod_labels(CONTROL_PLANE),
                       ports={"http": ports.control})
    gateway = Endpoint(f"gateway pods of {namespace}", namespace, pod_labels(GATEWAY),
                       ports={"http": ports.gateway_http, "grpc": ports.gateway_grpc})
    flows = [Flow("gateway → control plane", gateway, control, ports.control)]
    for server in servers:
        pods = Endpoint(f"pods of Server {namespace}/{server}", namespace, pod_labels(REPLICA, server),
                        ports={"http": ports.replica_http, "grpc": ports.replica_grpc})
        flows += [
            Flow(f"agent of {server} → control plane", pods, control, ports.control),
            Flow(f"gateway → {server} replicas (REST)", gateway, pods, ports.replica_http),
            Flow(f"gateway → {server} replicas (gRPC)", gateway, pods, ports.replica_grpc),
        ]
    for client in clients or [Endpoint(f"client pods of {namespace}", namespace, {})]:
        flows += [Flow(f"{client.description} → gateway (REST)", client, gateway, ports.gateway_http),
                  Flow(f"{client.description} → gateway (gRPC)", client, gateway, ports.gateway_grpc)]
    return flows


def check(namespace: str, servers: Sequence[str], policies: Sequence[Mapping[str, Any]],
          namespaces: Mapping[str, Labels], *, control_namespace: str, clients: Sequence[Endpoint] = (),
          ports: Ports = Ports()) -> list[Verdict]:
    """The verdict on every flow :func:`needed_flows` names, under ``policies`` and the namespaces' labels."""
    return [evaluate(flow, policies, namespaces)
            for flow in needed_flows(namespace, servers, control_namespace=control_namespace, clients=clients,
                                     ports=ports)]
