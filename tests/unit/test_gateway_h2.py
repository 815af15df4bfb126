"""HTTP/2 framing, flow control and stream life cycles through the asyncio adapters (berth.gateway.http2.server,
h2client over the h2core protocol core), driven through fake transports."""

from __future__ import annotations

import asyncio
import random
import struct
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, cast

import hpack
import pytest

from berth.gateway.http2.client import ClientConnection
from berth.gateway.http2.frames import Cut, Stream, StreamReset, Vanished, headers_frames
from berth.gateway.http2.headerblock import Field
from berth.gateway.http2.limits import Limits
from berth.gateway.http2.server import ServerConnection

# the wire format, written out here rather than taken from the module under test
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM = ACK = 0x1
END_HEADERS, PADDED, PRIORITY_FLAG = 0x4, 0x8, 0x20
NO_ERROR, PROTOCOL_ERROR, INTERNAL_ERROR, FLOW_CONTROL_ERROR = 0x0, 0x1, 0x2, 0x3
FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 0x6, 0x7, 0x8, 0x9
S_ENABLE_PUSH, S_MAX_CONCURRENT_STREAMS, S_INITIAL_WINDOW_SIZE, S_MAX_FRAME_SIZE = 2, 3, 4, 5
S_MAX_HEADER_LIST_SIZE = 6
BIG_HEADERS = Limits(max_header_list_size=1 << 20, max_header_block_bytes=1 << 20)  # for the 40 KB header tests

REQUEST: list[Field] = [(b":method", b"POST"), (b":scheme", b"http"),
                        (b":path", b"/inference.GRPCInferenceService/ModelInfer"), (b":authority", b"upstream:8001"),
                        (b"content-type", b"application/grpc"), (b"te", b"trailers")]
ANSWER: list[Field] = [(b":status", b"200"), (b"content-type", b"application/grpc")]
OK: list[Field] = [(b"grpc-status", b"0")]


@dataclass(frozen=True)
class Frame:
    type: int
    flags: int
    sid: int
    payload: bytes = b""


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((ftype, flags)) + sid.to_bytes(4, "big") + payload


def parse(data: bytes) -> list[Frame]:
    frames = []
    pos = 0
    while pos < len(data):
        assert len(data) - pos >= 9, f"a partial frame header was written: {data[pos:]!r}"
        length = int.from_bytes(data[pos:pos + 3], "big")
        payload = data[pos + 9:pos + 9 + length]
        assert len(payload) == length, "a partial frame was written"
        frames.append(Frame(data[pos + 3], data[pos + 4], int.from_bytes(data[pos + 5:pos + 9], "big") & 0x7FFFFFFF,
                            payload))
        pos += 9 + length
    return frames


def settings(values: dict[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HL", k, v) for k, v in values.items()))


def window_update(sid: int, increment: int) -> bytes:
    return frame(WINDOW_UPDATE, 0, sid, increment.to_bytes(4, "big"))


def rst_stream(sid: int, code: int) -> bytes:
    return frame(RST_STREAM, 0, sid, code.to_bytes(4, "big"))


def goaway(last_sid: int, code: int) -> bytes:
    return frame(GOAWAY, 0, 0, last_sid.to_bytes(4, "big") + code.to_bytes(4, "big") + b"bye")


def goaway_of(frames: list[Frame]) -> tuple[int, int]:
    """(last stream id, error code) of the one GOAWAY among ``frames``, which must be the last frame."""
    assert [f.type for f in frames].count(GOAWAY) == 1, frames
    assert frames[-1].type == GOAWAY and frames[-1].sid == 0
    payload = frames[-1].payload
    return int.from_bytes(payload[:4], "big") & 0x7FFFFFFF, int.from_bytes(payload[4:8], "big")


def data_of(frames: list[Frame], sid: int) -> bytes:
    return b"".join(f.payload for f in frames if f.type == DATA and f.sid == sid)


def shape(frames: list[Frame]) -> list[tuple[int, int, int]]:
    """What matters of each frame for flow control: type, flags, and the size of DATA payloads."""
    return [(f.type, f.flags, len(f.payload) if f.type == DATA else -1) for f in frames]


def hpack_decoder() -> hpack.Decoder:
    decoder = hpack.Decoder()
    decoder.max_header_list_size = 1 << 30
    return decoder


def decode(decoder: hpack.Decoder, frames: list[Frame]) -> list[Field]:
    """The fields of the header block in ``frames`` (a HEADERS frame and its CONTINUATIONs, unpadded)."""
    return [(bytes(n), bytes(v)) for n, v in decoder.decode(b"".join(f.payload for f in frames), raw=True)]


class FakeTransport:
    def __init__(self) -> None:
        self.buffer = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.buffer += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_write_buffer_size(self) -> int:
        return 0  # everything written is taken by the test

    def is_closing(self) -> bool:
        return self.closed

    def take(self) -> bytes:
        data = bytes(self.buffer)
        self.buffer.clear()
        return data

    def frames(self) -> list[Frame]:
        return parse(self.take())


def attach(conn: asyncio.Protocol, transport: FakeTransport) -> None:
    conn.connection_made(cast(asyncio.Transport, transport))


def run(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), 5))


def outcome(stream: Stream) -> Stream | BaseException:
    future = stream.future
    assert future is not None and future.done()
    return future.exception() or future.result()


class Served:
    """A ServerConnection on a fake transport; the test writes the client's side by hand."""

    def __init__(self, handler: Callable[[ServerConnection, Stream], None] | None = None, **limits: Any) -> None:
        self.requests: list[Stream] = []
        self.lost: list[ServerConnection] = []
        self.transport = FakeTransport()
        self.conn = ServerConnection(handler or self._record, self.lost.append, **limits)
        attach(self.conn, self.transport)
        self.greeting = self.transport.frames()
        self.encoder = hpack.Encoder()  # the client's: its dynamic table lives on across requests
        self.decoder = hpack_decoder()

    def _record(self, conn: ServerConnection, stream: Stream) -> None:
        assert conn is self.conn
        self.requests.append(stream)

    def feed(self, *chunks: bytes) -> list[Frame]:
        for chunk in chunks:
            self.conn.data_received(chunk)
        return self.transport.frames()

    def start(self, peer_settings: dict[int, int] | None = None) -> list[Frame]:
        return self.feed(PREFACE + settings(peer_settings or {}))

    def headers(self, sid: int, fields: list[Field], flags: int = END_HEADERS) -> bytes:
        return frame(HEADERS, flags, sid, self.encoder.encode(fields))


