"""Artifact fetching against a real S3 API (moto in server mode on loopback), local paths and HTTP.

The moto server checks credentials (IAM auth switched on after setup), so wrong keys are really
rejected by the endpoint, as MinIO would.
"""

from __future__ import annotations

import http.server
import threading
from functools import partial
from pathlib import Path

import joblib
import pytest

from berth.adapters.mlserver_proc import free_port
from berth.adapters.storage import fetch, split_uri
from berth.errors import StorageError
from berth.wire.agent import ModelSource
from tests.support.models import IRIS_INPUT, train_sklearn
from tests.support.s3 import S3


def _source(uri: str, secret: dict[str, str] | None, *, name: str | None = "ml-platform",
            error: str | None = None) -> ModelSource:
    return ModelSource(storage_uri=uri, secret_name=name, secret=secret, secret_error=error)


def _fetch_error(uri: str, source: ModelSource, dest: Path) -> str:
    with pytest.raises(StorageError) as info:
        fetch(uri, dest, source)
    return info.value.message


def _assert_iris(dest: Path) -> None:
    assert sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()) == [
        "meta/info.txt", "model.joblib"]
    model = joblib.load(dest / "model.joblib")
    assert list(model.predict([IRIS_INPUT["inputs"][0]["data"][:4]])) == [0]


def test_split_uri() -> None:
    assert split_uri("s3://b/p/") == ("s3", "b/p/")
    assert split_uri("s3:b/p") == ("s3", "b/p")
    assert split_uri("/tmp/x") == ("", "/tmp/x")
    assert split_uri("file:///tmp/x") == ("file", "/tmp/x")


@pytest.mark.parametrize("uri", ["s3://models/iris/v1/", "s3://models/iris/v1", "s3:models/iris/v1"])
def test_fetch_with_seldon_rclone_secret(s3: S3, tmp_path: Path, uri: str) -> None:
    out = fetch(uri, tmp_path / "dest", _source(uri, s3.rclone_secret()))
    _assert_iris(out)


def test_fetch_with_plain_aws_secret(s3: S3, tmp_path: Path) -> None:
    uri = "s3://models/iris/v1/"
    _assert_iris(fetch(uri, tmp_path / "dest", _source(uri, s3.plain_secret())))


def test_fetch_with_rclone_env_secret_and_remote_named_by_the_uri(s3: S3, tmp_path: Path) -> None:
    uri = "minio://models/iris/v1"
    secret = {"RCLONE_CONFIG_MINIO_TYPE": "s3", "RCLONE_CONFIG_MINIO_PROVIDER": "Minio",
              "RCLONE_CONFIG_MINIO_ACCESS_KEY_ID": s3.key_id,
              "RCLONE_CONFIG_MINIO_SECRET_ACCESS_KEY": s3.secret,
              "RCLONE_CONFIG_MINIO_ENDPOINT": s3.endpoint}
    _assert_iris(fetch(uri, tmp_path / "dest", _source(uri, secret)))


def test_fetch_single_object(s3: S3, tmp_path: Path) -> None:
    uri = "s3://models/iris/v1/model.joblib"
    out = fetch(uri, tmp_path / "dest", _source(uri, s3.rclone_secret()))
    assert [p.name for p in out.iterdir()] == ["model.joblib"]


@pytest.mark.parametrize(("key_id", "secret", "code"), [
    ("AKIAWRONGWRONGWRONG1", None, "InvalidAccessKeyId"),
    (None, "not-the-secret-key-at-all", "SignatureDoesNotMatch"),
])
def test_wrong_credentials_are_named_without_their_values(s3: S3, tmp_path: Path, key_id: str | None,
                                                          secret: str | None, code: str) -> None:
    uri = "s3://models/iris/v1/"
    message = _fetch_error(uri, _source(uri, s3.rclone_secret(key_id=key_id, secret=secret)), tmp_path)
    assert f"credentials from secret ml-platform were rejected by {s3.endpoint}: {code}" in message
    for value in (s3.secret, "not-the-secret-key-at-all"):
        assert value not in message


def test_missing_secret(tmp_path: Path) -> None:
    uri = "s3://models/iris/v1/"
    message = _fetch_error(uri, _source(uri, None, error="secret ml-platform not found in namespace "
                                                          "financial-ml"), tmp_path)
    assert "storage secret 'ml-platform'" in message
    assert "not found in namespace financial-ml" in message
    message = _fetch_error(uri, _source(uri, None), tmp_path)
    assert "storage secret 'ml-platform' for s3://models/iris/v1/ could not be used: it was not found" in message


