"""What a Model's storageUri and Secret point at, for the storage policy (``berth.resources.policy``).

No I/O: the URI is split and the Secret's values read the way :mod:`berth.adapters.storage` will read them,
so the policy judges the endpoint the agent would really use.  ``secret_endpoints`` lists every endpoint a
Secret names, so a Secret is judged when it is applied too (a Model may name it later).
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from berth.adapters import secrets
from berth.adapters.storage import split_uri
from berth.errors import StorageError
from berth.resources.policy import Target
from berth.wire.agent import ModelSource


def describe(source: ModelSource) -> Target:
    """The target of ``source`` (an unusable Secret leaves the endpoint unknown: None)."""
    uri = source.storage_uri.strip()
    has_secret = bool(source.secret_name)
    scheme, rest = split_uri(uri)
    if scheme in ("", "file"):
        path = unquote(urlsplit(uri).path) if scheme == "file" else uri
        return Target(uri, "file", path=path, secret=has_secret)
    if scheme in ("http", "https"):
        return Target(uri, scheme, host=_host(uri), secret=has_secret)
    remote = secrets.remote_type(source, scheme)
    bucket = rest.split("/", 1)[0] or None
    try:
        if scheme in ("gs", "gcs") or remote == "gcs":
            return Target(uri, "gs", bucket=bucket, endpoint=secrets.gcs_access(source, remote=scheme).endpoint,
                          secret=has_secret)
        if scheme == "az" or remote == "azureblob":
            return Target(uri, "az", bucket=bucket, endpoint=secrets.azure_access(source, remote=scheme).endpoint,
                          secret=has_secret)
        if scheme == "s3" or remote is not None:
            endpoint = secrets.s3_access(source, remote=scheme).endpoint if source.secret is not None else None
            return Target(uri, "s3", bucket=bucket, endpoint=endpoint, secret=has_secret)
    except StorageError:  # the Secret is missing or unusable: the agent will say so; the policy judges the rest
        return Target(uri, "s3" if scheme == "s3" else scheme, bucket=bucket, secret=has_secret)
    return Target(uri, scheme, secret=has_secret)


def secret_endpoints(data: dict[str, str]) -> list[tuple[str, str]]:
    """``(scheme, endpoint URL)`` of every storage endpoint a Secret's values name (s3, gs, az)."""
    found: list[tuple[str, str]] = []
    for key in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        if data.get(key):
            found.append(("s3", data[key].strip()))
    for entry in secrets._rclone_remotes(data).values():
        endpoint = (entry.get("parameters") or {}).get("endpoint")
        if endpoint:
            kind = secrets._kind(entry)
            found.append(({"gcs": "gs", "azureblob": "az"}.get(kind, kind), str(endpoint).strip()))
    if data.get("AZURE_STORAGE_BLOB_ENDPOINT"):
        found.append(("az", data["AZURE_STORAGE_BLOB_ENDPOINT"].strip()))
    conn = data.get("AZURE_STORAGE_CONNECTION_STRING")
    if conn:
        fields = {k.lower(): v for k, v in secrets.parse_connection_string(conn).items()}
        blob = fields.get("blobendpoint")
        if blob:
            found.append(("az", blob.strip()))
    if data.get("AZURE_STORAGE_SAS_URL"):
        found.append(("az", data["AZURE_STORAGE_SAS_URL"].split("?")[0].strip()))
    return found


def _host(uri: str) -> str | None:
    try:
        return urlsplit(uri).hostname
    except ValueError:
        return None