class Upstream:
    """A ClientConnection on a fake transport; the test writes the server's side by hand."""

    def __init__(self) -> None:
        self.transport = FakeTransport()
        self.conn = ClientConnection("upstream:8001")
        attach(self.conn, self.transport)
        greeting = self.transport.take()
        assert greeting.startswith(PREFACE)
        self.greeting = parse(greeting[len(PREFACE):])
        self.decoder = hpack_decoder()

    def feed(self, *chunks: bytes) -> list[Frame]:
        for chunk in chunks:
            self.conn.data_received(chunk)
        return self.transport.frames()

    def answer(self, sid: int, fields: list[Field], flags: int = END_HEADERS) -> bytes:
        return frame(HEADERS, flags, sid, hpack.Encoder().encode(fields))


class Pair:
    """A ClientConnection and a ServerConnection back to back: bytes cross only when ``pump`` is called."""

    def __init__(self, handler: Callable[[ServerConnection, Stream], None] | None = None, **limits: Any) -> None:
        self.requests: list[Stream] = []
        self.server = ServerConnection(handler or self._record, None, **limits)
        self.client = ClientConnection("upstream:8001")
        self.to_server = FakeTransport()
        self.to_client = FakeTransport()
        attach(self.client, self.to_server)
        attach(self.server, self.to_client)
        self.client_sent: list[Frame] = []
        self.server_sent: list[Frame] = []
        self._preface = True

    def _record(self, conn: ServerConnection, stream: Stream) -> None:
        self.requests.append(stream)

    def pump(self) -> None:
        for _ in range(1000):
            up = self.to_server.take()
            down = self.to_client.take()
            if not up and not down:
                return
            if up:
                if self._preface:
                    assert up.startswith(PREFACE)
                    self._preface = False
                    self.client_sent += parse(up[len(PREFACE):])
                else:
                    self.client_sent += parse(up)
                self.server.data_received(up)
            if down:
                self.server_sent += parse(down)
                self.client.data_received(down)
        raise AssertionError("the two ends never went quiet")


# ---- greetings, SETTINGS and PING ----

def test_greetings_advertise_large_windows() -> None:
    served = Served(max_streams=77)
    assert served.greeting == [  # the connection window: one request of the largest size (256 MiB) and a frame
        Frame(SETTINGS, 0, 0, struct.pack(">HLHLHLHL", S_MAX_CONCURRENT_STREAMS, 77, S_INITIAL_WINDOW_SIZE, 1 << 24,
                                          S_MAX_FRAME_SIZE, 16384, S_MAX_HEADER_LIST_SIZE, 16384)),
        Frame(WINDOW_UPDATE, 0, 0, ((256 << 20) + 16384 - 65535).to_bytes(4, "big")),
    ]
    upstream = Upstream()
    assert upstream.greeting == [
        Frame(SETTINGS, 0, 0, struct.pack(">HLHLHL", S_ENABLE_PUSH, 0, S_INITIAL_WINDOW_SIZE, 1 << 24,
                                          S_MAX_FRAME_SIZE, 16384)),
        Frame(WINDOW_UPDATE, 0, 0, ((1 << 30) - 65535).to_bytes(4, "big")),
    ]


def test_settings_are_acknowledged_and_acks_are_not() -> None:
    served = Served()
    assert served.start({S_MAX_CONCURRENT_STREAMS: 5, 0x99: 1}) == [Frame(SETTINGS, ACK, 0)]  # unknown ids ignored
    assert served.feed(frame(SETTINGS, ACK, 0)) == []
    assert served.feed(settings({})) == [Frame(SETTINGS, ACK, 0)]
    upstream = Upstream()
    assert upstream.feed(settings({S_MAX_CONCURRENT_STREAMS: 3})) == [Frame(SETTINGS, ACK, 0)]
    assert upstream.conn.peer_max_streams == 3
    assert upstream.feed(frame(SETTINGS, ACK, 0)) == []


def test_ping_is_answered_with_ack_and_the_same_eight_bytes() -> None:
    served = Served()
    served.start()
    assert served.feed(frame(PING, 0, 0, b"berth!\x00\xff")) == [Frame(PING, ACK, 0, b"berth!\x00\xff")]
    assert served.feed(frame(PING, ACK, 0, b"12345678")) == []
    upstream = Upstream()
    assert upstream.feed(frame(PING, 0, 0, b"\x01\x02\x03\x04\x05\x06\x07\x08")) == [
        Frame(PING, ACK, 0, b"\x01\x02\x03\x04\x05\x06\x07\x08")]
    # a PING split across reads is answered once it is whole
    ping = frame(PING, 0, 0, b"abcdefgh")
    assert upstream.feed(ping[:5], ping[5:12]) == []
    assert upstream.feed(ping[12:]) == [Frame(PING, ACK, 0, b"abcdefgh")]


def test_priority_and_unknown_frames_are_ignored() -> None:
    served = Served()
    served.start()
    assert served.feed(frame(PRIORITY, 0, 1, b"\x00\x00\x00\x00\x10"), frame(0xEE, 0xFF, 0, b"whatever")) == []
    served.feed(served.headers(1, REQUEST, END_HEADERS | END_STREAM))
    assert [s.headers for s in served.requests] == [REQUEST]


# ---- requests and answers ----

def test_requests_and_answers_cross_intact_on_stream_ids_1_3_5() -> None:
    seen: list[tuple[int, list[Field], bytes]] = []

    def echo(conn: ServerConnection, stream: Stream) -> None:
        seen.append((stream.sid, stream.headers, stream.body()))
        path = dict(stream.headers)[b":path"]
        conn.respond(stream, ANSWER + [(b"x-path", path)], b"answer to " + stream.body(),
                     OK + [(b"grpc-message", b"stream %d" % stream.sid)])

    async def main() -> None:
        pair = Pair(echo)
        streams = [pair.client.request(REQUEST + [(b"x-n", b"%d" % i)], b"request %d" % i) for i in range(3)]
        assert [s.sid for s in streams] == [1, 3, 5]
        pair.pump()
        assert seen == [(2 * i + 1, REQUEST + [(b"x-n", b"%d" % i)], b"request %d" % i) for i in range(3)]
        for i, stream in enumerate(streams):
            assert stream.future is not None
            answer = await stream.future
            assert answer is stream
            assert answer.headers == ANSWER + [(b"x-path", b"/inference.GRPCInferenceService/ModelInfer")]
            assert answer.body() == b"answer to request %d" % i
            assert answer.trailers == OK + [(b"grpc-message", b"stream %d" % answer.sid)]
        assert pair.client.streams == {} and pair.server.streams == {}
        on_1 = [(f.type, f.flags) for f in pair.client_sent if f.sid == 1]
        assert on_1 == [(HEADERS, END_HEADERS), (DATA, END_STREAM)]
        on_1 = [(f.type, f.flags) for f in pair.server_sent if f.sid == 1]
        assert on_1 == [(HEADERS, END_HEADERS), (DATA, 0), (HEADERS, END_HEADERS | END_STREAM)]
        assert not pair.to_client.closed and not pair.to_server.closed

    run(main)


