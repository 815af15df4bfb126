"""Storage credentials from a model's Secret, in the forms Seldon Core v2 and the clouds' own tools use.

Accepted Secret data (values already decoded by the control plane):

* rclone remotes, as Seldon reads them: one key per remote holding YAML/JSON
  ``{type: s3, name: s3, parameters: {access_key_id, secret_access_key, endpoint, region, env_auth}}``
  (also ``type: gcs`` / ``google cloud storage`` and ``type: azureblob``, see below);
* rclone environment form: ``RCLONE_CONFIG_<REMOTE>_TYPE: s3``, ``RCLONE_CONFIG_<REMOTE>_ACCESS_KEY_ID`` ...;
* plain AWS keys: ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``,
  ``AWS_DEFAULT_REGION``;
* Google Cloud Storage (:func:`gcs_access`): a key holding a service account JSON key file, or an rclone
  gcs remote with ``parameters.service_account_credentials`` (or ``anonymous: true``) and ``endpoint``;
* Azure Blob (:func:`azure_access`): ``AZURE_STORAGE_CONNECTION_STRING``; ``AZURE_STORAGE_ACCOUNT`` with
  ``AZURE_STORAGE_KEY`` or ``AZURE_STORAGE_SAS_TOKEN``; ``AZURE_STORAGE_SAS_URL``; or an rclone azureblob
  remote with ``account``/``key``/``sas_url``/``endpoint``/``use_emulator``.

Secret values never appear in messages, logs or reprs; only key and remote names do.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from berth.errors import StorageError
from berth.wire.agent import ModelSource

_RCLONE_ENV = "RCLONE_CONFIG_"
# longest first, so that ``..._SECRET_ACCESS_KEY`` is never read as parameter ``key`` of remote ``..._secret_access``
_RCLONE_PARAMS = tuple(sorted(
    ("SECRET_ACCESS_KEY", "ACCESS_KEY_ID", "SESSION_TOKEN", "ENV_AUTH", "ENDPOINT", "PROVIDER", "REGION", "TYPE",
     "SERVICE_ACCOUNT_CREDENTIALS", "ANONYMOUS", "PROJECT_NUMBER", "ACCOUNT", "KEY", "SAS_URL", "USE_EMULATOR",
     "CONNECTION_STRING"), key=len, reverse=True))
_GCS_TYPES = ("gcs", "google cloud storage", "googlecloudstorage")
_NOT_REMOTES = ("service_account", "authorized_user", "external_account")  # Google credential files


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
        if not isinstance(parsed, dict) or "type" not in parsed or parsed["type"] in _NOT_REMOTES:
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


def _secret_data(source: ModelSource) -> dict[str, str] | None:
    """The Secret's data; None when the model names no Secret; StorageError when it names one that is missing."""
    if source.secret is None:
        if source.secret_name:
            name = source.secret_name
            why = source.secret_error or (f"it was not found; create a Secret named {name} in the "
                                          "model's namespace, or fix spec.secretName")
            raise StorageError(f"storage secret {name!r} for {source.storage_uri} could not be used: {why}",
                               details={"secret": name})
        return None
    return source.secret


def s3_access(source: ModelSource, remote: str | None = None) -> S3Access:
    """Resolve how to reach S3 for ``source``; ``remote`` is the rclone remote named by the URI scheme."""
    secret_name = source.secret_name
    data = _secret_data(source)
    if data is None:
        return _ambient()
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
        if _kind(remotes[name]) != "s3":
            why = ("it is read with its own client, not as S3" if _kind(remotes[name]) in ("gcs", "azureblob")
                   else "only s3, gcs and azureblob remotes are supported")
            raise StorageError(
                f"remote {name!r} in secret {label} has type {kind!r}; {why} (storageUri {source.storage_uri})",
                details={"secret": secret_name, "remote": name})
        return _from_remote(name, label, remotes[name])
    s3_remotes = [n for n, r in remotes.items() if _kind(r) == "s3"]
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
    return remote_type(source, remote) is not None


def _kind(remote: dict[str, Any]) -> str:
    kind = str(remote.get("type") or "").strip().lower()
    return "gcs" if kind in _GCS_TYPES else kind


