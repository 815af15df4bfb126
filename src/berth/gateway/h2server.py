"""The gateway's end of a client's HTTP/2 connection (:mod:`h2`): each request stream goes to a handler,
whole (unary calls) or at its headers (streaming calls), and answers go back through ``respond*``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from berth.gateway import headerblock
from berth.gateway.h2 import Connection
from berth.gateway.h2frames import (
    FRAME_MAX,
    NO_ERROR,
    PREFACE,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    RST_STREAM,
    S_INITIAL_WINDOW_SIZE,
    S_MAX_CONCURRENT_STREAMS,
    S_MAX_FRAME_SIZE,
    STREAM_WINDOW,
    U32,
    ProtocolError,
    Stream,
    frame,
    headers_frames,
)
from berth.gateway.headerblock import Field

Handler = Callable[["ServerConnection", Stream], None]


class ServerConnection(Connection):
    """A client's connection to the gateway: each request stream, once whole, goes to ``handler``."""

    def __init__(self, handler: Handler, on_lost: Callable[[ServerConnection], None] | None = None, *,
                 max_streams: int = 10000, max_body: int = 256 << 20,
                 streaming: frozenset[bytes] = frozenset()) -> None:
        super().__init__({S_MAX_CONCURRENT_STREAMS: max_streams, S_INITIAL_WINDOW_SIZE: STREAM_WINDOW,
                          S_MAX_FRAME_SIZE: FRAME_MAX})
        self.handler = handler
        self.on_lost = on_lost
        self.max_streams = max_streams
        self.max_body = max_body
        self.streaming = streaming  # :path values whose calls are handed over at once, their data as it comes
        self._preface = True

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.write(self._greeting())

    def data_received(self, data: bytes) -> None:
        if self._preface:
            if self._buf:
                data = self._buf + data
                self._buf = b""
            if len(data) < len(PREFACE):
                if not PREFACE.startswith(data):
                    self.close()
                self._buf = data
                return
            if not data.startswith(PREFACE):  # not HTTP/2 with prior knowledge (an HTTP/1.1 client, say)
                self.goaway(PROTOCOL_ERROR, "this port speaks gRPC (HTTP/2) only")
                self.close()
                return
            self._preface = False
            data = data[len(PREFACE):]
            if not data:
                return
        super().data_received(data)

    def on_headers(self, sid: int, fields: list[Field], end_stream: bool) -> None:
        stream = self.streams.get(sid)
        if stream is None:
            if sid % 2 == 0:
                raise ProtocolError(f"stream {sid} cannot be opened by a client")
            if sid <= self._last_peer_sid:
                return  # a stream we already answered or reset: what the client still sends on it is dropped
            self._last_peer_sid = sid
            if self.going_away:
                self.reset(sid, REFUSED_STREAM)
                return
            if len(self.streams) >= self.max_streams:
                self.reset(sid, REFUSED_STREAM)
                return
            stream = Stream(sid, self.peer_window)
            stream.headers = fields
            self.streams[sid] = stream
            if self.streaming and any(n == b":path" and v in self.streaming for n, v in fields):
                stream.inbox = asyncio.Queue()
                self.handler(self, stream)
        elif not stream.ended:
            stream.trailers = fields  # a client's trailers: nothing in them matters to a unary call
        elif stream.cut_short:
            return  # the end of a request already refused as too large
        else:
            raise ProtocolError(f"HEADERS on closed stream {sid}")
        if end_stream:
            stream.ended = True
            self.on_end(stream)

    def on_end(self, stream: Stream) -> None:
        if stream.inbox is not None:
            stream.inbox.put_nowait(("end", stream.trailers))
        else:
            self.handler(self, stream)

    def on_data(self, stream: Stream) -> None:
        if stream.size > self.max_body:  # answered now (the handler sees the size); the rest is dropped
            stream.chunks = []
            stream.ended = stream.cut_short = True
            self.handler(self, stream)

    def respond(self, stream: Stream, head: list[Field], body: bytes | None, trailers: list[Field] | None) -> None:
        """Answer ``stream``: headers, then (when ``trailers`` are given) the body and the trailers; with
        ``trailers`` None, ``head`` alone ends the stream (a gRPC trailers-only answer)."""
        if stream.closed or self.streams.get(stream.sid) is not stream:
            return
        if trailers is None:
            stream.closed = True
            parts = [headers_frames(stream.sid, headerblock.encode(head), True)]
            self._maybe_forget(stream, parts)
            self.write(b"".join(parts))
            return
        self.send(stream, headers_frames(stream.sid, headerblock.encode(head), False), body,
                  headers_frames(stream.sid, headerblock.encode(trailers), True))

    def respond_part(self, stream: Stream, head: list[Field] | None, data: bytes) -> None:
        """A streaming answer, in parts: its headers (the first time) and messages as they come."""
        if not stream.closed and self.streams.get(stream.sid) is stream:
            self.push(stream, headers_frames(stream.sid, headerblock.encode(head), False) if head else None, data)

    def respond_end(self, stream: Stream, trailers: list[Field]) -> None:
        """End a streaming answer whose headers were sent: the trailers follow what is still queued."""
        if not stream.closed and self.streams.get(stream.sid) is stream:
            self.push(stream, None, b"", trailers=headers_frames(stream.sid, headerblock.encode(trailers), True))

    def _maybe_forget(self, stream: Stream, parts: list[bytes]) -> None:
        if stream.closed:
            self.streams.pop(stream.sid, None)
            self.blocked.pop(stream.sid, None)
            if not stream.ended or stream.cut_short:  # answered before the client finished: stop it (RFC 9113 8.1)
                parts.append(frame(RST_STREAM, 0, stream.sid, U32.pack(NO_ERROR)))
            if self.going_away and not self.streams:  # close after this answer is written
                asyncio.get_running_loop().call_soon(self.close)

    def on_reset(self, sid: int, code: int) -> None:
        stream = self.streams.pop(sid, None)
        self.blocked.pop(sid, None)
        if stream is not None:
            stream.closed = stream.ended = True
            if stream.task is not None:
                stream.task.cancel()

    def on_goaway(self, last_sid: int, code: int) -> None:
        self.going_away = True
        if not self.streams:
            self.close()

    def shutdown(self) -> None:
        """Stop taking new streams; close once those in progress are answered."""
        if not self.going_away:
            self.goaway(NO_ERROR, "the gateway is stopping")
        if not self.streams:
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        for stream in list(self.streams.values()):
            stream.closed = True
            if stream.task is not None:
                stream.task.cancel()
        self.streams.clear()
        self.blocked.clear()
        if self.on_lost is not None:
            self.on_lost(self)
