"""Typed calls of the control API's quota endpoints (control/quotas.py), over a ``BerthClient``."""

from __future__ import annotations

from typing import Any

from berth.client.http import BerthClient


def get_quota(client: BerthClient, namespace: str) -> dict[str, Any]:
    """``{namespace, hard: {models, servers, replicas}, used: {...}}`` (a limit of None: no limit)."""
    answer: dict[str, Any] = client._request("GET", f"/api/v1/namespaces/{namespace}/quota")
    return answer


def set_quota(client: BerthClient, namespace: str, hard: dict[str, int | None]) -> dict[str, Any]:
    """Replace the namespace's limits with ``hard``; answers as :func:`get_quota`."""
    answer: dict[str, Any] = client._request("PUT", f"/api/v1/namespaces/{namespace}/quota", json=hard)
    return answer
