"""Fetch a model artifact to a local folder: paths, file://, s3:// (boto3), gs://, Azure Blob, http(s)://.

``fetch`` is blocking (the agent runs it in a thread) and always leaves the artifact's files in ``dest``,
keeping relative paths.  gs:// lives in :mod:`berth.adapters.storage_gcs` and Azure Blob in
:mod:`berth.adapters.storage_azure`, both imported on first use.  Every failure is a
:class:`berth.errors.StorageError` that names the URI and what went wrong where (secret, endpoint, bucket,
key) — never a secret value.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

from berth.adapters import secrets
from berth.errors import StorageError
from berth.resources.policy import DEVICE_ROOTS, address_problem, host_problem
from berth.wire.agent import ModelSource

MAX_LOCAL_ENTRIES = 100_000  # files and folders copied from one local artifact
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-_]*):(//)?(.*)$", re.S)


def split_uri(uri: str) -> tuple[str, str]:
    """``(scheme, rest)``: ``s3://b/p`` and rclone's ``s3:b/p`` give ``("s3", "b/p")``; paths ``""``."""
    m = _SCHEME.match(uri)
    if not m or (len(m.group(1)) == 1 and not m.group(2)):  # no scheme, or a Windows drive letter
        return "", uri
    return m.group(1).lower(), m.group(3)


def fetch(uri: str, dest: Path, source: ModelSource) -> Path:
    """Download the artifact at ``uri`` into the folder ``dest`` (created if needed); returns ``dest``."""
    scheme, rest = split_uri(uri.strip())
    if scheme in ("", "file"):
        path = unquote(urlsplit(uri).path) if scheme == "file" else uri
        return _fetch_local(Path(path).expanduser(), dest, uri)
    dest.mkdir(parents=True, exist_ok=True)
    remote = secrets.remote_type(source, scheme)
    if scheme in ("http", "https"):
        from berth.adapters import storage_azure

        if storage_azure.is_azure_url(uri) or secrets.has_azure(source):
            return storage_azure.fetch(uri.strip(), scheme, rest, dest, source)
        from berth.adapters.storage_http import fetch_http

        return fetch_http(uri, dest)
    if scheme in ("gs", "gcs") or remote == "gcs":
        from berth.adapters import storage_gcs

        return storage_gcs.fetch(uri, rest, dest, secrets.gcs_access(source, remote=scheme))
    if scheme == "az" or remote == "azureblob":
        from berth.adapters import storage_azure

        return storage_azure.fetch(uri, scheme, rest, dest, source)
    if scheme == "s3" or remote is not None:
        access = secrets.s3_access(source, remote=scheme)
        return _fetch_s3(uri, rest, dest, access)
    raise StorageError(f"cannot fetch {uri}: unsupported scheme {scheme}:// (supported: file paths, file://, "
                       "s3://, gs://, az://, http(s):// (Azure Blob URLs included), or an s3, gcs or azureblob "
                       "rclone remote named in the model's secret)", details={"uri": uri})


def local_problem(path: Path) -> str | None:
    """Why the local path ``path`` may not be read as an artifact (a device or kernel file, or something
    other than a regular file or folder, once symlinks are followed); None when it may (or does not exist)."""
    try:
        real = os.path.realpath(path)
    except (OSError, ValueError) as exc:
        return f"{path} cannot be resolved: {exc}"
    if any(real == root or real.startswith(root + "/") for root in DEVICE_ROOTS):
        return (f"{path} is (or links to) a device or kernel file under {', '.join(DEVICE_ROOTS)}; these are "
                "never read as artifacts")
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{path} cannot be read: {exc.strerror or exc}"
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        return f"{path} is not a regular file or folder (a device, pipe or socket); refusing to read it"
    return None


def _fetch_local(path: Path, dest: Path, uri: str) -> Path:
    problem = local_problem(path)
    if problem is not None:
        raise StorageError(f"cannot fetch {uri}: {problem}", details={"uri": uri})
    if not path.exists():
        raise StorageError(f"cannot fetch {uri}: {path} does not exist on the agent's host; "
                           "use a path the agent can read, or an s3:// URI", details={"uri": uri})
    # created only now: a path refused or absent leaves no folder behind for the agent to remove again
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if path.is_dir():
            _copy_tree(Path(os.path.realpath(path)), dest, uri)
        else:
            shutil.copy2(path, dest / path.name)
    except OSError as exc:
        raise StorageError(f"cannot fetch {uri}: copying {path} to {dest} failed: {exc.strerror or exc}",
                           details={"uri": uri}) from exc
    return dest


