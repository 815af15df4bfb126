"""The gateway's V2 (Open Inference Protocol) REST endpoint, in front of every inference server.

Requests are routed by the ``seldon-model`` header when present, else by the model name in the path,
in the namespace of the ``seldon-namespace`` header (``default`` when absent); the inference server
knows the model by its plain name.  Answers pass MLServer's status and body through untouched and
carry ``x-seldon-route``; the gateway's own failures are JSON ``{code, message, details}``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import web

import berth
from berth.errors import BerthError, ConfigError, PayloadTooLarge, Unavailable
from berth.gateway.proxy import Proxy, error_response
from berth.gateway.table import RoutingTableHolder, TableWatcher, Target
from berth.wire.routes import RoutingTable

log = logging.getLogger("berth.gateway")

MAX_REQUEST_BYTES = 256 * 1024 * 1024
_EMPTY = b""


class _Handlers:
    def __init__(self, holder: RoutingTableHolder, proxy: Proxy, max_request_bytes: int) -> None:
        self.holder = holder
        self.proxy = proxy
        self.max_request_bytes = max_request_bytes

    def _target(self, request: web.Request) -> Target:
        headers = request.headers
        name = headers.get("seldon-model") or request.match_info["name"]
        return self.holder.resolve(headers.get("seldon-namespace") or "default", name)

    async def infer(self, request: web.Request) -> web.Response:
        try:
            target = self._target(request)
        except BerthError as err:
            return error_response(err)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return error_response(PayloadTooLarge(
                f"request for model {target.name} is larger than the gateway accepts "
                f"({self.max_request_bytes} bytes); send a smaller batch or raise the gateway's limit",
                details={"model": target.name, "limit_bytes": self.max_request_bytes}))
        return await self.proxy.forward(target, "infer", request.match_info.get("version"), "POST", body,
                                        request.headers)

    async def metadata(self, request: web.Request) -> web.Response:
        return await self._get(request, "meta")

    async def model_ready(self, request: web.Request) -> web.Response:
        return await self._get(request, "ready")

    async def _get(self, request: web.Request, kind: str) -> web.Response:
        try:
            target = self._target(request)
        except BerthError as err:
            return error_response(err)
        return await self.proxy.forward(target, kind, request.match_info.get("version"), "GET", _EMPTY,
                                        request.headers)

    async def live(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def ready(self, request: web.Request) -> web.Response:
        if self.holder.ready:
            return web.Response(status=200)
        return error_response(Unavailable(f"gateway not ready: {self.holder.problem}",
                                          details={"problem": self.holder.problem}))

    async def server_metadata(self, request: web.Request) -> web.Response:
        return web.json_response({"name": "berth-gateway", "version": berth.__version__, "extensions": []})


def make_app(table: RoutingTableHolder, *, upstream_timeout: float = 60.0, connect_timeout: float = 5.0,
             max_request_bytes: int = MAX_REQUEST_BYTES) -> web.Application:
    """The gateway application serving from ``table`` (which a watcher may update at any time)."""
    proxy = Proxy(upstream_timeout=upstream_timeout, connect_timeout=connect_timeout)
    h = _Handlers(table, proxy, max_request_bytes)
    app = web.Application(client_max_size=max_request_bytes, handler_args={"access_log": None})

    async def pooled(_: web.Application) -> AsyncIterator[None]:
        await proxy.start()
        yield
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
    return app


async def run_gateway(host: str, port: int, control_url: str | None, stop: asyncio.Event, *,
                      routes: RoutingTable | None = None, upstream_timeout: float = 60.0,
                      connect_timeout: float = 5.0, watch_backoff_max: float = 5.0,
                      on_started: Callable[[int], None] | None = None) -> None:
    """Serve the gateway on ``host:port`` until ``stop`` is set.

    The table comes from the control plane at ``control_url`` (followed, with reconnects), from
    ``routes`` (a static table), or both (``routes`` serves until the control plane answers).
    ``on_started`` gets the bound port (useful with ``port=0``).
    """
    if control_url is None and routes is None:
        raise ConfigError("the gateway needs a control plane URL (--control URL) or a static routing "
                          "table (--routes FILE) to know where models are")
    holder = RoutingTableHolder(routes)
    app = make_app(holder, upstream_timeout=upstream_timeout, connect_timeout=connect_timeout)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=min(upstream_timeout, 10.0))
    await runner.setup()
    watcher_task: asyncio.Task[None] | None = None
    try:
        site = web.TCPSite(runner, host, port, backlog=1024)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(f"the gateway cannot listen on {host}:{port}: {exc.strerror or exc}; "
                              "choose another port (--port) or stop what uses it") from exc
        bound = int(runner.addresses[0][1])
        if control_url is not None:
            watcher = TableWatcher(control_url, holder, backoff_max=watch_backoff_max,
                                   connect_timeout=connect_timeout)
            watcher_task = asyncio.create_task(watcher.run(stop))
        log.info("gateway serving V2 on http://%s:%d (routes from %s)", host, bound,
                 control_url or "a static table")
        if on_started is not None:
            on_started(bound)
        await stop.wait()
    finally:
        if watcher_task is not None:
            watcher_task.cancel()
            await asyncio.gather(watcher_task, return_exceptions=True)
        await runner.cleanup()
