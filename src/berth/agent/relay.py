"""A byte-level TCP relay: the agent listens on the pod's address and forwards each connection to MLServer on
loopback, so nothing but the agent is reachable from outside the pod (docs/kubernetes.md, "Inside a pod").

It understands nothing of HTTP or gRPC: every byte read from one side is written to the other, half-closes
are passed on (``write_eof``), and a connection ends when both directions have.  Bounds: at most
``max_connections`` open connections (more are closed at once), ``connect_timeout`` to reach MLServer, and
at most one read buffer (64 KiB) in flight per direction, since each write waits for the peer to drain
before the next read (a slow reader slows its writer instead of growing memory).  Built on asyncio
protocols (no task per connection): the relay's added cost per request is measured by
``bench/relay_cost.py``.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import cast

log = logging.getLogger("berth.agent.relay")
HIGH_WATER = 64 * 1024  # bytes buffered towards one side before reading from the other pauses


class _Side(asyncio.Protocol):
    """One end of a relayed connection; ``peer`` is the other end (set once both are connected)."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.early: list[bytes] = []  # bytes the client sent before MLServer's side was connected
        self.eof = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not asyncio's subclasses
        self.transport.set_write_buffer_limits(high=HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self.early.append(data)
            if self.transport is not None and sum(map(len, self.early)) > HIGH_WATER:
                self.transport.pause_reading()
            return
        peer.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if (peer is not None and peer.transport is not None and not peer.transport.is_closing()
                and peer.transport.can_write_eof()):
            peer.transport.write_eof()
        if peer is not None and peer.eof:
            self._close_both()
        return True  # keep our write side open until the peer's side ends too

    # the peer's writes towards us fill our buffer: stop reading from the peer until it drains
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._close_both()

    def _close_both(self) -> None:
        for side in (self, self.peer):
            if side is not None and side.transport is not None and not side.transport.is_closing():
                side.transport.close()
        if self.closed and (self.peer is None or self.peer.closed):
            self.relay.forget(self)


class _Client(_Side):
    """The accepted side: opens the connection to MLServer, then joins the two."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if not self.relay.admit(self):
            transport.close()
            return
        self.relay.start_upstream(self)


@dataclass
class RelayStats:
    accepted: int = 0
    refused: int = 0  # over max_connections
    failed: int = 0  # MLServer could not be reached


class Relay:
    """Listen on ``host:port``, relay to ``target_host:target_port``; ``start`` returns the bound port."""

    def __init__(self, host: str, port: int, target_host: str, target_port: int, *, max_connections: int = 4096,
                 connect_timeout: float = 5.0, name: str = "relay") -> None:
        self.host, self.port, self.target = host, port, (target_host, target_port)
        self.max_connections, self.connect_timeout, self.name = max_connections, connect_timeout, name
        self.stats = RelayStats()
        self._open: set[_Side] = set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Client(self), self.host, self.port, backlog=1024)
        bound = int(self._server.sockets[0].getsockname()[1])
        log.info("%s: %s:%d -> %s:%d", self.name, self.host, bound, *self.target)
        return bound

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for side in list(self._open):
            side._close_both()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def admit(self, side: _Side) -> bool:
        if len(self._open) >= self.max_connections:
            self.stats.refused += 1
            return False
        self.stats.accepted += 1
        self._open.add(side)
        return True

    def forget(self, side: _Side) -> None:
        self._open.discard(side)
        if side.peer is not None:
            self._open.discard(side.peer)

    def start_upstream(self, client: _Client) -> None:
        task = asyncio.get_running_loop().create_task(self._connect(client))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, client: _Client) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await asyncio.wait_for(loop.create_connection(lambda: _Side(self), *self.target),
                                                 self.connect_timeout)
        except (OSError, TimeoutError) as exc:
            self.stats.failed += 1
            log.debug("%s: MLServer at %s:%d unreachable: %s", self.name, *self.target, exc)
            client._close_both()
            self.forget(client)
            return
        if client.closed:
            if upstream.transport is not None:
                upstream.transport.close()
            return
        upstream.peer, client.peer = client, upstream
        assert upstream.transport is not None
        for data in client.early:
            upstream.transport.write(data)
        client.early.clear()
        if client.transport is not None:
            client.transport.resume_reading()
        if client.eof and upstream.transport.can_write_eof():
            upstream.transport.write_eof()


async def start_relays(host: str, target_host: str, pairs: list[tuple[int | None, int, str]]) -> list[Relay]:
    """A started relay for each ``(listen port, MLServer port, name)`` whose listen port is set."""
    relays: list[Relay] = []
    try:
        for port, target, name in pairs:
            if port is not None:
                relay = Relay(host, port, target_host, target, name=name)
                await relay.start()
                relays.append(relay)
    except OSError:
        for relay in relays:
            await relay.close()
        raise
    return relays
