"""End to end in Kubernetes mode, without containers: the real `berth control --store kubernetes` process, the
emulated API server, and tests/kube/kubelet.py playing the kubelet for the StatefulSet and the gateway
Deployment it makes (the pod templates' own agent, MLServer and gateway commands and env as local processes,
the agent enrolled and the gateway authenticated with their pods' projected tokens through TokenReview).
A Model applied to the API becomes Ready and answers through the namespace's gateway (which takes its own
namespace for a request without a seldon-namespace header); a killed MLServer is
started again and the model served again through the gateway; deleting the Server stops its pods.

The pods' network (tests/kube/podnet.py) is a network namespace per pod when run as root with ``ip netns``
(the control plane and the API server then listen on the pods' bridge address, never on a public interface),
else an address ``127.0.0.N`` per pod with distinct ports; the test's id says which ran (``[netns]`` or
``[loopback]``, also printed with ``-s``/``-rA``). With namespaces it also checks the isolation Kubernetes
gives: MLServer's ports answer on the replica pod's own loopback only (not on its IP from the host, nor from
the gateway pod), the agent's relay ports answer on the pod's IP from both, and the gateway pod reaches the
replica at its pod IP."""

from __future__ import annotations

import copy
import ipaddress
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from mlserver.grpc import dataplane_pb2, dataplane_pb2_grpc

from berth.kube.flows import Ports
from berth.resources.identity import new_token
from berth.store.kubernetes import KubernetesStore
from berth.wire.routes import ROUTES_PATH
from tests.kube.apiserver import ApiServer
from tests.kube.kubelet import Kubelet, Pod
from tests.kube.podnet import NetnsNetwork, chosen_mode
from tests.kube.test_control_kube import ControlProcess, condition, example
from tests.support.models import IRIS_INPUT, train_sklearn
from tests.support.servers import wait_http

pytestmark = pytest.mark.e2e
NS = "financial-ml"
POD = (NS, "mlserver-0")
ADMIN = new_token()
NETWORK, WHY = chosen_mode()
PORTS = Ports()


@pytest.fixture(params=[NETWORK])  # in the test's id: which pod network ran
def cluster(tmp_path: Path) -> Iterator[tuple[ApiServer, KubernetesStore, ControlProcess, Kubelet]]:
    (tmp_path / "admin-token").write_text(ADMIN + "\n")
    (tmp_path / "admin-token").chmod(0o600)
    with ApiServer(tmp_path) as api:
        kubelet = Kubelet(api, tmp_path / "nodes", {})
        print(f"pod network: {kubelet.network.describe()} [{WHY}]")
        store = control = None
        try:
            store = KubernetesStore(kubeconfig=str(api.kubeconfig))
            host = kubelet.network.host  # the bridge's address with namespaces (pods reach it), else 127.0.0.1
            control = ControlProcess(api, tmp_path, ("--admin-token-file", str(tmp_path / "admin-token"),
                                                     "--host", host))
            control.url = f"http://{host}:{control.port}"
            kubelet.services["berth-control.berth-system.svc"] = {PORTS.control: control.port}
            assert wait_http(control.url + "/healthz", 30), control.output()
            yield api, store, control, kubelet
        finally:
            kubelet.close()  # the pods, then (namespaces) every namespace, veth and the bridge
            if control is not None:
                control.stop()
            if store is not None:
                store.close()


