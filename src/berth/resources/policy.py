"""Storage policy: which artifact locations a namespace's Models may use (pure: no I/O, no clock).

A policy file (``berth control|up --storage-policy FILE``) is YAML::

    default:                       # every namespace not listed below
      schemes: [s3, gs]            # file, s3, gs, az, http, https
      s3Endpoints: [aws]           # "aws": AWS's own endpoints (the Secret names none); else scheme://host[:port]
      buckets: ["models-*"]        # shell patterns (fnmatch) of buckets / containers
      fileRoots: []                # folders whose contents local paths may name
      ambientCredentials: false    # may a model without secretName use the agent host's own S3 credentials?
    namespaces:
      team-a:
        schemes: [s3, file]
        fileRoots: [/srv/models/team-a]   # omitted keys take the default entry's value

In the ``default`` entry of a file, an omitted list means "any" except ``fileRoots`` (omitted: no local path)
and ``ambientCredentials`` (omitted: false): the two that expose the agent host's own files and identity must
be granted.  Without a file the built-in policy allows everything below the hard rules.

Hard rules, with or without a file: never a link-local or cloud-metadata address (169.254.0.0/16, fe80::/10,
``metadata.google.internal``, ...) as an HTTP host or storage endpoint; never a path under ``/dev``, ``/proc``
or ``/sys``.  (Symlinks that leave a model's folder, and names that resolve to a refused address, are checked
where the I/O happens: on the agent, by ``berth.adapters.storage``.)
"""

from __future__ import annotations

import fnmatch
import ipaddress
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

SCHEMES = ("file", "s3", "gs", "az", "http", "https")
KEYS = ("schemes", "fileRoots", "s3Endpoints", "buckets", "ambientCredentials")
AWS = "aws"  # s3Endpoints entry: AWS's own endpoints (no endpoint named)
DEVICE_ROOTS = ("/dev", "/proc", "/sys")
METADATA_HOSTS = frozenset({"metadata", "metadata.google.internal", "metadata.goog", "instance-data",
                            "instance-data.ec2.internal", "metadata.azure.com", "metadata.packet.net"})
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (
    "169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200", "192.0.0.192", "169.254.169.123"))
BUILTIN = "the built-in storage policy (no --storage-policy file)"
HARD = "the storage policy's fixed rules"


class PolicyError(ValueError):
    """A policy file that cannot be used; the message names the field."""


@dataclass(frozen=True)
class Target:
    """Where one Model's artifact would be read from, as far as its storageUri and Secret say."""

    uri: str
    scheme: str  # one of SCHEMES (rclone remotes: their type's scheme), or the unknown scheme as written
    path: str | None = None  # file: the path as written (after file:// decoding)
    host: str | None = None  # http(s): the URL's host
    bucket: str | None = None  # s3/gs/az: bucket or container
    endpoint: str | None = None  # s3/gs/az: the endpoint the Secret (or agent) names; None: the provider's own
    secret: bool = False  # a secretName is set


@dataclass(frozen=True)
class StoragePolicy:
    source: str = BUILTIN  # the file, for messages
    default: Mapping[str, Any] = field(default_factory=dict)  # KEYS -> value; a missing key: no restriction
    namespaces: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    from_file: bool = False

    def rule(self, namespace: str, key: str) -> tuple[Any, str]:
        """(value, where): the rule ``key`` for ``namespace`` and where it is written (for messages)."""
        own = self.namespaces.get(namespace)
        if own is not None and key in own:
            return own[key], f"namespaces.{namespace}.{key}"
        if key in self.default:
            return self.default[key], f"default.{key}"
        if self.from_file and key == "fileRoots":
            return [], "default.fileRoots (omitted: no local paths)"
        if self.from_file and key == "ambientCredentials":
            return False, "default.ambientCredentials (omitted: false)"
        return (True if key == "ambientCredentials" else None), key


PERMISSIVE = StoragePolicy()


