"""Can this host read a model's artifact?  The agent's half of ``berth doctor``'s storage check.

The control plane never connects to a tenant's endpoint nor looks at a tenant's path itself: it judges the
storageUri against the storage policy, then asks an enrolled agent of the model's namespace (the one that will
load it) to run :func:`check` over the agent wire.  Blocking (the agent runs it in a thread).  Answers two
checks, ``credentials`` and ``object``, each ``{name, ok, detail}`` (``ok: None``: does not apply, or could
not run); details name the secret, endpoint, bucket and key, never a secret value, and say nothing of a
local path but whether the model's own path is there.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from berth.adapters import secrets as s3secrets
from berth.adapters.storage import local_problem, split_uri
from berth.errors import StorageError
from berth.wire.agent import ModelSource

Check = dict[str, Any]
_REJECTED = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
             "AuthorizationHeaderMalformed", "InvalidClientTokenId"}
_KEY_FIX = "check the secret's access_key_id/secret_access_key (or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)"


def _check(name: str, ok: bool | None, detail: str) -> Check:
    return {"name": name, "ok": ok, "detail": detail}


def check(source: ModelSource) -> list[Check]:
    """``[credentials, object]`` checks of ``source`` from this host."""
    uri = source.storage_uri.strip()
    scheme, rest = split_uri(uri)
    if scheme in ("", "file"):
        path = Path(unquote(urlsplit(uri).path) if scheme == "file" else uri).expanduser()
        return [_check("credentials", None, "a local path needs none"), _local(path)]
    if scheme == "s3" or s3secrets.remote_type(source, scheme) == "s3":
        if source.secret is None and source.secret_name:
            return [_check("credentials", None, "not checked: the secret is missing"),
                    _check("object", None, "not checked: the secret is missing")]
        return _s3_checks(uri, rest, source, scheme)
    return [_check("credentials", None, f"not checked for {scheme}://"),
            _check("object", None, f"not checked for {scheme}:// (the agent reports fetch errors in the "
                                   "model's status)")]


def _local(path: Path) -> Check:
    problem = local_problem(path)
    if problem is not None:
        return _check("object", False, problem)
    if os.path.isdir(path) or os.path.isfile(path):
        return _check("object", True, f"{path} exists on the agent's host")
    return _check("object", False, f"{path} does not exist on the agent's host (or is not a regular file or "
                                   "folder); fix storageUri or copy the artifact there")


def _s3_client(access: s3secrets.S3Access) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=2, read_timeout=5, retries={"total_max_attempts": 2, "mode": "standard"},
                    s3={"addressing_style": "path"} if access.endpoint else {})
    return boto3.session.Session().client(
        "s3", endpoint_url=access.endpoint, region_name=access.region or "us-east-1", config=config,
        aws_access_key_id=access.access_key_id, aws_secret_access_key=access.secret_access_key,
        aws_session_token=access.session_token)


def _s3_checks(uri: str, rest: str, source: ModelSource, scheme: str) -> list[Check]:
    """List one key under the artifact's prefix with the model's credentials."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    from berth.adapters.storage import endpoint_problem

    not_checked = _check("object", None, "not checked: the credentials did not work")
    try:
        access = s3secrets.s3_access(source, remote=scheme)
    except StorageError as exc:
        return [_check("credentials", False, exc.message), not_checked]
    if source.secret is None:  # boto3's own chain, here on the agent's host
        access = dataclasses.replace(access, origin="the agent's environment (no secretName)")
    bucket, _, key = rest.partition("/")
    if not bucket:
        return [_check("credentials", None, "not checked"),
                _check("object", False, f"no bucket in {uri}; expected s3://BUCKET/PREFIX")]
    refused = endpoint_problem(access.endpoint)
    if refused:
        return [_check("credentials", False, refused), not_checked]
    where = f"{access.endpoint_text} (credentials from {access.origin})"
    try:
        client = _s3_client(access)
        prefix = key if (key == "" or key.endswith("/")) else key + "/"
        found = bool(client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1).get("Contents"))
        if not found and key and not key.endswith("/"):  # the artifact may be one object named ``key``
            page = client.list_objects_v2(Bucket=bucket, Prefix=key, MaxKeys=1)
            found = any(o.get("Key") == key for o in page.get("Contents", []))
    except ClientError as exc:
        return _client_error(exc, uri, bucket, where, not_checked)
    except NoCredentialsError:
        return [_check("credentials", False, f"no S3 credentials for {uri}: {access.origin} provides none; set "
                                             "secretName on the Model to a Secret with S3 credentials"),
                not_checked]
    except (BotoCoreError, ValueError) as exc:
        return [_check("credentials", False, f"S3 endpoint {where} could not be reached: {exc}; check the "
                                             "endpoint in the secret and that the S3 service is up"), not_checked]
    creds = _check("credentials", True, f"accepted by {where}")
    if found:
        return [creds, _check("object", True, f"s3://{bucket}/{key} has objects")]
    return [creds, _check("object", False, f"no objects under s3://{bucket}/{key} at {access.endpoint_text}; "
                                           "upload the artifact there or fix storageUri")]


def _client_error(exc: Any, uri: str, bucket: str, where: str, not_checked: Check) -> list[Check]:
    err = exc.response.get("Error", {})
    code = str(err.get("Code", "")) or str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))
    text = str(err.get("Message") or exc)[:300]
    if code in _REJECTED:
        return [_check("credentials", False, f"credentials rejected by {where}: {code}: {text}; {_KEY_FIX}"),
                not_checked]
    if code in ("AccessDenied", "403"):
        return [_check("credentials", False, f"{where} denied listing bucket {bucket}: {text}; grant "
                                             "s3:ListBucket and s3:GetObject on it to these credentials"),
                not_checked]
    creds = _check("credentials", True, f"accepted by {where}")
    if code in ("NoSuchBucket", "404"):
        return [creds, _check("object", False, f"bucket {bucket} does not exist at {where}; create it or fix "
                                               f"storageUri {uri}")]
    return [creds, _check("object", False, f"{where} answered {code}: {text} for {uri}")]