def settle(kubelet: Kubelet, what: str, check: Any, control: ControlProcess, timeout: float = 120.0) -> Any:
    """Play the kubelet (sync every half second) until ``check()`` holds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kubelet.sync()
        found = check()
        if found:
            return found
        time.sleep(0.5)
    logs = "\n".join(f"--- {c.name} of {p.name}:\n{c.log.read_text()[-3000:]}"
                     for p in kubelet.pods.values() for c in p.containers if c.log.exists())
    raise AssertionError(f"{what} did not happen within {timeout:.0f} s\n--- control plane:\n"
                         f"{control.output()[-4000:]}\n{logs}")


def ready(store: KubernetesStore, name: str) -> bool:
    model = store.get("Model", NS, name)
    cond = condition(model, "ModelReady")
    return (cond is not None and cond["status"] == "True"
            and model["status"].get("observedGeneration") == model["metadata"]["generation"])


def infer(kubelet: Kubelet, name: str, headers: dict[str, str] | None = None) -> httpx.Response:
    """Through the namespace's gateway pod (its Service's REST port, 9000, as a client in the namespace calls it):
    no ``seldon-namespace`` header, the namespace's gateway takes its own namespace."""
    gateway = kubelet.pod_of(NS, "berth-gateway-")
    assert gateway is not None, "the namespace's gateway pod is not running"
    return httpx.post(f"http://{gateway.ip}:{gateway.ports[9000]}/v2/models/{name}/infer", json=IRIS_INPUT,
                      headers=headers, timeout=30)


