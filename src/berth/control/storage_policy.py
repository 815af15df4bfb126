"""The storage policy at apply time: a Model whose artifact location, or a Secret whose endpoints, the
namespace's policy refuses is refused with the rule that refused it, before anything is written.

The judgement is :mod:`berth.resources.policy` (pure); this module loads the file and gathers what it judges:
each Model's storageUri with the Secret it names (from the same apply, else the store), and each Secret's
endpoints.  Nothing here connects anywhere or reads a path a tenant chose.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from berth.adapters.settings import CUSTOM_RUNTIME_ANNOTATION
from berth.adapters.storage_target import describe, secret_endpoints
from berth.control.secrets import resolve, secret_data
from berth.errors import ConfigError, NotFound
from berth.resources.policy import PERMISSIVE, PolicyError, StoragePolicy, endpoint_refusal, parse_policy, refusal
from berth.store.base import Store
from berth.wire.agent import ModelSource

MAX_POLICY_BYTES = 1 << 20


def load_policy(path: Path | None) -> StoragePolicy:
    """The policy in ``path`` (YAML); the built-in permissive one when None.  ConfigError naming the problem."""
    if path is None:
        return PERMISSIVE
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read(MAX_POLICY_BYTES + 1)
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--storage-policy {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from exc
    if len(text) > MAX_POLICY_BYTES:
        raise ConfigError(f"--storage-policy {path}: larger than {MAX_POLICY_BYTES} bytes")
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--storage-policy {path}: not valid YAML: {str(exc).splitlines()[0]}") from exc
    try:
        return parse_policy(doc, str(path))
    except PolicyError as exc:
        raise ConfigError(f"--storage-policy {exc}") from exc


def policy_problems(store: Store, policy: StoragePolicy, bodies: list[dict[str, Any]]) -> list[str]:
    """Blocking (reads Secrets from the store): one line per refused Model or Secret of an apply."""
    applied = {(b["metadata"]["namespace"], b["metadata"]["name"]): secret_data(b)
               for b in bodies if b["kind"] == "Secret"}
    problems: list[str] = []
    for body in bodies:
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        if body["kind"] == "Secret":
            for scheme, endpoint in secret_endpoints(applied[(ns, name)]):
                why = endpoint_refusal(policy, ns, scheme, endpoint)
                if why:
                    problems.append(f"Secret/{ns}/{name}: refused by the storage policy: {why}")
        elif body["kind"] == "Model":
            spec = body.get("spec") or {}
            uri = str(spec.get("storageUri") or "").strip()
            if not uri:
                continue
            secret_name = spec.get("secretName") or None
            data = applied.get((ns, secret_name)) if secret_name else None
            if secret_name and data is None:
                data, _why = resolve(store, ns, secret_name)
            target = describe(ModelSource(storage_uri=uri, secret_name=secret_name, secret=data))
            why = refusal(policy, ns, target)
            if why:
                problems.append(f"Model/{ns}/{name}: spec.storageUri {uri}: refused by the storage policy: {why}")
    return problems


def custom_runtime_allowed(store: Store, namespace: str, server: str) -> bool:
    """Whether Server ``namespace/server`` carries ``berth.io/allow-custom-runtime: "true"`` (artifacts loaded on
    its replicas may then name their own runtime class in model-settings.json); False when it does not exist."""
    try:
        doc = store.get("Server", namespace, server)
    except NotFound:
        return False
    annotations = (doc.get("metadata") or {}).get("annotations") or {}
    return str(annotations.get(CUSTOM_RUNTIME_ANNOTATION, "")).strip().lower() == "true"
