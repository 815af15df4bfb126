"""Client of the gateway's V2 data plane (``berth infer``)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import httpx

from berth import errors
from berth.client.http import DEFAULT_GATEWAY, connect_reason
from berth.errors import Unavailable


def gateway_from_env(explicit: str | None = None) -> str:
    addr = explicit or os.environ.get("BERTH_GATEWAY") or DEFAULT_GATEWAY
    return (addr if "://" in addr else f"http://{addr}").rstrip("/")


@dataclass
class InferResult:
    status: int
    body: Any
    route: str
    seconds: float


class GatewayClient:
    def __init__(self, address: str | None = None, *, timeout: float = 60.0) -> None:
        self.address = gateway_from_env(address)
        self._http = httpx.Client(base_url=self.address, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def infer(self, model: str, payload: dict[str, Any], *, namespace: str = "default",
              headers: dict[str, str] | None = None) -> InferResult:
        hdrs = {"seldon-namespace": namespace, **(headers or {})}
        started = time.perf_counter()
        try:
            r = self._http.post(f"/v2/models/{model}/infer", json=payload, headers=hdrs)
        except httpx.ConnectError as exc:
            raise Unavailable(f"cannot reach the gateway at {self.address}: {connect_reason(exc)}; is `berth up` "
                              "running? point --gateway / BERTH_GATEWAY at it") from exc
        elapsed = time.perf_counter() - started
        try:
            body = r.json()
        except ValueError:
            body = r.text
        if r.status_code >= 400:
            if isinstance(body, dict) and "code" in body:
                raise errors.from_dict(body, status=r.status_code)
            detail = body.get("error") if isinstance(body, dict) else str(body)[:300]
            raise errors.BerthError(f"model {model}: HTTP {r.status_code}: {detail}",
                                    code="InferenceFailed", details=body)
        return InferResult(r.status_code, body, r.headers.get("x-seldon-route", ""), elapsed)