def remote_type(source: ModelSource, remote: str) -> str | None:
    """Type of the rclone remote called ``remote`` in the secret (``s3``, ``gcs``, ``azureblob``, ...), or None."""
    if not source.secret or not remote:
        return None
    for name, entry in _rclone_remotes(source.secret).items():
        if name.lower() == remote.lower():
            return _kind(entry)
    return None


def _pick_remote(remotes: dict[str, dict[str, Any]], kind: str, remote: str | None) -> str | None:
    """The remote of type ``kind`` named ``remote`` if there is one, else the first of that type."""
    of_kind = [n for n in remotes if _kind(remotes[n]) == kind]
    named = [n for n in of_kind if remote is not None and n.lower() == remote.lower()]
    return (named or of_kind)[0] if of_kind else None


# --- Google Cloud Storage -------------------------------------------------------------------------------------

_GCS_KEYS = ("gcs_credentials.json", "credentials.json", "gcloud-application-credentials.json",
             "service-account.json", "key.json", "GOOGLE_APPLICATION_CREDENTIALS")


@dataclass(frozen=True)
class GcsAccess:
    """How to talk to GCS: ``info`` is the service account key (JSON, parsed); None means anonymous."""

    origin: str  # "secret ml-platform (key gcs_credentials.json)", "no secretName (anonymous access)"
    endpoint: str | None = None  # the rclone remote's endpoint; None: $STORAGE_EMULATOR_HOST, else Google's
    remote: str | None = None
    project: str | None = None
    info: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def anonymous(self) -> bool:
        return self.info is None

    @property
    def token_uri(self) -> str:
        return str((self.info or {}).get("token_uri") or "https://oauth2.googleapis.com/token")

    def hidden(self) -> list[str]:
        """The values no message may show."""
        return [str(v) for k, v in (self.info or {}).items() if k in ("private_key", "private_key_id") and v]


def _service_account(value: object) -> dict[str, Any] | None:
    """The parsed service account key in ``value`` (JSON text or a mapping), or None when it is not one."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if isinstance(value, dict) and value.get("type") == "service_account":
        return value
    return None


def _endpoint_url(value: object) -> str | None:
    text = _str_or_none(value)
    if text is None:
        return None
    text = text.strip().rstrip("/")
    return text if "://" in text else "https://" + text


def gcs_access(source: ModelSource, remote: str | None = None) -> GcsAccess:
    """Resolve how to read ``gs://`` for ``source``: anonymous without a Secret, else its service account."""
    data = _secret_data(source)
    if data is None:
        return GcsAccess(origin="no secretName (anonymous access)")
    label = source.secret_name or "(unnamed)"
    remotes = _rclone_remotes(data)
    name = _pick_remote(remotes, "gcs", remote)
    if name is not None:
        params = remotes[name]["parameters"]
        endpoint = _endpoint_url(params.get("endpoint"))
        origin = f"secret {label} (remote {name})"
        if _truthy(params.get("anonymous", False)):
            return GcsAccess(origin=origin + ", anonymous", endpoint=endpoint, remote=name)
        raw = params.get("service_account_credentials")
        info = _service_account(raw)
        if info is None:
            kind = remotes[name]["type"]
            what = ("hold no service account JSON key (expected a JSON object with \"type\": \"service_account\")"
                    if raw else "set neither service_account_credentials nor anonymous: true")
            raise StorageError(
                f"remote {name!r} in secret {label} has type {kind!r} but its parameters {what}; "
                f"put the service account key file's JSON in parameters.service_account_credentials "
                f"(storageUri {source.storage_uri})", details={"secret": source.secret_name, "remote": name})
        return GcsAccess(origin=origin, endpoint=endpoint, remote=name, info=info,
                         project=_str_or_none(info.get("project_id") or params.get("project_number")))
    ordered = [k for k in _GCS_KEYS if k in data] + sorted(k for k in data if k not in _GCS_KEYS)
    for key in ordered:
        info = _service_account(data[key])
        if info is not None:
            return GcsAccess(origin=f"secret {label} (key {key})", info=info,
                             project=_str_or_none(info.get("project_id")))
    keys = ", ".join(sorted(data)) or "none"
    raise StorageError(
        f"secret {label} holds no usable Google Cloud Storage credentials for {source.storage_uri} (keys: {keys}); "
        "expected a key (e.g. gcs_credentials.json) holding a service account JSON key, or a key holding an "
        "rclone remote config with `type: gcs` and parameters.service_account_credentials (or anonymous: true)",
        details={"secret": source.secret_name, "keys": sorted(data)})


