"""Client of the gateway's V2 data plane (``berth infer``).

It sends a token when it has one (``Authorization: Bearer`` on REST, ``authorization`` metadata on gRPC):
the one given, else ``BERTH_TOKEN``, else the token `berth up` registered for this gateway.  Namespaces
that do not require tokens ignore it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import httpx

from berth import errors
from berth.client.credentials import find_token
from berth.client.http import DEFAULT_GATEWAY, connect_reason
from berth.errors import Unavailable
from berth.wire.v2proto import ProtoError, decode_infer_response, encode_infer_request

DEFAULT_GATEWAY_GRPC = "127.0.0.1:9001"
_MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
_AUTH_HINT = ("; the CLI sends BERTH_TOKEN, else the token `berth up` registered for this gateway: set BERTH_TOKEN "
              "to a token with a role in the namespace (berth token create NAME -n NAMESPACE --role inference)")


def gateway_from_env(explicit: str | None = None) -> str:
    addr = explicit or os.environ.get("BERTH_GATEWAY") or DEFAULT_GATEWAY
    return (addr if "://" in addr else f"http://{addr}").rstrip("/")


@dataclass
class InferResult:
    status: int
    body: Any
    route: str
    seconds: float


def grpc_gateway_from_env(explicit: str | None = None) -> str:
    addr = explicit or os.environ.get("BERTH_GATEWAY_GRPC") or DEFAULT_GATEWAY_GRPC
    return addr.split("://", 1)[-1].rstrip("/")


def grpc_server_ready(address: str, timeout: float = 2.0) -> str | None:
    """Ask ``ServerReady`` of the gateway's gRPC port at ``address``: None when ready, else what went wrong."""
    import grpc

    with grpc.insecure_channel(address) as channel:
        try:
            answer = channel.unary_unary("/inference.GRPCInferenceService/ServerReady")(b"", timeout=timeout)
        except grpc.RpcError as exc:
            return f"{exc.code().name}: {exc.details()}"
    return None if answer == b"\x08\x01" else "ServerReady answered not ready (no routing table yet?)"


class GatewayClient:
    """``token``: what to send (None: BERTH_TOKEN or the token `berth up` registered for ``address``; "": none)."""

    def __init__(self, address: str | None = None, *, timeout: float = 60.0, grpc_address: str | None = None,
                 token: str | None = None) -> None:
        self.address = gateway_from_env(address)
        self.grpc_address = grpc_gateway_from_env(grpc_address)
        self.timeout = timeout
        self.token = find_token(self.address, gateway=True) if token is None else token.strip()
        auth = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._grpc_auth = [("authorization", f"Bearer {self.token}")] if self.token else []
        self._http = httpx.Client(base_url=self.address, timeout=timeout, headers=auth)
        self._channel: Any = None
        self._call: Any = None

    def close(self) -> None:
        self._http.close()
        if self._channel is not None:
            self._channel.close()

    def infer_grpc(self, model: str, payload: dict[str, Any], *, namespace: str = "default",
                   headers: dict[str, str] | None = None) -> InferResult:
        """The same call as :meth:`infer`, over the gateway's V2 gRPC port (``ModelInfer``); the answer is
        turned back into the V2 JSON form."""
        import grpc  # only this mode needs it

        request = encode_infer_request(model, payload)
        if self._call is None:
            self._channel = grpc.insecure_channel(self.grpc_address)
            self._call = self._channel.unary_unary(_MODEL_INFER)
        metadata = [("seldon-namespace", namespace), *self._grpc_auth,
                    *((k.lower(), v) for k, v in (headers or {}).items())]
        started = time.perf_counter()
        try:
            answer, call = self._call.with_call(request, metadata=metadata, timeout=self.timeout)
        except grpc.RpcError as exc:
            raise self._grpc_error(model, exc) from None
        elapsed = time.perf_counter() - started
        trailing = dict(call.trailing_metadata() or ())
        try:
            body = decode_infer_response(answer)
        except ProtoError as exc:
            raise errors.BerthError(f"model {model}: {exc}", code="InferenceFailed") from exc
        return InferResult(0, body, str(trailing.get("x-seldon-route", "")), elapsed)

    def _grpc_error(self, model: str, exc: Any) -> errors.BerthError:
        code = exc.code()
        details = exc.details() or ""
        trailing = dict(exc.trailing_metadata() or ())
        berth_code = trailing.get("berth-error-code")
        if berth_code:  # the gateway's own error: the same message as the REST JSON
            return _with_hint(errors.from_dict({"code": berth_code, "message": details}))
        if code.name == "UNAVAILABLE" and ("connect" in details.lower() or "refused" in details.lower()):
            return Unavailable(f"cannot reach the gateway's gRPC port at {self.grpc_address}: {details}; is "
                               "`berth up` running? point --gateway-grpc / BERTH_GATEWAY_GRPC at it")
        if code.name == "DEADLINE_EXCEEDED":
            return errors.Timeout(f"model {model}: no answer within {self.timeout:g}s over gRPC")
        return errors.BerthError(f"model {model}: gRPC {code.name}: {details}", code="InferenceFailed",
                                 details={"grpc_status": code.name, "route": trailing.get("x-seldon-route")})

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
        return answer(model, r.status_code, body, r.headers.get("x-seldon-route", ""), elapsed)


def answer(model: str, status: int, body: Any, route: str, seconds: float) -> InferResult:
    """The gateway's REST answer as ``berth infer`` shows it, or its error (wherever it came through: directly, or
    through a Kubernetes API server's service proxy, client/kube.py)."""
    if status >= 400:
        if isinstance(body, dict) and "code" in body:
            raise _with_hint(errors.from_dict(body, status=status))
        detail = body.get("error") if isinstance(body, dict) else str(body)[:300]
        raise errors.BerthError(f"model {model}: HTTP {status}: {detail}", code="InferenceFailed", details=body)
    return InferResult(status, body, route, seconds)


def _with_hint(err: errors.BerthError) -> errors.BerthError:
    """A refusal for want of a token says where the CLI looked for one."""
    if err.code in ("Unauthenticated", "Forbidden"):
        err.message += _AUTH_HINT
        err.args = (err.message,)
    return err
