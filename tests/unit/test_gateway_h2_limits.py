"""The bounds of berth.gateway.http2.connection (h2limits.Limits) that need no sockets: driven by hand, with a fake
transport and a hand-held clock (``ServerConnection.tick(now)``)."""

from __future__ import annotations

import asyncio
import gzip
import time
import zlib

import hpack
import pytest

from berth.errors import InvalidInput, PayloadTooLarge
from berth.gateway.http2.frames import Stream
from berth.gateway.http2.headerblock import Decoder, HeaderListTooLarge
from berth.gateway.http2.limits import Budget, Limits
from berth.gateway.http2.server import ServerConnection
from berth.gateway.transports.grpcmessages import MessageCounter, inflate, message
from tests.unit.test_gateway_h2 import (
    DATA,
    END_HEADERS,
    END_STREAM,
    GOAWAY,
    HEADERS,
    PING,
    REQUEST,
    RST_STREAM,
    S_INITIAL_WINDOW_SIZE,
    WINDOW_UPDATE,
    FakeTransport,
    Frame,
    Served,
    frame,
    goaway_of,
    rst_stream,
    settings,
)

ENHANCE_YOUR_CALM, CANCEL, REFUSED_STREAM = 0xB, 0x8, 0x7


def conn_updates(frames: list[Frame]) -> list[int]:
    return [int.from_bytes(f.payload, "big") for f in frames if f.type == WINDOW_UPDATE and f.sid == 0]


# ---- HPACK ----

def test_the_decoder_counts_the_list_as_it_decodes_and_keeps_its_table_in_step() -> None:
    encoder = hpack.Encoder()
    decoder = Decoder(max_list_size=1000)
    first = encoder.encode([(b"x-big", b"v" * 500)])  # added to both dynamic tables
    assert decoder.decode(first) == [(b"x-big", b"v" * 500)]
    with pytest.raises(HeaderListTooLarge) as caught:
        decoder.decode(b"\xbe" * 3000)  # 3,000 references to a 537-byte entry: 1.6 MB if kept
    assert caught.value.limit == 1000 and "over 1000 bytes" in str(caught.value)
    assert decoder.decode(encoder.encode([(b"x-big", b"v" * 500)])) == [(b"x-big", b"v" * 500)]  # still in step


# ---- streams ----

def test_a_reset_stream_whose_handler_still_runs_counts_against_the_maximum() -> None:
    async def main() -> None:
        release = asyncio.Event()

        async def stubborn() -> None:  # a handler that outlives its cancellation for a while
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                await release.wait()

        def handler(conn: ServerConnection, stream: Stream) -> None:
            stream.task = asyncio.ensure_future(stubborn())

        served = Served(handler, max_streams=2)
        served.start()
        served.feed(served.headers(1, REQUEST, END_HEADERS | END_STREAM),
                    served.headers(3, REQUEST, END_HEADERS | END_STREAM))
        await asyncio.sleep(0)
        assert served.feed(rst_stream(1, CANCEL)) == []
        await asyncio.sleep(0.01)
        assert served.conn.running == 1
        refused = served.feed(served.headers(5, REQUEST, END_HEADERS | END_STREAM))
        assert refused == [Frame(RST_STREAM, 0, 5, REFUSED_STREAM.to_bytes(4, "big"))]
        release.set()
        await asyncio.sleep(0.01)
        assert served.conn.running == 0
        assert served.feed(served.headers(7, REQUEST, END_HEADERS | END_STREAM)) == []  # now it fits
        for stream in list(served.conn.streams.values()):
            assert stream.task is not None
            stream.task.cancel()
        release.set()
        await asyncio.sleep(0.01)

    asyncio.run(asyncio.wait_for(main(), 5))


def test_control_frames_for_a_peer_that_does_not_read_end_the_connection() -> None:
    class Stuck(FakeTransport):
        def get_write_buffer_size(self) -> int:
            return 2 << 20

    served = Served()
    served.start()
    served.transport.__class__ = Stuck
    served.conn.data_received(frame(PING, 0, 0, b"12345678"))
    frames = served.transport.frames()
    assert not [f for f in frames if f.type == PING]
    assert goaway_of(frames)[1] == ENHANCE_YOUR_CALM and served.transport.closed


# ---- flow control ----

def test_the_connection_window_is_refilled_only_once_a_unary_request_is_whole() -> None:
    served = Served(limits=Limits(connection_window=1 << 20), max_body=1 << 20)
    served.start()
    chunk = b"x" * 16384
    frames = served.feed(served.headers(1, REQUEST), *(frame(DATA, 0, 1, chunk) for _ in range(40)))
    assert conn_updates(frames) == []  # 640 KiB held, none consumed yet
    frames = served.feed(frame(DATA, END_STREAM, 1, chunk))
    assert conn_updates(frames) == [41 * 16384] and len(served.requests) == 1  # handed over: consumed


def test_a_streaming_calls_windows_are_refilled_only_as_the_handler_consumes() -> None:
    async def main() -> None:
        calls: list[Stream] = []
        served = Served(lambda c, s: calls.append(s), limits=Limits(connection_window=1 << 20, stream_window=1 << 16),
                        max_body=1 << 18, streaming=frozenset((REQUEST[2][1],)))
        served.start()
        chunk = b"y" * 16384
        frames = served.feed(served.headers(1, REQUEST), *(frame(DATA, 0, 1, chunk) for _ in range(4)))
        assert [f for f in frames if f.type == WINDOW_UPDATE] == []
        (stream,) = calls
        assert stream.inbox is not None and stream.inbox.qsize() == 4
        served.conn.release(stream, 2 * 16384)
        assert [(f.sid, int.from_bytes(f.payload, "big")) for f in served.transport.frames()] == [(1, 32768)]
        served.conn.release(stream, 2 * 16384)
        assert [(f.sid, int.from_bytes(f.payload, "big")) for f in served.transport.frames()] == [(1, 32768)]

    asyncio.run(asyncio.wait_for(main(), 5))


