"""Resolve a model's ``secretName`` to the Secret's decoded data (sent to the agent, never logged)."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from berth.errors import NotFound
from berth.store.base import Store


def secret_data(doc: dict[str, Any]) -> dict[str, str]:
    """Decoded ``data`` (base64) merged with ``stringData`` (which wins, as in Kubernetes)."""
    out: dict[str, str] = {}
    for key, value in (doc.get("data") or {}).items():
        try:
            out[key] = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            out[key] = ""
    out.update(doc.get("stringData") or {})
    return out


def resolve(store: Store, namespace: str, name: str | None) -> tuple[dict[str, str] | None, str | None]:
    """(data, None) when found, (None, why) when not; (None, None) when no secret is named."""
    if not name:
        return None, None
    try:
        return secret_data(store.get("Secret", namespace, name)), None
    except NotFound:
        return None, (f"secret {name!r} not found in namespace {namespace}; apply a v1 Secret named {name} "
                      "holding the storage credentials")


def redact(doc: dict[str, Any]) -> dict[str, Any]:
    """A copy of a Secret safe to show: every value replaced by its length."""
    out = dict(doc)
    for key in ("data", "stringData"):
        if isinstance(doc.get(key), dict):
            out[key] = {k: f"<redacted: {len(str(v))} chars>" for k, v in doc[key].items()}
    return out
