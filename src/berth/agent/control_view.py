"""The agent's own view of the control plane (wire/control_view.py): what its resolver and its connects said.

:class:`ControlReporter` is fed by the connection loop (agent/runner.py): a lookup of the control URL's host
before every attempt, then the attempt's outcome (:func:`classify` turns aiohttp's and the OS's exceptions into
ok / refused / timeout / tls / dns / rejected / error with a short message), the connection's peer address, and
the round trip of a WebSocket ping sent with each heartbeat.  :meth:`ControlReporter.report` is what ``hello``
carries; :meth:`ControlReporter.changed` is what a heartbeat carries (only when the report changed, or once a
minute to refresh the round trip).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import aiohttp

from berth.wire.control_view import MAX_ADDRESSES, MAX_ATTEMPTS, MAX_TEXT, Attempt, ControlView, Outcome, Resolution

RESOLVE_TIMEOUT = 5.0
REFRESH = 60.0  # a heartbeat carries the report at least this often (the round trip moves)
_PING = struct.Struct("!d")  # our pings carry their send time (monotonic); aiohttp's own carry nothing

_GAI = {socket.EAI_NONAME: "NXDOMAIN (name not known)", socket.EAI_AGAIN: "temporary resolver failure (EAI_AGAIN)",
        socket.EAI_FAIL: "resolver failure (SERVFAIL)"}
_NODATA = getattr(socket, "EAI_NODATA", None)


def _short(text: str) -> str:
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT - 1] + "…"


def resolver_error(exc: BaseException) -> str:
    """A resolver's failure in a few words: NXDOMAIN, EAI_AGAIN, a timeout, ..."""
    if isinstance(exc, socket.gaierror):
        if exc.errno == _NODATA:
            return "no address for the name (NODATA)"
        return _GAI.get(exc.errno or 0, f"resolver error: {exc.strerror or exc}")
    if isinstance(exc, TimeoutError):
        return f"timeout after {RESOLVE_TIMEOUT:.0f}s"
    return _short(f"{type(exc).__name__}: {exc}")