# ---- clocks ----

def test_the_clocks_preface_idle_and_a_zero_connection_window() -> None:
    limits = Limits(preface_timeout=1.0, idle_timeout=5.0, send_timeout=2.0)
    silent = ServerConnection(lambda c, s: None, limits=limits)
    transport = FakeTransport()
    silent.connection_made(transport)  # type: ignore[arg-type]
    now = time.monotonic()
    assert silent.tick(now + 0.5) and not transport.closed
    assert not silent.tick(now + 1.5) and transport.closed

    idle = Served(limits=limits)
    idle.start()
    now = time.monotonic()
    assert idle.conn.tick(now + 4)
    assert not idle.conn.tick(now + 6)
    assert goaway_of(idle.transport.frames()) == (0, 0)

    stuck = Served(lambda c, s: c.respond(s, [(b":status", b"200")], b"z" * 70000, [(b"grpc-status", b"0")]),
                   limits=limits)
    stuck.start({S_INITIAL_WINDOW_SIZE: 1 << 20})
    stuck.feed(stuck.headers(1, REQUEST, END_HEADERS | END_STREAM))  # 65,535 bytes fit the connection window
    now = time.monotonic()
    assert stuck.conn.tick(now) and stuck.conn.tick(now + 1)
    assert not stuck.conn.tick(now + 3)
    assert goaway_of(stuck.transport.frames())[1] == ENHANCE_YOUR_CALM


def test_a_stream_stuck_on_its_own_zero_window_is_reset_and_the_connection_goes_on() -> None:
    served = Served(lambda c, s: c.respond(s, [(b":status", b"200")], b"z" * 100, [(b"grpc-status", b"0")]),
                    limits=Limits(send_timeout=2.0))
    served.start({S_INITIAL_WINDOW_SIZE: 0})
    frames = served.feed(served.headers(1, REQUEST, END_HEADERS | END_STREAM))
    assert [f.type for f in frames] == [HEADERS]
    now = time.monotonic()
    assert served.conn.tick(now) and served.conn.tick(now + 3)
    assert served.transport.frames() == [Frame(RST_STREAM, 0, 1, CANCEL.to_bytes(4, "big"))]
    assert not served.transport.closed and not served.conn.streams


# ---- budgets ----

def test_a_budget_allows_its_burst_then_its_rate() -> None:
    budget = Budget(10.0, 5)
    start = budget.stamp
    assert [budget.take(start) for _ in range(6)] == [True] * 5 + [False]
    assert budget.take(start + 0.1) and not budget.take(start + 0.1)


def test_an_honest_client_pinging_now_and_then_is_answered_forever() -> None:
    served = Served(limits=Limits(pings_per_second=10, pings_burst=5))
    served.start()
    for i in range(20):
        served.conn.core._pings.stamp -= 0.2  # as if 0.2 s passed between pings
        assert [f.type for f in served.feed(frame(PING, 0, 0, i.to_bytes(8, "big")))] == [PING]
    assert GOAWAY not in [f.type for f in served.feed(settings({}))]


# ---- gRPC messages ----

def test_inflate_stops_at_the_limit() -> None:
    bomb = gzip.compress(b"\x00" * (10 << 20))
    with pytest.raises(PayloadTooLarge, match="inflates \\(gzip\\) to more than the gateway's limit of 1000 bytes"):
        inflate(bomb, b"gzip", 1000)
    assert inflate(gzip.compress(b"a" * 1000), b"gzip", 1000) == b"a" * 1000
    assert inflate(zlib.compress(b"b" * 10), b"deflate", 10) == b"b" * 10
    with pytest.raises(InvalidInput, match="incomplete"):
        inflate(gzip.compress(b"c" * 100)[:20], b"gzip", 1000)
    with pytest.raises(PayloadTooLarge):
        message(b"\x01" + len(bomb).to_bytes(4, "big") + bomb, b"gzip", 1 << 20)


def test_the_message_counter_follows_prefixes_across_chunks() -> None:
    counter = MessageCounter(100)
    stream = b"".join(b"\x00" + n.to_bytes(4, "big") + b"m" * n for n in (3, 100, 0, 50))
    for i in range(0, len(stream), 7):  # prefixes split anywhere
        counter.feed(stream[i:i + 7])
    assert counter.messages == 4
    with pytest.raises(PayloadTooLarge, match="message 5 of the stream is 101 bytes"):
        counter.feed(b"\x00\x00\x00" + b"\x00\x65")


def test_a_stuck_stream_is_reset_even_while_other_streams_make_progress() -> None:
    served = Served(lambda c, s: c.respond(s, [(b":status", b"200")], b"z" * 100, [(b"grpc-status", b"0")]),
                    limits=Limits(send_timeout=2.0))
    served.start()
    served.feed(served.headers(1, REQUEST, END_HEADERS | END_STREAM))  # answered at once (default window)
    served.feed(settings({S_INITIAL_WINDOW_SIZE: 0}))
    frames = served.feed(served.headers(3, REQUEST, END_HEADERS | END_STREAM))
    assert [f.type for f in frames] == [HEADERS]  # stream 3 waits for window
    now = time.monotonic()
    served.conn.core.sent += 1000  # as if other streams kept the connection busy
    assert served.conn.tick(now + 1)
    served.conn.core.sent += 1000
    assert served.conn.tick(now + 3)
    assert served.transport.frames() == [Frame(RST_STREAM, 0, 3, CANCEL.to_bytes(4, "big"))]
    assert not served.transport.closed