# --- Azure Blob Storage ---------------------------------------------------------------------------------------

AZURITE_ACCOUNT = "devstoreaccount1"  # Azurite's well-known development account and key (public, not a secret)
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@dataclass(frozen=True)
class AzureAccess:
    """How to talk to Azure Blob: an account key, a SAS token, or neither (anonymous, public containers)."""

    origin: str
    account: str | None = None
    endpoint: str | None = None  # the blob service URL: https://ACCOUNT.blob.core.windows.net, Azurite's ...
    remote: str | None = None
    account_key: str | None = field(default=None, repr=False)
    sas: str | None = field(default=None, repr=False)  # without the leading "?"

    @property
    def kind(self) -> str:
        return "account key" if self.account_key else "SAS token" if self.sas else "anonymous access"

    def hidden(self) -> list[str]:
        out = [v for v in (self.account_key, self.sas) if v]
        for part in (self.sas or "").split("&"):
            name, _, value = part.partition("=")
            if name == "sig" and value:
                out.append(value)
        return out


def split_blob_url(url: str) -> tuple[str, str | None, str]:
    """``(service endpoint, account, rest)`` of a blob URL without its query.

    ``https://ACCOUNT.blob.core.windows.net/C/P`` is host-style (the account is the first label); any other
    host (Azurite, ``http://127.0.0.1:10000/ACCOUNT/C/P``) is path-style (the account is the first segment).
    """
    from urllib.parse import unquote, urlsplit

    parts = urlsplit(url)
    host = parts.netloc
    path = unquote(parts.path).lstrip("/")
    if ".blob." in host.lower():
        return f"{parts.scheme}://{host}", host.split(".")[0], path
    account, _, rest = path.partition("/")
    return f"{parts.scheme}://{host}/{account}", account or None, rest


def parse_connection_string(text: str) -> dict[str, str]:
    """``Key=Value;...`` pairs (values may hold ``=``); key names as written."""
    out: dict[str, str] = {}
    for part in text.strip().split(";"):
        name, sep, value = part.partition("=")
        if sep and name.strip():
            out[name.strip()] = value.strip()
    return out


def _from_connection_string(text: str, origin: str, where: str) -> AzureAccess:
    fields = {k.lower(): v for k, v in parse_connection_string(text).items()}
    if _truthy(fields.get("usedevelopmentstorage", "")):
        return AzureAccess(origin=origin, account=AZURITE_ACCOUNT, endpoint=f"http://127.0.0.1:10000/{AZURITE_ACCOUNT}",
                           account_key=AZURITE_KEY)
    account = fields.get("accountname") or None
    endpoint = _endpoint_url(fields.get("blobendpoint"))
    if endpoint is None and account:
        endpoint = (f"{fields.get('defaultendpointsprotocol') or 'https'}://{account}.blob."
                    f"{fields.get('endpointsuffix') or 'core.windows.net'}")
    if endpoint is not None and account is None:
        account = split_blob_url(endpoint)[1]
    key, sas = fields.get("accountkey") or None, (fields.get("sharedaccesssignature") or "").lstrip("?") or None
    if endpoint is None or not (key or sas):
        names = ", ".join(sorted(parse_connection_string(text))) or "none"
        raise StorageError(f"{where} is not a usable Azure Storage connection string (its fields: {names}); "
                           "expected AccountName and AccountKey (or SharedAccessSignature), and BlobEndpoint "
                           "unless the account is in Azure's public cloud")
    return AzureAccess(origin=origin, account=account, endpoint=endpoint, account_key=key, sas=sas)


