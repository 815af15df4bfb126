"""Slowloris guards for the control plane's HTTP listener (aiohttp has none of its own).

A client must send a request's head (request line and headers) within ``header_timeout`` seconds of opening
the connection, or of the first byte after an idle keep-alive pause; a request's body must arrive within
``body_timeout`` seconds of its head; an idle keep-alive connection is closed after ``idle_timeout``.  Once
a handler runs (a watch, an agent's WebSocket), the listener no longer times the connection: those have
their own heartbeats.

Two parts work together: ``GuardedSite`` wraps every accepted connection's aiohttp protocol in a
``GuardedProtocol`` that runs the head/idle timer on the event loop (no task per connection), and
``slowloris_middleware`` (right inside the errors middleware, so a too-large body still answers 413) stops
that timer once aiohttp has parsed a head, reads the body under the body deadline, and starts the idle timer
again when the answer is done.

What a slow client sees: ``408 Request Timeout`` with ``{"code": "RequestTimeout", ...}`` and the connection
closed (head or body too slow); an idle keep-alive connection is closed without a word, as HTTP allows.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from berth.errors import RequestTimeout

log = logging.getLogger("berth.control.listener")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
CLOSE_GRACE = 0.5  # seconds left for a 408 answer to be written before its connection is closed


@dataclass(frozen=True)
class ListenerLimits:
    header_timeout: float = 10.0  # seconds to send a request's head (from connect, or from its first byte)
    body_timeout: float = 60.0  # seconds to send a request's body, from the end of its head
    idle_timeout: float = 75.0  # seconds an idle keep-alive connection is kept


def timeout_body(what: str, seconds: float) -> bytes:
    """The JSON error body of a 408 (the same ``{code, message, details}`` shape as every API error)."""
    err = RequestTimeout(f"the request's {what} did not arrive within {seconds:g}s; the connection is closed "
                         "(send the whole request at once, or check the network)", details={"timeoutSeconds": seconds})
    return json.dumps(err.to_dict()).encode()


class GuardedProtocol(asyncio.Protocol):
    """Forwards everything to aiohttp's protocol; closes the connection when a head or an idle pause lasts
    too long.  States: ``head`` (waiting for a request's head), ``busy`` (a handler runs), ``idle``."""

    def __init__(self, inner: Any, limits: ListenerLimits) -> None:
        self.inner = inner
        self.limits = limits
        self.transport: asyncio.Transport | None = None
        self.state = "head"
        self.busy = 0
        self._timer: asyncio.TimerHandle | None = None

    # asyncio.Protocol, forwarded
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they have the same methods
        self.transport = transport  # type: ignore[assignment]
        self._arm("head", self.limits.header_timeout)
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.state == "closing":
            return
        if self.state == "idle":  # a new request begins: its head must now come within the header timeout
            self._arm("head", self.limits.header_timeout)
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        result: bool | None = self.inner.eof_received()
        return result

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    # called by the middleware
    def request_started(self) -> None:
        self.busy += 1
        self.state = "busy"
        self._cancel()

    def request_done(self, *, closing: bool = False) -> None:
        self.busy = max(0, self.busy - 1)
        if closing:  # the answer closes the connection: close it soon after (aiohttp would linger 10 s reading
            self._arm("closing", CLOSE_GRACE)  # the rest of a slow body); what still arrives is dropped
        elif self.busy == 0 and self.transport is not None and not self.transport.is_closing():
            self._arm("idle", self.limits.idle_timeout)

    # the timer
    def _arm(self, state: str, seconds: float) -> None:
        self._cancel()
        self.state = state
        self._timer = asyncio.get_running_loop().call_later(seconds, self._expired)

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        transport = self.transport
        if transport is None or transport.is_closing() or self.state == "busy":
            return
        if self.state == "head":
            peer = transport.get_extra_info("peername")
            log.info("closing a connection from %s: no complete request head within %gs", peer,
                     self.limits.header_timeout)
            body = timeout_body("head (request line and headers)", self.limits.header_timeout)
            transport.write(b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
                            b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        transport.close()


class GuardedSite(web.TCPSite):
    """``web.TCPSite`` whose connections are wrapped in ``GuardedProtocol``."""

    __slots__ = ("_limits",)

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, limits: ListenerLimits,
                 reuse_address: bool = True, ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(runner, host, port, reuse_address=reuse_address, ssl_context=ssl_context)
        self._limits = limits

    async def start(self) -> None:
        self._runner._reg_site(self)
        server = self._runner.server
        assert server is not None
        limits = self._limits
        # with TLS, the handshake is bounded by the header timeout too (a client that opens and stays silent)
        tls = self._ssl_context
        self._server = await asyncio.get_running_loop().create_server(
            lambda: GuardedProtocol(server(), limits), self._host, self._port, backlog=self._backlog,
            reuse_address=self._reuse_address, ssl=tls,
            ssl_handshake_timeout=limits.header_timeout if tls is not None else None)


def slowloris_middleware(limits: ListenerLimits) -> Any:
    """The middleware (right after the errors middleware): the head has arrived (stop the head timer); read
    the body within the body timeout; start the idle timer once the answer is made."""

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        transport = request.transport
        proto = transport.get_protocol() if transport is not None else None
        guarded = proto if isinstance(proto, GuardedProtocol) else None
        if guarded is not None:
            guarded.request_started()
        closing = False
        try:
            if request.body_exists and request.headers.get("Upgrade", "").lower() != "websocket":
                try:
                    async with asyncio.timeout(limits.body_timeout):
                        await request.read()  # kept by aiohttp: the handler's read()/json() answer from it
                except TimeoutError:
                    log.info("closing a connection from %s: %s %s body not complete within %gs",
                             request.remote, request.method, request.path, limits.body_timeout)
                    response = web.Response(body=timeout_body("body", limits.body_timeout), status=408,
                                            content_type="application/json")
                    response.force_close()
                    closing = True
                    return response
            return await handler(request)
        finally:
            if guarded is not None:
                guarded.request_done(closing=closing)

    return guard