def test_secret_without_an_s3_remote(s3: S3, tmp_path: Path) -> None:
    uri = "s3://models/iris/v1/"
    secret = {"gcs": "type: gcs\nname: gcs\nparameters:\n  service_account_credentials: hush-hush\n",
              "note": "hello"}
    message = _fetch_error(uri, _source(uri, secret), tmp_path)
    assert "secret ml-platform holds no usable S3 credentials" in message
    assert "(keys: gcs, note)" in message and "hush-hush" not in message


def test_remote_of_another_type_is_named(tmp_path: Path) -> None:
    uri = "gcsremote://bucket/model"
    secret = {"gcsremote": "type: gcs\nparameters: {}\n"}
    message = _fetch_error(uri, _source(uri, secret), tmp_path)
    assert "remote 'gcsremote' in secret ml-platform has type 'gcs'" in message


def test_prefix_without_objects(s3: S3, tmp_path: Path) -> None:
    uri = "s3://models/nothing-here"
    message = _fetch_error(uri, _source(uri, s3.rclone_secret()), tmp_path)
    assert "no objects under s3://models/nothing-here (bucket models, key prefix nothing-here)" in message


def test_missing_bucket(s3: S3, tmp_path: Path) -> None:
    uri = "s3://no-such-bucket/iris/"
    message = _fetch_error(uri, _source(uri, s3.rclone_secret()), tmp_path)
    assert f"bucket no-such-bucket does not exist at {s3.endpoint}" in message


def test_unreachable_endpoint(s3: S3, tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    uri = "s3://models/iris/v1/"
    secret = s3.plain_secret() | {"AWS_ENDPOINT_URL": closed}
    message = _fetch_error(uri, _source(uri, secret), tmp_path)
    assert f"S3 endpoint {closed} (from secret ml-platform) could not be reached" in message


def test_local_folder_file_and_missing_path(tmp_path: Path) -> None:
    model = train_sklearn(tmp_path / "iris")
    (model / "sub").mkdir()
    (model / "sub" / "extra.txt").write_text("x")
    out = fetch(str(model), tmp_path / "a", _source(str(model), None, name=None))
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [
        "model.joblib", "sub/extra.txt"]
    uri = f"file://{model / 'model.joblib'}"
    assert [p.name for p in fetch(uri, tmp_path / "b", _source(uri, None, name=None)).iterdir()] == [
        "model.joblib"]
    missing = f"file://{tmp_path / 'nope'}"
    message = _fetch_error(missing, _source(missing, None, name=None), tmp_path / "c")
    assert f"{tmp_path / 'nope'} does not exist on the agent's host" in message


def test_a_local_path_refused_or_absent_leaves_no_folder(tmp_path: Path) -> None:
    """A failed local fetch creates nothing the agent has to remove again (1,000 failing loads made and removed
    1,000 folders: half of the agent's CPU in bench/responsiveness.py)."""
    for uri in (f"file://{tmp_path / 'nope'}", str(tmp_path / "nope"), "/dev/zero", "file:///proc/self/environ"):
        dest = tmp_path / "models" / "m" / "1"
        _fetch_error(uri, _source(uri, None, name=None), dest)
        assert not (tmp_path / "models").exists(), uri


def test_gs_with_a_missing_secret_says_so_before_any_connection(tmp_path: Path) -> None:
    uri = "gs://seldon-models/sklearn/iris"
    source = _source(uri, None, error="secret 'ml-platform' not found in namespace financial-ml")
    message = _fetch_error(uri, source, tmp_path)
    assert message.startswith(f"storage secret 'ml-platform' for {uri} could not be used: "), message


def test_http_single_file(tmp_path: Path) -> None:
    served = tmp_path / "served"
    train_sklearn(served)
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        out = fetch(f"{base}/model.joblib", tmp_path / "dest", _source(f"{base}/model.joblib", None, name=None))
        assert (out / "model.joblib").read_bytes() == (served / "model.joblib").read_bytes()
        missing = f"{base}/absent.joblib"
        assert "the server answered HTTP 404" in _fetch_error(missing, _source(missing, None, name=None),
                                                              tmp_path / "x")
    finally:
        httpd.shutdown()
        httpd.server_close()
