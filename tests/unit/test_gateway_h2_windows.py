"""Receive windows enforced by the sans-IO HTTP/2 core, and reset streams counted within one read: raw frames
from a peer that ignores the rules (``h2`` will not break them), bytes in, frames out, the test's own clock."""

from __future__ import annotations

import struct

import hpack

from berth.gateway.http2.events import ConnectionTerminated, RequestReceived, StreamReset
from berth.gateway.http2.limits import Limits
from berth.gateway.http2.servercore import ServerCore

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, GOAWAY, WINDOW_UPDATE = 0, 1, 3, 4, 7, 8
END_STREAM, END_HEADERS = 0x1, 0x4
FLOW_CONTROL_ERROR, CANCEL, REFUSED_STREAM = 0x3, 0x8, 0x7
STREAM_PATH = b"/inference.GRPCInferenceService/ModelStreamInfer"


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((ftype, flags)) + sid.to_bytes(4, "big") + payload


def frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    out, pos = [], 0
    while pos + 9 <= len(data):
        length = int.from_bytes(data[pos:pos + 3], "big")
        out.append((data[pos + 3], data[pos + 4], int.from_bytes(data[pos + 5:pos + 9], "big"),
                    data[pos + 9:pos + 9 + length]))
        pos += 9 + length
    return out


class Raw:
    def __init__(self, limits: Limits, **options: object) -> None:
        self.core = ServerCore(limits, now=1.0, **options)  # type: ignore[arg-type]
        self.encoder = hpack.Encoder()
        self.events = self.core.receive_data(PREFACE + frame(SETTINGS, 0, 0), 1.0)
        self.core.data_to_send()

    def headers(self, sid: int, path: bytes = b"/inference.GRPCInferenceService/ModelInfer",
                end: bool = False) -> bytes:
        block = self.encoder.encode([(b":method", b"POST"), (b":scheme", b"http"), (b":path", path),
                                     (b":authority", b"gw"), (b"content-type", b"application/grpc")])
        return frame(HEADERS, END_HEADERS | (END_STREAM if end else 0), sid, block)

    def feed(self, *data: bytes) -> tuple[list[object], list[tuple[int, int, int, bytes]]]:
        events = self.core.receive_data(b"".join(data), 2.0)
        return list(events), frames(self.core.data_to_send())


def goaway_code(out: list[tuple[int, int, int, bytes]]) -> tuple[int, str]:
    (payload,) = [f[3] for f in out if f[0] == GOAWAY]
    return int.from_bytes(payload[4:8], "big"), payload[8:].decode()


def test_data_past_a_streaming_calls_window_is_a_flow_control_error() -> None:
    raw = Raw(Limits(stream_window=65535), streaming=frozenset((STREAM_PATH,)))
    chunk = b"\x00" * 16383
    events, out = raw.feed(raw.headers(1, STREAM_PATH), *(frame(DATA, 0, 1, chunk) for _ in range(4)),
                           frame(DATA, 0, 1, b"\x00\x00\x00"))  # 65,535 bytes: all it was given, none consumed
    assert not [f for f in out if f[0] in (GOAWAY, WINDOW_UPDATE)] and not raw.core.closed
    events, out = raw.feed(frame(DATA, 0, 1, b"\x00"))
    assert goaway_code(out) == (FLOW_CONTROL_ERROR, "DATA beyond stream 1's flow-control window of 65535 bytes")
    assert [type(e) for e in events] == [ConnectionTerminated] and raw.core.closed


def test_released_data_gives_the_window_back_and_the_peer_may_use_it_again() -> None:
    raw = Raw(Limits(stream_window=65535), streaming=frozenset((STREAM_PATH,)))
    chunk = b"\x00" * 16384
    events, _ = raw.feed(raw.headers(1, STREAM_PATH), *(frame(DATA, 0, 1, chunk) for _ in range(3)))
    stream = next(e.stream for e in events if isinstance(e, RequestReceived))
    raw.core.release(stream, 3 * 16384)
    out = frames(raw.core.data_to_send())
    assert [(f[2], struct.unpack(">L", f[3])[0]) for f in out if f[0] == WINDOW_UPDATE] == [(1, 3 * 16384)]
    _, out = raw.feed(*(frame(DATA, 0, 1, chunk) for _ in range(3)))  # 98,304 sent in all, 49,152 unconsumed
    assert not [f for f in out if f[0] == GOAWAY] and not raw.core.closed


def test_data_past_the_connection_window_is_a_flow_control_error() -> None:
    raw = Raw(Limits(connection_window=65536), max_body=32768)  # window: 65,536, as the request limit is lower
    chunk = b"\x00" * 16384
    _, out = raw.feed(*(raw.headers(sid) + frame(DATA, 0, sid, chunk) * 2 for sid in (1, 3)))  # held, whole later
    assert not [f for f in out if f[0] == GOAWAY]
    _, out = raw.feed(frame(DATA, 0, 5, b"\x00"))  # on no stream at all: still counts against the connection
    code, text = goaway_code(out)
    assert code == FLOW_CONTROL_ERROR and text == "DATA beyond the connection's flow-control window of 65536 bytes"


def test_streams_reset_and_reopened_in_one_read_are_refused_while_their_handlers_run() -> None:
    raw = Raw(Limits(max_concurrent_streams=2))
    events, _ = raw.feed(raw.headers(1, end=True), raw.headers(3, end=True))
    assert [type(e) for e in events] == [RequestReceived, RequestReceived]
    events, out = raw.feed(frame(RST_STREAM, 0, 1, CANCEL.to_bytes(4, "big")),
                           frame(RST_STREAM, 0, 3, CANCEL.to_bytes(4, "big")),
                           raw.headers(5, end=True), raw.headers(7, end=True))
    assert [type(e) for e in events] == [StreamReset, StreamReset]
    assert [(f[2], int.from_bytes(f[3], "big")) for f in out if f[0] == RST_STREAM] == [(5, REFUSED_STREAM),
                                                                                      (7, REFUSED_STREAM)]
    events, _ = raw.feed(raw.headers(9, end=True))  # a later read: the adapter counts what still runs (none here)
    assert [type(e) for e in events] == [RequestReceived]
