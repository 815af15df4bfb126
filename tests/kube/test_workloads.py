"""The provisioner's Kubernetes objects: accepted by Kubernetes' schemas, merged as Seldon merges pod specs,
owned by their resource, and NetworkPolicies that admit exactly the flows Berth needs."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from berth.kube.flows import CONTROL_PLANE, GATEWAY, REPLICA, check, pod_labels
from berth.kube.netpol import Endpoint, Flow, evaluate
from berth.kube.podmerge import merge_pod_specs
from berth.kube.policies import control_plane_policies, tenant_policies
from berth.kube.workloads import Install, runtime_objects, server_objects
from tests.support.seeds import EXAMPLES

K8S = "1.30.0"
INSTALL = Install()
NS, SYS = "financial-ml", INSTALL.control_namespace
NAMESPACES = {NS: {"kubernetes.io/metadata.name": NS}, SYS: {"kubernetes.io/metadata.name": SYS},
              "kube-system": {"kubernetes.io/metadata.name": "kube-system"},
              "other": {"kubernetes.io/metadata.name": "other"}}


def stored(path: Path) -> dict[str, Any]:
    doc = dict(yaml.safe_load(path.read_text()))
    doc["metadata"] = {**doc["metadata"], "uid": str(uuid.uuid4())}
    return doc


SERVER = stored(EXAMPLES / "financial-ml" / "10-server.yaml")
RUNTIME = stored(EXAMPLES / "financial-ml" / "00-runtime.yaml")


def test_every_object_is_valid_kubernetes() -> None:
    docs = (server_objects(SERVER, None, INSTALL) + runtime_objects(RUNTIME, INSTALL)
            + tenant_policies(RUNTIME, INSTALL) + control_plane_policies(INSTALL))
    assert [d["kind"] for d in docs].count("NetworkPolicy") == 4
    for doc in docs:
        kubernetes_validate.validate(doc, K8S, strict=True)


def test_server_becomes_an_owned_statefulset_and_headless_service() -> None:
    sts, svc = server_objects(SERVER, None, INSTALL)
    assert sts["kind"] == "StatefulSet" and sts["spec"]["replicas"] == 1 and sts["spec"]["serviceName"] == "mlserver"
    owner = sts["metadata"]["ownerReferences"][0]
    assert owner == {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Server", "name": "mlserver",
                     "uid": SERVER["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
    assert svc["spec"]["clusterIP"] == "None" and svc["metadata"]["ownerReferences"][0]["uid"] == owner["uid"]
    pod = sts["spec"]["template"]["spec"]
    agent, mlserver = pod["containers"]
    env = {e["name"]: e.get("value") for e in agent["env"]}
    assert env["BERTH_INFERENCE_HOST"] == "127.0.0.1"  # the agent reaches MLServer over the pod's loopback
    ml_env = {e["name"]: e.get("value") for e in mlserver["env"]}
    assert ml_env["MLSERVER_HOST"] == "127.0.0.1" and "ports" not in mlserver  # nothing of MLServer's is exposed
    assert (ml_env["MLSERVER_HTTP_PORT"], ml_env["MLSERVER_GRPC_PORT"]) == (
        env["BERTH_INFERENCE_HTTP_PORT"], env["BERTH_INFERENCE_GRPC_PORT"])
    # the agent relays the pod's ports (those the NetworkPolicies admit the gateway to) and advertises the pod's IP
    assert [(p["name"], p["containerPort"]) for p in agent["ports"]] == [("http", 8080), ("grpc", 8081)]
    assert (env["BERTH_RELAY_HTTP_PORT"], env["BERTH_RELAY_GRPC_PORT"]) == ("8080", "8081")
    advertise = next(e for e in agent["env"] if e["name"] == "BERTH_ADVERTISE_HOST")
    assert advertise["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    # a tenant's podSpec cannot put MLServer back on the pod's IP
    loud = {**SERVER, "spec": {**SERVER["spec"], "podSpec": {"containers": [
        {"name": "mlserver", "env": [{"name": "MLSERVER_HOST", "value": "0.0.0.0"}]}]}}}
    ml = server_objects(loud, None, INSTALL)[0]["spec"]["template"]["spec"]["containers"][1]
    assert [e["value"] for e in ml["env"] if e["name"] == "MLSERVER_HOST"] == ["127.0.0.1"]
    assert env["BERTH_CONTROL_HOST"] == "berth-control.berth-system.svc"
    assert pod["automountServiceAccountToken"] is False and pod["serviceAccountName"] == "berth-server"
    token = next(v for v in pod["volumes"] if v["name"] == "berth-token")
    assert token["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "berth"
    selector = sts["spec"]["selector"]["matchLabels"]
    assert all(sts["spec"]["template"]["metadata"]["labels"][k] == v for k, v in selector.items())


def test_pod_specs_merge_as_seldon_merges_them() -> None:
    config = {"spec": {"podSpec": {"nodeSelector": {"pool": "cpu"}, "containers": [
        {"name": "agent", "image": "seldonio/seldon-agent:2.8", "args": ["--x"]},
        {"name": "mlserver", "env": [{"name": "A", "value": "config"}, {"name": "B", "value": "config"}],
         "resources": {"requests": {"memory": "2Gi"}}}]}}}
    server = {**SERVER, "spec": {**SERVER["spec"], "replicas": 3, "podSpec": {
        "nodeSelector": {"pool": "gpu"}, "tolerations": [{"key": "gpu", "operator": "Exists"}],
        "containers": [{"name": "mlserver", "env": [{"name": "A", "value": "server"}]}]}}}
    sts, _ = server_objects(server, config, INSTALL)
    pod = sts["spec"]["template"]["spec"]
    assert sts["spec"]["replicas"] == 3
    assert pod["nodeSelector"] == {"pool": "gpu"} and pod["tolerations"][0]["key"] == "gpu"
    agent, mlserver = pod["containers"]
    assert agent["image"] == INSTALL.image and agent["command"] == ["berth", "agent"] and "args" not in agent
    env = {e["name"]: e["value"] for e in mlserver["env"] if "value" in e}
    assert env["A"] == "server" and env["B"] == "config" and env["MLSERVER_HOST"] == "127.0.0.1"
    assert mlserver["resources"] == {"requests": {"memory": "2Gi"}}
    # a tenant cannot hand the agent another identity
    sneaky = {**SERVER, "spec": {**SERVER["spec"], "podSpec": {"serviceAccountName": "admin",
                                                              "automountServiceAccountToken": True}}}
    pod = server_objects(sneaky, None, INSTALL)[0]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "berth-server" and pod["automountServiceAccountToken"] is False
    assert merge_pod_specs(None, {}) == {}


def test_runtime_gets_a_gateway_sized_by_its_overrides() -> None:
    objs = runtime_objects(RUNTIME, INSTALL)
    kinds = [(o["kind"], o["metadata"]["name"]) for o in objs]
    assert kinds == [("ServiceAccount", "berth-gateway"), ("Deployment", "berth-gateway"),
                     ("Service", "berth-gateway")]
    assert all(o["metadata"]["ownerReferences"][0]["kind"] == "SeldonRuntime" for o in objs)
    assert objs[1]["spec"]["replicas"] == 1  # seldon-modelgateway: replicas 1 in the seed
    bigger = {**RUNTIME, "spec": {"seldonConfig": "default", "overrides": [{"name": "seldon-envoy", "replicas": 3}]}}
    assert runtime_objects(bigger, INSTALL)[1]["spec"]["replicas"] == 3


def _all_policies() -> list[dict[str, Any]]:
    return tenant_policies(RUNTIME, INSTALL) + control_plane_policies(INSTALL)


def test_generated_policies_admit_every_needed_flow() -> None:
    verdicts = check(NS, ["mlserver"], _all_policies(), NAMESPACES, control_namespace=SYS)
    assert [line for v in verdicts for line in v.lines()] == []
    assert len(verdicts) == 6  # gateway → control; agent → control; gateway → replicas x2; clients → gateway x2


def _pod(component: str, ns: str = NS, server: str | None = None) -> Endpoint:
    return Endpoint(f"{component} pods of {ns}", ns, pod_labels(component, server) if component else {})


STRAY = [
    ("client → replica directly", Endpoint("client pods", NS, {}), _pod(REPLICA, server="mlserver"), 8080),
    ("client → control plane", Endpoint("client pods", NS, {}), _pod(CONTROL_PLANE, SYS), 9004),
    ("gateway → replica, another port", _pod(GATEWAY), _pod(REPLICA, server="mlserver"), 8082),
    ("gateway → MLServer's own port, past the relay", _pod(GATEWAY), _pod(REPLICA, server="mlserver"), 9500),
    ("replica → replica", _pod(REPLICA, server="a"), _pod(REPLICA, server="mlserver"), 8080),
    ("replica → gateway", _pod(REPLICA, server="mlserver"), _pod(GATEWAY), 9000),
    ("agent → the internet", _pod(REPLICA, server="mlserver"), Endpoint("a host", None, ip="203.0.113.9"), 443),
    ("pods of another namespace → gateway", Endpoint("client pods", "other", {}), _pod(GATEWAY), 9000),
    ("gateway → the internet", _pod(GATEWAY), Endpoint("a host", None, ip="198.51.100.1"), 80),
]


@pytest.mark.parametrize("name,source,dest,port", STRAY, ids=[s[0] for s in STRAY])
def test_generated_policies_admit_nothing_else(name: str, source: Endpoint, dest: Endpoint, port: int) -> None:
    assert not evaluate(Flow(name, source, dest, port), _all_policies(), NAMESPACES).allowed


def test_dns_and_named_storage_are_admitted() -> None:
    dns = Endpoint("kube-dns", "kube-system", {"k8s-app": "kube-dns"})
    agent = _pod(REPLICA, server="mlserver")
    assert evaluate(Flow("agent → DNS", agent, dns, 53, "UDP"), _all_policies(), NAMESPACES).allowed
    s3 = Endpoint("S3 endpoint", None, ip="192.0.2.10")
    assert not evaluate(Flow("agent → S3", agent, s3, 443), _all_policies(), NAMESPACES).allowed
    storage = [{"to": [{"ipBlock": {"cidr": "192.0.2.0/24"}}], "ports": [{"protocol": "TCP", "port": 443}]}]
    with_storage = tenant_policies(RUNTIME, INSTALL, storage=storage)
    assert evaluate(Flow("agent → S3", agent, s3, 443), with_storage, NAMESPACES).allowed


def test_with_tls_agent_and_gateway_pods_trust_the_ca_secret_only() -> None:
    """With the control plane serving TLS (Install.ca_secret), agent and gateway pods mount ca.crt of the tenant
    namespace's CA Secret (that key only, read-only) and reach the control plane over wss:// / https://; the
    settings they are given are ones their processes accept."""
    from berth.agent.config import AgentConfig
    from berth.gateway.settings import GatewaySettings

    install = Install(ca_secret="berth-control-ca")
    server = stored(EXAMPLES / "financial-ml" / "10-server.yaml")
    runtime = stored(EXAMPLES / "financial-ml" / "00-runtime.yaml")
    made = server_objects(server, None, install) + runtime_objects(runtime, install)
    for doc in made:
        kubernetes_validate.validate(doc, "1.30.0", strict=True)
    [statefulset] = [d for d in made if d["kind"] == "StatefulSet"]
    [deployment] = [d for d in made if d["kind"] == "Deployment"]
    for doc, name in ((statefulset, "agent"), (deployment, "gateway")):
        pod = doc["spec"]["template"]["spec"]
        [volume] = [v for v in pod["volumes"] if v["name"] == "berth-control-ca"]
        assert volume["secret"] == {"secretName": "berth-control-ca", "defaultMode": 0o444,
                                    "items": [{"key": "ca.crt", "path": "ca.crt"}]}  # never the Secret's tls.key
        [container] = [c for c in pod["containers"] if c["name"] == name]
        [mount] = [m for m in container["volumeMounts"] if m["name"] == "berth-control-ca"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert mount["readOnly"] is True and env["BERTH_CONTROL_CA"] == mount["mountPath"] + "/ca.crt"
        others = [c for c in pod["containers"] if c["name"] != name]
        assert not any(m["name"] == "berth-control-ca" for c in others for m in c.get("volumeMounts", []))
    agent_env = {e["name"]: e["value"] for c in statefulset["spec"]["template"]["spec"]["containers"]
                 if c["name"] == "agent" for e in c["env"] if "value" in e and e["name"] != "BERTH_AGENT_TOKEN_FILE"}
    config = AgentConfig.from_env({**agent_env, "POD_NAME": "mlserver-0", "POD_NAMESPACE": "financial-ml",
                                   "BERTH_ADVERTISE_HOST": "10.42.0.7"})
    assert config.control_url.startswith("wss://berth-control.berth-system.svc:")
    gateway_env = {e["name"]: e["value"] for c in deployment["spec"]["template"]["spec"]["containers"]
                   for e in c["env"] if "value" in e}
    gw = GatewaySettings.from_env(gateway_env)
    assert gw.control.startswith("https://berth-control.berth-system.svc:") and gw.control_ca is not None
    plain = runtime_objects(runtime, Install())  # no TLS: as before, no CA anywhere
    assert "BERTH_CONTROL_CA" not in str(plain) and "http://berth-control" in str(plain)
