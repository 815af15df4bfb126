"""A Secret's values: resolved for a model's load command (sent to its agent, never logged), shown redacted.

Values leave the control plane in one way only: :func:`resolve`, for the load command and the storage
check.  Every other answer shows a Secret through :func:`redact`: its keys, each with the same
:data:`REDACTED` marker (no length, no hint), no ``stringData``, no sealed blob, and no annotation that
could hold a copy of the values (``kubectl.kubernetes.io/last-applied-configuration`` is dropped).

With a sealing store (:mod:`berth.control.sealing`) the stored Secret already holds only the marker and a
ciphertext; :func:`resolve` asks the store to unseal it.  With a plain store (unit tests, tools) the values
are read from the document as Kubernetes keeps them.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from berth.errors import BerthError, NotFound
from berth.store.base import Store

REDACTED = "<redacted>"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
SEALED_FIELD = "sealed"  # where a sealing store keeps a Secret's ciphertext (never shown)
_MIN_LINE = 8  # a line of a multi-line value at least this long is looked for on its own in annotations


def secret_data(doc: dict[str, Any]) -> dict[str, str]:
    """Decoded ``data`` (base64) merged with ``stringData`` (which wins, as in Kubernetes)."""
    out: dict[str, str] = {}
    for key, value in (doc.get("data") or {}).items():
        try:
            out[key] = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError, TypeError, ValueError):
            out[key] = ""
    out.update(doc.get("stringData") or {})
    return out


def resolve(store: Store, namespace: str, name: str | None) -> tuple[dict[str, str] | None, str | None]:
    """(data, None) when found, (None, why) when not; (None, None) when no secret is named."""
    if not name:
        return None, None
    missing = (f"secret {name!r} not found in namespace {namespace}; apply a v1 Secret named {name} "
               "holding the storage credentials")
    reveal = getattr(store, "reveal", None)
    try:
        if callable(reveal):
            values: dict[str, str] = reveal(namespace, name)
            return values, None
        doc = store.get("Secret", namespace, name)
    except NotFound:
        return None, missing
    except BerthError as err:  # sealed but not readable (data key gone, tampered, wrong key): say so, no values
        return None, str(err)
    if SEALED_FIELD in doc:
        return None, (f"secret {name!r} in namespace {namespace} is sealed and this store cannot unseal it; "
                      "run the control plane with its secrets key")
    return secret_data(doc), None


def secret_forms(values: dict[str, str]) -> set[str]:
    """What a copy of these values looks like inside an annotation: as is, JSON-escaped, base64, by line."""
    forms: set[str] = set()
    for value in values.values():
        if not value:
            continue
        forms.add(value)
        forms.add(json.dumps(value)[1:-1])
        forms.add(base64.b64encode(value.encode()).decode())
        forms.update(line.strip() for line in value.splitlines() if len(line.strip()) >= _MIN_LINE)
    return {f for f in forms if f}


def scrub_metadata(meta: dict[str, Any], values: dict[str, str] | None) -> dict[str, Any]:
    """A Secret's metadata without ``last-applied-configuration`` and with every annotation that holds one of
    ``values`` (in any of :func:`secret_forms`) replaced by :data:`REDACTED`."""
    annotations = meta.get("annotations")
    if not isinstance(annotations, dict):
        return meta
    forms = secret_forms(values or {})
    kept = {k: (REDACTED if isinstance(v, str) and any(f in v for f in forms) else v)
            for k, v in annotations.items() if k != LAST_APPLIED}
    out = dict(meta)
    if kept:
        out["annotations"] = kept
    else:
        out.pop("annotations", None)
    return out


def redact(doc: dict[str, Any]) -> dict[str, Any]:
    """A copy of a Secret safe to show: its keys (``data`` and ``stringData`` together, under ``data``), each
    with :data:`REDACTED`; no sealed blob; no annotation that holds or may hold a value."""
    out = {k: v for k, v in doc.items() if k not in ("data", "stringData", SEALED_FIELD)}
    keys = [k for field in ("data", "stringData") if isinstance(doc.get(field), dict) for k in doc[field]]
    if keys or "data" in doc or "stringData" in doc:
        out["data"] = {k: REDACTED for k in sorted(set(keys))}
    if isinstance(doc.get("metadata"), dict):
        plain = None if SEALED_FIELD in doc else secret_data(doc)
        out["metadata"] = scrub_metadata(doc["metadata"], plain)
    return out
