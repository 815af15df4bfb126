"""A real control plane: Triton servers are never Ready and never take a model, saying why; apply answers a
warning for every field it keeps but does not act on, in the CLI's output and in the API's JSON."""

from __future__ import annotations

import time
from typing import Any

from berth.client.http import BerthClient
from tests.support.servers import ControlPlane

NS = "financial-ml"
TRITON_TEXT = ("serverConfig triton runs NVIDIA Triton, which Berth does not run; Berth serves MLServer "
               "(runtimes: sklearn, xgboost, mlflow, lightgbm, python/custom); use serverConfig: mlserver")
MANIFESTS = f"""
apiVersion: mlops.seldon.io/v1alpha1
kind: ServerConfig
metadata: {{name: triton, namespace: {NS}}}
spec:
  podSpec:
    containers:
    - name: agent
      env:
      - {{name: SELDON_SERVER_TYPE, value: triton}}
      - name: MEMORY_REQUEST
        valueFrom: {{resourceFieldRef: {{containerName: triton, resource: requests.memory}}}}
    - name: triton
      image: nvcr.io/nvidia/tritonserver:23.03-py3
      resources: {{requests: {{memory: 1G}}}}
---
apiVersion: mlops.seldon.io/v1alpha1
kind: Server
metadata: {{name: gpu, namespace: {NS}}}
spec: {{serverConfig: triton, replicas: 1}}
---
apiVersion: mlops.seldon.io/v1alpha1
kind: Server
metadata: {{name: mlserver, namespace: {NS}}}
spec:
  serverConfig: mlserver
  replicas: 1
  podSpec:
    nodeSelector: {{pool: cpu}}
    containers:
    - name: agent
      env: [{{name: SELDON_OVERCOMMIT_PERCENTAGE, value: "20"}}]
---
apiVersion: mlops.seldon.io/v1alpha1
kind: Model
metadata: {{name: onnx-scorer, namespace: {NS}}}
spec: {{storageUri: "s3://models/onnx-scorer/", requirements: [onnx]}}
---
apiVersion: mlops.seldon.io/v1alpha1
kind: Model
metadata: {{name: pinned, namespace: {NS}}}
spec: {{storageUri: "s3://models/pinned/", requirements: [sklearn], server: gpu}}
"""


