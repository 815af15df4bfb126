"""The gateway's HTTP/2 connection to one inference server's gRPC port (:mod:`h2`): many calls at once,
each answered through its stream's future (unary) or inbox (streaming)."""

from __future__ import annotations

import asyncio

from berth.gateway import headerblock
from berth.gateway.h2 import Connection
from berth.gateway.h2frames import (
    CANCEL,
    FRAME_MAX,
    PREFACE,
    REFUSED_STREAM,
    S_ENABLE_PUSH,
    S_INITIAL_WINDOW_SIZE,
    S_MAX_FRAME_SIZE,
    STREAM_WINDOW,
    Cut,
    ProtocolError,
    Stream,
    StreamReset,
    Vanished,
    headers_frames,
)
from berth.gateway.headerblock import Field


class ClientConnection(Connection):
    """The gateway's connection to one inference server's gRPC port; many requests at once."""

    def __init__(self, address: str) -> None:
        super().__init__({S_ENABLE_PUSH: 0, S_INITIAL_WINDOW_SIZE: STREAM_WINDOW, S_MAX_FRAME_SIZE: FRAME_MAX})
        self.address = address
        self.next_sid = 1
        self.lost: str | None = None  # why the connection ended, once it has
        self._slots: list[asyncio.Future[None]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.write(PREFACE + self._greeting())

    @property
    def usable(self) -> bool:
        return not self.closed and not self.going_away and self.next_sid < (1 << 31) - 2

    def request(self, head: list[Field], body: bytes) -> Stream:
        """Send a request (``head`` must hold the pseudo-headers first); the stream's future gets the answer.
        Raises :class:`Vanished` when the connection has already ended."""
        if self.closed:
            raise Vanished(f"{self.lost or 'the connection closed'} before the request was sent", unprocessed=True)
        sid = self.next_sid
        self.next_sid += 2
        stream = Stream(sid, self.peer_window)
        stream.future = asyncio.get_running_loop().create_future()
        self.streams[sid] = stream
        self.send(stream, headers_frames(sid, headerblock.encode(head), False), body, None)
        return stream

    def open(self, head: list[Field]) -> Stream:
        """Start a streaming call: HEADERS only; send with :meth:`push`, read the answer from ``stream.inbox``."""
        if self.closed:
            raise Vanished(f"{self.lost or 'the connection closed'} before the request was sent", unprocessed=True)
        sid = self.next_sid
        self.next_sid += 2
        stream = Stream(sid, self.peer_window)
        stream.inbox = asyncio.Queue()
        self.streams[sid] = stream
        self.write(headers_frames(sid, headerblock.encode(head), False))
        return stream

    def retire(self) -> None:
        """Take no new calls; close once the calls in flight are answered."""
        self.going_away = True
        if not self.streams:
            self.close()

    def has_room(self) -> bool:
        return len(self.streams) < self.peer_max_streams

    async def room(self) -> None:
        """Wait until the server's SETTINGS_MAX_CONCURRENT_STREAMS allows another stream."""
        while not self.has_room() and not self.closed:
            waiter = asyncio.get_running_loop().create_future()
            self._slots.append(waiter)
            await waiter

    def cancel(self, stream: Stream) -> None:
        """Give up on ``stream`` (timed out, or its client left): reset it upstream."""
        if self.streams.pop(stream.sid, None) is not None:
            self.blocked.pop(stream.sid, None)
            self.reset(stream.sid, CANCEL)
            self._free()

    def _free(self) -> None:
        while self._slots and self.has_room():
            waiter = self._slots.pop(0)
            if not waiter.done():
                waiter.set_result(None)

    def _finish(self, stream: Stream, error: BaseException | None = None) -> None:
        self.streams.pop(stream.sid, None)
        self.blocked.pop(stream.sid, None)
        future = stream.future
        if future is not None and not future.done():
            if error is None:
                future.set_result(stream)
            else:
                future.set_exception(error)
        if stream.inbox is not None and error is not None:
            stream.inbox.put_nowait(("error", error))
        self._free()
        if self.going_away and not self.streams:  # retired, or the server said GOAWAY: done once idle
            self.close()

    def _maybe_forget(self, stream: Stream, parts: list[bytes]) -> None:
        pass  # a request stays until its answer ends (or fails)

    def on_headers(self, sid: int, fields: list[Field], end_stream: bool) -> None:
        stream = self.streams.get(sid)
        if stream is None:
            if sid % 2 == 0 or sid >= self.next_sid:
                raise ProtocolError(f"the server sent HEADERS on stream {sid}, which was never opened")
            return  # a stream we cancelled
        stream.answered = True
        if not stream.headers:
            stream.headers = fields
            if stream.inbox is not None:
                stream.inbox.put_nowait(("headers", fields))
            if end_stream:
                stream.trailers = fields  # trailers-only answer
        else:
            stream.trailers = fields
        if end_stream:
            stream.ended = True
            self.on_end(stream)

    def on_data(self, stream: Stream) -> None:
        stream.answered = True

    def on_end(self, stream: Stream) -> None:
        stream.answered = True
        if stream.inbox is not None:
            stream.inbox.put_nowait(("end", stream.trailers))
        self._finish(stream)

    def on_reset(self, sid: int, code: int) -> None:
        stream = self.streams.get(sid)
        if stream is not None:
            self._finish(stream, Vanished("the server refused the stream", unprocessed=True)
                         if code == REFUSED_STREAM and not stream.answered else StreamReset(code))

    def on_goaway(self, last_sid: int, code: int) -> None:
        self.going_away = True
        for sid, stream in list(self.streams.items()):
            if sid > last_sid:  # never processed: safe to send elsewhere
                self._finish(stream, Vanished(f"the server is going away (GOAWAY code {code})", unprocessed=True))
        if not self.streams:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.lost = f"the connection closed ({exc})" if exc else "the server closed the connection"
        for stream in list(self.streams.values()):
            self._finish(stream, Cut(f"{self.lost} in the middle of the answer") if stream.answered
                         else Vanished(f"{self.lost} before answering"))
        for waiter in self._slots:
            if not waiter.done():
                waiter.set_result(None)
        self._slots.clear()
