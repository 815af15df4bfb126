"""The gateway's HTTP/2 connection to one inference server's gRPC port: an asyncio adapter around
:class:`~h2core.ClientCore`.  Many calls at once, each answered through its stream's future (unary) or inbox
(streaming: ``("headers", fields)``, ``("data", bytes)``, ``("end", trailers)``, ``("error", exception)``)."""

from __future__ import annotations

import asyncio
import time

from berth.gateway.http2.clientcore import ClientCore
from berth.gateway.http2.connection import Connection
from berth.gateway.http2.core import UPSTREAM_LIMITS
from berth.gateway.http2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    ResponseReceived,
    StreamEnded,
    StreamReset,
)
from berth.gateway.http2.frames import REFUSED_STREAM, Cut, Stream, Vanished
from berth.gateway.http2.frames import StreamReset as StreamResetError
from berth.gateway.http2.headerblock import Field
from berth.gateway.http2.limits import Limits

__all__ = ["UPSTREAM_LIMITS", "ClientConnection"]
_NEVER = float("inf")


class ClientConnection(Connection[ClientCore]):
    """The gateway's connection to one inference server's gRPC port; many requests at once."""

    def __init__(self, address: str, limits: Limits = UPSTREAM_LIMITS) -> None:
        super().__init__(ClientCore(limits, time.monotonic()))
        self.address = address
        self.lost: str | None = None  # why the connection ended, once it has
        self._slots: list[asyncio.Future[None]] = []
        self._alarm: asyncio.TimerHandle | None = None  # the calls' one timer (request's timeout)
        self._alarm_at = _NEVER

    @property
    def usable(self) -> bool:
        core = self.core
        return not core.closed and not core.going_away and core.next_sid < (1 << 31) - 2

    def request(self, head: list[Field], body: bytes, timeout: float | None = None) -> Stream:
        """Send a request (``head`` must hold the pseudo-headers first); the stream's future gets the answer, or
        ``TimeoutError`` when none came within ``timeout`` seconds (the caller then cancels the stream).
        Raises :class:`Vanished` when the connection has already ended.

        The request is written at the end of the loop's round, with the other calls made in it.  Deadlines
        share one timer per connection, armed for the earliest (calls usually share a timeout, so a new call's
        deadline is the latest and the timer stays as it is): no timer is made and cancelled per call."""
        if self.core.closed:
            raise Vanished(f"{self.lost or 'the connection closed'} before the request was sent", unprocessed=True)
        loop = self.loop or asyncio.get_running_loop()
        stream = self.core.request(head, body)
        stream.future = loop.create_future()
        if timeout is not None:
            stream.deadline = deadline = loop.time() + timeout
            if deadline < self._alarm_at:
                self._arm(loop, deadline)
        self.flush_soon()
        return stream

    def _arm(self, loop: asyncio.AbstractEventLoop, at: float) -> None:
        if self._alarm is not None:
            self._alarm.cancel()
        self._alarm_at = at
        self._alarm = loop.call_at(at, self._expire, loop)

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        """The earliest deadline is due: fail the calls whose time is up, and arm for the next one."""
        self._alarm = None
        self._alarm_at = _NEVER
        now = loop.time() + 0.001  # (a timer may fire a clock tick early)
        following = _NEVER
        for stream in list(self.core.streams.values()):
            deadline = stream.deadline
            if deadline <= now:
                future = stream.future
                if future is not None and not future.done():
                    future.set_exception(TimeoutError())
            elif deadline < following:
                following = deadline
        if following < _NEVER and not self.core.closed:
            self._arm(loop, following)

    def open(self, head: list[Field]) -> Stream:
        """Start a streaming call: HEADERS only; send with :meth:`push`, read the answer from ``stream.inbox``."""
        if self.core.closed:
            raise Vanished(f"{self.lost or 'the connection closed'} before the request was sent", unprocessed=True)
        stream = self.core.open(head)
        stream.inbox = asyncio.Queue()
        self.flush()
        return stream

    def push(self, stream: Stream, head: bytes | None, data: bytes, *, end: bool = False,
             trailers: bytes | None = None) -> None:
        """Streaming send: ``head`` (HEADERS frames) if given, then ``data`` after what still waits for window;
        ``end`` ends the stream with the data, ``trailers`` (HEADERS frames ending it) after it."""
        self.core.push(stream, head, data, end=end, trailers=trailers)
        self.flush()

    def retire(self) -> None:
        """Take no new calls; close once the calls in flight are answered."""
        self.core.going_away = True
        if not self.core.streams:
            self.close()

    def has_room(self) -> bool:
        core = self.core
        return len(core.streams) < core.peer_max_streams

    async def room(self) -> None:
        """Wait until the server's SETTINGS_MAX_CONCURRENT_STREAMS allows another stream."""
        while not self.core.has_room() and not self.core.closed:
            waiter = asyncio.get_running_loop().create_future()
            self._slots.append(waiter)
            await waiter

    def cancel(self, stream: Stream) -> None:
        """Give up on ``stream`` (timed out, or its client left): reset it upstream."""
        if self.core.cancel(stream):
            self.flush()
            self._free()

    def _free(self) -> None:
        while self._slots and self.core.has_room():
            waiter = self._slots.pop(0)
            if not waiter.done():
                waiter.set_result(None)

    def _finish(self, stream: Stream, error: BaseException | None = None) -> None:
        if error is not None:  # (an answer that ended is already forgotten by the core)
            self.core.forget(stream)
        future = stream.future
        if future is not None and not future.done():
            if error is None:
                future.set_result(stream)
            else:
                future.set_exception(error)
        if stream.inbox is not None and error is not None:
            stream.inbox.put_nowait(("error", error))
        self._free()
        if self.core.going_away and not self.core.streams:  # retired, or the server said GOAWAY: done once idle
            self.close()

    def dispatch(self, events: list[Event]) -> None:
        for event in events:
            if type(event) is StreamEnded:
                stream = event.stream
                if stream.inbox is not None:
                    stream.inbox.put_nowait(("end", event.trailers))
                self._finish(stream)
            elif type(event) is DataReceived:
                if event.stream.inbox is not None:
                    event.stream.inbox.put_nowait(("data", event.data))
            elif type(event) is ResponseReceived:
                if event.stream.inbox is not None:
                    event.stream.inbox.put_nowait(("headers", event.headers))
            elif type(event) is StreamReset:
                stream = event.stream
                self._finish(stream, Vanished("the server refused the stream", unprocessed=True)
                             if event.code == REFUSED_STREAM and not stream.answered else StreamResetError(event.code))
            elif type(event) is ConnectionTerminated:
                if event.remote:
                    self._goaway(event)
                else:
                    self.terminated(event)

    def _goaway(self, event: ConnectionTerminated) -> None:
        for sid, stream in list(self.core.streams.items()):
            if sid > event.last_sid:  # never processed: safe to send elsewhere
                self._finish(stream, Vanished(f"the server is going away (GOAWAY code {event.code})",
                                              unprocessed=True))
        if not self.core.streams:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.core.closed = True
        if self._alarm is not None:
            self._alarm.cancel()
            self._alarm = None
        self.lost = f"the connection closed ({exc})" if exc else "the server closed the connection"
        for stream in list(self.core.streams.values()):
            self._finish(stream, Cut(f"{self.lost} in the middle of the answer") if stream.answered
                         else Vanished(f"{self.lost} before answering"))
        for waiter in self._slots:
            if not waiter.done():
                waiter.set_result(None)
        self._slots.clear()
