"""Storage diagnosis for ``berth doctor``: can a model's artifact be read with the credentials it names?

``GET /api/v1/namespaces/{ns}/models/{name}/storage`` answers::

    {"ok": bool, "uri": str, "message": str,
     "checks": [{"name": "secret" | "credentials" | "object", "ok": true | false | null, "detail": str}]}

``ok: null`` means the check does not apply (no secret named, a local path needs no credentials) or could
not run because an earlier one failed.  The control plane checks from its own host, with the same secret
resolution the agents get; details name the secret, endpoint, bucket and key, never a secret value.
S3 calls run in a thread with short timeouts so a dead endpoint answers in seconds.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from aiohttp import web

from berth.adapters import secrets as s3secrets
from berth.adapters.storage import split_uri
from berth.control.auth import auth_of
from berth.control.secrets import resolve
from berth.errors import StorageError
from berth.resources.names import check_name
from berth.store.base import Store
from berth.wire.agent import ModelSource

Check = dict[str, Any]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_REJECTED = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
             "AuthorizationHeaderMalformed", "InvalidClientTokenId"}
_KEY_FIX = "check the secret's access_key_id/secret_access_key (or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)"


def _check(name: str, ok: bool | None, detail: str) -> Check:
    return {"name": name, "ok": ok, "detail": detail}


def storage_handler(store: Store) -> Handler:
    """The aiohttp handler of ``GET /api/v1/namespaces/{ns}/models/{name}/storage`` over ``store``."""

    async def storage_check(request: web.Request) -> web.Response:
        ns = check_name(request.match_info["ns"], what="namespace", label=True)
        name = check_name(request.match_info["name"], what="name")
        # read in ns, checked before the store is asked (a 403 says nothing of what exists); the middleware
        # checked it already, this keeps the handler safe wherever it is mounted
        principal = auth_of(request).require(request, "read", ns, action="check", kind="Model", name=name)
        doc = store.get("Model", ns, name)  # NotFound answers 404 through the API's middleware
        return web.json_response(await check_model_storage(store, doc,
                                                           secret_keys=principal.can("admin", ns)))

    return storage_check


async def check_model_storage(store: Store, doc: dict[str, Any], *, secret_keys: bool = True) -> dict[str, Any]:
    """Secret, credentials and object checks of one stored Model document (``secret_keys``: name the
    secret's keys, for callers who may read Secrets)."""
    spec = doc.get("spec") or {}
    ns = doc["metadata"]["namespace"]
    uri = str(spec.get("storageUri") or "").strip()
    secret_name = spec.get("secretName") or None
    data, why = resolve(store, ns, secret_name)
    if secret_name is None:
        secret = _check("secret", None, "no secretName on the model; none needed")
    elif data is None:
        secret = _check("secret", False, why or f"secret {secret_name!r} not found in namespace {ns}")
    else:
        keys = f" (keys: {', '.join(sorted(data)) or 'none'})" if secret_keys else ""
        secret = _check("secret", True, f"secret {secret_name} found in namespace {ns}{keys}")
    source = ModelSource(storage_uri=uri, secret_name=secret_name, secret=data, secret_error=why)
    rest = await _target_checks(uri, source, secret)
    checks = [secret, *rest]
    failed = [c for c in checks if c["ok"] is False]
    message = failed[0]["detail"] if failed else f"{uri} is readable"
    return {"ok": not failed, "uri": uri, "checks": checks, "message": message}


async def _target_checks(uri: str, source: ModelSource, secret: Check) -> list[Check]:
    if not uri:
        return [_check("credentials", None, "not checked"),
                _check("object", False, "the model has no spec.storageUri; set it to the artifact's location")]
    scheme, rest = split_uri(uri)
    if scheme in ("", "file"):
        path = Path(unquote(urlsplit(uri).path) if scheme == "file" else uri).expanduser()
        exists = await asyncio.to_thread(path.exists)
        obj = (_check("object", True, f"{path} exists on the control plane's host") if exists else
               _check("object", False, f"{path} does not exist on the control plane's host; fix storageUri or "
                                       "copy the artifact there (agents on other hosts need it too)"))
        return [_check("credentials", None, "a local path needs none"), obj]
    if scheme == "s3" or s3secrets.remote_type(source, scheme) == "s3":
        if secret["ok"] is False:
            return [_check("credentials", None, "not checked: the secret is missing"),
                    _check("object", None, "not checked: the secret is missing")]
        return await asyncio.to_thread(_s3_checks, uri, rest, source, scheme)
    return [_check("credentials", None, f"not checked for {scheme}://"),
            _check("object", None, f"not checked for {scheme}:// (the agent reports fetch errors in the "
                                   "model's status)")]


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
    """Blocking: list one key under the artifact's prefix with the model's credentials."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    not_checked = _check("object", None, "not checked: the credentials did not work")
    try:
        access = s3secrets.s3_access(source, remote=scheme)
    except StorageError as exc:
        return [_check("credentials", False, exc.message), not_checked]
    if source.secret is None:  # boto3's own chain, here on the control plane's host
        access = dataclasses.replace(access, origin="the control plane's environment (no secretName)")
    bucket, _, key = rest.partition("/")
    if not bucket:
        return [_check("credentials", None, "not checked"),
                _check("object", False, f"no bucket in {uri}; expected s3://BUCKET/PREFIX")]
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
    text = str(err.get("Message") or exc)
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
