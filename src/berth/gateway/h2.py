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
import struct
from collections.abc import Callable
from typing import Any

from berth.gateway import headerblock
from berth.gateway.headerblock import Field, HeaderError

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, FRAME_SIZE_ERROR = 0x7, 0x8, 0x9, 0x6
S_HEADER_TABLE_SIZE, S_ENABLE_PUSH, S_MAX_CONCURRENT_STREAMS, S_INITIAL_WINDOW_SIZE, S_MAX_FRAME_SIZE = 1, 2, 3, 4, 5

FRAME_MAX = 16384  # what we accept and what we send (every peer accepts at least this)
STREAM_WINDOW = 1 << 24
CONN_WINDOW = 1 << 30
MAX_WINDOW = (1 << 31) - 1
_HEAD = struct.Struct(">BHBBL")  # length (24 bits as 8 + 16), type, flags, stream id
_SETTING = struct.Struct(">HL")
_U32 = struct.Struct(">L")


class ProtocolError(Exception):
    """The peer broke HTTP/2: the connection is ended with GOAWAY and ``code``."""

    def __init__(self, message: str, code: int = PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


class StreamReset(Exception):
    """The server reset the stream (RST_STREAM) before answering it."""

    def __init__(self, code: int) -> None:
        super().__init__(f"the server reset the stream (HTTP/2 error code {code})")
        self.code = code


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return _HEAD.pack(n >> 16, n & 0xFFFF, ftype, flags, sid) + payload


def settings_frame(values: dict[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(_SETTING.pack(k, v) for k, v in values.items()))


def headers_frames(sid: int, block: bytes, end_stream: bool) -> bytes:
    """HEADERS (and CONTINUATION frames when the block is over one frame) for ``block``."""
    flags = END_STREAM if end_stream else 0
    if len(block) <= FRAME_MAX:
        return frame(HEADERS, flags | END_HEADERS, sid, block)
    parts = [frame(HEADERS, flags, sid, block[:FRAME_MAX])]
    pos = FRAME_MAX
    while pos < len(block):
        chunk = block[pos:pos + FRAME_MAX]
        pos += FRAME_MAX
        parts.append(frame(CONTINUATION, END_HEADERS if pos >= len(block) else 0, sid, chunk))
    return b"".join(parts)


class Stream:
    """One request/answer exchange: what arrived, and what still waits to be sent."""

    __slots__ = ("sid", "headers", "trailers", "chunks", "size", "recv_unacked", "send_window", "out", "out_pos",
                 "out_end", "after", "ended", "closed", "future", "task", "answered", "cut_short", "inbox")

    def __init__(self, sid: int, send_window: int) -> None:
        self.sid = sid
        self.headers: list[Field] = []
        self.trailers: list[Field] | None = None
        self.chunks: list[bytes] = []
        self.size = 0
        self.recv_unacked = 0
        self.send_window = send_window
        self.out = b""  # DATA payload waiting for window
        self.out_pos = 0
        self.out_end = False  # END_STREAM goes with the last of ``out`` (when no trailers follow)
        self.after: bytes | None = None  # trailers' HEADERS frames, sent once ``out`` is all sent
        self.ended = False  # the peer ended its side
        self.closed = False  # our side is finished (or the stream was reset)
        self.future: asyncio.Future[Stream] | None = None  # client side: resolved when the answer is whole
        self.task: asyncio.Future[Any] | None = None  # server side: the handler running for this request
        self.answered = False  # client side: a frame of the answer arrived
        self.cut_short = False  # server side: the request outgrew the limit; the rest of it is dropped
        # a streaming call's events as they arrive, instead of a whole message: ("headers", fields),
        # ("data", bytes), ("end", trailers or None), ("error", exception)
        self.inbox: asyncio.Queue[tuple[str, Any]] | None = None

    def body(self) -> bytes:
        chunks = self.chunks
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class Connection(asyncio.Protocol):
    """What both ends share: framing, settings, PING, flow control, GOAWAY."""

    is_client = False

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
                + frame(WINDOW_UPDATE, 0, 0, _U32.pack(CONN_WINDOW - 65535)))

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
        self.write(frame(RST_STREAM, 0, sid, _U32.pack(code)))

    def goaway(self, code: int = NO_ERROR, reason: str = "") -> None:
        self.going_away = True
        self.write(frame(GOAWAY, 0, 0, _U32.pack(self._last_peer_sid) + _U32.pack(code) + reason.encode()[:200]))

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
        unpack = _HEAD.unpack_from
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
                self.on_reset(sid, _U32.unpack(payload)[0])
            elif ftype == GOAWAY:
                if sid:
                    raise ProtocolError("GOAWAY on a stream")
                if len(payload) < 8:
                    raise ProtocolError("malformed GOAWAY", FRAME_SIZE_ERROR)
                self.on_goaway(_U32.unpack_from(payload)[0] & 0x7FFFFFFF, _U32.unpack_from(payload, 4)[0])
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
            key, value = _SETTING.unpack_from(payload, i)
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
        increment = _U32.unpack(payload)[0] & 0x7FFFFFFF
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
            self.write(frame(WINDOW_UPDATE, 0, 0, _U32.pack(self.conn_unacked)))
            self.conn_unacked = 0
        stream = self.streams.get(sid)
        if stream is None or stream.ended:
            return  # a stream already reset or finished: its data is dropped (the window was counted)
        stream.recv_unacked += size
        if stream.recv_unacked >= STREAM_WINDOW // 2:
            self.write(frame(WINDOW_UPDATE, 0, sid, _U32.pack(stream.recv_unacked)))
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

    def on_headers(self, sid: int, fields: list[Field], end_stream: bool) -> None:
        raise NotImplementedError

    def on_data(self, stream: Stream) -> None:
        """More of a message arrived (the stream is still open)."""

    def on_end(self, stream: Stream) -> None:
        raise NotImplementedError

    def on_reset(self, sid: int, code: int) -> None:
        raise NotImplementedError

    def on_goaway(self, last_sid: int, code: int) -> None:
        raise NotImplementedError


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
                parts.append(frame(RST_STREAM, 0, stream.sid, _U32.pack(NO_ERROR)))
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


class Vanished(ConnectionError):
    """The connection ended (or the server went away) before any of the answer arrived.  ``unprocessed``:
    the server certainly did not act on the request (never sent, refused, or past its GOAWAY)."""

    def __init__(self, message: str, *, unprocessed: bool = False) -> None:
        super().__init__(message)
        self.unprocessed = unprocessed


class Cut(ConnectionError):
    """The connection ended in the middle of the answer."""


class ClientConnection(Connection):
    """The gateway's connection to one inference server's gRPC port; many requests at once."""

    is_client = True

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
        if self.going_away and not self.streams:  # pruned, or the server said GOAWAY: done once idle
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
