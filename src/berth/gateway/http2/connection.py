"""What the gateway's two asyncio HTTP/2 adapters share: a transport around a sans-IO :mod:`h2core` connection.

The protocol itself (framing, flow control, HPACK, every bound of :class:`~h2limits.Limits`) is the core's;
an adapter only feeds it the bytes its transport reads (with the time and how much the transport still holds
unsent), dispatches the events that come back, and writes :meth:`~h2core.H2Connection.data_to_send` after each
step.  :mod:`h2server` is the gateway's end of a client's connection, :mod:`h2client` its end of a connection
to an inference server.
"""

from __future__ import annotations

import asyncio
import time
from typing import Generic, TypeVar

from berth.gateway.http2.core import H2Connection
from berth.gateway.http2.events import ConnectionTerminated, Event
from berth.gateway.http2.frames import Stream

Core = TypeVar("Core", bound=H2Connection)


class Connection(asyncio.Protocol, Generic[Core]):
    """An asyncio protocol driving one :class:`~h2core.H2Connection` (``core``)."""

    #: answers and requests are written at the end of the loop's round (:meth:`flush_soon`), not at once
    coalesce = False

    def __init__(self, core: Core) -> None:
        self.core = core
        self.transport: asyncio.Transport | None = None
        # the loop it runs on, once connected (asyncio.get_running_loop() is a getpid() system call per use on
        # Python 3.11, and a call needs the loop a few times); None when driven by hand
        self.loop: asyncio.AbstractEventLoop | None = None
        self._flushing = False  # a write of what is queued is due at the end of the loop's round (flush_soon)

    # views of the core's state (for callers and tests)

    @property
    def streams(self) -> dict[int, Stream]:
        return self.core.streams

    @property
    def blocked(self) -> dict[int, Stream]:
        return self.core.blocked

    @property
    def closed(self) -> bool:
        return self.core.closed

    @property
    def going_away(self) -> bool:
        return self.core.going_away

    @property
    def peer_max_streams(self) -> int:
        return self.core.peer_max_streams

    def flush(self) -> None:
        """Write what the core has to send."""
        if self.core.outbound and self.transport is not None:
            self.transport.write(self.core.data_to_send())

    def flush_soon(self) -> None:
        """Write what the core has to send once the event loop's current round of callbacks is over, in one
        write with whatever else the other calls of that round queue: calls whose answers (or requests) arrive
        in one read are all woken in the same round, and a system call per call is what a loopback hop costs
        most.  At once unless ``coalesce`` is set (the gateway's connections), and when driven by hand (no loop)."""
        if self._flushing:
            return
        loop = self.loop
        if loop is None or not self.coalesce:
            self.flush()
            return
        self._flushing = True
        loop.call_soon(self._flush_queued)

    def _flush_queued(self) -> None:
        self._flushing = False
        transport = self.transport
        if self.core.outbound and transport is not None and not transport.is_closing():
            transport.write(self.core.data_to_send())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        try:
            self.loop = asyncio.get_running_loop()
        except RuntimeError:  # driven by hand (tests)
            self.loop = None
        self.flush()  # the greeting

    def data_received(self, data: bytes) -> None:
        transport = self.transport
        core = self.core
        if transport is None:
            return
        events = core.receive_data(data, time.monotonic(), transport.get_write_buffer_size())
        if events:
            self.dispatch(events)
        if core.outbound:
            transport.write(core.data_to_send())

    def dispatch(self, events: list[Event]) -> None:
        """Act on what the core's input meant (each end its own way)."""
        for event in events:
            if isinstance(event, ConnectionTerminated):
                self.terminated(event)

    def terminated(self, event: ConnectionTerminated) -> None:
        """The core ended the connection (its GOAWAY, if any, is flushed first), or the peer said GOAWAY."""
        if event.close:
            self.flush()
            if event.abort and self.transport is not None:
                self.transport.abort()
            else:
                self.close()

    def close(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            self.flush()
            if transport.get_write_buffer_size() > self.core.limits.max_queued_control_bytes:
                transport.abort()  # a peer that does not read would hold a closing connection as long as it likes
            else:
                transport.close()