def test_many_concurrent_streams_answered_out_of_order_match_their_requests() -> None:
    async def main() -> None:
        pair = Pair()
        rnd = random.Random(11)
        bodies = [rnd.randbytes(rnd.randrange(0, 3000)) for _ in range(40)]
        streams = [pair.client.request(REQUEST + [(b"x-n", b"%d" % i)], body) for i, body in enumerate(bodies)]
        pair.pump()
        assert [s.sid for s in pair.requests] == [2 * i + 1 for i in range(40)]
        order = list(pair.requests)
        rnd.shuffle(order)
        for stream in order:
            n = dict(stream.headers)[b"x-n"]
            pair.server.respond(stream, ANSWER + [(b"x-n", n)], n + b":" + stream.body()[::-1], OK)
        pair.pump()
        answered = [f.sid for f in pair.server_sent if f.type == HEADERS and f.flags & END_STREAM]
        assert answered == [s.sid for s in order]
        for i, stream in enumerate(streams):
            answer = outcome(stream)
            assert isinstance(answer, Stream)
            assert answer.headers == ANSWER + [(b"x-n", b"%d" % i)]
            assert answer.body() == b"%d:" % i + bodies[i][::-1]
            assert answer.trailers == OK

    run(main)


def test_an_empty_request_and_a_trailers_only_answer() -> None:
    def refuse(conn: ServerConnection, stream: Stream) -> None:
        conn.respond(stream, [(b":status", b"200"), (b"grpc-status", b"12")], None, None)

    async def main() -> None:
        pair = Pair(refuse)
        stream = pair.client.request(REQUEST, b"")
        pair.pump()
        assert [(f.type, f.flags, f.payload) for f in pair.client_sent if f.sid == 1][1] == (DATA, END_STREAM, b"")
        assert [(f.type, f.flags) for f in pair.server_sent if f.sid == 1] == [(HEADERS, END_HEADERS | END_STREAM)]
        answer = outcome(stream)
        assert isinstance(answer, Stream)
        assert answer.headers == answer.trailers == [(b":status", b"200"), (b"grpc-status", b"12")]
        assert answer.body() == b""
        assert pair.server.streams == {}

    run(main)


def test_a_server_answers_with_hpacks_dynamic_table_in_use() -> None:
    served = Served()
    served.start()
    for sid in (1, 3, 5):  # the second and later blocks refer back to the client's dynamic table
        served.feed(served.headers(sid, REQUEST + [(b"x-user", b"someone")], END_HEADERS),
                    frame(DATA, END_STREAM, sid, b"body %d" % sid))
    assert [(s.sid, s.headers, s.body()) for s in served.requests] == [
        (sid, REQUEST + [(b"x-user", b"someone")], b"body %d" % sid) for sid in (1, 3, 5)]
    assert len(frame(HEADERS, 0, 0, served.encoder.encode(REQUEST))) < 20  # really indexed by now


# ---- flow control ----

def test_an_answer_beyond_the_peers_stream_window_waits_for_window_update() -> None:
    served = Served()
    assert served.start({S_INITIAL_WINDOW_SIZE: 1000}) == [Frame(SETTINGS, ACK, 0)]
    served.feed(served.headers(1, REQUEST, END_HEADERS | END_STREAM))
    body = random.Random(3).randbytes(7000)
    served.conn.respond(served.requests[0], ANSWER, body, OK)
    sent = served.transport.frames()
    assert shape(sent) == [(HEADERS, END_HEADERS, -1), (DATA, 0, 1000)]
    assert served.feed(window_update(0, 100000)) == []  # the connection has room; the stream has none
    more = served.feed(window_update(1, 1500))
    assert shape(more) == [(DATA, 0, 1500)]
    sent += more
    more = served.feed(settings({S_INITIAL_WINDOW_SIZE: 3000}))  # +2000 for streams already open
    assert shape(more) == [(SETTINGS, ACK, -1), (DATA, 0, 2000)]
    sent += more
    more = served.feed(window_update(1, 100000))
    assert shape(more) == [(DATA, 0, 2500), (HEADERS, END_HEADERS | END_STREAM, -1)]
    sent += more
    assert data_of(sent, 1) == body
    assert decode(served.decoder, sent[-1:]) == OK
    assert served.conn.streams == {} and served.conn.core.blocked == {}


def test_answers_beyond_the_connection_window_wait_for_its_window_update() -> None:
    served = Served()
    served.start({S_INITIAL_WINDOW_SIZE: 1 << 20})
    served.feed(*(served.headers(sid, REQUEST, END_HEADERS | END_STREAM) for sid in (1, 3)))
    first, second = served.requests
    body = random.Random(4).randbytes(100000)
    served.conn.respond(first, ANSWER, body, OK)
    sent = served.transport.frames()
    assert shape(sent) == [(HEADERS, END_HEADERS, -1)] + [(DATA, 0, 16384)] * 3 + [(DATA, 0, 16383)]  # 65535
    served.conn.respond(second, ANSWER, b"0123456789", OK)
    assert shape(served.transport.frames()) == [(HEADERS, END_HEADERS, -1)]
    assert served.feed(window_update(3, 1000)) == []
    more = served.feed(window_update(0, 40000))
    assert shape(more) == ([(DATA, 0, 16384)] * 2 + [(DATA, 0, 1697), (HEADERS, END_HEADERS | END_STREAM, -1)]
                           + [(DATA, 0, 10), (HEADERS, END_HEADERS | END_STREAM, -1)])
    assert [f.sid for f in more] == [1, 1, 1, 1, 3, 3]
    assert data_of(sent + more, 1) == body and data_of(more, 3) == b"0123456789"


