"""The gateway's V2 gRPC endpoint (``inference.GRPCInferenceService``), forwarding bytes as received.

Methods are registered through a generic handler whose (de)serializers are the identity: a request is
never decoded.  The model comes from the ``seldon-model`` metadata key, else from field 1 of the
request (``model_name``/``name``, read by :mod:`protowire`); the namespace from ``seldon-namespace``;
sticky sessions from ``x-seldon-route``.  Routing is :meth:`Router.decide`, as for REST.  When the
chosen model is not the name in the request, a new field 1 naming it is appended (the last value wins),
so the rest of the message goes upstream byte for byte over a pooled channel per replica.

Answers carry ``x-seldon-route`` in the trailing metadata (set with the answer: a separate send of
initial metadata costs a round of its own).  MLServer's own statuses pass through; the
gateway's failures are gRPC statuses with the same messages as the REST JSON errors, and the error's
code (``NotFound``, ``ModelNotReady``, ...) in the trailing metadata key ``berth-error-code``.
``ServerLive``, ``ServerReady`` and ``ServerMetadata`` are answered by the gateway itself.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
from grpc import aio

import berth
from berth.errors import BerthError, ConfigError, InvalidInput, NotFound, PayloadTooLarge, Timeout, Unavailable
from berth.gateway import protowire
from berth.gateway.balance import Balancer, Ejections
from berth.gateway.metrics import Metrics, error_labels
from berth.gateway.mirror import Mirrors
from berth.gateway.proxy import EJECT_S
from berth.gateway.routing import Decision, Router
from berth.gateway.table import Target

SERVICE = "inference.GRPCInferenceService"
ROUTED = ("ModelInfer", "ModelMetadata", "ModelReady")
_NEVER_CONNECTED = ("failed to connect to all addresses", "connections to all backends failing")
_LIVE = protowire.bool_field(1, True)
_SC = grpc.StatusCode


def status_of(err: BerthError) -> grpc.StatusCode:
    """The gRPC status for a gateway error (the REST answer's HTTP status, in gRPC terms)."""
    if isinstance(err, NotFound):
        return _SC.NOT_FOUND
    if isinstance(err, PayloadTooLarge):
        return _SC.RESOURCE_EXHAUSTED
    if isinstance(err, InvalidInput):
        return _SC.INVALID_ARGUMENT
    if isinstance(err, Unavailable):
        return _SC.UNAVAILABLE
    if isinstance(err, Timeout):
        return _SC.DEADLINE_EXCEEDED
    return _SC.INTERNAL


class Upstreams:
    """One channel per inference-server gRPC address, with its method callables built once."""

    def __init__(self, options: list[tuple[str, Any]]) -> None:
        self.options = options
        self._pool: dict[str, dict[str, Any]] = {}
        self._channels: dict[str, aio.Channel] = {}

    def methods(self, address: str) -> dict[str, Any]:
        found = self._pool.get(address)
        if found is None:
            channel = aio.insecure_channel(address, options=self.options)
            found = {m: channel.unary_unary(f"/{SERVICE}/{m}") for m in ROUTED}
            self._channels[address] = channel
            self._pool[address] = found
        return found

    async def prune(self, keep: frozenset[str], grace: float) -> None:
        """Close the channels of addresses no longer routed (after their calls in flight, up to ``grace``)."""
        gone = [a for a in self._channels if a not in keep]
        channels = [self._channels.pop(a) for a in gone]
        for a in gone:
            self._pool.pop(a, None)
        for channel in channels:
            await channel.close(grace)

    async def close(self) -> None:
        channels = list(self._channels.values())
        self._channels.clear()
        self._pool.clear()
        for channel in channels:
            await channel.close(None)


class GrpcGateway:
    """Routes and forwards V2 gRPC calls; one per gateway, sharing router, balancer and metrics with REST."""

    def __init__(self, router: Router, balancer: Balancer, metrics: Metrics, mirrors: Mirrors, *,
                 upstream_timeout: float = 60.0, connect_timeout: float = 5.0,
                 max_request_bytes: int = 256 << 20) -> None:
        self.router = router
        self.balancer = balancer
        self.metrics = metrics
        self.mirrors = mirrors
        self.upstream_timeout = upstream_timeout
        self.max_request_bytes = max_request_bytes
        backoff_ms = int(max(min(connect_timeout, upstream_timeout), 0.1) * 1000)
        self.upstreams = Upstreams([("grpc.max_send_message_length", max_request_bytes),
                                    ("grpc.max_receive_message_length", -1),
                                    ("grpc.min_reconnect_backoff_ms", backoff_ms),
                                    ("grpc.enable_retries", 0)])
        self._down = Ejections()  # replica (REST address) -> until when its gRPC port is passed over
        self._pruning: set[asyncio.Task[None]] = set()

    def forget_unrouted(self) -> None:
        """Close, in the background, the upstream channels of replicas the new table no longer holds."""
        task = asyncio.ensure_future(self.upstreams.prune(self.router.grpc_addresses, self.upstream_timeout))
        self._pruning.add(task)
        task.add_done_callback(self._pruning.discard)

    def handler(self) -> grpc.GenericRpcHandler:
        def routed(method: str) -> Any:
            async def handle(request: bytes, context: aio.ServicerContext) -> bytes:
                return await self.routed(method, request, context)
            return grpc.unary_unary_rpc_method_handler(handle)

        async def live(request: bytes, context: aio.ServicerContext) -> bytes:
            return _LIVE

        async def ready(request: bytes, context: aio.ServicerContext) -> bytes:
            return protowire.bool_field(1, self.router.ready)

        async def metadata(request: bytes, context: aio.ServicerContext) -> bytes:
            return protowire.string_field(1, "berth-gateway") + protowire.string_field(2, berth.__version__)

        handlers = {m: routed(m) for m in ROUTED}
        handlers["ServerLive"] = grpc.unary_unary_rpc_method_handler(live)
        handlers["ServerReady"] = grpc.unary_unary_rpc_method_handler(ready)
        handlers["ServerMetadata"] = grpc.unary_unary_rpc_method_handler(metadata)
        return grpc.method_handlers_generic_handler(SERVICE, handlers)

    async def routed(self, method: str, request: bytes, context: aio.ServicerContext) -> bytes:
        started = time.perf_counter()
        model = namespace = route = None
        for key, value in context.invocation_metadata() or ():
            if key == "seldon-model":
                model = value
            elif key == "seldon-namespace":
                namespace = value
            elif key == "x-seldon-route":
                route = value
        try:
            asked = protowire.last_string(request, 1)
        except protowire.WireError as exc:
            return await self._fail(context, InvalidInput(f"{method} request is not a valid protobuf message: "
                                                          f"{exc}"), started)
        name = model or asked
        if not name:
            return await self._fail(context, InvalidInput(
                f"{method} request names no model: set model_name (name) or the seldon-model metadata key"),
                started)
        try:
            decision = self.router.decide(namespace or "default", name, route)
        except BerthError as err:
            return await self._fail(context, err, started)
        body = request if asked == decision.target.name else request + decision.target.pb_name
        return await self._forward(method, decision, body, context, started)

    async def _forward(self, method: str, decision: Decision, body: bytes, context: aio.ServicerContext,
                       started: float) -> bytes:
        target = decision.target
        timeout = self.upstream_timeout
        remaining = context.time_remaining()
        if remaining is not None and remaining < timeout:
            timeout = max(remaining, 0.001)
        balancer = self.balancer
        failed: list[str] = []
        problems: list[str] = []
        address = self._down.pick(self.balancer, target.key, target.addresses, failed, time.monotonic)
        while address is not None:
            upstream = target.grpc[address]
            call = self.upstreams.methods(upstream)[method]
            balancer.acquire(address)
            failure: aio.AioRpcError | None = None
            try:
                answer = await call(body, timeout=timeout)
            except aio.AioRpcError as exc:
                failure = exc
            finally:
                balancer.release(address)
            if failure is not None:
                code = failure.code()
                details = failure.details() or ""
                if code is _SC.UNAVAILABLE:  # MLServer never answers it: the replica is unreachable or vanished
                    failed.append(address)
                    self._down.eject(address, time.monotonic() + EJECT_S)
                    refused = "refused" in details and details.startswith(_NEVER_CONNECTED)
                    problems.append(f"inference server {upstream} (gRPC) refused connection" if refused
                                    else f"inference server {upstream} (gRPC) is unavailable: {details}")
                    if len(failed) >= 2:
                        break
                    address = self._down.pick(self.balancer, target.key, target.addresses, failed, time.monotonic)
                    continue
                if code is _SC.DEADLINE_EXCEEDED:
                    late = Timeout(f"inference server {upstream} did not answer model {target.name} in namespace "
                                  f"{target.namespace} within {timeout:g}s; raise the gateway's upstream timeout "
                                  "if the model is this slow, or check the server's load",
                                  details={"model": target.name, "namespace": target.namespace,
                                           "address": upstream, "timeout_s": timeout})
                    return await self._fail(context, late, started, decision)
                self.metrics.observe(decision.labels, "grpc", code.name, True, time.perf_counter() - started)
                await context.abort(code, details, trailing_metadata=(("x-seldon-route", decision.route),))
            self._down.restore(address)
            context.set_trailing_metadata((("x-seldon-route", decision.route),))
            if decision.mirror is not None and method == "ModelInfer":
                self.mirrors.send(decision.mirror_labels, "grpc", self._copy(method, decision.mirror, body))
            self.metrics.observe(decision.labels, "grpc", "OK", False, time.perf_counter() - started)
            return answer  # type: ignore[no-any-return]
        total = len(target.addresses)
        tried = f"; tried {len(failed)} of {total} replicas" if total > 1 else ""
        err = Unavailable(f"model {target.name} in namespace {target.namespace}: " + "; ".join(problems) + tried
                          + "; check that the inference server is running (berth get servers)",
                          details={"model": target.name, "namespace": target.namespace,
                                   "tried": [target.grpc[a] for a in failed], "errors": problems})
        return await self._fail(context, err, started, decision)

    async def _copy(self, method: str, target: Target, body: bytes) -> str:
        address = self._down.pick(self.balancer, target.key, target.addresses, [], time.monotonic)
        if address is None:
            return "unavailable"
        self.balancer.acquire(address)
        try:
            await self.upstreams.methods(target.grpc[address])[method](body + target.pb_name,
                                                                       timeout=self.upstream_timeout)
            return "ok"
        except aio.AioRpcError as exc:
            return "timeout" if exc.code() is _SC.DEADLINE_EXCEEDED else "error"
        finally:
            self.balancer.release(address)

    async def _fail(self, context: aio.ServicerContext, err: BerthError, started: float,
                    decision: Decision | None = None) -> bytes:
        code = status_of(err)
        labels = decision.labels if decision is not None else error_labels(err)
        self.metrics.observe(labels, "grpc", code.name, True, time.perf_counter() - started)
        trailing: tuple[tuple[str, str], ...] = (("berth-error-code", err.code),)
        if decision is not None:
            trailing += (("x-seldon-route", decision.route),)
        await context.abort(code, err.message, trailing_metadata=trailing)
        raise AssertionError("context.abort returned")  # abort always raises


async def start_grpc(gateway: GrpcGateway, host: str, port: int) -> tuple[aio.Server, int]:
    """A started gRPC server for ``gateway`` on ``host:port``; answers it and the bound port."""
    server = aio.server(options=[("grpc.so_reuseport", 0),
                                 ("grpc.max_receive_message_length", gateway.max_request_bytes),
                                 ("grpc.max_send_message_length", -1)])
    server.add_generic_rpc_handlers((gateway.handler(),))
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as exc:
        bound = 0
        cause: BaseException | None = exc
    else:
        cause = None
    if not bound:
        raise ConfigError(f"the gateway cannot listen for gRPC on {host}:{port} (in use, or not an address "
                          "here); choose another port (--grpc-port) or stop what uses it") from cause
    await server.start()
    return server, bound
