"""The server end of the sans-IO HTTP/2 core (:class:`ServerCore`): concurrent and reset streams, the
rapid-reset budget, windows refilled as consumed, answers, and the preface/idle/stalled-answer clocks (``tick``)."""


from __future__ import annotations

from urllib.parse import quote

from berth.gateway.http2 import headerblock
from berth.gateway.http2.core import H2Connection
from berth.gateway.http2.events import ConnectionTerminated, Event, RequestReceived, StreamEnded, StreamReset
from berth.gateway.http2.frames import (
    CANCEL,
    FRAME_MAX,
    NO_ERROR,
    PREFACE,
    PROTOCOL_ERROR,
    REFUSED_STREAM,
    RST_STREAM,
    S_HEADER_TABLE_SIZE,
    S_INITIAL_WINDOW_SIZE,
    S_MAX_CONCURRENT_STREAMS,
    S_MAX_FRAME_SIZE,
    S_MAX_HEADER_LIST_SIZE,
    U32,
    ProtocolError,
    Stream,
    frame,
    headers_frames,
)
from berth.gateway.http2.headerblock import Field, HeaderListTooLarge
from berth.gateway.http2.limits import ENHANCE_YOUR_CALM, Budget, Limits


class ServerCore(H2Connection):
    """A client's connection to the gateway: requests become :class:`RequestReceived` events (whole, or at
    their HEADERS for ``streaming`` paths), answers go out through ``respond*``.

    The bounds only a server needs live here: concurrent streams (reset ones whose handler still runs count:
    :meth:`handler_started` / :meth:`handler_finished`), the rapid-reset budget, the connection window refilled
    as requests are consumed (a unary request when it is handed over, a streaming call's data as the handler
    takes it, :meth:`release`), and three clocks (:meth:`tick`): the preface, idleness, and answers that make
    no progress (zero window, or a transport the client does not read)."""

    def __init__(self, limits: Limits, *, max_body: int = 256 << 20, streaming: frozenset[bytes] = frozenset(),
                 now: float = 0.0) -> None:
        settings = {S_MAX_CONCURRENT_STREAMS: limits.max_concurrent_streams,
                    S_INITIAL_WINDOW_SIZE: limits.stream_window, S_MAX_FRAME_SIZE: FRAME_MAX,
                    S_MAX_HEADER_LIST_SIZE: limits.max_header_list_size}
        if limits.header_table_size != 4096:
            settings[S_HEADER_TABLE_SIZE] = limits.header_table_size
        # one request of the largest size accepted must fit in the connection window, which is refilled only
        # once a request is whole
        super().__init__(settings, limits, max(limits.connection_window, max_body + FRAME_MAX), now)
        self.max_streams = limits.max_concurrent_streams
        self.max_body = max_body
        self.streaming = streaming  # :path values whose calls are handed over at once, their data as it comes
        self.running = 0  # streams the client reset whose handler has not finished yet
        self.finished = False  # going away and every answer written: the transport may close
        self._resets = Budget(limits.resets_per_second, limits.resets_burst, now)
        self._preface = True
        self._opened = self._idle_since = self._progress_at = now
        self._last_sent = 0
        self._last_buffered = 0
        self.write(self._greeting())

    def handler_started(self) -> None:
        """A reset stream's handler still runs: it counts against the concurrent streams until it finishes."""
        self.running += 1

    def handler_finished(self) -> None:
        self.running -= 1

    def _take_preface(self, data: bytes) -> bytes:
        if len(data) < len(PREFACE):
            if not PREFACE.startswith(data):
                self._terminate(PROTOCOL_ERROR, "not an HTTP/2 preface", say=False)
            else:
                self._buf = data
            return b""
        if not data.startswith(PREFACE):  # not HTTP/2 with prior knowledge (an HTTP/1.1 client, say)
            self._terminate(PROTOCOL_ERROR, "this port speaks gRPC (HTTP/2) only")
            return b""
        self._preface = False
        return data[len(PREFACE):]

    def tick(self, now: float, buffered: int = 0) -> list[Event]:
        """The clocks at ``now`` (``time.monotonic``), with ``buffered`` bytes unsent on the transport: preface,
        idle connection, answers that make no progress.  The connection is ``closed`` after it when one ran out."""
        self.now = now
        events: list[Event] = []
        self._events = events
        if self.closed:
            return events
        limits = self.limits
        if self._preface:
            if now - self._opened > limits.preface_timeout:  # nothing HTTP/2 was said: nothing to say back
                self._terminate(PROTOCOL_ERROR, "no preface", abort=True, say=False)
            return events
        if self.streams or self.running:
            self._idle_since = now
        elif now - self._idle_since > limits.idle_timeout:
            self._terminate(NO_ERROR, f"no stream for {limits.idle_timeout:g}s")
            return events
        if (not self.blocked and not buffered) or self.sent != self._last_sent or buffered < self._last_buffered:
            self._progress_at = now
        elif now - self._progress_at > limits.send_timeout:
            if buffered:  # the client does not read what was already written
                self._terminate(ENHANCE_YOUR_CALM, "the client does not read", abort=True, say=False)
                return events
            if self.conn_window <= 0:
                self._terminate(ENHANCE_YOUR_CALM, f"the connection's flow-control window stayed at zero for "
                                                   f"{limits.send_timeout:g}s")
                return events
        if self.conn_window > 0:
            for stream in [s for s in self.blocked.values() if now - s.stalled_at > limits.send_timeout]:
                # it waits on its own zero window while the connection could send: reset it
                stream.closed = True
                self.streams.pop(stream.sid, None)
                self.blocked.pop(stream.sid, None)
                self._release_all(stream)
                self.reset(stream.sid, CANCEL)
                events.append(StreamReset(stream, CANCEL, remote=False))
        self._last_sent = self.sent
        self._last_buffered = buffered
        return events

    def received(self, stream: Stream, size: int) -> None:
        if not stream.streaming:  # a unary request: its window refills as it comes (its size is bounded)
            self.refill(stream, size)
        stream.held += size  # the connection's window refills when it is consumed

    def release(self, stream: Stream, size: int) -> None:
        """The handler consumed ``size`` bytes of a streaming call's data: the client may send as many again."""
        size = min(size, stream.held)
        if size > 0:
            stream.held -= size
            self.consumed(size)
            if not stream.closed:
                self.refill(stream, size)

    def _release_all(self, stream: Stream) -> None:
        if stream.held:
            self.consumed(stream.held)
            stream.held = 0

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
            if len(self.streams) + self.running + self.just_reset >= self.max_streams:
                self._count_reset("streams refused for concurrency")
                self.control(frame(RST_STREAM, 0, sid, U32.pack(REFUSED_STREAM)))
                return
            stream = Stream(sid, self.peer_window)
            stream.headers = fields
            self.streams[sid] = stream
            if self.streaming:
                for name, value in fields:  # (pseudo-headers come first)
                    if name == b":path":
                        if value in self.streaming:
                            stream.streaming = True
                            self._events.append(RequestReceived(stream))
                        break
        elif not stream.ended:
            stream.trailers = fields  # a client's trailers: nothing in them matters to a unary call
        elif stream.cut_short:
            return  # the end of a request already refused as too large
        else:
            raise ProtocolError(f"HEADERS on closed stream {sid}")
        if end_stream:
            stream.ended = True
            self.on_end(stream)

    def on_oversized(self, sid: int, error: HeaderListTooLarge, end_stream: bool) -> None:
        """A request whose header list is over the advertised limit: answered RESOURCE_EXHAUSTED (trailers
        only) and its stream reset; nothing of it is kept or forwarded."""
        self._count_reset("requests with header lists over the limit")
        stream = self.streams.get(sid)
        if stream is None:
            if sid % 2 == 0:
                raise ProtocolError(f"stream {sid} cannot be opened by a client")
            if sid <= self._last_peer_sid:
                return
            self._last_peer_sid = sid
            stream = Stream(sid, self.peer_window)
            self.streams[sid] = stream
        else:
            self._events.append(StreamReset(stream, PROTOCOL_ERROR, remote=False))
        stream.ended = stream.cut_short = True
        self._release_all(stream)
        message = (f"the request's metadata is over the gateway's limit of {error.limit} bytes "
                   "(SETTINGS_MAX_HEADER_LIST_SIZE; each entry counts its name, value and 32); send less metadata")
        self.respond(stream, [(b":status", b"200"), (b"content-type", b"application/grpc"),
                              (b"grpc-status", b"8"), (b"grpc-message", quote(message, safe=" /:;,()").encode()),
                              (b"berth-error-code", b"PayloadTooLarge")], None, None)

    def _count_reset(self, what: str) -> None:
        if not self._resets.take(self.now):
            self.calm(f"too many reset streams ({what} count too): more than {self.limits.resets_burst} at once, "
                      f"allowed {self.limits.resets_per_second:g} a second")

    def on_end(self, stream: Stream) -> None:
        if stream.streaming:
            self._events.append(StreamEnded(stream, stream.trailers))
        else:
            self._release_all(stream)  # the whole request goes to the handler: it is consumed
            self._events.append(RequestReceived(stream))

    def on_data(self, stream: Stream) -> None:
        if stream.size > self.max_body:  # answered now (the handler sees the size); the rest is dropped
            stream.chunks = []
            stream.ended = stream.cut_short = True
            self._release_all(stream)
            self._events.append(RequestReceived(stream))

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
            self._release_all(stream)
            if not stream.ended or stream.cut_short:  # answered before the client finished: stop it (RFC 9113 8.1)
                parts.append(frame(RST_STREAM, 0, stream.sid, U32.pack(NO_ERROR)))
            if self.going_away and not self.streams:  # close once this answer is written
                self.finished = True

    def on_reset(self, sid: int, code: int) -> None:
        self._count_reset("RST_STREAM")
        stream = self.streams.pop(sid, None)
        self.blocked.pop(sid, None)
        if stream is not None:
            if stream.ended or stream.streaming:  # handed to a handler: it counts until the adapter takes over
                self.just_reset += 1
            stream.closed = stream.ended = True
            self._release_all(stream)
            self._events.append(StreamReset(stream, code))

    def on_goaway(self, last_sid: int, code: int) -> None:
        self.going_away = True
        self._events.append(ConnectionTerminated(code, last_sid, remote=True, close=not self.streams))

    def shutdown(self) -> bool:
        """Stop taking new streams; True when none is in progress (the transport may close now)."""
        if not self.going_away:
            self.goaway(NO_ERROR, "the gateway is stopping")
        if not self.streams:
            self.finished = True
        return not self.streams