def test_a_request_beyond_the_servers_stream_window_waits_for_window_update() -> None:
    async def main() -> None:
        upstream = Upstream()
        assert upstream.feed(settings({S_INITIAL_WINDOW_SIZE: 100}), window_update(0, 1 << 20)) == [
            Frame(SETTINGS, ACK, 0)]
        body = random.Random(5).randbytes(300)
        upstream.conn.request(REQUEST, body)
        sent = upstream.transport.frames()
        assert shape(sent) == [(HEADERS, END_HEADERS, -1), (DATA, 0, 100)]
        assert decode(upstream.decoder, sent[:1]) == REQUEST
        more = upstream.feed(window_update(1, 150))
        assert shape(more) == [(DATA, 0, 150)]
        sent += more
        more = upstream.feed(window_update(1, 1000))
        assert shape(more) == [(DATA, END_STREAM, 50)]
        assert data_of(sent + more, 1) == body

    run(main)


def test_a_window_made_negative_by_settings_must_be_refilled_first() -> None:
    async def main() -> None:
        upstream = Upstream()
        body = random.Random(6).randbytes(70000)
        upstream.conn.request(REQUEST, body)  # before the server's SETTINGS: 65535 on the stream and the connection
        sent = upstream.transport.frames()
        assert sum(len(f.payload) for f in sent if f.type == DATA) == 65535
        assert not any(f.flags & END_STREAM for f in sent)
        assert upstream.feed(settings({S_INITIAL_WINDOW_SIZE: 0}), window_update(0, 1 << 20)) == [
            Frame(SETTINGS, ACK, 0)]
        assert upstream.feed(window_update(1, 65535)) == []  # back to 0 only
        more = upstream.feed(window_update(1, 10000))
        assert shape(more) == [(DATA, END_STREAM, 4465)]
        assert data_of(sent + more, 1) == body

    run(main)


def test_large_bodies_cross_both_ways_through_flow_control() -> None:
    rnd = random.Random(7)
    answer_body = rnd.randbytes(300000)

    def echo(conn: ServerConnection, stream: Stream) -> None:
        conn.respond(stream, ANSWER, answer_body + stream.body(), OK)

    async def main() -> None:
        pair = Pair(echo)
        body = rnd.randbytes(200000)
        stream = pair.client.request(REQUEST, body)
        early = parse(bytes(pair.to_server.buffer)[len(PREFACE):])
        assert sum(len(f.payload) for f in early if f.type == DATA) == 65535  # the rest waits for the server's SETTINGS
        pair.pump()
        answer = outcome(stream)
        assert isinstance(answer, Stream)
        assert answer.body() == answer_body + body
        assert all(len(f.payload) <= 16384 for f in pair.client_sent + pair.server_sent)

    run(main)


def test_the_receiver_tops_up_a_stream_window_once_half_of_it_arrived() -> None:
    served = Served()
    served.start()
    served.feed(served.headers(1, REQUEST, END_HEADERS))
    chunk = frame(DATA, 0, 1, bytes(16384))
    assert served.feed(chunk * 511) == []
    assert served.feed(chunk) == [Frame(WINDOW_UPDATE, 0, 1, (1 << 23).to_bytes(4, "big"))]
    assert served.feed(frame(DATA, END_STREAM, 1, b"end")) == []
    assert [s.size for s in served.requests] == [512 * 16384 + 3]


# ---- CONTINUATION and padding ----

