"""The client end of the sans-IO HTTP/2 core (:class:`ClientCore`): requests, streaming calls, cancels."""


from __future__ import annotations

from berth.gateway.http2 import headerblock
from berth.gateway.http2.core import UPSTREAM_LIMITS, H2Connection
from berth.gateway.http2.events import ConnectionTerminated, ResponseReceived, StreamEnded, StreamReset
from berth.gateway.http2.frames import (
    CANCEL,
    CONN_WINDOW,
    FRAME_MAX,
    PREFACE,
    S_ENABLE_PUSH,
    S_INITIAL_WINDOW_SIZE,
    S_MAX_FRAME_SIZE,
    STREAM_WINDOW,
    ProtocolError,
    Stream,
    headers_frames,
)
from berth.gateway.http2.headerblock import Field
from berth.gateway.http2.limits import Limits


class ClientCore(H2Connection):
    """The gateway's connection to one inference server's gRPC port; many requests at once.  Answers arrive as
    :class:`ResponseReceived`, :class:`DataReceived` (streaming calls), :class:`StreamEnded` and
    :class:`StreamReset` events; a stream stays in ``streams`` until its answer ends or fails."""

    def __init__(self, limits: Limits = UPSTREAM_LIMITS, now: float = 0.0) -> None:
        super().__init__({S_ENABLE_PUSH: 0, S_INITIAL_WINDOW_SIZE: STREAM_WINDOW, S_MAX_FRAME_SIZE: FRAME_MAX},
                         limits, CONN_WINDOW, now)
        self.next_sid = 1
        self.write(PREFACE + self._greeting())

    @property
    def usable(self) -> bool:
        return not self.closed and not self.going_away and self.next_sid < (1 << 31) - 2

    def has_room(self) -> bool:
        return len(self.streams) < self.peer_max_streams

    def request(self, head: list[Field], body: bytes) -> Stream:
        """Send a request (``head`` must hold the pseudo-headers first); its answer comes as events."""
        sid = self.next_sid
        self.next_sid += 2
        stream = Stream(sid, self.peer_window)
        self.streams[sid] = stream
        self.send(stream, headers_frames(sid, headerblock.encode(head), False), body, None)
        return stream

    def open(self, head: list[Field]) -> Stream:
        """Start a streaming call: HEADERS only; send with :meth:`push`; the answer comes as events."""
        sid = self.next_sid
        self.next_sid += 2
        stream = Stream(sid, self.peer_window)
        stream.streaming = True
        self.streams[sid] = stream
        self.write(headers_frames(sid, headerblock.encode(head), False))
        return stream

    def cancel(self, stream: Stream) -> bool:
        """Give up on ``stream``: reset it upstream.  False when it was already over."""
        if self.streams.pop(stream.sid, None) is None:
            return False
        self.blocked.pop(stream.sid, None)
        self.reset(stream.sid, CANCEL)
        return True

    def forget(self, stream: Stream) -> None:
        """``stream``'s answer ended or failed: it no longer counts."""
        self.streams.pop(stream.sid, None)
        self.blocked.pop(stream.sid, None)

    def on_headers(self, sid: int, fields: list[Field], end_stream: bool) -> None:
        stream = self.streams.get(sid)
        if stream is None:
            if sid % 2 == 0 or sid >= self.next_sid:
                raise ProtocolError(f"the server sent HEADERS on stream {sid}, which was never opened")
            return  # a stream we cancelled
        stream.answered = True
        if not stream.headers:
            stream.headers = fields
            self._events.append(ResponseReceived(stream, fields))
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
        self.forget(stream)
        self._events.append(StreamEnded(stream, stream.trailers))

    def on_reset(self, sid: int, code: int) -> None:
        stream = self.streams.pop(sid, None)
        if stream is not None:
            self.blocked.pop(sid, None)
            self._events.append(StreamReset(stream, code))

    def on_goaway(self, last_sid: int, code: int) -> None:
        self.going_away = True
        self._events.append(ConnectionTerminated(code, last_sid, remote=True, close=False))