def classify(exc: BaseException) -> tuple[Outcome, str]:
    """(outcome, short message) of a failed connect attempt."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "dns", resolver_error(exc.os_error) if isinstance(exc.os_error, socket.gaierror) else _short(str(exc))
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return "tls", _short(f"certificate not trusted: {exc.certificate_error}")
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        return "tls", _short(f"TLS handshake failed: {exc}")
    if isinstance(exc, aiohttp.ClientConnectorError):
        if isinstance(exc.os_error, ConnectionRefusedError):
            return "refused", "connection refused"
        if isinstance(exc.os_error, TimeoutError):
            return "timeout", "connect timed out"
        return "error", _short(exc.os_error.strerror or str(exc.os_error) or type(exc.os_error).__name__)
    if isinstance(exc, ConnectionRefusedError):
        return "refused", "connection refused"
    if isinstance(exc, TimeoutError):  # aiohttp's ServerTimeoutError and ConnectionTimeoutError are ones
        return "timeout", _short(str(exc) or "timed out")
    if isinstance(exc, aiohttp.WSServerHandshakeError):
        return "error", _short(f"WebSocket upgrade refused: HTTP {exc.status} {exc.message}")
    return "error", _short(str(exc) or type(exc).__name__)


class ControlReporter:
    """The agent's record of reaching the control plane at ``host``:``port`` (bounded: last attempts only)."""

    def __init__(self, url: str, host: str, port: int, clock: Callable[[], float] = time.time) -> None:
        self.url, self.host, self.port = url, host, port
        self._clock = clock
        self._resolution: Resolution | None = None
        self._attempts: deque[Attempt] = deque(maxlen=MAX_ATTEMPTS)
        self._failures = 0  # failed attempts in a row
        self._failures_before = 0  # of which were before the current connection
        self._since: float | None = None
        self._peer = ""
        self._rtt: float | None = None
        self._sent: tuple[object, ...] | None = None
        self._sent_at = 0.0

    # -- what happened ----------------------------------------------------------------------------------------
    async def resolve(self) -> Resolution:
        """Look the control URL's host up as the connect will (getaddrinfo), timing it."""
        loop = asyncio.get_running_loop()
        start, at = time.monotonic(), self._clock()
        try:
            infos = await asyncio.wait_for(loop.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM),
                                           RESOLVE_TIMEOUT)
            found = list(dict.fromkeys(str(info[4][0]) for info in infos))
            self._resolution = Resolution(host=_short(self.host), addresses=[_short(a) for a in found[:MAX_ADDRESSES]],
                                          seconds=round(time.monotonic() - start, 4), at=at)
        except (OSError, TimeoutError) as exc:
            self._resolution = Resolution(host=_short(self.host), seconds=round(time.monotonic() - start, 4),
                                          error=resolver_error(exc), at=at)
        return self._resolution

    def _target(self) -> str:
        """The address an attempt went to: the one the host resolved to, else host:port (addresses)."""
        found = self._resolution.addresses if self._resolution is not None else []
        if len(found) == 1:
            return _short(_join(found[0], self.port))
        return _short(f"{self.host}:{self.port}" + (f" ({', '.join(found)})" if found else ""))

    def failed(self, exc: BaseException) -> Attempt:
        outcome, message = classify(exc)
        if outcome == "dns" and self._resolution is not None and self._resolution.error:
            message = self._resolution.error
        return self._record(outcome, self._target(), message)

    def rejected(self, message: str) -> Attempt:
        """The control plane answered the hello with an error frame (after a connect that worked)."""
        if self._since is not None:  # the connect that led here does not end the streak
            self._failures = self._failures_before
        peer, self._since, self._peer = self._peer, None, ""
        return self._record("rejected", peer or self._target(), message)

    def connected(self, ws: aiohttp.ClientWebSocketResponse) -> Attempt:
        """The WebSocket is up (TCP, TLS and the upgrade worked); where it went."""
        peer = ws.get_extra_info("peername")
        address = _join(str(peer[0]), int(peer[1])) if isinstance(peer, tuple) and len(peer) >= 2 else self._target()
        attempt = self._record("ok", address, "")
        self._since, self._peer = attempt.at, attempt.address
        return attempt

    def disconnected(self) -> None:
        self._since, self._peer, self._rtt = None, "", None

    def _record(self, outcome: Outcome, address: str, error: str) -> Attempt:
        attempt = Attempt(at=self._clock(), outcome=outcome, address=_short(address), error=_short(error))
        self._attempts.append(attempt)
        if outcome == "ok":
            self._failures_before = self._failures
        self._failures = 0 if outcome == "ok" else self._failures + 1
        return attempt

    # -- the heartbeat's round trip ---------------------------------------------------------------------------
    @staticmethod
    async def ping(ws: aiohttp.ClientWebSocketResponse) -> None:
        """Send a ping carrying its send time; a connection that just broke is the connection loop's business."""
        with contextlib.suppress(ConnectionError, RuntimeError, aiohttp.ClientError):
            await ws.ping(_PING.pack(time.monotonic()))

    def pong(self, payload: Any) -> None:
        """A PONG frame: the round trip of our ping (aiohttp's own heartbeat pings carry no time: ignored)."""
        if isinstance(payload, bytes) and len(payload) == _PING.size:
            self._rtt = round(max(0.0, time.monotonic() - _PING.unpack(payload)[0]), 6)

    # -- what goes out ----------------------------------------------------------------------------------------
    def report(self) -> ControlView:
        failures = self._failures if self._since is None else self._failures_before
        return ControlView(url=_short(self.url), resolution=self._resolution, attempts=list(self._attempts),
                           failures=failures, connected_since=self._since, connected_to=self._peer, rtt=self._rtt)

    def changed(self, force: bool = False) -> ControlView | None:
        """The report when it changed since last sent (or REFRESH passed, or ``force``), else None; marks it sent."""
        view = self.report()
        now, key = time.monotonic(), (*view.essentials(), view.rtt is None)  # a first round trip is news too
        if not force and key == self._sent and now - self._sent_at < REFRESH:
            return None
        self._sent, self._sent_at = key, now
        return view


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
