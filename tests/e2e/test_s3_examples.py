"""The financial-ml seeds served from S3 behind their Secret (moto on loopback), unchanged but for the
Secret's endpoint and keys; wrong keys and a missing secret become LoadFailed naming the cause."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from berth.resources.manifest import load_paths
from tests.support.models import IRIS_INPUT, train_mlflow
from tests.support.platform import Platform
from tests.support.s3 import enforce_auth, moto_server, user_with_keys

pytestmark = pytest.mark.e2e
NS = "financial-ml"


@pytest.fixture(scope="module")
def s3_seeds(tmp_path_factory: pytest.TempPathFactory, examples: Path) -> Iterator[dict[str, Any]]:
    """Upload two MLflow models to the examples' exact s3:// paths; yield their docs and the endpoint."""
    docs = [d.body for d in load_paths([str(examples / "financial-ml")]).documents]
    with moto_server() as (endpoint, admin):
        key_id, secret_key = user_with_keys(admin)
        s3 = boto3.client("s3", **admin)
        root = tmp_path_factory.mktemp("trained")
        buckets: set[str] = set()
        for i, doc in enumerate(d for d in docs if d["kind"] == "Model"):
            folder = train_mlflow(root / doc["metadata"]["name"], c=1.0 / (i + 1))
            bucket, _, prefix = doc["spec"]["storageUri"].removeprefix("s3://").partition("/")
            if bucket not in buckets:
                s3.create_bucket(Bucket=bucket)
                buckets.add(bucket)
            for f in folder.rglob("*"):
                if f.is_file():
                    s3.upload_file(str(f), bucket, prefix + f.relative_to(folder).as_posix())
        enforce_auth(endpoint)
        yield {"docs": docs, "endpoint": endpoint, "key_id": key_id, "secret": secret_key}


def _secret(base: dict[str, Any], endpoint: str, key_id: str, secret_key: str) -> dict[str, Any]:
    doc = copy.deepcopy(base)
    remote = yaml.safe_load(doc["stringData"]["s3"])
    remote["parameters"].update(endpoint=endpoint, access_key_id=key_id, secret_access_key=secret_key)
    doc["stringData"]["s3"] = yaml.safe_dump(remote)
    return doc


def test_financial_seeds_from_s3(s3_seeds: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                 cli) -> None:
    caplog.set_level(logging.DEBUG)
    docs = s3_seeds["docs"]
    secret = next(d for d in docs if d["kind"] == "Secret")
    ready = [_secret(secret, s3_seeds["endpoint"], s3_seeds["key_id"], s3_seeds["secret"]) if d is secret else d
             for d in docs]
    with Platform(tmp_path / "berth") as p:
        p.client.apply(ready)
        for name in ("baseline-predictor", "enhanced-predictor"):
            p.wait_model(name, NS, timeout=120)
        out = p.infer_served("baseline-predictor", IRIS_INPUT, namespace=NS)
        assert out.body["outputs"][0]["data"] == [0, 2]
        assert p.client.get("Server", NS, "mlserver")["status"]["loadedModels"] == 2
        # wrong keys: the model names the secret and the rejection, never the key
        wrong = _secret(secret, s3_seeds["endpoint"], s3_seeds["key_id"], "not-the-key")
        wrong["metadata"]["name"] = "wrong-keys"
        model = copy.deepcopy(next(d for d in docs if d["metadata"]["name"] == "baseline-predictor"))
        model["metadata"]["name"] = "wrong-keys-model"
        model["spec"]["secretName"] = "wrong-keys"
        missing = copy.deepcopy(model)
        missing["metadata"]["name"] = "no-secret-model"
        missing["spec"]["secretName"] = "not-there"
        p.client.apply([wrong, model, missing])
        st = p.wait_model("wrong-keys-model", NS, state="LoadFailed", timeout=60)
        assert "wrong-keys" in st["message"] and "not-the-key" not in st["message"]
        assert "SignatureDoesNotMatch" in st["message"] or "rejected" in st["message"]
        st = p.wait_model("no-secret-model", NS, state="LoadFailed", timeout=60)
        assert "not-there" in st["message"] and "not found" in st["message"]
        # the secret's values never show in any status, CLI output or log
        secret_values = (s3_seeds["secret"], "not-the-key")
        shown = [str(p.client.list(kind, NS)) for kind in ("Model", "Server", "Experiment", "Secret")]
        for args in (("get", "secrets", "-n", NS, "-o", "yaml"), ("get", "all", "-n", NS, "-o", "json"),
                     ("describe", "model", "wrong-keys-model", "-n", NS)):
            r = cli("--server", p.control.url, *args)
            shown += [r.out, r.err]
        data = tmp_path / "berth"
        logs = sorted(data.rglob("*.log"))
        assert len(logs) >= 2, f"expected the agent's and MLServer's logs under {data}, found {logs}"
        shown += [f.read_text(errors="replace") for f in logs]
        shown.append(caplog.text)
        for text in shown:
            for value in secret_values:
                assert value not in text