def parse_policy(doc: Any, source: str) -> StoragePolicy:
    """The policy of a loaded YAML document; PolicyError naming the field that is wrong."""
    if not isinstance(doc, dict):
        raise PolicyError(f"{source}: expected a mapping with `default` and `namespaces`")
    unknown = sorted(set(doc) - {"default", "namespaces"})
    if unknown:
        raise PolicyError(f"{source}: unknown key(s) {', '.join(map(str, unknown))}; expected default, namespaces")
    default = _entry(doc.get("default") or {}, f"{source}: default")
    spaces = doc.get("namespaces") or {}
    if not isinstance(spaces, dict):
        raise PolicyError(f"{source}: namespaces: expected a map of namespace to rules")
    namespaces = {str(ns): _entry(rules or {}, f"{source}: namespaces.{ns}") for ns, rules in spaces.items()}
    return StoragePolicy(source=source, default=default, namespaces=namespaces, from_file=True)


def _entry(raw: Any, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise PolicyError(f"{where}: expected a mapping of {', '.join(KEYS)}")
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise PolicyError(f"{where}: unknown key(s) {', '.join(map(str, unknown))}; expected {', '.join(KEYS)}")
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "ambientCredentials":
            if not isinstance(value, bool):
                raise PolicyError(f"{where}.ambientCredentials: expected true or false, got {value!r}")
            out[key] = value
            continue
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise PolicyError(f"{where}.{key}: expected a list of strings, got {value!r}")
        if key == "schemes":
            bad = [v for v in value if _scheme(v) not in SCHEMES]
            if bad:
                raise PolicyError(f"{where}.schemes: unknown scheme(s) {', '.join(bad)}; known: {', '.join(SCHEMES)}")
            value = [_scheme(v) for v in value]
        elif key == "fileRoots":
            bad = [v for v in value if not v.startswith("/")]
            if bad:
                raise PolicyError(f"{where}.fileRoots: {bad[0]!r} is not an absolute path")
            value = [normalized(v) for v in value]
        elif key == "s3Endpoints":
            value = [v if v in (AWS, "*") else _endpoint_key(v, f"{where}.s3Endpoints") for v in value]
        out[key] = value
    return out


def _scheme(text: str) -> str:
    low = text.strip().lower().removesuffix("://")
    return {"gcs": "gs", "azureblob": "az", "azure": "az", "local": "file"}.get(low, low)


def _endpoint_key(url: str, where: str = "endpoint") -> str:
    """``scheme://host:port`` of an endpoint URL (default ports made explicit), lower-case."""
    parts = urlsplit(url if "://" in url else "https://" + url)
    if not parts.hostname:
        raise PolicyError(f"{where}: {url!r} is not an endpoint URL (scheme://host[:port])")
    try:
        port = parts.port or (80 if parts.scheme == "http" else 443)
    except ValueError as exc:
        raise PolicyError(f"{where}: {url!r}: {exc}") from exc
    host = parts.hostname.lower()
    return f"{parts.scheme.lower()}://{'[' + host + ']' if ':' in host else host}:{port}"


def address_problem(address: str) -> str | None:
    """Why an IP address may never be a storage target (link-local, cloud metadata, unspecified); None if fine."""
    try:
        ip = ipaddress.ip_address(address.strip("[]").split("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in METADATA_ADDRESSES:
        return f"{address} is a cloud metadata address"
    if ip.is_link_local:
        return f"{address} is a link-local address"
    if ip.is_unspecified or ip.is_multicast:
        return f"{address} is not a unicast address"
    return None


def host_problem(host: str) -> str | None:
    """Why a host name or address may never be a storage target; None if fine (names are checked again once
    resolved, on the agent)."""
    name = host.strip().rstrip(".").lower()
    if name in METADATA_HOSTS:
        return f"{host} is a cloud metadata service"
    return address_problem(name)


def normalized(path: str) -> str:
    """An absolute path with ``..``, ``.`` and repeated slashes folded away (lexically: no symlinks)."""
    return "/" + posixpath.normpath(path).lstrip("/")


def _within(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def refusal(policy: StoragePolicy, namespace: str, target: Target) -> str | None:
    """Why ``namespace`` may not read ``target`` under ``policy`` (naming the rule); None when it may."""
    hard = _hard_refusal(target)
    if hard:
        return hard
    schemes, where = policy.rule(namespace, "schemes")
    if schemes is not None and target.scheme not in schemes:
        return (f"scheme {target.scheme} is not allowed in namespace {namespace} by {where} {_list(schemes)} "
                f"of {policy.source}")
    if target.scheme == "file":
        return _file_refusal(policy, namespace, target)
    if target.scheme in ("s3", "gs", "az") and target.bucket is not None:
        buckets, where = policy.rule(namespace, "buckets")
        if buckets is not None and not any(fnmatch.fnmatchcase(target.bucket, p) for p in buckets):
            return (f"bucket {target.bucket} is not allowed in namespace {namespace} by {where} {_list(buckets)} "
                    f"of {policy.source}")
    if target.scheme == "s3":
        ambient, where = policy.rule(namespace, "ambientCredentials")
        if not target.secret and not ambient:
            return (f"a model without secretName may not use the agent host's own S3 credentials in namespace "
                    f"{namespace} ({where} of {policy.source}); set secretName to a Secret holding credentials")
        endpoints, where = policy.rule(namespace, "s3Endpoints")
        key = AWS if target.endpoint is None else _safe_endpoint_key(target.endpoint)
        if endpoints is not None and "*" not in endpoints and key not in endpoints:
            shown = "S3 without an endpoint (AWS's own)" if key == AWS else f"S3 endpoint {target.endpoint}"
            return (f"{shown} is not allowed in namespace {namespace} by {where} {_list(endpoints)} of "
                    f"{policy.source}")
    return None


def endpoint_refusal(policy: StoragePolicy, namespace: str, scheme: str, endpoint: str) -> str | None:
    """Why a Secret of ``namespace`` may not name ``endpoint`` (of ``scheme``: s3, gs, az); None when it may."""
    hard = _hard_refusal(Target(uri="", scheme=scheme, endpoint=endpoint))
    if hard or scheme != "s3":
        return hard
    endpoints, where = policy.rule(namespace, "s3Endpoints")
    if endpoints is not None and "*" not in endpoints and _safe_endpoint_key(endpoint) not in endpoints:
        return (f"S3 endpoint {endpoint} is not allowed in namespace {namespace} by {where} {_list(endpoints)} of "
                f"{policy.source}")
    return None


def _safe_endpoint_key(url: str) -> str:
    try:
        return _endpoint_key(url)
    except PolicyError:
        return url


def _hard_refusal(target: Target) -> str | None:
    if target.scheme == "file" and target.path is not None:
        norm = normalized(target.path) if target.path.startswith("/") else None
        if norm is not None and any(_within(norm, root) for root in DEVICE_ROOTS):
            return f"{target.path} is under {', '.join(DEVICE_ROOTS)}: device and kernel files are never read ({HARD})"
    for what, host in (("host", target.host), ("endpoint", _host_of(target.endpoint))):
        problem = host_problem(host) if host else None
        if problem:
            return f"{what} {host}: {problem}, never a storage target ({HARD})"
    return None


def _host_of(url: str | None) -> str | None:
    if not url:
        return None
    try:
        return urlsplit(url if "://" in url else "https://" + url).hostname
    except ValueError:
        return url


def _file_refusal(policy: StoragePolicy, namespace: str, target: Target) -> str | None:
    roots, where = policy.rule(namespace, "fileRoots")
    if roots is None:
        return None
    path = target.path or ""
    if not path.startswith("/"):
        return (f"local path {path!r} is not absolute; namespace {namespace} may read only under {where} "
                f"{_list(roots)} of {policy.source}")
    norm = normalized(path)
    if not any(_within(norm, root) for root in roots):
        return (f"local path {path} is outside {where} {_list(roots)} of {policy.source} (namespace {namespace})")
    return None


def _list(values: list[str]) -> str:
    return "[" + ", ".join(values) + "]"
