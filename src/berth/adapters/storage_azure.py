"""Azure Blob artifacts: ``az://CONTAINER/PATH`` and ``https://ACCOUNT.blob.core.windows.net/CONTAINER/PATH``.

``az://`` takes the storage account (and its blob endpoint) from the Secret; an ``https://`` URI names the
account itself, and a path-style URL (``http://127.0.0.1:10000/ACCOUNT/CONTAINER/PATH``, Azurite's) works when
the Secret holds Azure credentials.  Credentials come from :func:`berth.adapters.secrets.azure_access`: an
account key (also inside a connection string), a SAS token or URL, or none (public containers).

Every blob under ``PATH/`` is downloaded keeping its relative path (a single blob named ``PATH`` gives that one
file).  Failures are :class:`berth.errors.StorageError` naming the URI, the endpoint and where the credentials
came from, never a key or a SAS signature; request logs of the HTTP stack get ``sig=`` redacted too.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from berth.adapters import secrets
from berth.adapters.secrets import AzureAccess
from berth.adapters.storage import safe_relative
from berth.errors import StorageError
from berth.wire.agent import ModelSource

_HOST = re.compile(r"\.blob\.core\.(windows\.net|chinacloudapi\.cn|usgovcloudapi\.net)$", re.I)
_REJECTED = {"AuthenticationFailed", "AuthorizationFailure", "InvalidAuthenticationInfo",
             "NoAuthenticationInformation"}
_KEY_FIX = "fix the account key, connection string or SAS in the Secret (a SAS must allow read and list)"
_SIG = re.compile(r"(sig=)[^&\s\"']+", re.I)


class _RedactSig(logging.Filter):
    """Rewrites ``sig=...`` (a SAS signature) in records of the HTTP loggers to ``sig=REDACTED``."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a malformed record: leave it to the handler's own error reporting
            return True
        if "sig=" in text.lower():
            record.msg, record.args = _SIG.sub(r"\1REDACTED", text), ()
        return True


for _name in ("urllib3.connectionpool", "azure.core.pipeline.policies.http_logging_policy"):
    if not any(isinstance(f, _RedactSig) for f in logging.getLogger(_name).filters):
        logging.getLogger(_name).addFilter(_RedactSig())


def is_azure_url(uri: str) -> bool:
    """Whether an http(s) URI is an Azure Blob endpoint by its host name."""
    return bool(_HOST.search(urlsplit(uri).hostname or ""))


def _target(uri: str, scheme: str, rest: str, source: ModelSource) -> tuple[AzureAccess, str, str]:
    """(access, container, blob path) for the URI; the access carries the endpoint to use."""
    if scheme in ("http", "https"):
        base, _, query = uri.partition("?")
        endpoint, account, path = secrets.split_blob_url(base)
        access = secrets.azure_access(source)
        if access.account and account and access.account_key and access.account.lower() != account.lower():
            raise StorageError(f"cannot fetch {uri}: the URI names storage account {account} but the key from "
                               f"{access.origin} is for account {access.account}; fix storageUri or the Secret",
                               details={"uri": uri, "account": account})
        if not (access.account_key or access.sas) and query:
            access = AzureAccess(origin="the SAS in storageUri", sas=query)
        return dataclasses.replace(access, endpoint=endpoint, account=account), *_split(path)
    access = secrets.azure_access(source, remote=None if scheme == "az" else scheme)
    if access.endpoint is None:
        raise StorageError(
            f"cannot fetch {uri}: {scheme}:// names no storage account and {access.origin} gives none; set "
            "secretName on the Model to a Secret with AZURE_STORAGE_CONNECTION_STRING (or an azureblob rclone "
            "remote with account and key), or use https://ACCOUNT.blob.core.windows.net/CONTAINER/PATH",
            details={"uri": uri})
    return access, *_split(rest)


def _split(path: str) -> tuple[str, str]:
    container, _, key = path.lstrip("/").partition("/")
    return container, key


def _client(access: AzureAccess, container: str) -> Any:
    from azure.core.credentials import AzureNamedKeyCredential
    from azure.storage.blob import ContainerClient, LinearRetry

    credential: Any = None
    if access.account_key:
        credential = AzureNamedKeyCredential(access.account or "", access.account_key)
    elif access.sas:
        credential = access.sas
    retry = LinearRetry(backoff=1, retry_total=2, random_jitter_range=0)  # SDK default: 15 s, then 3^n
    return ContainerClient(account_url=access.endpoint or "", container_name=container, credential=credential,
                           retry_policy=retry, connection_timeout=5, read_timeout=60)


