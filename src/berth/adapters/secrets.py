"""S3 credentials from a model's storage Secret, in the forms Seldon Core v2 and AWS tools use.

Accepted Secret data (values already decoded by the control plane):

* rclone remotes, as Seldon reads them: one key per remote holding YAML/JSON
  ``{type: s3, name: s3, parameters: {access_key_id, secret_access_key, endpoint, region, env_auth}}``;
* rclone environment form: ``RCLONE_CONFIG_<REMOTE>_TYPE: s3``, ``RCLONE_CONFIG_<REMOTE>_ACCESS_KEY_ID`` ...;
* plain AWS keys: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``,
  ``AWS_DEFAULT_REGION``.

Secret values never appear in messages, logs or reprs; only key and remote names do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from berth.errors import StorageError
from berth.wire.agent import ModelSource

_RCLONE_ENV = "RCLONE_CONFIG_"
_RCLONE_PARAMS = ("SECRET_ACCESS_KEY", "ACCESS_KEY_ID", "SESSION_TOKEN", "ENV_AUTH", "ENDPOINT", "PROVIDER",
                  "REGION", "TYPE")


@dataclass(frozen=True)
class S3Access:
    """Where and as whom to talk S3.  ``None`` keys mean boto3's own chain (environment, profile)."""

    origin: str  # "secret ml-platform", "the agent's environment"
    endpoint: str | None = None
    region: str | None = None
    remote: str | None = None  # the rclone remote used, when the secret is in rclone form
    access_key_id: str | None = field(default=None, repr=False)
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)

    @property
    def endpoint_text(self) -> str:
        return self.endpoint or f"the AWS S3 endpoint of region {self.region or 'us-east-1'}"


def _truthy(value: object) -> bool:
    return str(value).strip().lower() in ("1", "true", "yes", "on")


def _str_or_none(value: object) -> str | None:
    if value is None or value == "":
        return None
    return str(value)


def _rclone_remotes(data: dict[str, str]) -> dict[str, dict[str, Any]]:
    """Remote name -> {type, parameters} from both rclone forms of the secret."""
    remotes: dict[str, dict[str, Any]] = {}
    for key in sorted(data):
        if key.startswith(_RCLONE_ENV):
            rest = key[len(_RCLONE_ENV):]
            for param in _RCLONE_PARAMS:
                if rest.endswith("_" + param) and len(rest) > len(param) + 1:
                    remote = rest[: -len(param) - 1].lower()
                    entry = remotes.setdefault(remote, {"type": None, "parameters": {}})
                    if param == "TYPE":
                        entry["type"] = data[key].strip()
                    else:
                        entry["parameters"][param.lower()] = data[key]
                    break
            continue
        try:
            parsed = yaml.safe_load(data[key])
        except yaml.YAMLError:
            continue
        if not isinstance(parsed, dict) or "type" not in parsed:
            continue
        params = parsed.get("parameters")
        name = str(parsed.get("name") or key)
        remotes[name] = {"type": str(parsed.get("type")), "parameters": params if isinstance(params, dict)
                         else {k: v for k, v in parsed.items() if k not in ("type", "name")}}
    return remotes


def _from_remote(name: str, secret_name: str, remote: dict[str, Any]) -> S3Access:
    params = remote["parameters"]
    env_auth = _truthy(params.get("env_auth", False))
    return S3Access(
        origin=f"secret {secret_name}", remote=name,
        endpoint=_str_or_none(params.get("endpoint")), region=_str_or_none(params.get("region")),
        access_key_id=None if env_auth else _str_or_none(params.get("access_key_id")),
        secret_access_key=None if env_auth else _str_or_none(params.get("secret_access_key")),
        session_token=None if env_auth else _str_or_none(params.get("session_token")))


def _ambient() -> S3Access:
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    return S3Access(origin="the agent's environment", endpoint=endpoint, region=region)


def s3_access(source: ModelSource, remote: str | None = None) -> S3Access:
    """Resolve how to reach S3 for ``source``; ``remote`` is the rclone remote named by the URI scheme."""
    secret_name = source.secret_name
    if source.secret is None:
        if secret_name:
            why = source.secret_error or (f"it was not found; create a Secret named {secret_name} in the "
                                          "model's namespace, or fix spec.secretName")
            raise StorageError(f"storage secret {secret_name!r} for {source.storage_uri} could not be used: {why}",
                               details={"secret": secret_name})
        return _ambient()
    data = source.secret
    label = secret_name or "(unnamed)"
    if data.get("AWS_ACCESS_KEY_ID") or data.get("AWS_SECRET_ACCESS_KEY"):
        return S3Access(
            origin=f"secret {label}",
            endpoint=_str_or_none(data.get("AWS_ENDPOINT_URL_S3") or data.get("AWS_ENDPOINT_URL")),
            region=_str_or_none(data.get("AWS_REGION") or data.get("AWS_DEFAULT_REGION")),
            access_key_id=_str_or_none(data.get("AWS_ACCESS_KEY_ID")),
            secret_access_key=_str_or_none(data.get("AWS_SECRET_ACCESS_KEY")),
            session_token=_str_or_none(data.get("AWS_SESSION_TOKEN")))
    remotes = _rclone_remotes(data)
    if remote is not None and remote.lower() in {n.lower() for n in remotes}:
        name = next(n for n in remotes if n.lower() == remote.lower())
        kind = remotes[name]["type"]
        if kind != "s3":
            raise StorageError(
                f"remote {name!r} in secret {label} has type {kind!r}; only s3 remotes are supported "
                f"(storageUri {source.storage_uri})", details={"secret": secret_name, "remote": name})
        return _from_remote(name, label, remotes[name])
    s3_remotes = [n for n, r in remotes.items() if r["type"] == "s3"]
    if s3_remotes:
        return _from_remote(s3_remotes[0], label, remotes[s3_remotes[0]])
    keys = ", ".join(sorted(data)) or "none"
    raise StorageError(
        f"secret {label} holds no usable S3 credentials for {source.storage_uri} (keys: {keys}); expected "
        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY keys, or a key holding an rclone remote config "
        "with `type: s3` and parameters access_key_id, secret_access_key, endpoint",
        details={"secret": secret_name, "keys": sorted(data)})


def has_remote(source: ModelSource, remote: str) -> bool:
    """Whether the secret of ``source`` defines an rclone remote called ``remote`` (of any type)."""
    if not source.secret:
        return False
    return any(n.lower() == remote.lower() for n in _rclone_remotes(source.secret))
