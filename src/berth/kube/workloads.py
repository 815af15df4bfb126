"""The Kubernetes objects the provisioner makes, as pure builders: documents in, documents out.

- A **Server** becomes a StatefulSet (one pod per replica; containers ``agent`` and ``mlserver`` sharing
  the pod's network: MLServer listens on the pod's 127.0.0.1 only, and the agent relays the pod's REST and
  gRPC ports, on the pod's IP, to it, advertising that IP) and a headless Service, both owned by
  the Server (deleting it removes them).  The pod spec is Berth's, then the ServerConfig's ``podSpec``,
  then the Server's, merged as Seldon merges them (:mod:`berth.kube.podmerge`); the ``agent`` container's
  image and command stay Berth's (Seldon's agent cannot talk to Berth's control plane).
- A namespace with a **SeldonRuntime** gets the gateway: a Deployment and a Service, owned by it.
- Each component runs under its own ServiceAccount with ``automountServiceAccountToken: false``: the
  agent and the gateway never call the Kubernetes API, so their least privilege is no Role at all.  They
  prove who they are to the control plane with a projected token bound to the audience ``berth``.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from berth.kube.flows import COMPONENT, GATEWAY, REPLICA, SERVER, Ports, pod_labels
from berth.kube.podmerge import merge_pod_specs
from berth.resources.kinds import ServerSpec

TOKEN_DIR = "/var/run/secrets/berth"
MODELS_DIR = "/mnt/models"
SERVER_ACCOUNT, GATEWAY_ACCOUNT = "berth-server", "berth-gateway"
GATEWAY_NAME = "berth-gateway"
GATEWAY_OVERRIDES = ("seldon-envoy", "seldon-modelgateway")  # SeldonRuntime overrides sizing the gateway
LOOPBACK = "127.0.0.1"
MANAGED_BY = "app.kubernetes.io/managed-by"  # on every object Berth makes (never on pods: selectors ignore it)


@dataclass(frozen=True)
class Install:
    """Where the control plane is and what image every component runs (from the install, not the tenant)."""

    image: str = "berth:0.1.0"
    control_namespace: str = "berth-system"
    control_service: str = "berth-control"
    audience: str = "berth"
    ports: Ports = field(default_factory=Ports)
    # the control plane serves TLS: agents and gateways trust the CA (ca.crt) of this Secret, which each tenant
    # namespace holds (docs/kubernetes.md, "TLS"), and reach it over wss:// / https:// only
    ca_secret: str | None = None

    @property
    def control_host(self) -> str:
        return f"{self.control_service}.{self.control_namespace}.svc"

    @property
    def control_url(self) -> str:
        return f"{'https' if self.ca_secret else 'http'}://{self.control_host}:{self.ports.control}"


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    meta = owner["metadata"]
    return {"apiVersion": owner["apiVersion"], "kind": owner["kind"], "name": meta["name"], "uid": meta["uid"],
            "controller": True, "blockOwnerDeletion": True}


def _meta(name: str, namespace: str, labels: Mapping[str, str], owner: Mapping[str, Any] | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": {**labels, MANAGED_BY: "berth"}}
    if owner is not None:
        meta["ownerReferences"] = [owner_reference(owner)]
    return meta


def _field_env(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}}


_HARDENED = {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}


CA_DIR = "/var/run/secrets/berth-ca"
CA_VOLUME = "berth-control-ca"


def _ca_env(install: Install) -> list[dict[str, Any]]:
    return [{"name": "BERTH_CONTROL_CA", "value": f"{CA_DIR}/ca.crt"}] if install.ca_secret else []


def _ca_mounts(install: Install) -> list[dict[str, Any]]:
    return [{"name": CA_VOLUME, "mountPath": CA_DIR, "readOnly": True}] if install.ca_secret else []


def _ca_volumes(install: Install) -> list[dict[str, Any]]:
    """The CA only (never the Secret's other keys: a cert-manager Secret also holds a tls.key)."""
    if not install.ca_secret:
        return []
    return [{"name": CA_VOLUME, "secret": {"secretName": install.ca_secret, "defaultMode": 0o444,
                                           "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]


def _token_volume(install: Install) -> dict[str, Any]:
    return {"name": "berth-token", "projected": {"sources": [{"serviceAccountToken": {
        "audience": install.audience, "expirationSeconds": 3600, "path": "token"}}]}}


def _agent(install: Install) -> dict[str, Any]:
    p = install.ports
    return {
        "name": "agent", "image": install.image, "command": ["berth", "agent"],
        "env": [
            _field_env("POD_NAME", "metadata.name"), _field_env("POD_NAMESPACE", "metadata.namespace"),
            {"name": "BERTH_CONTROL_HOST", "value": install.control_host},
            {"name": "BERTH_CONTROL_PORT", "value": str(p.control)},
            {"name": "BERTH_INFERENCE_HOST", "value": "127.0.0.1"},
            {"name": "BERTH_INFERENCE_HTTP_PORT", "value": str(p.mlserver_http)},
            {"name": "BERTH_INFERENCE_GRPC_PORT", "value": str(p.mlserver_grpc)},
            # gateways reach the replica at the pod's IP, on the agent's relay ports (agent/relay.py)
            _field_env("BERTH_ADVERTISE_HOST", "status.podIP"),
            {"name": "BERTH_RELAY_HTTP_PORT", "value": str(p.replica_http)},
            {"name": "BERTH_RELAY_GRPC_PORT", "value": str(p.replica_grpc)},
            {"name": "BERTH_REPOSITORY_DIR", "value": MODELS_DIR},
            {"name": "BERTH_AGENT_TOKEN_FILE", "value": f"{TOKEN_DIR}/token"},
            {"name": "MEMORY_REQUEST", "valueFrom": {"resourceFieldRef": {
                "containerName": "mlserver", "resource": "requests.memory"}}},
            *_ca_env(install),
        ],
        "ports": [{"name": "http", "containerPort": p.replica_http, "protocol": "TCP"},
                  {"name": "grpc", "containerPort": p.replica_grpc, "protocol": "TCP"}],
        "volumeMounts": [{"name": "models", "mountPath": MODELS_DIR},
                         {"name": "berth-token", "mountPath": TOKEN_DIR, "readOnly": True},
                         {"name": "agent-tmp", "mountPath": "/tmp"}, *_ca_mounts(install)],
        "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "securityContext": dict(_HARDENED),
    }


def _mlserver(install: Install) -> dict[str, Any]:
    p = install.ports
    return {
        "name": "mlserver", "image": install.image, "command": ["mlserver", "start", MODELS_DIR],
        "env": [{"name": "MLSERVER_HOST", "value": LOOPBACK},  # only the agent's relay reaches it
                {"name": "MLSERVER_HTTP_PORT", "value": str(p.mlserver_http)},
                {"name": "MLSERVER_GRPC_PORT", "value": str(p.mlserver_grpc)},
                {"name": "MLSERVER_METRICS_PORT", "value": "8082"},
                {"name": "MLSERVER_LOAD_MODELS_AT_STARTUP", "value": "false"},
                # one process, as Berth runs MLServer locally: MLServer 1.7's parallel workers die at start
                # under uvloop ("no current event loop"), failing every load
                {"name": "MLSERVER_PARALLEL_WORKERS", "value": "0"}],
        # probed as the gateway reaches it: the pod's IP, through the agent's relay
        "readinessProbe": {"httpGet": {"path": "/v2/health/live", "port": p.replica_http}, "periodSeconds": 5},
        "volumeMounts": [{"name": "models", "mountPath": MODELS_DIR}],
        "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "1Gi"}},
        "securityContext": {**_HARDENED, "readOnlyRootFilesystem": False},
    }


def server_pod_spec(server: Mapping[str, Any], config: Mapping[str, Any] | None, install: Install) -> dict[str, Any]:
    base = {
        "serviceAccountName": SERVER_ACCOUNT, "automountServiceAccountToken": False,
        "terminationGracePeriodSeconds": 120,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "fsGroup": 1000,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [_agent(install), _mlserver(install)],
        "volumes": [{"name": "models", "emptyDir": {}}, {"name": "agent-tmp", "emptyDir": {}},
                    _token_volume(install), *_ca_volumes(install)],
    }
    spec = merge_pod_specs(base, (config or {}).get("spec", {}).get("podSpec"),
                           (server.get("spec") or {}).get("podSpec"))
    for container in spec["containers"]:
        if container.get("name") == "agent":  # Berth's agent, whatever a Seldon ServerConfig names
            container.update(image=install.image, command=["berth", "agent"])
            container.pop("args", None)
        elif container.get("name") == "mlserver":  # on loopback whatever a podSpec says: the relay is the way in
            container["env"] = [e for e in container.get("env") or [] if e.get("name") != "MLSERVER_HOST"]
            container["env"].insert(0, {"name": "MLSERVER_HOST", "value": LOOPBACK})
    spec["serviceAccountName"] = SERVER_ACCOUNT  # the token's identity is the agent's: never a tenant's choice
    spec["automountServiceAccountToken"] = False
    return spec


def server_objects(server: Mapping[str, Any], config: Mapping[str, Any] | None,
                   install: Install) -> list[dict[str, Any]]:
    """The StatefulSet and the headless Service of one Server (owned by it)."""
    name, ns = server["metadata"]["name"], server["metadata"]["namespace"]
    labels = pod_labels(REPLICA, name)
    replicas = ServerSpec.model_validate(server.get("spec") or {}).desired_replicas()
    claims = (config or {}).get("spec", {}).get("volumeClaimTemplates")
    sts: dict[str, Any] = {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": _meta(name, ns, labels, server),
        "spec": {"replicas": replicas, "serviceName": name, "podManagementPolicy": "Parallel",
                 "selector": {"matchLabels": {COMPONENT: REPLICA, SERVER: name}},
                 "template": {"metadata": {"labels": labels},
                              "spec": server_pod_spec(server, config, install)}},
    }
    if claims:
        sts["spec"]["volumeClaimTemplates"] = copy.deepcopy(claims)
    retention = (server.get("spec") or {}).get("statefulSetPersistentVolumeClaimRetentionPolicy")
    if retention:
        sts["spec"]["persistentVolumeClaimRetentionPolicy"] = copy.deepcopy(retention)
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": _meta(name, ns, labels, server),
           "spec": {"clusterIP": "None", "selector": {COMPONENT: REPLICA, SERVER: name},
                    "ports": [{"name": "http", "port": install.ports.replica_http, "targetPort": "http"},
                              {"name": "grpc", "port": install.ports.replica_grpc, "targetPort": "grpc"}]}}
    return [sts, svc]


def service_account(name: str, namespace: str, component: str, owner: Mapping[str, Any] | None) -> dict[str, Any]:
    """A component's ServiceAccount: no Role is bound to it and no token is mounted from it automatically."""
    return {"apiVersion": "v1", "kind": "ServiceAccount", "automountServiceAccountToken": False,
            "metadata": _meta(name, namespace, pod_labels(component), owner)}


def gateway_replicas(runtime: Mapping[str, Any]) -> int:
    for override in (runtime.get("spec") or {}).get("overrides") or []:
        if override.get("name") in GATEWAY_OVERRIDES and isinstance(override.get("replicas"), int):
            return 0 if override.get("disable") else int(override["replicas"])
    return 1


def runtime_objects(runtime: Mapping[str, Any], install: Install) -> list[dict[str, Any]]:
    """A tenant namespace's gateway: ServiceAccount, Deployment and Service, owned by the SeldonRuntime."""
    ns = runtime["metadata"]["namespace"]
    p = install.ports
    labels = pod_labels(GATEWAY)
    accounts = [service_account(GATEWAY_ACCOUNT, ns, GATEWAY, runtime)]
    container = {
        "name": "gateway", "image": install.image, "command": ["berth", "gateway"],
        "env": [{"name": "BERTH_GATEWAY_BIND", "value": "0.0.0.0"},
                {"name": "BERTH_GATEWAY_PORT", "value": str(p.gateway_http)},
                {"name": "BERTH_GATEWAY_GRPC_PORT", "value": str(p.gateway_grpc)},
                {"name": "BERTH_CONTROL_URL", "value": install.control_url},
                {"name": "BERTH_GATEWAY_TOKEN_FILE", "value": f"{TOKEN_DIR}/token"},
                _field_env("BERTH_GATEWAY_NAMESPACE", "metadata.namespace"),  # requests without seldon-namespace
                *_ca_env(install)],
        "ports": [{"name": "http", "containerPort": p.gateway_http, "protocol": "TCP"},
                  {"name": "grpc", "containerPort": p.gateway_grpc, "protocol": "TCP"}],
        "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 5},
        "volumeMounts": [{"name": "berth-token", "mountPath": TOKEN_DIR, "readOnly": True}, *_ca_mounts(install)],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        "securityContext": dict(_HARDENED),
    }
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(GATEWAY_NAME, ns, labels, runtime),
        "spec": {"replicas": gateway_replicas(runtime), "selector": {"matchLabels": {COMPONENT: GATEWAY}},
                 "template": {"metadata": {"labels": labels}, "spec": {
                     "serviceAccountName": GATEWAY_ACCOUNT, "automountServiceAccountToken": False,
                     "securityContext": {"runAsNonRoot": True, "runAsUser": 1000,
                                         "seccompProfile": {"type": "RuntimeDefault"}},
                     "containers": [container], "volumes": [_token_volume(install), *_ca_volumes(install)]}}},
    }
    service = {"apiVersion": "v1", "kind": "Service", "metadata": _meta(GATEWAY_NAME, ns, labels, runtime),
               "spec": {"selector": {COMPONENT: GATEWAY},
                        "ports": [{"name": "http", "port": p.gateway_http, "targetPort": "http"},
                                  {"name": "grpc", "port": p.gateway_grpc, "targetPort": "grpc"}]}}
    return [*accounts, deployment, service]
