"""gs:// and Azure Blob end to end against emulators on loopback, through the agent's real fetcher.

GCS: gcp-storage-emulator behind a token gate that checks service-account signatures (tests/support/emulators.py);
Azure: Azurite, which checks shared-key and SAS signatures itself.  Each scheme: a trained model uploaded and
fetched byte-identical with each Secret form, then the three errors S3 also names (missing Secret, wrong
credentials, missing object).  Last, a gs:// model in Seldon's rclone Secret form goes through a real control
plane, agent and MLServer to ModelAvailable and answers an inference.  A guard refuses every connection from
this process to anything but loopback, so nothing here can reach Google or Azure.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from berth.adapters import storage_gcs
from berth.adapters.storage import fetch
from berth.errors import StorageError
from berth.wire.agent import ModelSource
from tests.support.emulators import (
    AZURITE_KEY,
    Azurite,
    Gcs,
    azurite,
    gcs_emulator,
    guard_loopback,
    require_azurite,
    same_files,
)
from tests.support.models import IRIS_INPUT, train_sklearn
from tests.support.platform import Platform, model_doc, server_doc

pytestmark = pytest.mark.e2e
NS = "financial-ml"
MISSING = f"secret 'ml-platform' not found in namespace {NS}; apply a v1 Secret named ml-platform holding the " \
          "storage credentials"  # what the control plane sends the agent for a missing Secret
WRONG_KEY = "V3JvbmdXcm9uZ1dyb25nV3JvbmdXcm9uZ1dyb25nV3JvbmdXcm9uZ1dyb25nV3JvbmdXcm9uZ1dyb25nV3Jvbmc9PQ=="


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    attempts = guard_loopback(monkeypatch)
    yield
    assert not attempts, f"the test tried to connect beyond loopback: {attempts}"


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = train_sklearn(tmp_path_factory.mktemp("trained") / "iris")
    (folder / "meta").mkdir()
    (folder / "meta" / "info.txt").write_text("trained by the test\n")
    return folder


@pytest.fixture(scope="module")
def gcs(model: Path) -> Iterator[Gcs]:
    with gcs_emulator() as g:
        g.upload("models", model, "iris/v1/")
        g.upload("models", model, "iris/v1-other/")  # shares the prefix text, not the folder: never fetched
        g.upload("public-models", model, "iris/v1/")
        g.make_public("public-models")
        yield g


@pytest.fixture(scope="module")
def az(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Azurite]:
    binary = require_azurite()
    with azurite(tmp_path_factory.mktemp("azurite"), binary) as a:
        a.upload("models", model, "iris/v1/")
        a.upload("models", model, "iris/v1-other/")
        yield a


def _source(uri: str, secret: dict[str, str] | None, *, name: str | None = "ml-platform",
            error: str | None = None) -> ModelSource:
    return ModelSource(storage_uri=uri, secret_name=name, secret=secret, secret_error=error)


def _fetched(uri: str, secret: dict[str, str] | None, dest: Path, *, name: str | None = "ml-platform") -> Path:
    return fetch(uri, dest, _source(uri, secret, name=name))


def _error(uri: str, source: ModelSource, dest: Path) -> str:
    with pytest.raises(StorageError) as info:
        fetch(uri, dest, source)
    return info.value.message


# --- gs:// ----------------------------------------------------------------------------------------------------

def test_gcs_service_account_key_secret(gcs: Gcs, model: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.endpoint)  # the client's own override, as for fake-gcs
    secret = {"gcs_credentials.json": json.dumps(gcs.service_account())}
    for i, uri in enumerate(("gs://models/iris/v1", "gs://models/iris/v1/")):
        assert same_files(model, _fetched(uri, secret, tmp_path / str(i)))


def test_gcs_rclone_secret_and_single_object(gcs: Gcs, model: Path, tmp_path: Path) -> None:
    secret = gcs.rclone_secret(gcs.service_account())  # endpoint in the remote; no environment needed
    assert same_files(model, _fetched("gcs:models/iris/v1", secret, tmp_path / "all"))
    one = _fetched("gs://models/iris/v1/model.joblib", secret, tmp_path / "one")
    assert [p.name for p in one.iterdir()] == ["model.joblib"]
    assert (one / "model.joblib").read_bytes() == (model / "model.joblib").read_bytes()


def test_gcs_anonymous_reads_public_buckets_only(gcs: Gcs, model: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.endpoint)
    assert same_files(model, _fetched("gs://public-models/iris/v1", None, tmp_path / "pub", name=None))
    message = _error("gs://models/iris/v1", _source("gs://models/iris/v1", None, name=None), tmp_path / "x")
    assert f"{gcs.endpoint} refused anonymous access to bucket models" in message
    assert "set secretName on the Model" in message


def test_gcs_missing_secret(tmp_path: Path) -> None:
    uri = "gs://models/iris/v1"
    message = _error(uri, _source(uri, None, error=MISSING), tmp_path)
    assert message == f"storage secret 'ml-platform' for {uri} could not be used: {MISSING}"


def test_gcs_wrong_credentials(gcs: Gcs, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    unknown = gcs.service_account(registered=False)  # well formed, but not a key Google issued
    for secret, origin in (({"credentials.json": json.dumps(unknown)}, "secret ml-platform (key credentials.json)"),
                           (gcs.rclone_secret(unknown), "secret ml-platform (remote gcs)")):
        message = _error("gs://models/iris/v1", _source("gs://models/iris/v1", secret), tmp_path)
        assert f"credentials from {origin} were rejected by {gcs.token_uri}: invalid_grant: Invalid JWT " \
               "Signature." in message
        for value in (unknown["private_key"], unknown["private_key_id"]):
            assert value not in message and value not in caplog.text


def test_gcs_missing_object_and_bucket(gcs: Gcs, tmp_path: Path) -> None:
    secret = gcs.rclone_secret(gcs.service_account())
    message = _error("gs://models/iris/v9", _source("gs://models/iris/v9", secret), tmp_path)
    assert message == (f"no objects under gs://models/iris/v9 (bucket models, object prefix iris/v9) at "
                       f"{gcs.endpoint}; check storageUri gs://models/iris/v9")
    message = _error("gs://no-such-bucket/iris", _source("gs://no-such-bucket/iris", secret), tmp_path)
    assert f"bucket no-such-bucket does not exist at {gcs.endpoint}" in message


def test_gcs_unreachable_endpoint(gcs: Gcs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from berth.adapters.mlserver_proc import free_port

    monkeypatch.setattr(storage_gcs, "_RETRY_SECONDS", 0.5)
    closed = f"http://127.0.0.1:{free_port()}"
    secret = {"gcs": f"type: gcs\nparameters:\n  anonymous: true\n  endpoint: {closed}\n"}
    message = _error("gs://models/iris/v1", _source("gs://models/iris/v1", secret), tmp_path)
    assert f"GCS endpoint {closed} could not be reached (the endpoint is from secret ml-platform" in message


# --- Azure Blob -----------------------------------------------------------------------------------------------

def test_azure_connection_string(az: Azurite, model: Path, tmp_path: Path) -> None:
    secret = {"AZURE_STORAGE_CONNECTION_STRING": az.connection_string()}
    assert same_files(model, _fetched("az://models/iris/v1", secret, tmp_path / "az"))
    # the blob URL form (path-style, as Azurite serves it) with the same Secret
    assert same_files(model, _fetched(f"{az.endpoint}/models/iris/v1/", secret, tmp_path / "url"))
    one = _fetched("az://models/iris/v1/model.joblib", secret, tmp_path / "one")
    assert [p.name for p in one.iterdir()] == ["model.joblib"]


def test_azure_rclone_remote_and_sas(az: Azurite, model: Path, tmp_path: Path,
                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    rclone = {"azure": f"type: azureblob\nname: azure\nparameters:\n  account: devstoreaccount1\n"
                       f"  key: {AZURITE_KEY}\n  endpoint: {az.endpoint}\n"}
    assert same_files(model, _fetched("azure://models/iris/v1", rclone, tmp_path / "rclone"))
    sas = az.container_sas("models")
    sas_url = {"AZURE_STORAGE_SAS_URL": f"{az.endpoint}/models?{sas}"}
    assert same_files(model, _fetched("az://models/iris/v1", sas_url, tmp_path / "sas-url"))
    token = {"AZURE_STORAGE_SAS_TOKEN": sas, "AZURE_STORAGE_BLOB_ENDPOINT": az.endpoint}
    assert same_files(model, _fetched("az://models/iris/v1", token, tmp_path / "sas-token"))
    signature = sas.split("sig=")[1].split("&")[0]
    assert signature not in caplog.text


def test_azure_missing_secret(tmp_path: Path) -> None:
    uri = "az://models/iris/v1"
    message = _error(uri, _source(uri, None, error=MISSING), tmp_path)
    assert message == f"storage secret 'ml-platform' for {uri} could not be used: {MISSING}"


def test_azure_wrong_credentials(az: Azurite, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    uri = "az://models/iris/v1"
    wrong_sas = az.container_sas("models", key=WRONG_KEY)
    cases = [({"AZURE_STORAGE_CONNECTION_STRING": az.connection_string(WRONG_KEY)},
              "(account key) from secret ml-platform (key AZURE_STORAGE_CONNECTION_STRING)"),
             ({"AZURE_STORAGE_SAS_URL": f"{az.endpoint}/models?{wrong_sas}"},
              "(SAS token) from secret ml-platform (key AZURE_STORAGE_SAS_URL)")]
    for secret, origin in cases:
        message = _error(uri, _source(uri, secret), tmp_path)
        assert f"cannot fetch {uri}: credentials {origin} were rejected by {az.endpoint}: " in message
        assert "Authori" in message or "Authenti" in message
        for value in (WRONG_KEY, wrong_sas.split("sig=")[1].split("&")[0]):
            assert value not in message and value not in caplog.text


def test_azure_missing_object_and_container(az: Azurite, tmp_path: Path) -> None:
    secret = {"AZURE_STORAGE_CONNECTION_STRING": az.connection_string()}
    message = _error("az://models/iris/v9", _source("az://models/iris/v9", secret), tmp_path)
    assert message == (f"no objects under az://models/iris/v9 (container models, blob prefix iris/v9) at "
                       f"{az.endpoint}; check storageUri az://models/iris/v9")
    message = _error("az://no-such-container/iris", _source("az://no-such-container/iris", secret), tmp_path)
    assert f"container no-such-container does not exist at {az.endpoint}" in message


# --- the whole path: control plane, agent, MLServer -----------------------------------------------------------

def _secret_doc(name: str, data: dict[str, str]) -> dict[str, object]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS}, "stringData": data}


def test_gcs_model_through_the_platform(gcs: Gcs, tmp_path: Path) -> None:
    key = gcs.service_account()
    with Platform(tmp_path / "berth") as p:
        p.client.apply([
            server_doc("mlserver", namespace=NS),
            _secret_doc("gcs-models", gcs.rclone_secret(key)),
            model_doc("iris-gcs", "gs://models/iris/v1", namespace=NS, secretName="gcs-models"),
            model_doc("iris-nosecret", "gs://models/iris/v1", namespace=NS, secretName="absent"),
        ])
        p.wait_model("iris-gcs", NS, timeout=90)
        out = p.infer_served("iris-gcs", IRIS_INPUT, namespace=NS)
        assert out.body["outputs"][0]["data"] == [0, 2]
        st = p.wait_model("iris-nosecret", NS, state="LoadFailed", timeout=30)
        assert "storage secret 'absent' for gs://models/iris/v1 could not be used" in st["message"]
        assert "not found in namespace" in st["message"]
        logs = "".join(f.read_text(errors="replace") for f in (tmp_path / "berth").rglob("*.log"))
        assert key["private_key_id"] not in logs and key["private_key"].splitlines()[1] not in logs