def _copy_tree(root: Path, dest: Path, uri: str) -> None:
    """Copy the folder ``root`` (already resolved): regular files and folders only; a symlink is followed only
    when it stays inside ``root`` (a link to ``/etc/shadow`` or ``../other-model`` is refused, naming the link,
    not its target); a link back to a folder above it is skipped; at most :data:`MAX_LOCAL_ENTRIES` entries."""
    prefix = str(root).rstrip("/") + "/"
    count = 0
    stack: list[tuple[Path, Path, frozenset[str]]] = [(root, Path(), frozenset({str(root)}))]
    while stack:
        folder, rel_dir, above = stack.pop()
        (dest / rel_dir).mkdir(parents=True, exist_ok=True)
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            count += 1
            rel = rel_dir / entry.name
            if count > MAX_LOCAL_ENTRIES:
                raise StorageError(f"cannot fetch {uri}: more than {MAX_LOCAL_ENTRIES} files and folders",
                                   details={"uri": uri})
            real = os.path.realpath(entry.path)
            if real != str(root) and not real.startswith(prefix):
                raise StorageError(f"cannot fetch {uri}: {rel} is a symlink that leaves the model's folder; "
                                   "artifacts may link only inside their own folder", details={"uri": uri})
            mode = os.stat(real).st_mode
            if stat.S_ISDIR(mode):
                if real not in above:  # a link to a folder above it (a loop) is skipped
                    stack.append((Path(real), rel, above | {real}))
            elif stat.S_ISREG(mode):
                shutil.copy2(real, dest / rel)
            else:
                raise StorageError(f"cannot fetch {uri}: {rel} is not a regular file or folder (a device, pipe "
                                   "or socket); refusing to read it", details={"uri": uri})


def endpoint_problem(url: str | None) -> str | None:
    """Why this host may not connect to the storage endpoint ``url`` (it is, or resolves to, a link-local or
    cloud-metadata address); None when it may.  None for no endpoint (the provider's own)."""
    if not url:
        return None
    try:
        host = urlsplit(url if "://" in url else "https://" + url).hostname
    except ValueError:
        return None
    if not host:
        return None
    problem = host_problem(host)
    if problem is None:
        try:
            addresses = {str(info[4][0]) for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)}
        except (OSError, UnicodeError):
            return None  # the client's own connect error will say so
        problem = next((p for p in map(address_problem, sorted(addresses)) if p), None)
        if problem is not None:
            problem = f"{host} resolves to {problem.split(' is ')[0]}, which {problem.split(' is ', 1)[1]}"
    return (f"storage endpoint {url}: {problem}; Berth never connects there (a metadata service hands out "
            "the host's credentials)") if problem else None


def safe_relative(key: str, prefix: str) -> PurePosixPath | None:
    """Path of object ``key`` below ``prefix``; None for folder markers; StorageError for escapes."""
    rel = key[len(prefix):].lstrip("/")
    if not rel or key.endswith("/"):
        return None
    path = PurePosixPath(rel)
    if any(part in ("..", ".") for part in path.parts):
        raise StorageError(f"object key {key!r} escapes its prefix; refusing to write it")
    return path


def _s3_client(access: secrets.S3Access) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=5, read_timeout=60, retries={"max_attempts": 2, "mode": "standard"},
                    s3={"addressing_style": "path"} if access.endpoint else {})
    session = boto3.session.Session()
    try:
        return session.client(
            "s3", endpoint_url=access.endpoint, region_name=access.region or "us-east-1", config=config,
            aws_access_key_id=access.access_key_id, aws_secret_access_key=access.secret_access_key,
            aws_session_token=access.session_token)
    except ValueError as exc:  # botocore: invalid endpoint URL
        raise StorageError(f"S3 endpoint {access.endpoint!r} from {access.origin} is not a valid URL: {exc}",
                           details={"endpoint": access.endpoint}) from exc


