"""The gateway's HTTP/2 protocol core (RFC 9113, cleartext with prior knowledge), sans-IO: bytes in, events out.

Shaped as python-hyper's ``h2`` is: :meth:`H2Connection.receive_data` takes the bytes a peer sent (and the time,
and how many bytes the transport still holds unsent) and returns what they meant as :class:`Event` objects;
whatever the connection has to say (acknowledgements, window updates, answers, resets, GOAWAY) accumulates
until :meth:`H2Connection.data_to_send` takes it.  Nothing here touches a socket, an event loop or a clock:
the asyncio adapters (:mod:`h2server`, :mod:`h2client`, sharing :mod:`h2`) feed bytes, dispatch the events
to their handlers and write what is due; tests drive the core with bytes alone.

:class:`ServerCore` is the gateway's end of a client's connection, :class:`ClientCore` its end of a connection
to an inference server; both hold stream state, flow-control windows and HPACK, and enforce every bound of one
:class:`~h2limits.Limits` object: header list and block sizes, CONTINUATION frames, the HPACK table, flood
budgets (PING, SETTINGS, RST_STREAM, empty frames), queued control bytes, concurrent streams and the
rapid-reset budget, receive windows refilled only as data is consumed, and (:meth:`ServerCore.tick`) the
preface, idle and stalled-answer clocks.  A peer past one gets GOAWAY ``ENHANCE_YOUR_CALM`` (RFC 9113 error
codes otherwise) and a :class:`ConnectionTerminated` event.

What is deliberately small: no priorities, no server push, no TLS, frames of at most 16 KiB.  Unary calls are
held whole (a request is :class:`RequestReceived` once its stream ends); streaming calls (the server's
``streaming`` paths, :meth:`ClientCore.open`) are handed over at their HEADERS and their data arrives as
:class:`DataReceived` events.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from berth.gateway.http2 import headerblock
from berth.gateway.http2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    PingReceived,
    SettingsChanged,
    WindowUpdated,
)
from berth.gateway.http2.frames import (
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
from berth.gateway.http2.headerblock import Field, HeaderError, HeaderListTooLarge
from berth.gateway.http2.limits import ENHANCE_YOUR_CALM, Budget, Limits, MiB

_SETTINGS_ACK = frame(SETTINGS, ACK, 0)

# An inference server is one of ours, not a stranger: its answers' metadata may be large (it is passed on
# as is), and its answers are consumed as they arrive.
UPSTREAM_LIMITS = Limits(max_header_list_size=4 * MiB, max_header_block_bytes=4 * MiB, max_continuation_frames=1024,
                         stream_window=STREAM_WINDOW)


# ---- what both ends share ----

class H2Connection(ABC):
    """Framing, settings, PING, flow control, HPACK and the limits both ends need; no I/O, no clock."""

    def __init__(self, settings: dict[int, int], limits: Limits, connection_window: int = CONN_WINDOW,
                 now: float = 0.0) -> None:
        self.limits = limits
        self.now = now  # the time the caller last passed in (time.monotonic)
        self.buffered = 0  # bytes the transport holds unsent, as the caller last said
        self.decoder = headerblock.Decoder(limits.header_table_size, limits.max_header_list_size)
        self.streams: dict[int, Stream] = {}
        self.peer_window = 65535  # the peer's initial stream window (its SETTINGS)
        self.peer_max_streams = 1 << 31
        self.conn_window = 65535  # what we may still send on the connection
        self.conn_unacked = 0
        self.blocked: dict[int, Stream] = {}  # streams waiting for window, in order
        self.closed = False
        self.going_away = False
        self.outbound: list[bytes] = []  # frames queued for data_to_send
        self._events: list[Event] = []
        self._buf = b""
        self._block: tuple[int, int, list[bytes]] | None = None  # sid, flags, parts of an unfinished block
        self._block_size = 0
        self._settings = settings
        self._last_peer_sid = 0
        self._preface = False  # a server: the client's preface is still due
        self.recv_window = connection_window  # what we let the peer send on the connection, unconsumed
        self.recv_taken = 0  # DATA bytes received that the connection's window has not been refilled for
        # a stream's receive window as the peer may use it (65,535 until it has taken our SETTINGS)
        self.stream_recv_window = max(settings.get(S_INITIAL_WINDOW_SIZE, 65535), 65535)
        self.just_reset = 0  # streams the peer reset in the bytes being read (their handlers still run)
        self.sent = 0  # DATA bytes sent so far (progress, for the stalled-answer timeout)
        self._pings = Budget(limits.pings_per_second, limits.pings_burst, now)
        self._settings_budget = Budget(limits.settings_per_second, limits.settings_burst, now)
        self._empty = Budget(limits.empty_frames_per_second, limits.empty_frames_burst, now)

    # ---- bytes out ----

    def data_to_send(self) -> bytes:
        """What the connection has to send, taken (empty when nothing is due)."""
        out = self.outbound
        if not out:
            return b""
        self.outbound = []
        return out[0] if len(out) == 1 else b"".join(out)

    def _greeting(self) -> bytes:
        return (settings_frame(self._settings)
                + frame(WINDOW_UPDATE, 0, 0, U32.pack(self.recv_window - 65535)))

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.outbound.append(data)

    def control(self, data: bytes) -> None:
        """Queue a frame the peer's own frames made due (an acknowledgement, a reset): refused, with the
        connection, when the peer has let more than ``max_queued_control_bytes`` pile up unread."""
        if self.buffered > self.limits.max_queued_control_bytes:
            raise ProtocolError(f"over {self.limits.max_queued_control_bytes} bytes are queued for a peer that does "
                                "not read them", ENHANCE_YOUR_CALM)
        self.write(data)

    def consumed(self, size: int) -> None:
        """``size`` received bytes were consumed (handed on, or dropped): the peer may send as many again."""
        self.conn_unacked += size
        if self.conn_unacked >= self.recv_window // 2:
            self.write(frame(WINDOW_UPDATE, 0, 0, U32.pack(self.conn_unacked)))
            self.recv_taken -= self.conn_unacked
            self.conn_unacked = 0

    def send(self, stream: Stream, head: bytes | None, data: bytes | None, trailers: bytes | None) -> None:
        """Queue ``head`` (HEADERS frames), DATA ``data`` and ``trailers`` (HEADERS frames that end the stream),
        as much as the windows allow now.  With no ``trailers`` the DATA ends the stream."""
        parts: list[bytes] = [head] if head is not None else []
        if data and len(data) <= FRAME_MAX and len(data) <= stream.send_window and len(data) <= self.conn_window:
            # the common case, a message that fits one frame and both windows: what _drain does, in one step
            size = len(data)
            if trailers is None:
                parts.append(frame(DATA, END_STREAM, stream.sid, data))
            else:
                parts.append(frame(DATA, 0, stream.sid, data))
                parts.append(trailers)
            stream.send_window -= size
            self.conn_window -= size
            self.sent += size
            stream.out = b""
            stream.out_pos = 0
            stream.out_end = trailers is None
            stream.after = None
            if self.blocked:
                self.blocked.pop(stream.sid, None)
            stream.closed = True
            self._maybe_forget(stream, parts)
            self.write(b"".join(parts))
            return
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
                if pos != stream.out_pos or stream.sid not in self.blocked:  # progress, or newly blocked
                    stream.stalled_at = self.now
                stream.out_pos = pos
                self.blocked[stream.sid] = stream
                return
            pos += n
            last = pos >= total
            parts.append(frame(DATA, END_STREAM if last and stream.out_end else 0, stream.sid,
                               out[pos - n:pos] if n != total else out))
            stream.send_window -= n
            self.conn_window -= n
            self.sent += n
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
        after the stream's own); by default nothing is dropped."""
        return

    def reset(self, sid: int, code: int) -> None:
        self.write(frame(RST_STREAM, 0, sid, U32.pack(code)))

    def calm(self, reason: str) -> None:
        """The peer misbehaves: GOAWAY ``ENHANCE_YOUR_CALM`` saying why, and the connection ends."""
        raise ProtocolError(reason, ENHANCE_YOUR_CALM)

    def goaway(self, code: int = NO_ERROR, reason: str = "") -> None:
        self.going_away = True
        self.write(frame(GOAWAY, 0, 0, U32.pack(self._last_peer_sid) + U32.pack(code) + reason.encode()[:200]))

    def _terminate(self, code: int, reason: str, *, abort: bool = False, say: bool = True) -> None:
        """End the connection from this side: GOAWAY (unless ``say`` is False) and a ConnectionTerminated."""
        if say:
            self.goaway(code, reason)
        self.closed = True  # nothing more is read or written on it
        self._events.append(ConnectionTerminated(code, self._last_peer_sid, reason, abort=abort))

    # ---- bytes in ----

    def receive_data(self, data: bytes, now: float, buffered: int = 0) -> list[Event]:
        """Take ``data`` the peer sent at ``now`` (``time.monotonic``), with ``buffered`` bytes still unsent on
        the transport; returns the events it made (what to send is then in :meth:`data_to_send`)."""
        self.now = now
        self.buffered = buffered
        self.just_reset = 0
        events: list[Event] = []
        self._events = events
        if self.closed:
            return events
        if self._buf:
            data = self._buf + data
            self._buf = b""
        if self._preface:
            data = self._take_preface(data)
            if not data:
                return events
        try:
            pos = self._frames(data)
        except ProtocolError as exc:
            self._terminate(exc.code, str(exc))
            return events
        if pos < len(data):
            self._buf = data[pos:]
        return events

    def _take_preface(self, data: bytes) -> bytes:
        """What follows the peer's connection preface in ``data`` (b"" while it is incomplete, kept in the
        buffer, or refused); only a server's connection waits for one (:class:`ServerCore`)."""
        return data

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
                if not length and not flags & END_STREAM and not self._empty.take(self.now):
                    self.calm("too many empty DATA frames")
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
                    if not self._pings.take(self.now):
                        self.calm(f"more than {self.limits.pings_burst} PINGs at once (allowed: "
                                  f"{self.limits.pings_per_second:g} a second)")
                    self.control(frame(PING, ACK, 0, payload))
                    self._events.append(PingReceived(payload))
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
            elif not self._empty.take(self.now):  # PRIORITY and unknown frame types are ignored, as RFC 9113 asks
                self.calm("too many frames that carry nothing (PRIORITY, unknown types)")
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
        limits = self.limits
        if not self._settings_budget.take(self.now):
            self.calm(f"more than {limits.settings_burst} SETTINGS frames at once (allowed: "
                      f"{limits.settings_per_second:g} a second)")
        if len(payload) // 6 > limits.max_settings_entries:
            self.calm(f"a SETTINGS frame of {len(payload) // 6} entries (at most {limits.max_settings_entries})")
        window = None
        changed: dict[int, int] = {}
        for i in range(0, len(payload), 6):
            key, value = SETTING.unpack_from(payload, i)
            changed[key] = value
            if key == S_INITIAL_WINDOW_SIZE:
                if value > MAX_WINDOW:
                    raise ProtocolError("initial window size too large", FLOW_CONTROL_ERROR)
                window = value
            elif key == S_MAX_CONCURRENT_STREAMS:
                self.peer_max_streams = value
            elif key == S_MAX_FRAME_SIZE and not 16384 <= value <= 16777215:
                raise ProtocolError("invalid SETTINGS_MAX_FRAME_SIZE")
        if window is not None and window != self.peer_window:  # the last value counts: one pass over the streams
            delta = window - self.peer_window
            self.peer_window = window
            for stream in self.streams.values():
                stream.send_window += delta
        self.control(_SETTINGS_ACK)
        self._events.append(SettingsChanged(changed))
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
            self._events.append(WindowUpdated(0, increment))
            self._unblock()
            return
        stream = self.streams.get(sid)
        if stream is None or not increment:
            if not self._empty.take(self.now):
                self.calm("too many WINDOW_UPDATE frames that change nothing")
            return
        stream.send_window += increment
        self._events.append(WindowUpdated(sid, increment))
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
            self._block_size = len(fragment)

    def _on_continuation(self, sid: int, flags: int, payload: bytes) -> None:
        if self._block is None or self._block[0] != sid:
            raise ProtocolError("CONTINUATION without a header block to continue")
        parts = self._block[2]
        parts.append(payload)
        self._block_size += len(payload)
        limits = self.limits
        if len(parts) > limits.max_continuation_frames + 1:
            self.calm(f"a header block in more than {limits.max_continuation_frames} CONTINUATION frames")
        if self._block_size > limits.max_header_block_bytes:
            self.calm(f"a header block over {limits.max_header_block_bytes} bytes")
        if flags & END_HEADERS:
            block_sid, block_flags, parts = self._block
            self._block = None
            self._header_block(block_sid, block_flags, b"".join(parts))

    def _header_block(self, sid: int, flags: int, block: bytes) -> None:
        if len(block) > self.limits.max_header_block_bytes:
            self.calm(f"a header block over {self.limits.max_header_block_bytes} bytes")
        try:
            fields = self.decoder.decode(block)
        except HeaderError as exc:
            raise ProtocolError(str(exc), COMPRESSION_ERROR) from exc
        except HeaderListTooLarge as exc:
            self.on_oversized(sid, exc, bool(flags & END_STREAM))
            return
        self.on_headers(sid, fields, bool(flags & END_STREAM))

    def _on_data(self, sid: int, flags: int, payload: bytes) -> None:
        if not sid:
            raise ProtocolError("DATA on stream 0")
        size = len(payload)
        self.recv_taken += size
        if self.recv_taken > self.recv_window:
            raise ProtocolError(f"DATA beyond the connection's flow-control window of {self.recv_window} bytes",
                                FLOW_CONTROL_ERROR)
        if flags & PADDED:
            if not payload or payload[0] >= size:
                raise ProtocolError("bad padding on DATA")
            data = payload[1:size - payload[0]]
        else:
            data = payload
        stream = self.streams.get(sid)
        if stream is None or stream.ended:
            self.consumed(size)
            return  # a stream already reset or finished: its data is dropped (and counts as consumed)
        stream.recv_taken += size
        if stream.recv_taken > self.stream_recv_window:
            raise ProtocolError(f"DATA beyond stream {sid}'s flow-control window of {self.stream_recv_window} bytes",
                                FLOW_CONTROL_ERROR)
        if size != len(data):  # padding: consumed at once
            self.consumed(size - len(data))
            self.refill(stream, size - len(data))
        self.received(stream, len(data))
        if data:
            if stream.streaming:
                self._events.append(DataReceived(stream, data))
            else:
                stream.chunks.append(data)
                stream.size += len(data)
        if flags & END_STREAM:
            stream.ended = True
            self.on_end(stream)
        elif data:
            self.on_data(stream)

    def received(self, stream: Stream, size: int) -> None:
        """``size`` bytes of DATA arrived on ``stream``: here consumed at once (both windows refilled)."""
        self.consumed(size)
        self.refill(stream, size)

    def refill(self, stream: Stream, size: int) -> None:
        """``stream``'s receive window may take ``size`` bytes more (sent in big steps)."""
        stream.recv_unacked += size
        if stream.recv_unacked >= self.limits.stream_window // 2:
            self.write(frame(WINDOW_UPDATE, 0, stream.sid, U32.pack(stream.recv_unacked)))
            stream.recv_taken -= stream.recv_unacked
            stream.recv_unacked = 0

    def on_oversized(self, sid: int, error: HeaderListTooLarge, end_stream: bool) -> None:
        """A header block decoded to more than ``max_header_list_size``: nothing of it was kept."""
        raise ProtocolError(str(error), ENHANCE_YOUR_CALM)

    # ---- what each end does: abstract hooks, implemented by ServerCore (servercore.py) and ClientCore ----

    @abstractmethod
    def on_headers(self, sid: int, fields: list[Field], end_stream: bool) -> None:
        """A HEADERS block (with its CONTINUATIONs) decoded for stream ``sid``."""

    def on_data(self, stream: Stream) -> None:
        """More of a message arrived (the stream is still open); by default it waits for its end."""
        return

    @abstractmethod
    def on_end(self, stream: Stream) -> None:
        """The peer ended ``stream`` (END_STREAM)."""

    @abstractmethod
    def on_reset(self, sid: int, code: int) -> None:
        """The peer reset stream ``sid`` with ``code``."""

    @abstractmethod
    def on_goaway(self, last_sid: int, code: int) -> None:
        """The peer sent GOAWAY: streams above ``last_sid`` were not processed."""


# ---- the gateway's end of a client's connection ----
