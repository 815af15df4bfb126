"""Serving end to end: real MLServer replicas and agents started by the local provisioner, the real
control plane and gateway, models trained by the test.  One platform per module keeps it quick."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from berth.errors import BerthError, NotFound
from tests.support.models import IRIS_INPUT, train_mlflow, train_sklearn
from tests.support.platform import Platform, model_doc, server_doc

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {"sklearn": train_sklearn(root / "iris"), "mlflow": train_mlflow(root / "mlflow")}


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    data = tmp_path_factory.mktemp("berth")
    with Platform(data) as p:
        p.client.apply([server_doc("mlserver", replicas=1)])
        p.wait_server("mlserver", ready_replicas=1)
        yield p
    left = _replica_processes(data)
    assert left == [], f"replica processes left running: {left}"


def _replica_processes(data: Path, marker: str = "") -> list[int]:
    needle = str(data / "replicas" / marker)
    out = []
    for proc in psutil.process_iter(["pid", "cmdline", "environ"]):
        try:
            text = " ".join(proc.info["cmdline"] or []) + " " + (proc.info["environ"] or {}).get("BERTH_DATA_DIR", "")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        if needle in text:
            out.append(proc.pid)
    return out


def test_apply_ready_infer_delete(platform: Platform, models: dict[str, Path]) -> None:
    platform.client.apply([model_doc("iris", str(models["sklearn"])),
                           model_doc("iris-mlflow", models["mlflow"].as_uri(), requirements=["mlflow"])])
    st = platform.wait_model("iris")
    assert st["availableReplicas"] == 1 and st["replicaStatus"]["mlserver/0"]["memory"] > 0
    platform.wait_model("iris-mlflow")
    res = platform.infer_served("iris", IRIS_INPUT)
    assert res.body["outputs"][0]["data"] == [0, 2]
    assert res.route == ":iris:"
    assert platform.infer_served("iris-mlflow", IRIS_INPUT).body["outputs"][0]["data"] == [0, 2]
    server = platform.client.get("Server", "default", "mlserver")["status"]
    assert server["loadedModels"] >= 2
    platform.client.delete("Model", "default", "iris-mlflow")
    # from the moment it is deleted, every request either is still answered or gets the gateway's 404
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            assert platform.gateway.infer("iris-mlflow", IRIS_INPUT).body["outputs"][0]["data"] == [0, 2]
        except NotFound:
            break
        time.sleep(0.02)
    with pytest.raises(NotFound):
        platform.gateway.infer("iris-mlflow", IRIS_INPUT)


def test_capability_mismatch_is_explained(platform: Platform, models: dict[str, Path]) -> None:
    platform.client.apply([model_doc("torchy", str(models["sklearn"]), requirements=["torch", "scikit-learn"])])
    st = platform.wait_model("torchy", state="ScheduleFailed")
    assert st["message"].startswith("Failed to schedule model as no matching servers are available")
    assert "torch" in st["message"] and "scikit-learn" in st["message"] and "sklearn" in st["message"]
    platform.client.delete("Model", "default", "torchy")


def test_replica_memory_comes_from_the_server_config_podspec(platform: Platform) -> None:
    """As in Seldon, a replica offers its mlserver container's memory request: the ServerConfig's, unless the
    Server's own podSpec sets one."""
    config = {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "ServerConfig",
              "metadata": {"name": "sized", "namespace": "sized"},
              "spec": {"podSpec": {"containers": [{"name": "mlserver", "image": "seldonio/mlserver:1.7.1",
                                                   "resources": {"requests": {"memory": "3Gi"}}}]}}}
    small = server_doc("small", namespace="sized")
    big = server_doc("big", namespace="sized")
    small["spec"]["serverConfig"] = big["spec"]["serverConfig"] = "sized"
    big["spec"]["podSpec"] = {"containers": [{"name": "mlserver", "resources": {"limits": {"memory": "5Gi"}}}]}
    platform.client.apply([config, small, big])
    for name, memory in (("small", 3 << 30), ("big", 5 << 30)):
        platform.wait_server(name, "sized", ready_replicas=1)
        rows = platform.client.get("Server", "sized", name)["status"]["replicaStatus"]
        assert [r["memory"] for r in rows] == [memory]
    st = platform.client.get("ServerConfig", "sized", "sized")["status"]
    assert "small" in st["message"] and "big" in st["message"] and "memory request" in st["message"]
    platform.client.delete("Server", "sized", "small")
    platform.client.delete("Server", "sized", "big")