def _from_sas_url(url: str, origin: str) -> AzureAccess:
    base, _, query = url.strip().partition("?")
    endpoint, account, _rest = split_blob_url(base)
    return AzureAccess(origin=origin, account=account, endpoint=endpoint, sas=query or None)


def has_azure(source: ModelSource) -> bool:
    """Whether the secret of ``source`` holds Azure Blob credentials in any accepted form."""
    data = source.secret or {}
    return (any(k in data for k in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_SAS_URL", "AZURE_STORAGE_KEY",
                                    "AZURE_STORAGE_SAS_TOKEN"))
            or any(_kind(r) == "azureblob" for r in _rclone_remotes(data).values()))


def azure_access(source: ModelSource, remote: str | None = None) -> AzureAccess:
    """Resolve how to read Azure Blob for ``source``; anonymous without a Secret (public containers)."""
    data = _secret_data(source)
    if data is None:
        return AzureAccess(origin="no secretName (anonymous access)")
    label = source.secret_name or "(unnamed)"
    remotes = _rclone_remotes(data)
    name = _pick_remote(remotes, "azureblob", remote)
    if name is not None:
        params = remotes[name]["parameters"]
        origin = f"secret {label} (remote {name})"
        if _str_or_none(params.get("connection_string")):
            return _from_connection_string(str(params["connection_string"]), origin,
                                           f"parameter connection_string of remote {name!r} in secret {label}")
        if _str_or_none(params.get("sas_url")):
            return _from_sas_url(str(params["sas_url"]), origin)
        emulator = _truthy(params.get("use_emulator", False))
        account = _str_or_none(params.get("account")) or (AZURITE_ACCOUNT if emulator else None)
        endpoint = _endpoint_url(params.get("endpoint")) or (
            f"http://127.0.0.1:10000/{AZURITE_ACCOUNT}" if emulator else
            f"https://{account}.blob.core.windows.net" if account else None)
        key = _str_or_none(params.get("key")) or (AZURITE_KEY if emulator else None)
        return AzureAccess(origin=origin, account=account, endpoint=endpoint, remote=name, account_key=key)
    if _str_or_none(data.get("AZURE_STORAGE_CONNECTION_STRING")):
        return _from_connection_string(data["AZURE_STORAGE_CONNECTION_STRING"],
                                       f"secret {label} (key AZURE_STORAGE_CONNECTION_STRING)",
                                       f"key AZURE_STORAGE_CONNECTION_STRING of secret {label}")
    if _str_or_none(data.get("AZURE_STORAGE_SAS_URL")):
        return _from_sas_url(data["AZURE_STORAGE_SAS_URL"], f"secret {label} (key AZURE_STORAGE_SAS_URL)")
    account = _str_or_none(data.get("AZURE_STORAGE_ACCOUNT"))
    key = _str_or_none(data.get("AZURE_STORAGE_KEY") or data.get("AZURE_STORAGE_ACCESS_KEY"))
    sas = _str_or_none((data.get("AZURE_STORAGE_SAS_TOKEN") or "").strip().lstrip("?"))
    if key or sas:
        endpoint = _endpoint_url(data.get("AZURE_STORAGE_BLOB_ENDPOINT")) or (
            f"https://{account}.blob.core.windows.net" if account else None)
        if account is None and endpoint is not None:
            account = split_blob_url(endpoint)[1]
        return AzureAccess(origin=f"secret {label} (key {'AZURE_STORAGE_KEY' if key else 'AZURE_STORAGE_SAS_TOKEN'})",
                           account=account, endpoint=endpoint, account_key=key, sas=None if key else sas)
    keys = ", ".join(sorted(data)) or "none"
    raise StorageError(
        f"secret {label} holds no usable Azure Blob Storage credentials for {source.storage_uri} (keys: {keys}); "
        "expected AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_ACCOUNT with AZURE_STORAGE_KEY or "
        "AZURE_STORAGE_SAS_TOKEN, AZURE_STORAGE_SAS_URL, or a key holding an rclone remote config with "
        "`type: azureblob` and parameters account/key, sas_url or endpoint",
        details={"secret": source.secret_name, "keys": sorted(data)})