def list_artifact(client: Any, key: str) -> list[tuple[str, PurePosixPath]]:
    """(blob name, relative path) of the artifact: every blob under ``key/``, or the one blob named ``key``."""
    prefix = key if (key == "" or key.endswith("/")) else key + "/"
    found: list[tuple[str, PurePosixPath]] = []
    for blob in client.list_blobs(name_starts_with=prefix or None):
        rel = safe_relative(blob.name, prefix)
        if rel is not None:
            found.append((blob.name, rel))
    if not found and key and not key.endswith("/"):
        for page in client.list_blobs(name_starts_with=key, results_per_page=1).by_page():
            if any(b.name == key for b in page):
                found.append((key, PurePosixPath(PurePosixPath(key).name)))
            break
    return found


def fetch(uri: str, scheme: str, rest: str, dest: Path, source: ModelSource) -> Path:
    """Download the container/path named by ``uri`` into ``dest``."""
    access, container, key = _target(uri, scheme, rest, source)
    shown = f"az://{container}/{key}" if scheme not in ("http", "https") else f"{access.endpoint}/{container}/{key}"
    if not container:
        raise StorageError(f"cannot fetch {uri}: no container in the URI (expected az://CONTAINER/PATH or "
                           "https://ACCOUNT.blob.core.windows.net/CONTAINER/PATH)", details={"uri": uri})
    phase = "list"
    try:
        client = _client(access, container)
        blobs = list_artifact(client, key)
        if not blobs:
            raise StorageError(f"no objects under {shown} (container {container}, blob prefix {key}) at "
                               f"{access.endpoint}; check storageUri {uri}",
                               details={"uri": uri, "container": container, "prefix": key})
        phase = "download"
        for name, rel in blobs:
            target = dest.joinpath(*rel.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as out:
                client.download_blob(name, max_concurrency=2).readinto(out)
    except StorageError:
        raise
    except Exception as exc:  # azure-core's errors, and binascii/ValueError for a malformed key
        raise error(exc, uri, container, key, access, phase) from exc
    return dest


def error(exc: BaseException, uri: str, container: str, key: str, access: AzureAccess, phase: str) -> StorageError:
    """A StorageError for what the Azure SDK raised while listing or downloading ``uri``."""
    from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

    where = access.endpoint
    details = {"uri": uri, "container": container, "prefix": key, "endpoint": where}
    raw = str(getattr(exc, "message", None) or exc or type(exc).__name__)
    text = raw.strip().splitlines()[0] if raw.strip() else type(exc).__name__  # drop RequestId/Time lines
    for value in sorted(access.hidden(), key=len, reverse=True):
        text = text.replace(value, "<redacted>")
    text = _SIG.sub(r"\1REDACTED", text)

    def err(message: str) -> StorageError:
        return StorageError(f"cannot fetch {uri}: {message}", details=details)

    if isinstance(exc, HttpResponseError) and exc.status_code is not None:
        error_code = getattr(exc, "error_code", None)
        code = str(getattr(error_code, "value", error_code) or exc.status_code)
        details["code"] = code
        anonymous = not (access.account_key or access.sas)
        if exc.status_code in (401, 403) and anonymous:
            return err(f"{where} refused anonymous access to container {container}: {code}: {text}; the "
                       "container is not public: set secretName on the Model to a Secret with Azure credentials")
        if code in _REJECTED or exc.status_code == 401:
            return err(f"credentials ({access.kind}) from {access.origin} were rejected by {where}: {code}: "
                       f"{text}; {_KEY_FIX}")
        if exc.status_code == 403:
            return err(f"{where} denied access to container {container} (blob prefix {key}) for the credentials "
                       f"from {access.origin}: {code}: {text}; they need read and list permission")
        if code == "ContainerNotFound" or (exc.status_code == 404 and phase == "list"):
            return err(f"container {container} does not exist at {where}")
        if exc.status_code == 404:
            return err(f"a blob under {container}/{key} disappeared during the download from {where}: {text}")
        return err(f"{where} answered {code}: {text} (container {container}, blob prefix {key})")
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return err(f"Azure Blob endpoint {where} could not be reached: {text}")
    if isinstance(exc, ValueError):  # binascii.Error is one: the account key is not base64
        return err(f"the account key from {access.origin} is not valid: {text}; {_KEY_FIX}")
    return err(f"{type(exc).__name__} from {where}: {text} (container {container}, blob prefix {key})")