def _fetch_s3(uri: str, rest: str, dest: Path, access: secrets.S3Access) -> Path:
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"cannot fetch {uri}: no bucket in the URI (expected s3://BUCKET/PREFIX)",
                           details={"uri": uri})
    refused = endpoint_problem(access.endpoint)
    if refused:
        raise StorageError(f"cannot fetch {uri}: {refused}", details={"uri": uri, "endpoint": access.endpoint})
    client = _s3_client(access)
    try:
        keys = _list_keys(client, bucket, key)
        if not keys:
            raise StorageError(f"no objects under s3://{bucket}/{key} (bucket {bucket}, key prefix {key}) "
                               f"at {access.endpoint_text}; check storageUri {uri}",
                               details={"uri": uri, "bucket": bucket, "prefix": key})
        for obj_key, rel in keys:
            target = dest.joinpath(*rel.parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, obj_key, str(target))
    except ClientError as exc:
        raise _client_error(exc, uri, bucket, key, access) from exc
    except BotoCoreError as exc:
        raise _botocore_error(exc, uri, access) from exc
    return dest


def _list_keys(client: Any, bucket: str, key: str) -> list[tuple[str, PurePosixPath]]:
    """(object key, relative path) of the artifact: one object named ``key``, or all under ``key/``."""
    prefix = key if (key == "" or key.endswith("/")) else key + "/"
    found: list[tuple[str, PurePosixPath]] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            rel = safe_relative(obj["Key"], prefix)
            if rel is not None:
                found.append((obj["Key"], rel))
    if not found and key and not key.endswith("/"):
        page = client.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
        if any(o["Key"] == key for o in page.get("Contents", [])):
            found.append((key, PurePosixPath(PurePosixPath(key).name)))
    return found


_REJECTED = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
             "AuthorizationHeaderMalformed", "InvalidClientTokenId"}


def _client_error(exc: Any, uri: str, bucket: str, key: str, access: secrets.S3Access) -> StorageError:
    err = exc.response.get("Error", {})
    code = str(err.get("Code", "")) or str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
    text = str(err.get("Message") or exc)
    details = {"uri": uri, "bucket": bucket, "prefix": key, "code": code, "endpoint": access.endpoint}
    if code in _REJECTED:
        return StorageError(f"cannot fetch {uri}: credentials from {access.origin} were rejected by "
                            f"{access.endpoint_text}: {code}: {text}; fix the access key and secret "
                            "in the Secret", details=details)
    if code in ("AccessDenied", "403"):
        return StorageError(f"cannot fetch {uri}: {access.endpoint_text} denied access to bucket {bucket} "
                            f"(key prefix {key}) for the credentials from {access.origin}: {text}",
                            details=details)
    if code in ("NoSuchBucket", "404"):
        return StorageError(f"cannot fetch {uri}: bucket {bucket} does not exist at {access.endpoint_text}",
                            details=details)
    if code == "NoSuchKey":
        return StorageError(f"cannot fetch {uri}: object {key} does not exist in bucket {bucket} at "
                            f"{access.endpoint_text}", details=details)
    return StorageError(f"cannot fetch {uri}: {access.endpoint_text} answered {code}: {text} "
                        f"(bucket {bucket}, key prefix {key})", details=details)


def _botocore_error(exc: Exception, uri: str, access: secrets.S3Access) -> StorageError:
    from botocore.exceptions import ConnectTimeoutError, EndpointConnectionError, NoCredentialsError

    details = {"uri": uri, "endpoint": access.endpoint}
    if isinstance(exc, EndpointConnectionError | ConnectTimeoutError):
        return StorageError(f"cannot fetch {uri}: S3 endpoint {access.endpoint_text} (from {access.origin}) "
                            f"could not be reached: {exc}", details=details)
    if isinstance(exc, NoCredentialsError):
        return StorageError(f"cannot fetch {uri}: no S3 credentials: {access.origin} provides none; set "
                            "secretName on the Model to a Secret with S3 credentials", details=details)
    return StorageError(f"cannot fetch {uri} from {access.endpoint_text}: {exc}", details=details)