def test_financial_ml_served_by_pods_the_kubelet_runs(
        cluster: tuple[ApiServer, KubernetesStore, ControlProcess, Kubelet], tmp_path: Path) -> None:
    api, store, control, kubelet = cluster
    artifact = train_sklearn(tmp_path / "artifacts" / "iris")
    model: dict[str, Any] = copy.deepcopy(example("20-models.yaml")[0])
    model["spec"].update(storageUri=artifact.as_uri(), requirements=["sklearn"])  # storage pointed at a test model
    model["spec"].pop("secretName")
    for doc in example("00-runtime.yaml") + example("10-server.yaml") + [model]:
        store.apply(doc)
    name = model["metadata"]["name"]

    settle(kubelet, "the model's ModelReady", lambda: ready(store, name), control)
    pod = api._sync(lambda: copy.deepcopy(api.objects[("pods", NS, "mlserver-0")]))
    assert pod["metadata"]["ownerReferences"][0]["name"] == "mlserver"
    settle(kubelet, "the pod's Ready condition", lambda: kubelet.pods[POD].ready, control)
    gateway = settle(kubelet, "the gateway pod's Ready condition",
                     lambda: (pod := kubelet.pod_of(NS, "berth-gateway-")) is not None and pod.ready and pod, control)
    assert gateway.doc["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
    answer = settle(kubelet, "an answer through the namespace's gateway",
                    lambda: (got := _infer(kubelet, name)) is not None and got.status_code == 200 and got, control,
                    timeout=60)
    assert answer.json()["outputs"][0]["shape"][0] == 2
    assert answer.headers["x-seldon-route"], answer.headers  # the gateway's route header: it went through it
    assert infer(kubelet, name, {"seldon-namespace": NS}).status_code == 200  # named explicitly: the same
    elsewhere = infer(kubelet, name, {"seldon-namespace": "default"})  # this gateway serves its namespace only
    assert elsewhere.status_code == 404, elsewhere.text
    log = gateway.container("gateway").log.read_text()
    assert "following routes from" in log and "refused" not in log, log[-2000:]
    # gRPC too: the gateway's gRPC port, the agent's gRPC relay (HTTP/2 bytes), MLServer's gRPC on loopback
    with grpc.insecure_channel(f"{gateway.ip}:{gateway.ports[9001]}") as channel:
        stub = dataplane_pb2_grpc.GRPCInferenceServiceStub(channel)
        reply = stub.ModelInfer(dataplane_pb2.ModelInferRequest(model_name=name, inputs=[
            dataplane_pb2.ModelInferRequest.InferInputTensor(
                name="input-0", datatype="FP64", shape=[1, 4],
                contents=dataplane_pb2.InferTensorContents(fp64_contents=[5.1, 3.5, 1.4, 0.2]))]),
            metadata=[("seldon-namespace", NS)], timeout=30)
    assert reply.model_name == name and list(reply.outputs[0].shape)[0] == 1
    # the route is the pod's IP and its agent's relay port; MLServer itself answers on the pod's loopback only
    replica = kubelet.pods[POD]
    table = httpx.get(control.url + ROUTES_PATH, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=10).json()
    [route] = [m for m in table["models"] if m["name"] == name]
    assert [e["http"] for e in route["endpoints"]] == [f"{replica.ip}:{replica.ports[PORTS.replica_http]}"], route
    assert replica.ip != "127.0.0.1"
    _isolation(kubelet, replica, gateway)
    server = store.get("Server", NS, "mlserver")
    assert (condition(server, "Ready") or {}).get("status") == "True", server.get("status")

    # a killed MLServer is started again by the kubelet, and Berth serves the model there again
    kubelet.kill(POD, "mlserver")
    settle(kubelet, "the model served again after MLServer was killed",
           lambda: _answers(kubelet, name) and ready(store, name), control, timeout=180)
    assert kubelet.pods[POD].container("mlserver").restarts >= 1

    # deleting the Server removes its StatefulSet, and with it the pods
    store.delete("Server", NS, "mlserver")
    settle(kubelet, "the pods' removal", lambda: POD not in kubelet.pods, control, timeout=60)
    assert ("pods", NS, "mlserver-0") not in api._sync(lambda: set(api.objects))


def _isolation(kubelet: Kubelet, replica: Pod, gateway: Pod) -> None:
    """Who reaches MLServer's ports and the agent's relay ports of the replica pod, from the host and the gateway."""
    mlserver = [replica.ports[PORTS.mlserver_http], replica.ports[PORTS.mlserver_grpc],
                replica.ports[8082]]  # its REST, gRPC and metrics (MLSERVER_METRICS_PORT) ports
    relay = [replica.ports[PORTS.replica_http], replica.ports[PORTS.replica_grpc]]
    for port in mlserver:  # not on the pod's IP, from the host
        assert not kubelet.connects(None, replica.ip, port), f"MLServer's port {port} answers on {replica.ip}"
    for port in relay:  # the relay does, from the host (as a kubelet probes)
        assert kubelet.connects(None, replica.ip, port), f"the agent's relay port {port} is not on {replica.ip}"
    live = "/v2/health/live"
    if not isinstance(kubelet.network, NetnsNetwork):  # one loopback for every pod: MLServer answers the host
        assert httpx.get(f"http://127.0.0.1:{mlserver[0]}{live}", timeout=5).status_code == 200
        return
    fetch = ("import sys, urllib.request as u\n"
             "print(u.urlopen(f'http://{sys.argv[1]}{sys.argv[2]}', timeout=5).status)")
    inside = kubelet.exec(replica, [sys.executable, "-c", fetch, f"127.0.0.1:{mlserver[0]}", live])
    assert inside.stdout.strip() == "200", inside.stderr  # MLServer answers on the pod's own loopback
    for port in mlserver:  # nor from another pod, at the replica's IP or at that pod's own 127.0.0.1
        assert not kubelet.connects(gateway, replica.ip, port), f"MLServer's {port} reached from the gateway pod"
        assert not kubelet.connects(gateway, "127.0.0.1", port), f"the gateway pod's loopback has MLServer's {port}"
    for port in relay:  # the gateway pod reaches the replica by its pod IP, on the relay ports
        assert kubelet.connects(gateway, replica.ip, port), f"the gateway pod cannot reach {replica.ip}:{port}"
    through = kubelet.exec(gateway, [sys.executable, "-c", fetch, f"{replica.ip}:{relay[0]}", live])
    assert through.stdout.strip() == "200", through.stderr  # and MLServer answers through the relay
    assert ipaddress.ip_address(replica.ip) in kubelet.network.subnet
    assert ipaddress.ip_address(gateway.ip) in kubelet.network.subnet


def _infer(kubelet: Kubelet, name: str) -> httpx.Response | None:
    try:
        return infer(kubelet, name)
    except httpx.HTTPError:
        return None


def _answers(kubelet: Kubelet, name: str) -> bool:
    got = _infer(kubelet, name)
    return got is not None and got.status_code == 200
