"""PyTorch served, and capabilities that are honest.

One platform (control plane, local provisioner, real agents and MLServer processes, gateway) serves:
- the seeds' ``baseline-predictor`` as it really is: an MLflow model of a small PyTorch network (trained and
  logged by the test with ``mlflow.pytorch`` and a signature), at the seed's exact ``s3://`` path on moto,
  behind the seed's rclone-style Secret, answering V2 requests through the gateway;
- a Server claiming ``tensorflow``, whose MLServer cannot import it: its agent says so, and the Server's
  status, ``berth describe server``, ``berth doctor`` and a model requiring it all name the claim.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from berth.errors import NotFound
from berth.resources.manifest import load_paths
from tests.support.models import IRIS_INPUT, train_sklearn
from tests.support.platform import Platform, model_doc, server_doc
from tests.support.s3 import enforce_auth, moto_server, user_with_keys
from tests.support.torch_models import IRIS_FP32, predict_classes, train_torch_mlflow

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]
NS = "financial-ml"
CLAIMER = "claims-tensorflow"


@pytest.fixture(scope="module")
def torch_seed(tmp_path_factory: pytest.TempPathFactory, examples: Path) -> Iterator[dict[str, Any]]:
    """The seed's Secret, Server and baseline-predictor, its artifacts a logged PyTorch model on moto S3."""
    docs = [d.body for d in load_paths([str(examples / "financial-ml")]).documents]
    model = next(d for d in docs if d["kind"] == "Model" and d["metadata"]["name"] == "baseline-predictor")
    assert "torch" in model["spec"]["requirements"]
    artifacts = train_torch_mlflow(tmp_path_factory.mktemp("mlflow"))
    with moto_server() as (endpoint, admin):
        key_id, secret_key = user_with_keys(admin)
        s3 = boto3.client("s3", **admin)
        bucket, _, prefix = model["spec"]["storageUri"].removeprefix("s3://").partition("/")
        s3.create_bucket(Bucket=bucket)
        for f in artifacts.rglob("*"):
            if f.is_file():
                s3.upload_file(str(f), bucket, prefix + f.relative_to(artifacts).as_posix())
        enforce_auth(endpoint)
        secret = copy.deepcopy(next(d for d in docs if d["kind"] == "Secret"))
        remote = yaml.safe_load(secret["stringData"]["s3"])
        remote["parameters"].update(endpoint=endpoint, access_key_id=key_id, secret_access_key=secret_key)
        secret["stringData"]["s3"] = yaml.safe_dump(remote)
        server = next(d for d in docs if d["kind"] == "Server")
        yield {"docs": [secret, server, model], "secret_key": secret_key}


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, torch_seed: dict[str, Any]) -> Iterator[Platform]:
    with Platform(tmp_path_factory.mktemp("berth")) as p:
        p.client.apply([*torch_seed["docs"],
                        server_doc(CLAIMER, capabilities=["sklearn", "tensorflow", "python", "numpy"]),
                        model_doc("tf-model", (tmp_path_factory.mktemp("tf") / "absent").as_uri(),
                                  requirements=["tensorflow"], server=CLAIMER)])
        yield p
        _wind_down(p)


def _wind_down(p: Platform, timeout: float = 120.0) -> None:
    """Delete what the tests applied and let the provisioner stop every replica while the test still owns the
    time: stopping them at teardown (an MLServer that imported PyTorch exits slowly) can outlast the harness's
    20 s on a busy machine."""
    for kind, ns, name in (("Model", NS, "baseline-predictor"), ("Model", "default", "tf-model"),
                           ("Model", "default", "sk-on-claimer"), ("Server", "default", CLAIMER),
                           ("Server", NS, "mlserver")):
        with contextlib.suppress(NotFound):
            p.client.delete(kind, ns, name)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not [a for a in p.client.agents() if a["connected"]]:
            return
        time.sleep(0.5)


def test_pytorch_mlflow_model_served_from_s3_behind_the_seed_secret(platform: Platform,
                                                                    torch_seed: dict[str, Any]) -> None:
    st = platform.wait_model("baseline-predictor", NS, timeout=240)
    assert st["availableReplicas"] == 1
    out = platform.infer_served("baseline-predictor", IRIS_FP32, namespace=NS)
    tensor = out.body["outputs"][0]
    assert tensor["shape"] == [2, 3] and tensor["datatype"] == "FP32"
    assert predict_classes(tensor["data"]) == [0, 2]  # setosa, virginica: the trained network, not a stub
    server = platform.client.get("Server", NS, "mlserver")["status"]
    cond = next(c for c in server["conditions"] if c["type"] == "CapabilitiesAvailable")
    assert cond["status"] == "True", cond  # torch, mlflow, sklearn, xgboost claimed and importable
    assert torch_seed["secret_key"] not in str(st)


def test_a_claim_whose_runtime_is_absent_is_named_everywhere(platform: Platform, cli,  # type: ignore[no-untyped-def]
                                                             monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    claim = f"server {CLAIMER} claims tensorflow but its MLServer cannot import tensorflow"
    st = platform.wait_model("tf-model", state="ScheduleFailed", timeout=120)
    assert claim in st["message"], st["message"]
    assert [r["code"] for r in st["placement"]["reasons"]] == ["RuntimeNotImportable"]
    server = platform.wait_server(CLAIMER, ready_replicas=1, timeout=120)
    cond = next(c for c in server["conditions"] if c["type"] == "CapabilitiesAvailable")
    assert cond["status"] == "False" and cond["message"] == f"{claim} (not installed)"
    # a model that needs only what the server really has is still served there
    iris = train_sklearn(tmp_path / "iris")
    platform.client.apply([model_doc("sk-on-claimer", iris.as_uri(), requirements=["sklearn"], server=CLAIMER)])
    assert platform.wait_model("sk-on-claimer", timeout=120)["placement"]["server"] == CLAIMER
    assert platform.infer_served("sk-on-claimer", IRIS_INPUT).body["outputs"][0]["data"] == [0, 2]
    monkeypatch.setenv("BERTH_TOKEN", platform.control.admin_token or "")
    r = cli("describe", "server", CLAIMER, "--server", platform.control.url)
    assert r.code == 0, r.err
    assert claim in r.out and "tensorflow (tensorflow)" in r.out
    r = cli("doctor", "--server", platform.control.url, "--gateway", platform.gateway_url, "-o", "json")
    rows = [row for row in yaml.safe_load(r.out)["checks"] if row["check"] == "agent → runtimes"]
    by_target = {row["target"]: row for row in rows}
    bad = by_target[f"default/{CLAIMER}/0"]
    assert bad["result"] == "fail" and "claims tensorflow but its MLServer cannot import tensorflow" in bad["detail"]