def _status(client: BerthClient, kind: str, name: str, ready_reason: str | None = None,
            timeout: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    st: dict[str, Any] = {}
    while time.monotonic() < deadline:
        st = client.get(kind, NS, name).get("status") or {}
        reasons = [c.get("reason") for c in st.get("conditions", []) if c.get("type") == "Ready"]
        if reasons and (ready_reason is None or reasons == [ready_reason]):
            return st
        time.sleep(0.05)
    raise AssertionError(f"{kind} {NS}/{name}: no Ready condition {ready_reason or ''} in {timeout}s: {st}")


def _ready(st: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in st["conditions"] if c["type"] == "Ready")


def test_triton_is_not_ready_and_takes_no_model_saying_why(control: ControlPlane, cli) -> None:
    r = cli("--server", control.url, "apply", "-f", "-", stdin=MANIFESTS)
    assert r.code == 0, r.err
    assert "server.mlops.seldon.io/gpu created" in r.out
    client = BerthClient(control.url)
    server = _status(client, "Server", "gpu", "UnsupportedServerConfig")
    assert (_ready(server)["status"], _ready(server)["message"]) == ("False", TRITON_TEXT)
    assert server["readyReplicas"] == 0
    config = _status(client, "ServerConfig", "triton", "UnsupportedServerConfig")
    assert _ready(config)["status"] == "False"
    assert config["message"] == f"{TRITON_TEXT}; servers using it: gpu"
    # the MLServer server is a candidate as ever: no agent yet, so that is what it says
    assert _ready(_status(client, "Server", "mlserver"))["reason"] == "ServerNotReady"

    onnx = _status(client, "Model", "onnx-scorer")
    assert onnx["state"] == "ScheduleFailed"
    assert onnx["message"] == (
        "Failed to schedule model as no matching servers are available: requirement onnx is served by NVIDIA "
        "Triton, which Berth does not run, and no server Berth runs in namespace financial-ml offers it "
        "(declared by gpu, which runs Triton); Berth serves MLServer (runtimes: sklearn, xgboost, mlflow, "
        "lightgbm, python/custom)")
    assert [r["code"] for r in onnx["placement"]["reasons"]] == ["RequiresUnsupportedServer"]
    pinned = _status(client, "Model", "pinned")
    assert pinned["state"] == "ScheduleFailed"
    assert pinned["message"] == f"Failed to schedule model as no matching servers are available: server gpu: " \
                                f"{TRITON_TEXT}"
    assert [r["code"] for r in pinned["placement"]["reasons"]] == ["UnsupportedServer"]

    r = cli("--server", control.url, "get", "models", "-n", NS, "-o", "wide")
    assert r.code == 0 and "requirement onnx is served by NVIDIA Triton" in r.out


def test_apply_warns_about_every_field_it_keeps_but_does_not_act_on(control: ControlPlane, cli) -> None:
    r = cli("--server", control.url, "apply", "-f", "-", stdin=MANIFESTS)
    assert r.code == 0, r.err
    node_selector = (f"Server {NS}/mlserver: spec.podSpec.nodeSelector: not used by local replicas (Berth runs "
                     "each replica as processes on this machine); kept")
    assert f"warning: {node_selector}" in r.err.splitlines()
    assert f"Server {NS}/gpu: spec.serverConfig: not run: {TRITON_TEXT}; kept" in r.err
    answer = BerthClient(control.url).apply(
        [{"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Server", "metadata": {"name": "mlserver", "namespace": NS},
          "spec": {"serverConfig": "mlserver", "replicas": 1, "maxReplicas": 4,
                   "podSpec": {"nodeSelector": {"pool": "cpu"}, "tolerations": [],
                               "containers": [{"name": "agent", "image": "seldonio/agent",
                                               "env": [{"name": "SELDON_OVERCOMMIT_PERCENTAGE", "value": "20"},
                                                       {"name": "SELDON_LOG_LEVEL", "value": "debug"}]}]}}}],
        dry_run=True)
    assert answer["warnings"] == [  # maxReplicas is acted on: autoscaling (docs/autoscaling.md)
        node_selector,
        f"Server {NS}/mlserver: spec.podSpec.tolerations: not used by local replicas (Berth runs each replica as "
        "processes on this machine); kept",
        f"Server {NS}/mlserver: spec.podSpec.containers[agent]: image, env[SELDON_LOG_LEVEL]: not used by local "
        "replicas (Berth runs its own agent, on ports and addresses it chooses; of the agent's env it reads "
        "MEMORY_REQUEST, SELDON_OVERCOMMIT_PERCENTAGE, SELDON_SERVER_CAPABILITIES, SELDON_SERVER_TYPE); kept"]
    plain = BerthClient(control.url).apply([{"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Server",
                                             "metadata": {"name": "plain", "namespace": NS},
                                             "spec": {"serverConfig": "mlserver", "replicas": 2}}])
    assert plain["warnings"] == [] and plain["results"][0]["action"] == "created"


def test_a_bad_knob_is_refused_at_apply_naming_the_field(control: ControlPlane, cli) -> None:
    doc = MANIFESTS.replace('value: "20"', "value: lots")
    r = cli("--server", control.url, "apply", "-f", "-", stdin=doc)
    assert r.code == 1
    assert ("Server/mlserver: spec.podSpec.containers[agent].env[SELDON_OVERCOMMIT_PERCENTAGE].value: expected a "
            'whole number of percent from 0 to 1000 (e.g. "10"), got "lots"') in r.err
    assert BerthClient(control.url).list("Server", NS) == []


def test_a_triton_server_config_in_another_namespace_is_recognised(control: ControlPlane) -> None:
    """Seldon keeps ServerConfigs in the operator's namespace: a Server naming one there is judged by it."""
    client = BerthClient(control.url)
    client.apply([
        {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "ServerConfig",
         "metadata": {"name": "gpu-inference", "namespace": "seldon-mesh"},
         "spec": {"podSpec": {"containers": [
             {"name": "agent", "env": [{"name": "SELDON_SERVER_TYPE", "value": "triton"}]},
             {"name": "triton", "image": "nvcr.io/nvidia/tritonserver:23.03-py3"}]}}},
        {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Server", "metadata": {"name": "gpu", "namespace": NS},
         "spec": {"serverConfig": "gpu-inference", "replicas": 1}},
        {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Model", "metadata": {"name": "pinned", "namespace": NS},
         "spec": {"storageUri": "s3://models/pinned/", "requirements": ["sklearn"], "server": "gpu"}},
    ])
    server = _status(client, "Server", "gpu", "UnsupportedServerConfig")
    assert "serverConfig gpu-inference runs NVIDIA Triton" in _ready(server)["message"]
    pinned = _status(client, "Model", "pinned")
    assert [r["code"] for r in pinned["placement"]["reasons"]] == ["UnsupportedServer"]
