"""HTTP/2 (RFC 9113) on the wire, for :mod:`h2`: frame types, flags, error codes and settings, the
builders of the frames the gateway writes, the errors a connection raises, and :class:`Stream`."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

from berth.gateway.forwarding.failures import Cut as Cut  # the failures of a call, re-exported for h2's users
from berth.gateway.forwarding.failures import StreamReset as StreamReset
from berth.gateway.forwarding.failures import Vanished as Vanished
from berth.gateway.http2.headerblock import Field

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
REFUSED_STREAM, CANCEL, COMPRESSION_ERROR, FRAME_SIZE_ERROR = 0x7, 0x8, 0x9, 0x6
S_HEADER_TABLE_SIZE, S_ENABLE_PUSH, S_MAX_CONCURRENT_STREAMS, S_INITIAL_WINDOW_SIZE, S_MAX_FRAME_SIZE = 1, 2, 3, 4, 5
S_MAX_HEADER_LIST_SIZE = 6

FRAME_MAX = 16384  # what we accept and what we send (every peer accepts at least this)
STREAM_WINDOW = 1 << 24
CONN_WINDOW = 1 << 30
MAX_WINDOW = (1 << 31) - 1
FRAME_HEAD = struct.Struct(">BHBBL")  # length (24 bits as 8 + 16), type, flags, stream id
SETTING = struct.Struct(">HL")
U32 = struct.Struct(">L")
_NEVER = float("inf")


class ProtocolError(Exception):
    """The peer broke HTTP/2: the connection is ended with GOAWAY and ``code``."""

    def __init__(self, message: str, code: int = PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    n = len(payload)
    return FRAME_HEAD.pack(n >> 16, n & 0xFFFF, ftype, flags, sid) + payload


def settings_frame(values: dict[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(SETTING.pack(k, v) for k, v in values.items()))


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
                 "out_end", "after", "ended", "closed", "future", "task", "answered", "cut_short", "inbox", "held",
                 "stalled_at", "streaming", "recv_taken", "deadline")

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
        self.held = 0  # server side: DATA bytes received and not yet consumed (the connection window's share)
        self.stalled_at = 0.0  # when the answer last made progress before waiting for window (while it waits)
        self.streaming = False  # a streaming call: its data goes on as events, not gathered in ``chunks``
        self.recv_taken = 0  # DATA bytes received on it that its receive window has not been refilled for
        self.deadline = _NEVER  # client side: the loop's time at which a unary call's future times out

    def body(self) -> bytes:
        chunks = self.chunks
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
