"""End to end in Kubernetes mode, without containers: the real `berth control --store kubernetes` process, the
emulated API server, and tests/kube/kubelet.py playing the kubelet for the StatefulSet it makes (the pod
template's own agent and MLServer commands and env as local processes, the agent enrolled with its pod's
projected token through TokenReview).  A Model applied to the API becomes Ready and answers on the
replica's MLServer; a killed MLServer is started again and the model served again; deleting the Server
stops its pods.

Not yet through the namespace's gateway: a gateway pod's projected token is not accepted by the control
API yet (docs/kubernetes.md, "Status")."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from berth.store.kubernetes import KubernetesStore
from tests.kube.apiserver import ApiServer
from tests.kube.kubelet import Kubelet
from tests.kube.test_control_kube import ControlProcess, condition, example
from tests.support.models import IRIS_INPUT, train_sklearn
from tests.support.servers import wait_http

pytestmark = pytest.mark.e2e
NS = "financial-ml"
POD = (NS, "mlserver-0")


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[ApiServer, KubernetesStore, ControlProcess, Kubelet]]:
    with ApiServer(tmp_path) as api:
        store = KubernetesStore(kubeconfig=str(api.kubeconfig))
        control = ControlProcess(api, tmp_path)
        kubelet = Kubelet(api, tmp_path / "nodes", {"berth-control.berth-system.svc": {9004: control.port}})
        try:
            assert wait_http(control.url + "/healthz", 30), control.output()
            yield api, store, control, kubelet
        finally:
            kubelet.close()
            control.stop()
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


def infer(kubelet: Kubelet, name: str) -> httpx.Response:
    port = kubelet.pods[POD].ports[8080]  # the pod's MLServer REST port, as the gateway would reach it
    return httpx.post(f"http://127.0.0.1:{port}/v2/models/{name}/infer", json=IRIS_INPUT, timeout=30)


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
    answer = infer(kubelet, name)
    assert answer.status_code == 200, answer.text
    assert answer.json()["outputs"][0]["shape"][0] == 2
    server = store.get("Server", NS, "mlserver")
    assert (condition(server, "Ready") or {}).get("status") == "True", server.get("status")

    # a killed MLServer is started again by the kubelet, and Berth serves the model there again
    kubelet.kill(POD, "mlserver")
    settle(kubelet, "the model served again after MLServer was killed",
           lambda: _answers(kubelet, name) and ready(store, name), control, timeout=180)
    assert kubelet.pods[POD].container("mlserver").restarts >= 1

    # deleting the Server removes its StatefulSet, and with it the pods
    store.delete("Server", NS, "mlserver")
    settle(kubelet, "the pods' removal", lambda: not kubelet.pods, control, timeout=60)
    assert ("pods", NS, "mlserver-0") not in api._sync(lambda: set(api.objects))


def _answers(kubelet: Kubelet, name: str) -> bool:
    try:
        return infer(kubelet, name).status_code == 200
    except httpx.HTTPError:
        return False
