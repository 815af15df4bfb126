"""The gateway's V2 (Open Inference Protocol) REST endpoint, in front of every inference server.

Requests are routed by the ``seldon-model`` header when present, else by the model name in the path,
in the namespace of the ``seldon-namespace`` header (when absent: ``default``, or the gateway's ``--namespace``
for a namespace's own gateway), through
:meth:`Router.decide` (experiments, weights, sticky ``x-seldon-route``).  The inference server knows the
model by its plain name.  Answers pass MLServer's status and body through untouched and carry
``x-seldon-route``; the gateway's own failures are JSON ``{code, message, details}``.  A JSON infer body
is checked (it parses; each input's data fills its shape) before it is forwarded as received.
``GET /metrics`` serves the Prometheus metrics of REST and gRPC together.

A namespace the table guards (its SeldonRuntime says ``berth.io/inference-auth: "required"``) answers only
callers whose ``Authorization: Bearer <token>`` has a role there: 401/403 otherwise, decided before the model
is looked up (:mod:`berth.gateway.routing.auth`).  ``/metrics`` and the probe answer only operators once the table
carries auth; the health endpoints and ``GET /v2`` stay open.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from pathlib import Path

from aiohttp import web

import berth
from berth.aiotasks import GuardedTask, guarded
from berth.errors import BerthError, ConfigError, NotFound, PayloadTooLarge, Timeout, Unavailable
from berth.gateway.forwarding.mirror import Mirrors
from berth.gateway.forwarding.rest import Proxy, error_response
from berth.gateway.http2.limits import Limits
from berth.gateway.metrics import CONTENT_TYPE, Metrics, error_labels
from berth.gateway.pipelines.serve import PipelineServer
from berth.gateway.probe import PROBE_PATH, GrpcSide, probe_handler
from berth.gateway.routing.router import Decision, Router
from berth.gateway.routing.table import ModelEvicted
from berth.gateway.routing.wake import DEFAULT_WAKE_TIMEOUT, Waker, held
from berth.gateway.routing.watch import TableWatcher
from berth.gateway.transports.checks import check_infer_body, is_plain_json
from berth.gateway.transports.grpcserver import GrpcGateway, GrpcListener, start_grpc
from berth.gateway.transports.restlimits import RestLimits
from berth.gateway.usage import UsageMeter, post_usage
from berth.wire.routes import RoutingTable
from berth.wire.tls import client_context
from berth.wire.tls import control_url as tls_url

log = logging.getLogger("berth.gateway")

MAX_REQUEST_BYTES = 256 * 1024 * 1024
_EMPTY = b""
_REST = "rest"


class _Handlers:
    def __init__(self, router: Router, proxy: Proxy, metrics: Metrics, mirrors: Mirrors,
                 max_request_bytes: int, check_inputs: bool) -> None:
        self.router = router
        self.proxy = proxy
        self.metrics = metrics
        self.mirrors = mirrors
        self.max_request_bytes = max_request_bytes
        self.check_inputs = check_inputs
        self.body_timeout = RestLimits().body_timeout
        self.pipelines: PipelineServer | None = None  # NAME.pipeline and experiments over pipelines
        self.namespace = "default"  # of a request without seldon-namespace (a namespace's gateway: its own)

    def _decide(self, request: web.Request) -> tuple[str, Decision]:
        headers = request.headers
        namespace = headers.get("seldon-namespace") or self.namespace
        self.router.admit(namespace, headers.get("Authorization"))  # first: a refused caller learns nothing
        name = headers.get("seldon-model") or request.match_info["name"]
        return name, self.router.decide(namespace, name, headers.get("x-seldon-route"))

    async def _held(self, request: web.Request, evicted: ModelEvicted) -> tuple[str, Decision]:
        """:meth:`_decide` once the evicted model is loaded again (or the wake's 503)."""
        headers = request.headers
        name = headers.get("seldon-model") or request.match_info["name"]
        return name, await held(self.router, headers.get("seldon-namespace") or self.namespace, name,
                                headers.get("x-seldon-route"), evicted)

    def _fail(self, err: BerthError, started: float, decision: Decision | None = None) -> web.Response:
        resp = error_response(err)
        labels = decision.labels if decision is not None else error_labels(err)
        self.metrics.observe(labels, _REST, str(resp.status), True, time.perf_counter() - started)
        return resp

    async def infer(self, request: web.Request) -> web.Response:
        pipelines, headers = self.pipelines, request.headers
        if pipelines is not None and pipelines.handles(headers.get("seldon-namespace") or self.namespace,
                                                       headers.get("seldon-model") or request.match_info["name"]):
            if "seldon-namespace" not in headers and self.namespace != "default":  # a namespace's own gateway
                request = request.clone(headers={**headers, "seldon-namespace": self.namespace})
            return await pipelines.rest(request, self.max_request_bytes, self.body_timeout)
        started = time.perf_counter()
        try:
            name, decision = self._decide(request)
        except ModelEvicted as evicted:  # held while the control plane reloads it (routing/wake.py)
            try:
                name, decision = await self._held(request, evicted)
            except BerthError as err:
                return self._fail(err, started)
        except BerthError as err:
            return self._fail(err, started)
        try:
            if request.content.is_eof():  # the whole body came with the head (most requests): no clock needed
                body = await request.read()
            else:
                async with asyncio.timeout(self.body_timeout):
                    body = await request.read()
        except TimeoutError:
            slow = Timeout(f"the body of the request for model {name} did not arrive within {self.body_timeout:g}s; "
                           "send it faster or in smaller requests", details={"model": name,
                                                                              "timeout_s": self.body_timeout})
            slow.http_status = 408
            resp = self._fail(slow, started, decision)
            resp.force_close()  # the rest of the body is never read
            return resp
        except web.HTTPRequestEntityTooLarge:
            return self._fail(PayloadTooLarge(
                f"request for model {name} is larger than the gateway accepts ({self.max_request_bytes} bytes); "
                "send a smaller batch or raise the gateway's limit (--max-request-bytes)",
                details={"model": name, "limit_bytes": self.max_request_bytes}), started, decision)
        headers = request.headers
        if self.check_inputs and is_plain_json(headers):
            try:
                check_infer_body(body, name)
            except BerthError as err:
                return self._fail(err, started, decision)
        version = request.match_info.get("version")
        resp = await self.proxy.forward(decision, "infer", version, "POST", body, headers)
        mirror = decision.mirror
        if mirror is not None:
            self.mirrors.send(decision.mirror_labels, _REST, self.proxy.copy(mirror, "infer", version, body, headers))
        status = resp.status
        self.metrics.observe(decision.labels, _REST, str(status), status >= 400, time.perf_counter() - started)
        return resp

    async def metadata(self, request: web.Request) -> web.Response:
        return await self._get(request, "meta")

    async def model_ready(self, request: web.Request) -> web.Response:
        return await self._get(request, "ready")

    async def _get(self, request: web.Request, kind: str) -> web.Response:
        started = time.perf_counter()
        try:
            _, decision = self._decide(request)
        except ModelEvicted as evicted:
            try:
                _, decision = await self._held(request, evicted)
            except BerthError as err:
                return self._fail(err, started)
        except BerthError as err:
            return self._fail(err, started)
        resp = await self.proxy.forward(decision, kind, request.match_info.get("version"), "GET", _EMPTY,
                                        request.headers)
        self.metrics.observe(decision.labels, _REST, str(resp.status), resp.status >= 400,
                             time.perf_counter() - started)
        return resp

    async def live(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def ready(self, request: web.Request) -> web.Response:
        if self.router.ready:
            return web.Response(status=200)
        return error_response(Unavailable(f"gateway not ready: {self.router.problem}",
                                          details={"problem": self.router.problem}))

    async def server_metadata(self, request: web.Request) -> web.Response:
        return web.json_response({"name": "berth-gateway", "version": berth.__version__, "extensions": []})

    async def unknown(self, request: web.Request) -> web.Response:
        """Every path or method the V2 API does not have: JSON, like every other answer."""
        return error_response(NotFound(
            f"no such endpoint: {request.method} {request.path}; the gateway serves POST "
            "/v2/models/NAME/infer, GET /v2/models/NAME[/ready], GET /v2/health/live|ready, GET /metrics",
            details={"method": request.method, "path": request.path}))

    async def prometheus(self, request: web.Request) -> web.Response:
        try:
            self.router.admit_operator(request.headers.get("Authorization"))
        except BerthError as err:
            return error_response(err)
        resp = web.Response(body=self.metrics.exposition())
        resp.headers["Content-Type"] = CONTENT_TYPE
        return resp


def make_app(router: Router, *, proxy: Proxy | None = None, metrics: Metrics | None = None,
             mirrors: Mirrors | None = None, upstream_timeout: float = 60.0, connect_timeout: float = 5.0,
             max_request_bytes: int = MAX_REQUEST_BYTES, check_inputs: bool = True,
             grpc: GrpcSide | None = None, pipelines: PipelineServer | None = None,
             rest_limits: RestLimits | None = None, namespace: str = "default") -> web.Application:
    """The gateway application serving from ``router`` (whose table a watcher may replace at any time);
    ``grpc`` is filled in once the gRPC endpoint listens (for the probe)."""
    proxy = proxy or Proxy(upstream_timeout=upstream_timeout, connect_timeout=connect_timeout)
    metrics = metrics or Metrics()
    mirrors = mirrors or Mirrors(metrics)
    h = _Handlers(router, proxy, metrics, mirrors, max_request_bytes, check_inputs)
    h.body_timeout = (rest_limits or RestLimits()).body_timeout
    h.namespace = namespace
    h.pipelines = pipelines or PipelineServer(router, proxy, metrics, step_timeout_s=upstream_timeout, mirrors=mirrors)
    # request bodies stay as sent (a compressed body is forwarded compressed, with its Content-Encoding)
    app = web.Application(client_max_size=max_request_bytes,
                          handler_args={"access_log": None, "auto_decompress": False})

    async def pooled(_: web.Application) -> AsyncIterator[None]:
        await proxy.start()
        yield
        await mirrors.close()
        await proxy.close()

    app.cleanup_ctx.append(pooled)
    add = app.router.add_route
    for prefix in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        add("POST", prefix + "/infer", h.infer)
        add("GET", prefix, h.metadata)
        add("GET", prefix + "/ready", h.model_ready)
    add("GET", "/v2/health/live", h.live)
    add("GET", "/v2/health/ready", h.ready)
    add("GET", "/v2", h.server_metadata)
    add("GET", "/metrics", h.prometheus)
    add("GET", PROBE_PATH, probe_handler(router, grpc))
    add("*", "/{tail:.*}", h.unknown)  # last: matched only when nothing above was
    return app


async def run_gateway(host: str, port: int, control_url: str | None, stop: asyncio.Event, *,
                      routes: RoutingTable | None = None, grpc_port: int | None = None,
                      upstream_timeout: float = 60.0, connect_timeout: float = 5.0,
                      max_request_bytes: int = MAX_REQUEST_BYTES, check_inputs: bool = True,
                      watch_backoff_max: float = 5.0, on_started: Callable[[int], None] | None = None,
                      on_grpc_started: Callable[[int], None] | None = None, token: str | None = None,
                      rest_limits: RestLimits | None = None, grpc_limits: Limits | None = None,
                      usage_interval: float | None = 2.0, wake_timeout: float = DEFAULT_WAKE_TIMEOUT,
                      control_ca: Path | None = None, token_file: Path | None = None,
                      namespace: str = "default") -> None:
    """Serve the gateway (REST on ``host:port``, gRPC on ``host:grpc_port`` when given) until ``stop`` is set.

    The table comes from the control plane at ``control_url`` (followed, with reconnects), from
    ``routes`` (a static table), or both (``routes`` serves until the control plane answers).
    ``on_started`` gets the bound REST port and ``on_grpc_started`` the gRPC one (useful with port 0);
    both servers listen before either is called.  ``token`` is sent (``Authorization: Bearer``) on the
    routes watch: a gateway token, or an admin's of every namespace.  With a control plane, a usage report
    (:mod:`berth.gateway.usage`) is posted to it every ``usage_interval`` seconds (None: never).
    With ``control_ca`` the control plane must be https:// (ConfigError otherwise: a token is never sent in clear)
    and only that CA is trusted by the routes watch, the usage reports and the wake calls; ``token_file`` is read
    again at each of their connections (a rotated token), ``token`` being its content at start.  ``namespace``:
    the namespace of a REST request without a ``seldon-namespace`` header (a namespace's own gateway: its own).
    """
    if control_url is None and routes is None:
        raise ConfigError("the gateway needs a control plane URL (--control URL) or a static routing "
                          "table (--routes FILE) to know where models are")
    if control_url is not None:
        control_url = tls_url(control_url, control_ca)  # http:// with a CA: ConfigError, before any token leaves
    tls = client_context(control_ca) if control_ca is not None else None
    router = Router(routes)
    metrics = Metrics()
    # requests for an evicted model wait up to wake_timeout s while the control plane reloads it (docs/overcommit.md)
    waker = Waker(router, control_url, token, timeout=wake_timeout, registry=metrics.registry, tls=tls,
                  token_file=token_file)
    mirrors = Mirrors(metrics)
    proxy = Proxy(upstream_timeout=upstream_timeout, connect_timeout=connect_timeout)
    grpc_side = GrpcSide()
    pipelines = PipelineServer(router, proxy, metrics, step_timeout_s=upstream_timeout, mirrors=mirrors)
    app = make_app(router, proxy=proxy, metrics=metrics, mirrors=mirrors, max_request_bytes=max_request_bytes,
                   check_inputs=check_inputs, grpc=grpc_side, rest_limits=rest_limits, pipelines=pipelines,
                   namespace=namespace)
    rest_limits = rest_limits or RestLimits()
    # aiohttp's keep-alive clock runs from a connection's start, and from each answer, until a complete request
    # head arrives: the header timeout (slowloris, silent connections)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=min(upstream_timeout, 10.0),
                           keepalive_timeout=rest_limits.header_timeout)
    await runner.setup()
    watcher_task: GuardedTask | None = None
    usage_task: GuardedTask | None = None
    meter: UsageMeter | None = None
    grpc_server: GrpcListener | None = None
    grpc_gateway: GrpcGateway | None = None
    try:
        site = web.TCPSite(runner, host, port, backlog=1024)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(f"the gateway cannot listen on {host}:{port}: {exc.strerror or exc}; "
                              "choose another port (--port) or stop what uses it") from exc
        bound = int(runner.addresses[0][1])
        grpc_bound = None
        if grpc_port is not None:
            grpc_gateway = GrpcGateway(router, proxy.balancer, metrics, mirrors, upstream_timeout=upstream_timeout,
                                       connect_timeout=connect_timeout, max_request_bytes=max_request_bytes,
                                       limits=grpc_limits)
            grpc_gateway.pipelines = pipelines  # NAME.pipeline over gRPC, run as over REST
            grpc_gateway.namespace = namespace  # a call without seldon-namespace: this gateway's namespace
            router.listeners.append(lambda: grpc_gateway.forget_unrouted() if grpc_gateway else None)
            grpc_server, grpc_bound = await start_grpc(grpc_gateway, host, grpc_port)
            grpc_side.gateway, grpc_side.address = grpc_gateway, f"{host}:{grpc_bound}"
        if control_url is not None:
            watcher = TableWatcher(control_url, router, backoff_max=watch_backoff_max,
                                   connect_timeout=connect_timeout, token=token, ca=control_ca, token_file=token_file)
            watcher_task = guarded("routes-watch", partial(watcher.run, stop), restart=True, stop=stop)
            if usage_interval is not None:
                meter = UsageMeter(metrics, proxy.balancer, router)
                usage_task = guarded("usage-reports", partial(
                    post_usage, meter, control_url, token, f"{socket.gethostname()}:{bound}", stop,
                    interval=usage_interval, connect_timeout=connect_timeout, tls=tls, token_file=token_file),
                    restart=True, stop=stop)
        log.info("gateway serving V2 REST on http://%s:%d%s (routes from %s)", host, bound,
                 f" and gRPC on {host}:{grpc_bound}" if grpc_bound else "", control_url or "a static table")
        if on_started is not None:
            on_started(bound)
        if on_grpc_started is not None and grpc_bound is not None:
            on_grpc_started(grpc_bound)
        await stop.wait()
    finally:
        if watcher_task is not None:
            await watcher_task.stop()
        if usage_task is not None:
            await usage_task.stop()
        if meter is not None:
            meter.close()
        if grpc_server is not None:
            await grpc_server.stop(min(upstream_timeout, 5.0))
        if grpc_gateway is not None:
            await grpc_gateway.upstreams.close()
        await runner.cleanup()
        await waker.close()