def test_server_and_model_scaling(platform: Platform, models: dict[str, Path]) -> None:
    ns = "scaling"
    platform.client.apply([server_doc("pool", namespace=ns, replicas=1)])
    platform.wait_server("pool", ns, ready_replicas=1)
    platform.client.apply([server_doc("pool", namespace=ns, replicas=2)])
    platform.wait_server("pool", ns, ready_replicas=2)
    # a model with two replicas lands on both
    platform.client.apply([model_doc("twin", str(models["sklearn"]), namespace=ns, replicas=2)])
    platform.wait_model("twin", ns, available=2)
    assert platform.routed_endpoints("twin", ns) == ["pool/0", "pool/1"]
    routes = {platform.infer_served("twin", IRIS_INPUT, namespace=ns).route for _ in range(4)}
    assert routes == {":twin:"}
    # model scale 2 -> 1 -> 2
    platform.client.apply([model_doc("twin", str(models["sklearn"]), namespace=ns, replicas=1)])
    platform.wait_model("twin", ns, available=1)
    deadline = time.monotonic() + 20
    while len(platform.routed_endpoints("twin", ns)) != 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(platform.routed_endpoints("twin", ns)) == 1
    platform.client.apply([model_doc("twin", str(models["sklearn"]), namespace=ns, replicas=2)])
    platform.wait_model("twin", ns, available=2)
    # server scale 2 -> 1: replica 1 stops, the model keeps serving on replica 0 with 1 of 2
    platform.client.apply([model_doc("twin", str(models["sklearn"]), namespace=ns, replicas=1)])
    platform.client.apply([server_doc("pool", namespace=ns, replicas=1)])
    platform.wait_server("pool", ns, ready_replicas=1)
    deadline = time.monotonic() + 20
    while _replica_processes(platform.control.opts.data_dir, f"{ns}/pool-1") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _replica_processes(platform.control.opts.data_dir, f"{ns}/pool-1") == []
    platform.wait_model("twin", ns, available=1)
    assert platform.infer_served("twin", IRIS_INPUT, namespace=ns).body["outputs"][0]["data"] == [0, 2]
    # deleting the server stops its replicas and the model says why it cannot run
    platform.client.delete("Server", ns, "pool")
    st = platform.wait_model("twin", ns, state="ScheduleFailed", timeout=30)
    assert "no server" in st["message"] or "no servers" in st["message"]
    deadline = time.monotonic() + 20
    while _replica_processes(platform.control.opts.data_dir, f"{ns}/pool-") and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _replica_processes(platform.control.opts.data_dir, f"{ns}/pool-") == []
    with pytest.raises(BerthError) as exc:
        platform.gateway.infer("twin", IRIS_INPUT, namespace=ns)
    assert exc.value.code == "ModelNotReady"


def test_corrupt_artifact_is_load_failed_with_mlserver_error(platform: Platform, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "model.joblib").write_bytes(b"this is not a model")
    platform.client.apply([model_doc("broken", str(bad))])
    st = platform.wait_model("broken", state="LoadFailed")
    assert "replica mlserver/0: load failed" in st["message"]
    assert "broken" in st["message"]
    platform.client.delete("Model", "default", "broken")


def test_gateway_answers_json_for_unknown_model(platform: Platform) -> None:
    r = httpx.post(f"{platform.gateway_url}/v2/models/nope/infer", json=IRIS_INPUT, timeout=5)
    assert r.status_code == 404
    assert r.json()["code"] == "NotFound" and "nope" in r.json()["message"]
