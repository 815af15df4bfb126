"""Lean HTTP/2 (RFC 9113, cleartext with prior knowledge) for the gateway's gRPC data path.

Both ends of the gateway's gRPC path speak this: :class:`ServerConnection` accepts a client's
connection and hands each complete request stream to a callback; :class:`ClientConnection` carries
requests to one inference server and resolves a future per stream with its whole answer.  Unary calls
(all V2 inference methods but one) are held whole: a request is dispatched when its stream ends, an
answer is written as one HEADERS, its DATA and the trailers, in a single ``transport.write`` while the
peer's flow-control windows allow (the rest waits for WINDOW_UPDATE).  Streaming calls (the server's
``streaming`` paths, :meth:`ClientConnection.open`) are handed over at their HEADERS instead, and what
arrives goes to the stream's ``inbox`` as events while :meth:`Connection.push` sends more.

What is deliberately small: no priorities, no server push, no TLS, frames of at most 16 KiB.  Receive
windows are large (16 MiB per stream, 1 GiB per connection) and topped up in big steps, so small
messages never wait for a WINDOW_UPDATE.  Header blocks are :mod:`headerblock`.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod

from berth.gateway import headerblock
from berth.gateway.h2frames import (
    ACK,
    COMPRESSION_ERROR,
    CONN_WINDOW,
    CONTINUATION,
    DATA,
    END_HEADERS,
    END_STREAM,
    FLOW_CONTROL_ERROR,
    FRAME_HEAD,
    FRAME_MAX,
    FRAME_SIZE_ERROR,
    GOAWAY,
    HEADERS,
    MAX_WINDOW,
    NO_ERROR,
    PADDED,
    PING,
    PRIORITY_FLAG,
    PUSH_PROMISE,
    RST_STREAM,
    S_INITIAL_WINDOW_SIZE,
    S_MAX_CONCURRENT_STREAMS,
    S_MAX_FRAME_SIZE,
    SETTING,
    SETTINGS,
    STREAM_WINDOW,
    U32,
    WINDOW_UPDATE,
    ProtocolError,
    Stream,
    frame,
    settings_frame,
)
from berth.gateway.headerblock import Field, HeaderError


class Connection(asyncio.Protocol, ABC):
    """What both ends share: framing, settings, PING, flow control, GOAWAY."""

    def __init__(self, settings: dict[int, int]) -> None:
        self.transport: asyncio.Transport | None = None
        self.decoder = headerblock.Decoder()
        self.streams: dict[int, Stream] = {}
        self.peer_window = 65535  # the peer's initial stream window (its SETTINGS)
        self.peer_max_streams = 1 << 31
        self.conn_window = 65535  # what we may still send on the connection
        self.conn_unacked = 0
        self.blocked: dict[int, Stream] = {}  # streams waiting for window, in order
        self.closed = False
        self.going_away = False
        self._buf = b""
        self._block: tuple[int, int, list[bytes]] | None = None  # sid, flags, parts of an unfinished block
        self._settings = settings
        self._last_peer_sid = 0

    # ---- sending ----

    def _greeting(self) -> bytes:
        return (settings_frame(self._settings)
                + frame(WINDOW_UPDATE, 0, 0, U32.pack(CONN_WINDOW - 65535)))

    def write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(data)

    def send(self, stream: Stream, head: bytes | None, data: bytes | None, trailers: bytes | None) -> None:
        """Queue ``head`` (HEADERS frames), DATA ``data`` and ``trailers`` (HEADERS frames that end the stream),
        and write what the windows allow now, in one write.  With no ``trailers`` the DATA ends the stream."""
        parts: list[bytes] = []
        if head is not None:
            parts.append(head)
        stream.out = data or b""
        stream.out_pos = 0
        stream.out_end = trailers is None
        stream.after = trailers
        self._drain(stream, parts)
        if parts:
            self.write(b"".join(parts))

    def push(self, stream: Stream, head: bytes | None, data: bytes, *, end: bool = False,
             trailers: bytes | None = None) -> None:
        """Streaming send: ``head`` (HEADERS frames) if given, then ``data`` after what still waits for window;
        ``end`` ends the stream with the data, ``trailers`` (HEADERS frames ending it) after it."""
        parts: list[bytes] = [head] if head is not None else []
        if stream.out_pos < len(stream.out):
            stream.out = stream.out[stream.out_pos:] + data
        else:
            stream.out = data
        stream.out_pos = 0
        stream.out_end = end and trailers is None
        stream.after = trailers
        self._drain(stream, parts)
        if parts:
            self.write(b"".join(parts))

    def _drain(self, stream: Stream, parts: list[bytes]) -> None:
        out = stream.out
        pos = stream.out_pos
        total = len(out)
        while pos < total:
            n = min(total - pos, stream.send_window, self.conn_window, FRAME_MAX)
            if n <= 0:
                stream.out_pos = pos
                self.blocked[stream.sid] = stream
                return
            pos += n
            last = pos >= total
            parts.append(frame(DATA, END_STREAM if last and stream.out_end else 0, stream.sid,
                               out[pos - n:pos] if n != total else out))
            stream.send_window -= n
            self.conn_window -= n
        if total == 0 and stream.out_end:
            parts.append(frame(DATA, END_STREAM, stream.sid))
        stream.out = b""
        stream.out_pos = 0
        self.blocked.pop(stream.sid, None)
        if stream.after is not None:
            parts.append(stream.after)
            stream.after = None
        elif not stream.out_end:
            return  # a streaming call with more to come
        stream.closed = True
        self._maybe_forget(stream, parts)

    def _maybe_forget(self, stream: Stream, parts: list[bytes]) -> None:
        """Drop a stream once both sides are done with it (hook for the two ends; frames to send go to ``parts``,
        after the stream's own)."""

    def reset(self, sid: int, code: int) -> None:
        self.write(frame(RST_STREAM, 0, sid, U32.pack(code)))

    def goaway(self, code: int = NO_ERROR, reason: str = "") -> None:
        self.going_away = True
        self.write(frame(GOAWAY, 0, 0, U32.pack(self._last_peer_sid) + U32.pack(code) + reason.encode()[:200]))

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    # ---- receiving ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._buf:
            data = self._buf + data
            self._buf = b""
        try:
            pos = self._frames(data)
        except ProtocolError as exc:
            self.goaway(exc.code, str(exc))
            self.close()
            return
        if pos < len(data):
            self._buf = data[pos:]

    def _frames(self, data: bytes) -> int:
        pos = 0
        end = len(data)
        unpack = FRAME_HEAD.unpack_from
        while end - pos >= 9:
            hi, lo, ftype, flags, sid = unpack(data, pos)
            length = hi << 16 | lo
            if length > FRAME_MAX:
                raise ProtocolError(f"frame of {length} bytes exceeds the {FRAME_MAX} allowed", FRAME_SIZE_ERROR)
            stop = pos + 9 + length
            if stop > end:
                break
            payload = data[pos + 9:stop]
            pos = stop
            sid &= 0x7FFFFFFF
            if self._block is not None and ftype != CONTINUATION:
                raise ProtocolError("a header block was interrupted by another frame")
            if ftype == DATA:
                self._on_data(sid, flags, payload)
            elif ftype == HEADERS:
                self._on_headers(sid, flags, payload)
            elif ftype == WINDOW_UPDATE:
                self._on_window_update(sid, payload)
            elif ftype == SETTINGS:
                self._on_settings(sid, flags, payload)
            elif ftype == PING:
                if sid:
                    raise ProtocolError("PING on a stream")
                if len(payload) != 8:
                    raise ProtocolError("malformed PING", FRAME_SIZE_ERROR)
                if not flags & ACK:
                    self.write(frame(PING, ACK, 0, payload))
            elif ftype == RST_STREAM:
                if not sid:
                    raise ProtocolError("RST_STREAM on stream 0")
                if len(payload) != 4:
                    raise ProtocolError("malformed RST_STREAM", FRAME_SIZE_ERROR)
                self.on_reset(sid, U32.unpack(payload)[0])
            elif ftype == GOAWAY:
                if sid:
                    raise ProtocolError("GOAWAY on a stream")
                if len(payload) < 8:
                    raise ProtocolError("malformed GOAWAY", FRAME_SIZE_ERROR)
                self.on_goaway(U32.unpack_from(payload)[0] & 0x7FFFFFFF, U32.unpack_from(payload, 4)[0])
            elif ftype == CONTINUATION:
                self._on_continuation(sid, flags, payload)
            elif ftype == PUSH_PROMISE:
                raise ProtocolError("server push is disabled on this connection")
            # PRIORITY and unknown frame types are ignored, as RFC 9113 asks
        return pos

    def _on_settings(self, sid: int, flags: int, payload: bytes) -> None:
        if sid:
            raise ProtocolError("SETTINGS on a stream")
        if flags & ACK:
            if payload:
                raise ProtocolError("SETTINGS acknowledgement with a payload", FRAME_SIZE_ERROR)
            return
        if len(payload) % 6:
            raise ProtocolError("malformed SETTINGS", FRAME_SIZE_ERROR)
        for i in range(0, len(payload), 6):
            key, value = SETTING.unpack_from(payload, i)
            if key == S_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ProtocolError("initial window size too large", FLOW_CONTROL_ERROR)
                delta = value - self.peer_window
                self.peer_window = value
                for stream in self.streams.values():
                    stream.send_window += delta
            elif key == S_MAX_CONCURRENT_STREAMS:
                self.peer_max_streams = value
            elif key == S_MAX_FRAME_SIZE and not 16384 <= value <= 16777215:
                raise ProtocolError("invalid SETTINGS_MAX_FRAME_SIZE")
        self.write(frame(SETTINGS, ACK, 0))
        self._unblock()

    def _on_window_update(self, sid: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise ProtocolError("malformed WINDOW_UPDATE", FRAME_SIZE_ERROR)
        increment = U32.unpack(payload)[0] & 0x7FFFFFFF
        if sid == 0:
            if not increment:
                raise ProtocolError("WINDOW_UPDATE of 0")
            self.conn_window += increment
            if self.conn_window > MAX_WINDOW:
                raise ProtocolError("connection window overflow", FLOW_CONTROL_ERROR)
            self._unblock()
            return
        stream = self.streams.get(sid)
        if stream is not None and increment:
            stream.send_window += increment
            if stream.sid in self.blocked:
                parts: list[bytes] = []
                self._drain(stream, parts)
                if parts:
                    self.write(b"".join(parts))

    def _unblock(self) -> None:
        if not self.blocked:
            return
        parts: list[bytes] = []
        for stream in list(self.blocked.values()):
            self._drain(stream, parts)
            if self.conn_window <= 0:
                break
        if parts:
            self.write(b"".join(parts))

    def _on_headers(self, sid: int, flags: int, payload: bytes) -> None:
        if not sid:
            raise ProtocolError("HEADERS on stream 0")
        start = 0
        end = len(payload)
        if flags & PADDED:
            if not payload:
                raise ProtocolError("padded HEADERS without a pad length")
            start = 1
            end -= payload[0]
        if flags & PRIORITY_FLAG:
            start += 5
        if start > end:
            raise ProtocolError("HEADERS padding exceeds the frame")
        fragment = payload[start:end]
        if flags & END_HEADERS:
            self._header_block(sid, flags, fragment)
        else:
            self._block = (sid, flags, [fragment])

    def _on_continuation(self, sid: int, flags: int, payload: bytes) -> None:
        if self._block is None or self._block[0] != sid:
            raise ProtocolError("CONTINUATION without a header block to continue")
        self._block[2].append(payload)
        if flags & END_HEADERS:
            block_sid, block_flags, parts = self._block
            self._block = None
            self._header_block(block_sid, block_flags, b"".join(parts))

    def _header_block(self, sid: int, flags: int, block: bytes) -> None:
        try:
            fields = self.decoder.decode(block)
        except HeaderError as exc:
            raise ProtocolError(str(exc), COMPRESSION_ERROR) from exc
        self.on_headers(sid, fields, bool(flags & END_STREAM))

    def _on_data(self, sid: int, flags: int, payload: bytes) -> None:
        if not sid:
            raise ProtocolError("DATA on stream 0")
        size = len(payload)
        if flags & PADDED:
            if not payload or payload[0] >= size:
                raise ProtocolError("bad padding on DATA")
            data = payload[1:size - payload[0]]
        else:
            data = payload
        self.conn_unacked += size
        if self.conn_unacked >= CONN_WINDOW // 2:
            self.write(frame(WINDOW_UPDATE, 0, 0, U32.pack(self.conn_unacked)))
            self.conn_unacked = 0
        stream = self.streams.get(sid)
        if stream is None or stream.ended:
            return  # a stream already reset or finished: its data is dropped (the window was counted)
        stream.recv_unacked += size
        if stream.recv_unacked >= STREAM_WINDOW // 2:
            self.write(frame(WINDOW_UPDATE, 0, sid, U32.pack(stream.recv_unacked)))
            stream.recv_unacked = 0
        if data:
            if stream.inbox is not None:
                stream.inbox.put_nowait(("data", data))
            else:
                stream.chunks.append(data)
                stream.size += len(data)
        if flags & END_STREAM:
            stream.ended = True
            self.on_end(stream)
        elif data:
            self.on_data(stream)

    # ---- what each end does ----

    @abstractmethod
    def on_headers(self, sid: int, fields: list[Field], end_stream: bool) -> None:
        """A complete header block arrived on stream ``sid``."""

    def on_data(self, stream: Stream) -> None:
        """More of a message arrived (the stream is still open)."""

    @abstractmethod
    def on_end(self, stream: Stream) -> None:
        """The peer ended its side of ``stream``."""

    @abstractmethod
    def on_reset(self, sid: int, code: int) -> None:
        """The peer reset stream ``sid`` with ``code``."""

    @abstractmethod
    def on_goaway(self, last_sid: int, code: int) -> None:
        """The peer will handle no stream above ``last_sid``."""
