"""gs:// and Azure Blob without a network: Secret forms, URI parsing, routing and error texts.

The end-to-end half (real downloads from emulators on loopback) is tests/e2e/test_storage_emulators.py.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from berth.adapters import secrets, storage, storage_azure, storage_gcs, storage_http
from berth.errors import StorageError
from berth.wire.agent import ModelSource

PRIVATE = ("-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDtopsecret\n"
           "-----END PRIVATE KEY-----\n")
KEY = {"type": "service_account", "project_id": "proj-1", "private_key_id": "kid-0123456789",
       "private_key": PRIVATE, "client_email": "sa@proj-1.iam.gserviceaccount.com",
       "token_uri": "http://127.0.0.1:1/token"}
ACCOUNT_KEY = "c2VjcmV0LWFjY291bnQta2V5LXZhbHVlLXRoYXQtbXVzdC1uZXZlci1zaG93"
SAS = "sv=2024-08-04&sr=c&sp=rl&se=2030-01-01T00%3A00%3A00Z&sig=TOPSECRETSIGNATURE%3D"


def _source(uri: str, secret: dict[str, str] | None, *, name: str | None = "ml-platform",
            error: str | None = None) -> ModelSource:
    return ModelSource(storage_uri=uri, secret_name=name, secret=secret, secret_error=error)


def _rclone(kind: str, params: dict[str, Any], name: str = "remote") -> str:
    import yaml

    return yaml.safe_dump({"type": kind, "name": name, "parameters": params})


# --- GCS credentials ------------------------------------------------------------------------------------------

def test_gcs_without_secret_is_anonymous() -> None:
    access = secrets.gcs_access(_source("gs://b/p", None, name=None))
    assert access.anonymous and access.endpoint is None and access.origin == "no secretName (anonymous access)"


def test_gcs_missing_secret_uses_the_s3_wording() -> None:
    why = "secret 'gcs-creds' not found in namespace ml; apply a v1 Secret named gcs-creds holding the credentials"
    with pytest.raises(StorageError) as info:
        secrets.gcs_access(_source("gs://b/p", None, name="gcs-creds", error=why))
    assert info.value.message == f"storage secret 'gcs-creds' for gs://b/p could not be used: {why}"


@pytest.mark.parametrize("key", ["gcs_credentials.json", "credentials.json", "anything"])
def test_gcs_service_account_json_under_any_key(key: str) -> None:
    access = secrets.gcs_access(_source("gs://b/p", {"note": "hello", key: json.dumps(KEY)}))
    assert access.info == KEY and access.project == "proj-1" and access.origin == f"secret ml-platform (key {key})"
    assert PRIVATE not in repr(access) and access.token_uri == "http://127.0.0.1:1/token"


def test_gcs_preferred_key_wins() -> None:
    other = dict(KEY, project_id="other")
    access = secrets.gcs_access(_source("gs://b/p", {"a.json": json.dumps(other), "credentials.json": json.dumps(KEY)}))
    assert access.project == "proj-1"


@pytest.mark.parametrize("kind", ["gcs", "google cloud storage"])
def test_gcs_rclone_remote(kind: str) -> None:
    secret = {"gcs": _rclone(kind, {"service_account_credentials": json.dumps(KEY), "endpoint": "127.0.0.1:9/"})}
    access = secrets.gcs_access(_source("gs://b/p", secret), remote="gs")
    assert access.info == KEY and access.remote == "remote" and access.endpoint == "https://127.0.0.1:9"


def test_gcs_rclone_credentials_as_a_yaml_mapping_and_anonymous() -> None:
    secret = {"gcs": _rclone("gcs", {"service_account_credentials": KEY})}
    assert secrets.gcs_access(_source("gs://b/p", secret)).info == KEY
    secret = {"gcs": _rclone("gcs", {"anonymous": "true", "endpoint": "http://127.0.0.1:9"})}
    access = secrets.gcs_access(_source("gs://b/p", secret))
    assert access.anonymous and access.endpoint == "http://127.0.0.1:9"


def test_gcs_remote_named_by_the_scheme_and_env_form() -> None:
    secret = {"one": _rclone("gcs", {"anonymous": True}, name="one"),
              "two": _rclone("gcs", {"service_account_credentials": json.dumps(KEY)}, name="two")}
    assert secrets.gcs_access(_source("two:b/p", secret), remote="two").remote == "two"
    assert secrets.gcs_access(_source("gs://b/p", secret), remote="gs").remote == "one"
    env = {"RCLONE_CONFIG_MYGCS_TYPE": "gcs", "RCLONE_CONFIG_MYGCS_SERVICE_ACCOUNT_CREDENTIALS": json.dumps(KEY),
           "RCLONE_CONFIG_MYGCS_ENDPOINT": "http://127.0.0.1:9"}
    access = secrets.gcs_access(_source("mygcs://b/p", env), remote="mygcs")
    assert access.info == KEY and access.endpoint == "http://127.0.0.1:9" and access.remote == "mygcs"


def test_gcs_unusable_secrets_name_keys_not_values() -> None:
    with pytest.raises(StorageError) as info:
        secrets.gcs_access(_source("gs://b/p", {"token": "hush-hush", "AWS_ACCESS_KEY_ID": "AKIA"}))
    assert "holds no usable Google Cloud Storage credentials" in info.value.message
    assert "(keys: AWS_ACCESS_KEY_ID, token)" in info.value.message and "hush-hush" not in info.value.message
    with pytest.raises(StorageError) as info:
        secrets.gcs_access(_source("gs://b/p", {"gcs": _rclone("gcs", {"service_account_credentials": "hush-hush"})}))
    assert "remote 'remote' in secret ml-platform has type 'gcs' but its parameters hold no service account" \
        in info.value.message and "hush-hush" not in info.value.message


def test_gcs_broken_key_file_is_named_without_its_values() -> None:
    broken = {k: v for k, v in KEY.items() if k != "client_email"}
    with pytest.raises(StorageError) as info:
        storage_gcs.make_client(secrets.gcs_access(_source("gs://b/p", {"k.json": json.dumps(broken)})))
    message = info.value.message
    assert "the service account key from secret ml-platform (key k.json) cannot be used" in message
    assert "client_email" in message and "topsecret" not in message


def test_gcs_refresh_error_text_is_scrubbed() -> None:
    from google.auth.exceptions import RefreshError

    access = secrets.gcs_access(_source("gs://b/p", {"k.json": json.dumps(KEY)}))
    exc = RefreshError(f"invalid_grant: bad key {PRIVATE} kid-0123456789", {})
    message = storage_gcs.error(exc, "gs://b/p", "b", "p", access, "list").message
    assert message.startswith("cannot fetch gs://b/p: credentials from secret ml-platform (key k.json) were "
                              "rejected by http://127.0.0.1:1/token: invalid_grant: bad key <redacted>")
    assert "topsecret" not in message and "kid-0123456789" not in message


# --- Azure credentials ----------------------------------------------------------------------------------------

def test_split_blob_url() -> None:
    assert secrets.split_blob_url("https://acct.blob.core.windows.net/c/a/b") == (
        "https://acct.blob.core.windows.net", "acct", "c/a/b")
    assert secrets.split_blob_url("http://127.0.0.1:10000/devstoreaccount1/c/a") == (
        "http://127.0.0.1:10000/devstoreaccount1", "devstoreaccount1", "c/a")
    assert secrets.split_blob_url("https://acct.blob.core.chinacloudapi.cn/c")[1] == "acct"


def test_azure_connection_strings() -> None:
    azurite = (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={ACCOUNT_KEY};"
               "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;")
    access = secrets.azure_access(_source("az://c/p", {"AZURE_STORAGE_CONNECTION_STRING": azurite}))
    assert (access.account, access.endpoint, access.account_key, access.kind) == (
        "devstoreaccount1", "http://127.0.0.1:10000/devstoreaccount1", ACCOUNT_KEY, "account key")
    assert ACCOUNT_KEY not in repr(access)
    public = f"DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={ACCOUNT_KEY};EndpointSuffix=core.windows.net"
    assert secrets.azure_access(_source("az://c/p", {"AZURE_STORAGE_CONNECTION_STRING": public})).endpoint == \
        "https://acct.blob.core.windows.net"
    sas = f"BlobEndpoint=https://acct.blob.core.windows.net/;SharedAccessSignature=?{SAS}"
    access = secrets.azure_access(_source("az://c/p", {"AZURE_STORAGE_CONNECTION_STRING": sas}))
    assert (access.account, access.sas, access.kind) == ("acct", SAS, "SAS token")
    dev = secrets.azure_access(_source("az://c/p", {"AZURE_STORAGE_CONNECTION_STRING": "UseDevelopmentStorage=true"}))
    assert dev.endpoint == "http://127.0.0.1:10000/devstoreaccount1" and dev.account_key == secrets.AZURITE_KEY


def test_azure_broken_connection_string_names_fields_not_values() -> None:
    with pytest.raises(StorageError) as info:
        secrets.azure_access(_source("az://c/p", {"AZURE_STORAGE_CONNECTION_STRING": "AccountName=acct;Junk=hush"}))
    assert "key AZURE_STORAGE_CONNECTION_STRING of secret ml-platform is not a usable Azure Storage connection " \
           "string (its fields: AccountName, Junk)" in info.value.message
    assert "hush" not in info.value.message


def test_azure_account_key_sas_token_and_sas_url() -> None:
    access = secrets.azure_access(_source("az://c/p", {"AZURE_STORAGE_ACCOUNT": "acct", "AZURE_STORAGE_KEY": "k"}))
    assert (access.endpoint, access.account_key) == ("https://acct.blob.core.windows.net", "k")
    access = secrets.azure_access(_source("az://c/p", {"AZURE_STORAGE_SAS_TOKEN": "?" + SAS,
                                                       "AZURE_STORAGE_BLOB_ENDPOINT": "http://127.0.0.1:1/dev"}))
    assert (access.endpoint, access.account, access.sas) == ("http://127.0.0.1:1/dev", "dev", SAS)
    access = secrets.azure_access(_source("az://c/p", {"AZURE_STORAGE_SAS_URL": f"https://acct.blob.core.windows."
                                                                                f"net/c?{SAS}"}))
    assert (access.endpoint, access.account, access.sas) == ("https://acct.blob.core.windows.net", "acct", SAS)
    assert "TOPSECRETSIGNATURE%3D" in access.hidden()


def test_azure_rclone_remotes() -> None:
    secret = {"az": _rclone("azureblob", {"account": "acct", "key": ACCOUNT_KEY})}
    access = secrets.azure_access(_source("az://c/p", secret))
    assert (access.endpoint, access.account_key, access.remote) == (
        "https://acct.blob.core.windows.net", ACCOUNT_KEY, "remote")
    emulator = secrets.azure_access(_source("az://c/p", {"az": _rclone("azureblob", {"use_emulator": True})}))
    assert emulator.endpoint == "http://127.0.0.1:10000/devstoreaccount1" and emulator.account == "devstoreaccount1"
    env = {"RCLONE_CONFIG_BLOBS_TYPE": "azureblob", "RCLONE_CONFIG_BLOBS_ACCOUNT": "acct",
           "RCLONE_CONFIG_BLOBS_KEY": ACCOUNT_KEY, "RCLONE_CONFIG_BLOBS_ENDPOINT": "http://127.0.0.1:1/acct"}
    access = secrets.azure_access(_source("blobs://c/p", env), remote="blobs")
    assert (access.account, access.endpoint, access.account_key) == ("acct", "http://127.0.0.1:1/acct", ACCOUNT_KEY)


def test_rclone_env_s3_keys_still_parse_with_the_new_parameters() -> None:
    env = {"RCLONE_CONFIG_MINIO_TYPE": "s3", "RCLONE_CONFIG_MINIO_ACCESS_KEY_ID": "id",
           "RCLONE_CONFIG_MINIO_SECRET_ACCESS_KEY": "sk", "RCLONE_CONFIG_MINIO_ENDPOINT": "http://127.0.0.1:9"}
    access = secrets.s3_access(_source("minio://b/p", env), remote="minio")
    assert (access.access_key_id, access.secret_access_key, access.endpoint) == ("id", "sk", "http://127.0.0.1:9")


def test_azure_unusable_secret_names_keys() -> None:
    with pytest.raises(StorageError) as info:
        secrets.azure_access(_source("az://c/p", {"AZURE_CLIENT_SECRET": "hush", "AZURE_STORAGE_ACCOUNT": "acct"}))
    assert "holds no usable Azure Blob Storage credentials for az://c/p (keys: AZURE_CLIENT_SECRET, " \
           "AZURE_STORAGE_ACCOUNT)" in info.value.message and "hush" not in info.value.message


def test_sas_signatures_are_redacted_from_http_logs(caplog: pytest.LogCaptureFixture,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # another library's logging.config call earlier in the run may have disabled the logger: enable it
    monkeypatch.setattr(logging.getLogger("urllib3.connectionpool"), "disabled", False)
    caplog.set_level(logging.DEBUG)
    # and may have set urllib3's level (kubernetes_asyncio's Configuration sets it to WARNING): this logger's own
    caplog.set_level(logging.DEBUG, logger="urllib3.connectionpool")
    logging.getLogger("urllib3.connectionpool").debug('%s "GET /c?restype=container&%s HTTP/1.1" 200', "http://h",
                                                      SAS)
    assert "TOPSECRETSIGNATURE" not in caplog.text  # another library may mark it first: sig=[REDACTED]
    assert "sig=REDACTED" in caplog.text or "sig=[REDACTED]" in caplog.text, caplog.text


# --- routing --------------------------------------------------------------------------------------------------

@pytest.fixture
def routes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    monkeypatch.setattr(storage_gcs, "fetch", lambda uri, rest, dest, access: seen.append(("gcs", rest)) or dest)
    monkeypatch.setattr(storage_azure, "fetch",
                        lambda uri, scheme, rest, dest, source: seen.append(("azure", rest)) or dest)
    monkeypatch.setattr(storage_http, "fetch_http", lambda uri, dest: seen.append(("http", uri)) or dest)
    monkeypatch.setattr(storage, "_fetch_s3", lambda uri, rest, dest, access: seen.append(("s3", rest)) or dest)
    return seen


def test_routing(routes: list[tuple[str, str]], tmp_path: Path) -> None:
    azure = {"AZURE_STORAGE_CONNECTION_STRING": f"AccountName=a;AccountKey={ACCOUNT_KEY}"}
    cases: list[tuple[str, dict[str, str] | None, tuple[str, str]]] = [
        ("gs://b/p", None, ("gcs", "b/p")),
        ("gcs:b/p", None, ("gcs", "b/p")),
        ("mine://b/p", {"mine": _rclone("gcs", {"anonymous": True}, name="mine")}, ("gcs", "b/p")),
        ("az://c/p", azure, ("azure", "c/p")),
        ("blobs://c/p", {"blobs": _rclone("azureblob", {"account": "a", "key": "k"}, name="blobs")}, ("azure", "c/p")),
        ("https://acct.blob.core.windows.net/c/p", None, ("azure", "acct.blob.core.windows.net/c/p")),
        ("http://127.0.0.1:1/devstoreaccount1/c/p", azure, ("azure", "127.0.0.1:1/devstoreaccount1/c/p")),
        ("https://example.org/model.joblib", None, ("http", "https://example.org/model.joblib")),
        ("s3://b/p", {"AWS_ACCESS_KEY_ID": "i", "AWS_SECRET_ACCESS_KEY": "s"}, ("s3", "b/p")),
    ]
    for uri, secret, expected in cases:
        routes.clear()
        storage.fetch(uri, tmp_path, _source(uri, secret, name="ml-platform" if secret else None))
        assert routes == [expected], uri


def test_unsupported_remote_type_and_scheme(tmp_path: Path) -> None:
    with pytest.raises(StorageError) as info:
        storage.fetch("box://d/p", tmp_path, _source("box://d/p", {"box": _rclone("sftp", {}, name="box")}))
    assert "remote 'box' in secret ml-platform has type 'sftp'; only s3, gcs and azureblob remotes are " \
           "supported" in info.value.message
    with pytest.raises(StorageError) as info:
        storage.fetch("ftp://h/p", tmp_path, _source("ftp://h/p", None, name=None))
    assert "unsupported scheme ftp://" in info.value.message and "gs://, az://" in info.value.message


def test_azure_targets(tmp_path: Path) -> None:
    with pytest.raises(StorageError) as info:
        storage.fetch("az://c/p", tmp_path, _source("az://c/p", None, name=None))
    assert "az:// names no storage account and no secretName (anonymous access) gives none" in info.value.message
    other = {"AZURE_STORAGE_CONNECTION_STRING": f"AccountName=other;AccountKey={ACCOUNT_KEY}"}
    uri = "https://acct.blob.core.windows.net/c/p"
    with pytest.raises(StorageError) as info:
        storage.fetch(uri, tmp_path, _source(uri, other))
    assert "the URI names storage account acct but the key from secret ml-platform (key " \
           "AZURE_STORAGE_CONNECTION_STRING) is for account other" in info.value.message
    access, container, key = storage_azure._target(f"{uri}?{SAS}", "https", "", _source(uri, None, name=None))
    assert (access.endpoint, access.sas, container, key) == ("https://acct.blob.core.windows.net", SAS, "c", "p")
    with pytest.raises(StorageError) as info:
        storage.fetch("gs://", tmp_path, _source("gs://", None, name=None))
    assert "no bucket in the URI (expected gs://BUCKET/PREFIX)" in info.value.message
