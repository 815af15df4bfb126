"""The gateway's end of a client's HTTP/2 connection: an asyncio adapter around :class:`~h2core.ServerCore`.

Each request stream goes to a handler, whole (unary calls) or at its headers (streaming calls, whose data and
end then arrive in the stream's ``inbox``), and answers go back through ``respond*``.  The protocol and every
bound of :class:`~h2limits.Limits` are the core's; this adapter feeds it the transport's bytes, runs the
clocks (:meth:`ServerConnection.tick`, every fraction of the shortest timeout), turns events into handler
calls, cancels the handler of a stream that was reset (counting it against the concurrent streams until it
is gone), and writes what the core has to send.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace

from berth.gateway.http2.connection import Connection
from berth.gateway.http2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    RequestReceived,
    StreamEnded,
    StreamReset,
)
from berth.gateway.http2.frames import Stream
from berth.gateway.http2.headerblock import Field
from berth.gateway.http2.limits import Limits
from berth.gateway.http2.servercore import ServerCore

Handler = Callable[["ServerConnection", Stream], None]


class ServerConnection(Connection[ServerCore]):
    """A client's connection to the gateway: each request stream, once whole, goes to ``handler``."""

    def __init__(self, handler: Handler, on_lost: Callable[[ServerConnection], None] | None = None, *,
                 limits: Limits | None = None, max_streams: int | None = None, max_body: int = 256 << 20,
                 streaming: frozenset[bytes] = frozenset()) -> None:
        limits = limits or Limits()
        if max_streams is not None:
            limits = replace(limits, max_concurrent_streams=max_streams)
        super().__init__(ServerCore(limits, max_body=max_body, streaming=streaming, now=time.monotonic()))
        self.limits = limits
        self.handler = handler
        self.on_lost = on_lost
        self._timer: asyncio.TimerHandle | None = None
        self._tick_s = min(max(min(limits.preface_timeout, limits.idle_timeout, limits.send_timeout) / 4, 0.01), 1.0)

    @property
    def running(self) -> int:
        return self.core.running

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.loop is not None:  # (driven by hand, in tests, the caller calls tick() with its own clock)
            self._timer = self.loop.call_later(self._tick_s, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.tick(time.monotonic()) and self.loop is not None:
            self._timer = self.loop.call_later(self._tick_s, self._on_timer)

    def tick(self, now: float) -> bool:
        """The clocks at ``now`` (``time.monotonic``): preface, idle connection, answers that make no
        progress.  False once the connection is closed."""
        transport = self.transport
        if self.core.closed or transport is None:
            return False
        events = self.core.tick(now, transport.get_write_buffer_size())
        if events:
            self.dispatch(events)
        self.flush()
        return not self.core.closed

    def dispatch(self, events: list[Event]) -> None:
        for event in events:
            if type(event) is RequestReceived:
                stream = event.stream
                if stream.streaming:
                    stream.inbox = asyncio.Queue()
                self.handler(self, stream)
            elif type(event) is DataReceived:
                if event.stream.inbox is not None:
                    event.stream.inbox.put_nowait(("data", event.data))
            elif type(event) is StreamEnded:
                if event.stream.inbox is not None:
                    event.stream.inbox.put_nowait(("end", event.trailers))
            elif type(event) is StreamReset:
                self._stop_handler(event)
            elif type(event) is ConnectionTerminated:
                self.terminated(event)

    def _stop_handler(self, event: StreamReset) -> None:
        task = event.stream.task
        if task is not None and not task.done():
            task.cancel()
            if event.remote:
                self.core.handler_started()  # until the handler is really gone, the stream still counts
                task.add_done_callback(self._handler_done)

    def _handler_done(self, _: object) -> None:
        self.core.handler_finished()

    def _after_send(self) -> None:
        core = self.core
        if core.outbound:
            self.flush_soon()  # one write for the answers of every call woken in this round of the loop
        if core.finished:  # going away and the last answer is written: close right after
            self.core.finished = False
            (self.loop or asyncio.get_running_loop()).call_soon(self.close)

    def release(self, stream: Stream, size: int) -> None:
        """The handler consumed ``size`` bytes of a streaming call's data: the client may send as many again."""
        self.core.release(stream, size)
        self.flush()

    def respond(self, stream: Stream, head: list[Field], body: bytes | None, trailers: list[Field] | None) -> None:
        """Answer ``stream``: headers, then (when ``trailers`` are given) the body and the trailers; with
        ``trailers`` None, ``head`` alone ends the stream (a gRPC trailers-only answer)."""
        self.core.respond(stream, head, body, trailers)
        self._after_send()

    def respond_part(self, stream: Stream, head: list[Field] | None, data: bytes) -> None:
        """A streaming answer, in parts: its headers (the first time) and messages as they come."""
        self.core.respond_part(stream, head, data)
        self._after_send()

    def respond_end(self, stream: Stream, trailers: list[Field]) -> None:
        """End a streaming answer whose headers were sent: the trailers follow what is still queued."""
        self.core.respond_end(stream, trailers)
        self._after_send()

    def shutdown(self) -> None:
        """Stop taking new streams; close once those in progress are answered."""
        if self.core.shutdown():
            self.core.finished = False
            self.close()
        else:
            self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        core = self.core
        core.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for stream in list(core.streams.values()):
            stream.closed = True
            if stream.task is not None:
                stream.task.cancel()
        core.streams.clear()
        core.blocked.clear()
        if self.on_lost is not None:
            self.on_lost(self)

    def __repr__(self) -> str:
        return f"<ServerConnection {len(self.core.streams)} streams>"
