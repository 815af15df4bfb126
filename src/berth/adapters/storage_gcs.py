"""``gs://BUCKET/PREFIX`` artifacts through the Google Cloud Storage client.

Credentials come from :func:`berth.adapters.secrets.gcs_access`: anonymous without a secretName (public
buckets), else the Secret's service account key.  The endpoint is the rclone remote's ``endpoint`` when it sets
one, else ``$STORAGE_EMULATOR_HOST`` (which the client honours; emulators and tests), else Google's.  The
project is always given, so the client never asks the environment (or a metadata server) for one.

Every object under ``PREFIX/`` is downloaded keeping its relative path (a single object named ``PREFIX`` gives
that one file).  Failures are :class:`berth.errors.StorageError` naming the URI, the endpoint (the token
endpoint when a key is rejected) and where the credentials came from; key material is scrubbed from any text
the libraries return.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath
from typing import Any

from berth.adapters.secrets import GcsAccess
from berth.adapters.storage import safe_relative
from berth.errors import StorageError

_SCOPE = "https://www.googleapis.com/auth/devstorage.read_only"
_TIMEOUT = (5.0, 60.0)  # connect, read
_RETRY_SECONDS = 10.0  # transient errors (429, 5xx, connection) are retried this long per call
_KEY_FIX = "fix the service account key in the Secret (a deleted or rotated key is rejected this way)"


def endpoint_text(access: GcsAccess) -> str:
    return access.endpoint or os.environ.get("STORAGE_EMULATOR_HOST") or "https://storage.googleapis.com"


def scrub(text: str, hidden: list[str]) -> str:
    for value in sorted(hidden, key=len, reverse=True):
        if len(value) >= 4:
            text = text.replace(value, "<redacted>")
    return text


def make_client(access: GcsAccess) -> Any:
    from google.auth import credentials as auth_credentials
    from google.cloud import storage
    from google.oauth2 import service_account

    anonymous: Any = auth_credentials.AnonymousCredentials  # google-auth's calls are untyped for mypy
    keyfile: Any = service_account.Credentials
    credentials: Any
    if access.info is None:
        credentials = anonymous()
    else:
        try:
            credentials = keyfile.from_service_account_info(access.info, scopes=[_SCOPE])
        except (ValueError, KeyError, TypeError) as exc:
            raise StorageError(f"the service account key from {access.origin} cannot be used: "
                               f"{scrub(str(exc), access.hidden())}; put the JSON key file Google issued for "
                               "the service account in the Secret, unchanged", details={"origin": access.origin}
                               ) from None
    options = {"api_endpoint": access.endpoint} if access.endpoint else None
    return storage.Client(project=access.project or "<none>", credentials=credentials, client_options=options)


def _retry() -> Any:
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY.with_deadline(_RETRY_SECONDS)


def list_artifact(client: Any, bucket: str, key: str) -> list[tuple[Any, PurePosixPath]]:
    """(blob, relative path) of the artifact: every object under ``key/``, or the one object named ``key``."""
    prefix = key if (key == "" or key.endswith("/")) else key + "/"
    found: list[tuple[Any, PurePosixPath]] = []
    for blob in client.list_blobs(bucket, prefix=prefix, timeout=_TIMEOUT, retry=_retry()):
        rel = safe_relative(blob.name, prefix)
        if rel is not None:
            found.append((blob, rel))
    if not found and key and not key.endswith("/"):
        for blob in client.list_blobs(bucket, prefix=key, max_results=1, timeout=_TIMEOUT, retry=_retry()):
            if blob.name == key:
                found.append((blob, PurePosixPath(PurePosixPath(key).name)))
    return found


def fetch(uri: str, rest: str, dest: Path, access: GcsAccess) -> Path:
    """Download ``gs://`` + ``rest`` (``BUCKET/PREFIX``) into ``dest``."""
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"cannot fetch {uri}: no bucket in the URI (expected gs://BUCKET/PREFIX)",
                           details={"uri": uri})
    where = endpoint_text(access)
    phase = "list"
    try:
        client = make_client(access)
        blobs = list_artifact(client, bucket, key)
        if not blobs:
            raise StorageError(f"no objects under gs://{bucket}/{key} (bucket {bucket}, object prefix {key}) "
                               f"at {where}; check storageUri {uri}",
                               details={"uri": uri, "bucket": bucket, "prefix": key})
        phase = "download"
        for blob, rel in blobs:
            target = dest.joinpath(*rel.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            blob.download_to_filename(str(target), timeout=_TIMEOUT, retry=_retry())
    except StorageError:
        raise
    except Exception as exc:  # the google libraries raise several unrelated trees; all become StorageError
        raise error(exc, uri, bucket, key, access, phase) from exc
    return dest


def error(exc: BaseException, uri: str, bucket: str, key: str, access: GcsAccess, phase: str) -> StorageError:
    """A StorageError for what the google client raised while listing or downloading ``uri``."""
    from google.api_core import exceptions as api
    from google.auth import exceptions as auth

    if isinstance(exc, api.RetryError) and exc.cause is not None:
        exc = exc.cause
    where = endpoint_text(access)
    details = {"uri": uri, "bucket": bucket, "prefix": key, "endpoint": where}
    text = str(exc.args[0]) if isinstance(exc, auth.GoogleAuthError) and exc.args else str(
        getattr(exc, "message", None) or exc or type(exc).__name__)
    text = scrub(text, access.hidden())

    def err(message: str) -> StorageError:
        return StorageError(f"cannot fetch {uri}: {message}", details=details)

    if isinstance(exc, auth.RefreshError):
        return err(f"credentials from {access.origin} were rejected by {access.token_uri}: {text}; {_KEY_FIX}")
    if isinstance(exc, auth.TransportError):
        return err(f"the token endpoint {access.token_uri} (from {access.origin}) could not be reached: {text}")
    if isinstance(exc, auth.InvalidOperation) and access.anonymous:  # a 401 made the client try to refresh
        return err(f"{where} refused anonymous access to bucket {bucket} (HTTP 401); the bucket is not public: "
                   "set secretName on the Model to a Secret holding a service account key")
    if isinstance(exc, api.Unauthorized):
        if access.anonymous:
            return err(f"{where} refused anonymous access to bucket {bucket}: {text}; the bucket is not public: "
                       "set secretName on the Model to a Secret holding a service account key")
        return err(f"credentials from {access.origin} were rejected by {where}: 401: {text}; {_KEY_FIX}")
    if isinstance(exc, api.Forbidden):
        who = "anonymous callers" if access.anonymous else f"the credentials from {access.origin}"
        return err(f"{where} denied access to bucket {bucket} (object prefix {key}) for {who}: {text}; grant "
                   "storage.objects.list and storage.objects.get (roles/storage.objectViewer) on the bucket")
    if isinstance(exc, api.NotFound):
        if phase == "list":
            return err(f"bucket {bucket} does not exist at {where}")
        return err(f"an object under gs://{bucket}/{key} disappeared during the download from {where}: {text}")
    if isinstance(exc, api.GoogleAPICallError):
        return err(f"{where} answered {exc.code}: {text} (bucket {bucket}, object prefix {key})")
    if _unreachable(exc):
        origin = f" (the endpoint is from {access.origin})" if access.endpoint else ""
        return err(f"GCS endpoint {where} could not be reached{origin}: {text}")
    return err(f"{type(exc).__name__} from {where}: {text} (bucket {bucket}, object prefix {key})")


def _unreachable(exc: BaseException) -> bool:
    import requests

    return isinstance(exc, requests.exceptions.ConnectionError | requests.exceptions.Timeout | ConnectionError |
                      TimeoutError)