@pytest.mark.parametrize("size", [1, 16383, 16384, 16385, 32768, 32769, 50000])
@pytest.mark.parametrize("end_stream", [False, True])
def test_headers_frames_split_a_block_into_continuations(size: int, end_stream: bool) -> None:
    block = random.Random(size).randbytes(size)
    frames = parse(headers_frames(7, block, end_stream))
    assert len(frames) == max(1, -(-size // 16384))
    assert [f.type for f in frames] == [HEADERS] + [CONTINUATION] * (len(frames) - 1)
    assert all(f.sid == 7 and len(f.payload) <= 16384 for f in frames)
    assert [bool(f.flags & END_HEADERS) for f in frames] == [False] * (len(frames) - 1) + [True]
    assert [bool(f.flags & END_STREAM) for f in frames] == [end_stream] + [False] * (len(frames) - 1)
    assert b"".join(f.payload for f in frames) == block


def test_an_answer_with_a_40kb_header_is_sent_with_continuations() -> None:
    served = Served()
    served.start()
    served.feed(served.headers(1, REQUEST, END_HEADERS | END_STREAM))
    big = random.Random(8).randbytes(40000)
    served.conn.respond(served.requests[0], ANSWER + [(b"x-big", big)], b"body", OK + [(b"x-big-trailer", big[::-1])])
    sent = served.transport.frames()
    assert [(f.type, f.flags) for f in sent] == [
        (HEADERS, 0), (CONTINUATION, 0), (CONTINUATION, END_HEADERS), (DATA, 0),
        (HEADERS, END_STREAM), (CONTINUATION, 0), (CONTINUATION, END_HEADERS)]
    assert [len(f.payload) for f in sent[:2]] == [16384, 16384]
    assert decode(served.decoder, sent[:3]) == ANSWER + [(b"x-big", big)]
    assert decode(served.decoder, sent[4:]) == OK + [(b"x-big-trailer", big[::-1])]


def test_40kb_headers_cross_both_ways() -> None:
    big = random.Random(9).randbytes(40000)

    def answer(conn: ServerConnection, stream: Stream) -> None:
        conn.respond(stream, ANSWER, stream.body(), OK + [(b"x-echo", dict(stream.headers)[b"x-big"][::-1])])

    async def main() -> None:
        pair = Pair(answer, limits=BIG_HEADERS)
        stream = pair.client.request(REQUEST + [(b"x-big", big)], b"small")
        pair.pump()
        assert [f.type for f in pair.client_sent if f.sid == 1] == [HEADERS, CONTINUATION, CONTINUATION, DATA]
        result = outcome(stream)
        assert isinstance(result, Stream)
        assert result.trailers == OK + [(b"x-echo", big[::-1])]
        assert result.body() == b"small"

    run(main)


def test_a_header_block_split_into_continuations_and_small_reads() -> None:
    served = Served(limits=BIG_HEADERS)
    wire = PREFACE + settings({})
    big = b"v" * 40000
    block = served.encoder.encode(REQUEST + [(b"x-big", big)], huffman=False)
    wire += frame(HEADERS, 0, 1, block[:10000]) + frame(CONTINUATION, 0, 1, block[10000:25000])
    wire += frame(CONTINUATION, END_HEADERS, 1, block[25000:]) + frame(DATA, END_STREAM, 1, b"payload")
    served.feed(*(wire[i:i + 1000] for i in range(0, len(wire), 1000)))
    assert [(s.headers, s.body()) for s in served.requests] == [(REQUEST + [(b"x-big", big)], b"payload")]
    assert not served.transport.closed


def test_padded_and_prioritised_frames_are_unwrapped() -> None:
    served = Served()
    served.start()
    block = served.encoder.encode(REQUEST)
    priority = struct.pack(">LB", 0, 15)
    served.feed(frame(HEADERS, PADDED | PRIORITY_FLAG | END_HEADERS, 1, bytes([7]) + priority + block + bytes(7)),
                frame(DATA, PADDED, 1, bytes([20]) + b"hello" + bytes(20)),
                frame(DATA, PADDED, 1, bytes([3]) + bytes(3)),  # all padding
                frame(DATA, PADDED | END_STREAM, 1, bytes([0]) + b"world"))
    block = served.encoder.encode(REQUEST + [(b"x-second", b"yes")])
    served.feed(frame(HEADERS, PADDED | END_STREAM, 3, bytes([4]) + block[:5] + b"\xff" * 4),
                frame(CONTINUATION, END_HEADERS, 3, block[5:]))
    assert [(s.sid, s.headers, s.body()) for s in served.requests] == [
        (1, REQUEST, b"helloworld"), (3, REQUEST + [(b"x-second", b"yes")], b"")]
    assert not served.transport.closed

    async def main() -> None:
        upstream = Upstream()
        stream = upstream.conn.request(REQUEST, b"")
        block = hpack.Encoder().encode(ANSWER)
        upstream.feed(frame(HEADERS, PADDED | END_HEADERS, 1, bytes([2]) + block + b"\x00\x00"),
                      frame(DATA, PADDED, 1, bytes([10]) + b"answer" + bytes(10)),
                      frame(HEADERS, PADDED | PRIORITY_FLAG | END_HEADERS | END_STREAM, 1,
                            bytes([1]) + priority + b"\x40\x0bgrpc-status\x010" + b"\x00"))
        answer = outcome(stream)
        assert isinstance(answer, Stream)
        assert (answer.headers, answer.body(), answer.trailers) == (ANSWER, b"answer", OK)

    run(main)


# ---- malformed frames end the connection with GOAWAY ----

PING_8 = frame(PING, 0, 0, b"12345678")
BROKEN = [
    pytest.param(frame(PING, 0, 0, b"1234567"), FRAME_SIZE_ERROR, id="ping-of-7-bytes"),
    pytest.param(frame(DATA, 0, 0, b"x"), PROTOCOL_ERROR, id="data-on-stream-0"),
    pytest.param((16385).to_bytes(3, "big") + bytes((DATA, 0)) + (3).to_bytes(4, "big"), FRAME_SIZE_ERROR,
                 id="frame-over-16384-bytes"),
    pytest.param(frame(HEADERS, END_HEADERS, 0, b"\x82"), PROTOCOL_ERROR, id="headers-on-stream-0"),
    pytest.param(frame(HEADERS, END_HEADERS, 4, b"\x82"), PROTOCOL_ERROR, id="even-stream-from-a-client"),
    pytest.param(frame(HEADERS, END_HEADERS, 5, b"\xff\xff\xff\xff\xff\xff\xff"), COMPRESSION_ERROR,
                 id="undecodable-header-block"),
    pytest.param(frame(CONTINUATION, END_HEADERS, 3, b"\x82"), PROTOCOL_ERROR, id="continuation-without-headers"),
    pytest.param(frame(HEADERS, 0, 5, b"\x82") + PING_8, PROTOCOL_ERROR, id="header-block-interrupted"),
    pytest.param(frame(HEADERS, 0, 5, b"\x82") + frame(CONTINUATION, END_HEADERS, 7, b"\x84"), PROTOCOL_ERROR,
                 id="continuation-on-another-stream"),
    pytest.param(frame(WINDOW_UPDATE, 0, 0, b"\x00\x00\x01"), FRAME_SIZE_ERROR, id="window-update-of-3-bytes"),
    pytest.param(window_update(0, 0), PROTOCOL_ERROR, id="connection-window-update-of-0"),
    pytest.param(window_update(0, (1 << 31) - 1), FLOW_CONTROL_ERROR, id="connection-window-overflow"),
    pytest.param(frame(SETTINGS, 0, 0, b"\x00\x04\x00\x00\x01"), FRAME_SIZE_ERROR, id="settings-of-5-bytes"),
    pytest.param(frame(SETTINGS, 0, 3), PROTOCOL_ERROR, id="settings-on-a-stream"),
    pytest.param(settings({S_INITIAL_WINDOW_SIZE: 1 << 31}), FLOW_CONTROL_ERROR, id="initial-window-over-2^31-1"),
    pytest.param(settings({S_MAX_FRAME_SIZE: 16383}), PROTOCOL_ERROR, id="max-frame-size-below-16384"),
    pytest.param(frame(RST_STREAM, 0, 3, b"\x00\x00\x00"), FRAME_SIZE_ERROR, id="rst-stream-of-3-bytes"),
    pytest.param(frame(GOAWAY, 0, 0, bytes(7)), FRAME_SIZE_ERROR, id="goaway-of-7-bytes"),
    pytest.param(frame(PUSH_PROMISE, END_HEADERS, 3, b"\x00\x00\x00\x02\x82"), PROTOCOL_ERROR, id="push-promise"),
    pytest.param(frame(DATA, PADDED, 3, b"\x05abcd"), PROTOCOL_ERROR, id="data-padding-as-long-as-the-frame"),
    pytest.param(frame(DATA, PADDED, 3), PROTOCOL_ERROR, id="padded-data-without-a-pad-length"),
    pytest.param(frame(HEADERS, PADDED | END_HEADERS, 5, b"\x09\x82"), PROTOCOL_ERROR, id="headers-padding-too-long"),
    pytest.param(frame(HEADERS, PADDED | END_HEADERS, 5), PROTOCOL_ERROR, id="padded-headers-without-a-pad-length"),
    pytest.param(frame(HEADERS, PRIORITY_FLAG | END_HEADERS, 5, b"\x82"), PROTOCOL_ERROR,
                 id="priority-flag-on-a-short-headers"),
    # RFC 9113 6.7, 6.4, 6.8, 6.5
    pytest.param(frame(PING, 0, 3, b"12345678"), PROTOCOL_ERROR, id="ping-on-a-stream"),
    pytest.param(rst_stream(0, CANCEL), PROTOCOL_ERROR, id="rst-stream-on-stream-0"),
    pytest.param(frame(GOAWAY, 0, 3, bytes(8)), PROTOCOL_ERROR, id="goaway-on-a-stream"),
    pytest.param(frame(SETTINGS, ACK, 0, bytes(6)), FRAME_SIZE_ERROR, id="settings-ack-with-a-payload"),
]


@pytest.mark.parametrize(("bad", "code"), BROKEN)
def test_a_malformed_frame_from_a_client_ends_the_connection(bad: bytes, code: int) -> None:
    served = Served()
    served.start()
    assert served.feed(served.headers(3, REQUEST, END_HEADERS)) == []  # stream 3 open, its request unfinished
    sent = served.feed(bad)
    assert goaway_of(sent) == (3, code)
    assert served.transport.closed
    assert served.requests == []


@pytest.mark.parametrize(("bad", "code"), [
    pytest.param(frame(HEADERS, END_HEADERS, 2, b"\x88"), PROTOCOL_ERROR, id="headers-on-an-even-stream"),
    pytest.param(frame(HEADERS, END_HEADERS, 3, b"\x88"), PROTOCOL_ERROR, id="headers-on-a-stream-never-opened"),
    pytest.param(frame(PUSH_PROMISE, END_HEADERS, 1, b"\x00\x00\x00\x02\x82"), PROTOCOL_ERROR, id="push-promise"),
    pytest.param((20000).to_bytes(3, "big") + bytes((DATA, 0)) + (1).to_bytes(4, "big"), FRAME_SIZE_ERROR,
                 id="frame-over-16384-bytes"),
    pytest.param(frame(HEADERS, END_HEADERS, 1, b"\x00\x01a\x81\x18"), COMPRESSION_ERROR, id="bad-huffman"),
])
def test_a_malformed_frame_from_a_server_ends_the_connection(bad: bytes, code: int) -> None:
    async def main() -> None:
        upstream = Upstream()
        stream = upstream.conn.request(REQUEST, b"x")
        upstream.transport.take()
        assert goaway_of(upstream.feed(bad)) == (0, code)
        assert upstream.transport.closed
        upstream.conn.connection_lost(None)
        assert isinstance(outcome(stream), Vanished)

    run(main)


# ---- the connection preface ----

def test_an_http1_request_gets_goaway_and_the_connection_closes() -> None:
    served = Served()
    sent = served.feed(b"GET / HTTP/1.1\r\nHost: gateway\r\nUser-Agent: curl\r\n\r\n")
    assert goaway_of(sent) == (0, PROTOCOL_ERROR)
    assert served.transport.closed and served.requests == []


def test_a_short_non_preface_closes_the_connection() -> None:
    served = Served()
    sent = served.feed(b"GET / HTTP/1.1\r\n")  # not yet 24 bytes, but already not the preface
    assert served.transport.closed
    assert sent == [] or goaway_of(sent) == (0, PROTOCOL_ERROR)  # RFC 9113 3.4: GOAWAY MAY be omitted here


def test_a_preface_arriving_byte_by_byte_is_accepted() -> None:
    served = Served()
    wire = PREFACE + settings({}) + served.headers(1, REQUEST, END_HEADERS | END_STREAM)
    sent = served.feed(*(wire[i:i + 1] for i in range(len(wire))))
    assert sent == [Frame(SETTINGS, ACK, 0)]
    assert [s.headers for s in served.requests] == [REQUEST]
    assert not served.transport.closed


# ---- how a client's streams fail ----

def test_a_lost_connection_fails_unanswered_streams_with_vanished_and_half_answered_with_cut() -> None:
    async def main() -> None:
        upstream = Upstream()
        unanswered, headed, half = (upstream.conn.request(REQUEST, b"x") for _ in range(3))
        done = upstream.conn.request(REQUEST, b"x")
        upstream.feed(settings({S_MAX_CONCURRENT_STREAMS: 3}), upstream.answer(3, ANSWER),
                      upstream.answer(5, ANSWER), frame(DATA, 0, 5, b"part of it"),
                      upstream.answer(7, ANSWER + OK, END_HEADERS | END_STREAM))
        waiting = asyncio.ensure_future(upstream.conn.room())
        await asyncio.sleep(0)
        assert not waiting.done() and not unanswered.future.done()  # type: ignore[union-attr]
        upstream.conn.connection_lost(ConnectionResetError("reset by peer"))
        assert isinstance(outcome(unanswered), Vanished)
        assert isinstance(outcome(headed), Cut)
        assert isinstance(outcome(half), Cut)
        assert isinstance(outcome(done), Stream)
        await asyncio.wait_for(waiting, 1)  # whoever waited for room is let go
        assert not upstream.conn.usable and upstream.conn.streams == {}
        with pytest.raises(Vanished):
            upstream.conn.request(REQUEST, b"x")

    run(main)


@pytest.mark.parametrize(("code", "answered", "error", "error_code"), [
    (REFUSED_STREAM, False, Vanished, None),
    (REFUSED_STREAM, True, StreamReset, REFUSED_STREAM),
    (CANCEL, False, StreamReset, CANCEL),
    (INTERNAL_ERROR, True, StreamReset, INTERNAL_ERROR),
    (NO_ERROR, False, StreamReset, NO_ERROR),
])
def test_rst_stream_fails_only_its_stream(code: int, answered: bool, error: type[Exception],
                                          error_code: int | None) -> None:
    async def main() -> None:
        upstream = Upstream()
        stream, other = upstream.conn.request(REQUEST, b"x"), upstream.conn.request(REQUEST, b"y")
        upstream.transport.take()
        if answered:
            upstream.feed(upstream.answer(1, ANSWER))
        assert upstream.feed(rst_stream(1, code)) == []
        failure = outcome(stream)
        assert type(failure) is error
        if error_code is not None:
            assert isinstance(failure, StreamReset) and failure.code == error_code
        assert other.future is not None and not other.future.done()
        assert list(upstream.conn.streams) == [3] and upstream.conn.usable

    run(main)


def test_goaway_fails_only_the_streams_above_its_last_stream_id() -> None:
    async def main() -> None:
        upstream = Upstream()
        streams = [upstream.conn.request(REQUEST, b"x") for _ in range(4)]
        assert [s.sid for s in streams] == [1, 3, 5, 7]
        upstream.feed(goaway(3, NO_ERROR))
        assert isinstance(outcome(streams[2]), Vanished) and isinstance(outcome(streams[3]), Vanished)
        assert not streams[0].future.done() and not streams[1].future.done()  # type: ignore[union-attr]
        assert not upstream.conn.usable and not upstream.transport.closed
        upstream.feed(upstream.answer(3, ANSWER + OK, END_HEADERS | END_STREAM),
                      upstream.answer(1, ANSWER), frame(DATA, END_STREAM, 1, b"last"))
        assert [outcome(s).body() for s in streams[:2]] == [b"last", b""]  # type: ignore[union-attr]

        idle = Upstream()
        idle.feed(goaway(0, NO_ERROR))
        assert idle.transport.closed and not idle.conn.usable

    run(main)


# ---- a server's streams: limits, resets, shutdown ----

def cut_short_answer(conn: ServerConnection, stream: Stream) -> None:
    if stream.cut_short:
        conn.respond(stream, ANSWER, None, [(b"grpc-status", b"8"), (b"grpc-message", b"too large")])
    else:
        conn.respond(stream, ANSWER, stream.body(), OK)


RESET_NO_ERROR = (RST_STREAM, 0, NO_ERROR.to_bytes(4, "big"))


def sent_on(frames: list[Frame], sid: int) -> list[tuple[int, int, bytes]]:
    return [(f.type, f.flags, f.payload if f.type == RST_STREAM else b"") for f in frames if f.sid == sid]


def test_a_request_over_max_body_calls_the_handler_once_and_the_stream_is_reset() -> None:
    calls: list[tuple[int, bool, int, bytes]] = []

    def handler(conn: ServerConnection, stream: Stream) -> None:
        calls.append((stream.sid, stream.cut_short, stream.size, stream.body()))
        cut_short_answer(conn, stream)

    async def main() -> None:
        pair = Pair(handler, max_body=1000)
        pair.client.request(REQUEST, bytes(50000))
        pair.pump()
        assert calls == [(1, True, 16384, b"")]  # called once, at the first DATA frame, with nothing held
        assert sorted(sent_on(pair.server_sent, 1)) == sorted(
            [(HEADERS, END_HEADERS, b""), (HEADERS, END_HEADERS | END_STREAM, b""), RESET_NO_ERROR])
        trailers = [f for f in pair.server_sent if f.sid == 1 and f.type == HEADERS][1:]
        assert decode(hpack_decoder(), trailers) == [(b"grpc-status", b"8"), (b"grpc-message", b"too large")]
        assert pair.server.streams == {}
        small = pair.client.request(REQUEST, b"fits")  # the connection is still fine
        pair.pump()
        assert calls[1:] == [(3, False, 4, b"fits")]
        assert outcome(small).body() == b"fits"  # type: ignore[union-attr]

    run(main)


def test_a_request_over_max_body_answered_later_drops_the_rest_of_its_body() -> None:
    async def main() -> None:
        pair = Pair(max_body=1000)
        pair.client.request(REQUEST, bytes(50000))
        pair.pump()
        assert [(s.cut_short, s.ended, s.chunks) for s in pair.requests] == [(True, True, [])]
        assert pair.server_sent == [f for f in pair.server_sent if f.sid == 0]  # nothing on the stream yet
        cut_short_answer(pair.server, pair.requests[0])
        pair.pump()
        assert sorted(sent_on(pair.server_sent, 1)) == sorted(
            [(HEADERS, END_HEADERS, b""), (HEADERS, END_HEADERS | END_STREAM, b""), RESET_NO_ERROR])
        assert pair.server.streams == {}

    run(main)


@pytest.mark.parametrize("answer_at_once", [True, False], ids=["answered-in-the-handler", "answered-later"])
def test_the_answer_to_a_cut_short_request_reaches_the_client_before_the_reset(answer_at_once: bool) -> None:
    async def main() -> None:
        pair = Pair(cut_short_answer if answer_at_once else None, max_body=1000)
        stream = pair.client.request(REQUEST, bytes(50000))
        pair.pump()
        if not answer_at_once:
            cut_short_answer(pair.server, pair.requests[0])
            pair.pump()
        answer = outcome(stream)
        assert sent_on(pair.server_sent, 1) == [
            (HEADERS, END_HEADERS, b""), (HEADERS, END_HEADERS | END_STREAM, b""), RESET_NO_ERROR]
        assert isinstance(answer, Stream)
        assert answer.trailers == [(b"grpc-status", b"8"), (b"grpc-message", b"too large")]

    run(main)


def test_frames_a_client_sent_on_a_stream_already_answered_and_reset_are_dropped() -> None:
    served = Served(cut_short_answer, max_body=100)
    served.start()
    sent = served.feed(served.headers(1, REQUEST, END_HEADERS), frame(DATA, 0, 1, bytes(200)))
    assert sorted(f.type for f in sent) == [HEADERS, HEADERS, RST_STREAM]
    sent = served.feed(frame(DATA, 0, 1, bytes(200)),  # in flight when the answer and the reset left
                       served.headers(1, [(b"x-client-trailer", b"1")], END_HEADERS | END_STREAM))
    assert sent == [] and not served.transport.closed
    sent = served.feed(served.headers(3, REQUEST, END_HEADERS), frame(DATA, END_STREAM, 3, b"next"))
    assert [(f.type, f.sid) for f in sent] == [(HEADERS, 3), (DATA, 3), (HEADERS, 3)]
    assert data_of(sent, 3) == b"next"


def test_trailers_ending_a_cut_short_request_not_yet_answered_are_ignored() -> None:
    served = Served(max_body=100)
    served.start()
    served.feed(served.headers(1, REQUEST, END_HEADERS), frame(DATA, 0, 1, bytes(200)))
    assert [s.cut_short for s in served.requests] == [True]
    sent = served.feed(frame(DATA, 0, 1, bytes(200)),
                       served.headers(1, [(b"x-client-trailer", b"1")], END_HEADERS | END_STREAM))
    assert sent == [] and not served.transport.closed


def test_a_client_rst_stream_cancels_the_handlers_task() -> None:
    async def main() -> None:
        held: list[Stream] = []

        def handler(conn: ServerConnection, stream: Stream) -> None:
            stream.task = asyncio.get_running_loop().create_future()
            held.append(stream)

        pair = Pair(handler)
        stream, other = pair.client.request(REQUEST, b"a"), pair.client.request(REQUEST, b"b")
        pair.pump()
        assert [s.sid for s in held] == [1, 3]
        pair.client.cancel(stream)
        pair.pump()
        assert pair.client_sent[-1:] == [Frame(RST_STREAM, 0, 1, CANCEL.to_bytes(4, "big"))]
        assert held[0].task is not None and held[0].task.cancelled()
        assert held[1].task is not None and not held[1].task.done()
        assert list(pair.server.streams) == [3]
        pair.server.respond(held[0], ANSWER, b"too late", OK)  # nothing is written for a reset stream
        assert pair.to_client.buffer == b""
        assert stream.future is not None and not stream.future.done()  # the caller gave up on it

        lost: list[ServerConnection] = []
        pair.server.on_lost = lost.append
        pair.server.connection_lost(None)
        assert held[1].task.cancelled() and lost == [pair.server]
        pair.server.respond(held[1], ANSWER, b"gone", OK)
        assert pair.to_client.buffer == b""
        assert not other.future.done()  # type: ignore[union-attr]

    run(main)


def test_max_streams_refuses_the_extra_stream_and_room_waits_for_a_free_one() -> None:
    async def main() -> None:
        pair = Pair(max_streams=2)
        pair.pump()
        assert pair.client.peer_max_streams == 2 and pair.client.has_room()
        first, second, third = (pair.client.request(REQUEST, b"%d" % i) for i in range(3))
        pair.pump()
        assert [s.sid for s in pair.requests] == [1, 3]
        assert [(f.sid, f.payload) for f in pair.server_sent if f.type == RST_STREAM] == [
            (5, REFUSED_STREAM.to_bytes(4, "big"))]
        assert isinstance(outcome(third), Vanished)
        assert not pair.client.has_room()
        waiting = asyncio.ensure_future(pair.client.room())
        await asyncio.sleep(0)
        assert not waiting.done()
        pair.server.respond(pair.requests[1], ANSWER, b"done", OK)
        pair.pump()
        await asyncio.wait_for(waiting, 1)
        assert outcome(second).body() == b"done"  # type: ignore[union-attr]
        assert first.future is not None and not first.future.done()

    run(main)


def test_shutdown_sends_goaway_refuses_new_streams_and_closes_when_answered() -> None:
    async def main() -> None:
        lost: list[ServerConnection] = []
        pair = Pair()
        pair.server.on_lost = lost.append
        first = pair.client.request(REQUEST, b"first")
        pair.pump()
        pair.server.shutdown()
        late = pair.client.request(REQUEST, b"late")  # crosses the GOAWAY
        pair.pump()
        assert goaway_of([f for f in pair.server_sent if f.type == GOAWAY]) == (1, NO_ERROR)
        assert isinstance(outcome(late), Vanished)
        assert not pair.client.usable and not pair.to_client.closed
        pair.server.respond(pair.requests[0], ANSWER, b"answer", OK)
        pair.pump()
        assert outcome(first).body() == b"answer"  # type: ignore[union-attr]
        await asyncio.sleep(0)  # the connection closes right after the last answer is written
        assert pair.to_client.closed
        pair.server.connection_lost(None)
        assert lost == [pair.server]

    run(main)


# ---- streaming calls (ModelStreamInfer) ----

STREAM_PATH = b"/inference.GRPCInferenceService/ModelStreamInfer"
STREAM_REQUEST: list[Field] = [(n, STREAM_PATH if n == b":path" else v) for n, v in REQUEST]


def test_streaming_calls_are_handed_over_at_headers_and_flow_both_ways_as_they_come() -> None:
    async def main() -> None:
        pair = Pair(streaming=frozenset((STREAM_PATH,)))  # type: ignore[arg-type]
        call = pair.client.open(STREAM_REQUEST)
        pair.pump()
        assert len(pair.requests) == 1  # handed over at HEADERS, before any message
        served = pair.requests[0]
        assert served.inbox is not None and call.inbox is not None
        pair.client.push(call, None, b"one")
        pair.pump()
        assert served.inbox.get_nowait() == ("data", b"one")
        pair.server.respond_part(served, ANSWER, b"a1")
        pair.pump()
        assert [call.inbox.get_nowait() for _ in range(2)] == [("headers", ANSWER), ("data", b"a1")]
        pair.client.push(call, None, b"two", end=True)
        pair.pump()
        assert [served.inbox.get_nowait() for _ in range(2)] == [("data", b"two"), ("end", None)]
        pair.server.respond_part(served, None, b"a2")
        pair.server.respond_end(served, OK)
        pair.pump()
        assert [call.inbox.get_nowait() for _ in range(2)] == [("data", b"a2"), ("end", OK)]
        assert served.sid not in pair.server.streams and call.sid not in pair.client.streams
        unary = pair.client.request(REQUEST, b"whole")  # other paths on the same connection stay unary
        pair.pump()
        assert pair.requests[-1].inbox is None and pair.requests[-1].body() == b"whole"
        assert not unary.future.done()  # type: ignore[union-attr]

    run(main)


def test_a_streaming_call_whose_connection_dies_gets_an_error_event() -> None:
    async def main() -> None:
        pair = Pair(streaming=frozenset((STREAM_PATH,)))  # type: ignore[arg-type]
        quiet = pair.client.open(STREAM_REQUEST)
        talking = pair.client.open(STREAM_REQUEST)
        pair.pump()
        pair.server.respond_part(pair.requests[1], ANSWER, b"partial")
        pair.pump()
        pair.client.connection_lost(None)
        assert quiet.inbox is not None and talking.inbox is not None
        kind, error = quiet.inbox.get_nowait()
        assert kind == "error" and isinstance(error, Vanished)
        assert [talking.inbox.get_nowait()[0] for _ in range(3)] == ["headers", "data", "error"]
        with pytest.raises(Vanished):
            pair.client.open(STREAM_REQUEST)

    run(main)
