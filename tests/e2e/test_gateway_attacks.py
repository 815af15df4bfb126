"""The gateway's edges under attack: a hostile client speaking raw HTTP/2 (frames written by hand, header
blocks by the ``hpack`` package) and raw HTTP/1.1 to the real gateway on loopback, in front of a real
MLServer.  One test per limit of ``docs/limits.md`` ("Gateway: HTTP/2 and gRPC", "Gateway: REST"): each
asserts the documented answer (GOAWAY and its code, a gRPC status, a closed connection, a 408) and that
a well-behaved client on another connection is served meanwhile.  The gateway runs with small limits and
short clocks so every attack is bounded (at most a few hundred frames, a few seconds).
"""

from __future__ import annotations

import gzip
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import replace

import grpc
import h2.config
import h2.connection
import h2.events
import hpack
import httpx
import pytest
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc import dataplane_pb2_grpc as pb_grpc

from berth.adapters.mlserver_proc import MLServerProcess
from berth.gateway.http2.limits import Limits
from berth.gateway.transports.restlimits import RestLimits
from berth.wire.routes import RoutingTable
from tests.support.gateway import Gateway, LoopThread, route, start_mlserver
from tests.support.models import IRIS_INPUT
from tests.support.runtimes import load_custom

pytestmark = pytest.mark.e2e

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, END_HEADERS = 0x1, 0x4
NO_ERROR, FLOW_CONTROL_ERROR, CANCEL, COMPRESSION_ERROR, REFUSED_STREAM, ENHANCE_YOUR_CALM = (0x0, 0x3, 0x8, 0x9, 0x7,
                                                                                           0xB)
S_HEADER_TABLE_SIZE, S_MAX_CONCURRENT_STREAMS, S_INITIAL_WINDOW_SIZE, S_MAX_HEADER_LIST_SIZE = 1, 3, 4, 6
MAX_REQUEST = 1 << 20
LIMITS = Limits(max_concurrent_streams=8, resets_per_second=10, resets_burst=40, pings_per_second=5,
                pings_burst=20, settings_per_second=5, settings_burst=20, empty_frames_per_second=20,
                empty_frames_burst=50, preface_timeout=0.5, idle_timeout=1.0, send_timeout=1.0)
REST_LIMITS = RestLimits(header_timeout=1.0, body_timeout=1.0)
SLEEP_S = 3.0  # the slow model's answer time
BIG_ANSWER = 8 << 20  # the size of the big model's answer
INFER = b"/inference.GRPCInferenceService/ModelInfer"
STREAM_INFER = b"/inference.GRPCInferenceService/ModelStreamInfer"


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((ftype, flags)) + sid.to_bytes(4, "big") + payload


def settings(values: dict[int, int]) -> bytes:
    return frame(SETTINGS, 0, 0, b"".join(struct.pack(">HL", k, v) for k, v in values.items()))


def request_fields(path: bytes = INFER, *extra: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    return [(b":method", b"POST"), (b":scheme", b"http"), (b":path", path), (b":authority", b"gateway"),
            (b"content-type", b"application/grpc"), (b"te", b"trailers"), *extra]


def infer_message(model: str = "iris") -> bytes:
    spec = IRIS_INPUT["inputs"][0]
    tensor = pb.ModelInferRequest.InferInputTensor(name=spec["name"], datatype="FP64", shape=[2, 4],
                                                   contents=pb.InferTensorContents(fp64_contents=spec["data"]))
    data: bytes = pb.ModelInferRequest(model_name=model, inputs=[tensor]).SerializeToString()
    return data


def grpc_framed(data: bytes, compressed: bool = False) -> bytes:
    return bytes((int(compressed),)) + len(data).to_bytes(4, "big") + data


class Hostile:
    """A raw HTTP/2 connection to the gateway: the test writes frames, reads what comes back."""

    def __init__(self, address: str, *, preface: bool = True, rcvbuf: int = 0) -> None:
        host, port = address.rsplit(":", 1)
        if rcvbuf:  # a small receive buffer (set before connecting): what the client does not read backs up fast
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.settimeout(5)
            self.sock.connect((host, int(port)))
        else:
            self.sock = socket.create_connection((host, int(port)), timeout=5)
        self.encoder = hpack.Encoder()
        self.decoder = hpack.Decoder()
        self.decoder.max_header_list_size = 1 << 20
        self.buffer = b""
        self.frames: list[tuple[int, int, int, bytes]] = []
        self.closed = False
        self.opened = time.monotonic()
        if preface:
            self.send(PREFACE + settings({}))

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError:  # the gateway already closed: what it said before is still to be read
            self.closed = True

    def block(self, fields: list[tuple[bytes, bytes]]) -> bytes:
        return bytes(self.encoder.encode(fields))

    def headers(self, sid: int, fields: list[tuple[bytes, bytes]], end_stream: bool = False) -> bytes:
        return frame(HEADERS, END_HEADERS | (END_STREAM if end_stream else 0), sid, self.block(fields))

    def read(self, until: float) -> None:
        """Read frames until ``until`` (monotonic) or the connection closes."""
        while not self.closed and time.monotonic() < until:
            self.sock.settimeout(max(until - time.monotonic(), 0.01))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                self.closed = True
                break
            self.buffer += chunk
            while len(self.buffer) >= 9:
                length = int.from_bytes(self.buffer[:3], "big")
                if len(self.buffer) < 9 + length:
                    break
                ftype, flags = self.buffer[3], self.buffer[4]
                sid = int.from_bytes(self.buffer[5:9], "big") & 0x7FFFFFFF
                self.frames.append((ftype, flags, sid, self.buffer[9:9 + length]))
                self.buffer = self.buffer[9 + length:]

    def wait(self, check: object, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not check() and not self.closed and time.monotonic() < deadline:  # type: ignore[operator]
            self.read(min(deadline, time.monotonic() + 0.1))

    def goaway(self, timeout: float = 5.0) -> tuple[int, str]:
        """The code and debug text of the GOAWAY the gateway sends, waiting for it and for the close."""
        self.wait(lambda: self.closed, timeout)
        found = [f for f in self.frames if f[0] == GOAWAY]
        assert found, f"no GOAWAY; frames: {[(f[0], f[2]) for f in self.frames]}, closed: {self.closed}"
        payload = found[0][3]
        assert self.closed, "the connection stayed open after GOAWAY"
        return int.from_bytes(payload[4:8], "big"), payload[8:].decode()

    def of(self, ftype: int, sid: int | None = None) -> list[tuple[int, int, int, bytes]]:
        return [f for f in self.frames if f[0] == ftype and (sid is None or f[2] == sid)]

    def fields(self, sid: int) -> dict[bytes, bytes]:
        """The header fields of the HEADERS frames on ``sid`` (each a complete block)."""
        out: dict[bytes, bytes] = {}
        for f in self.of(HEADERS, sid):
            out.update((bytes(n), bytes(v)) for n, v in self.decoder.decode(f[3], raw=True))
        return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def mlserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MLServerProcess]:
    proc = start_mlserver(tmp_path_factory.mktemp("mlserver"), "iris")
    try:
        load_custom(proc, "sleepy", "Sleeper", seconds=SLEEP_S)  # a slow model
        load_custom(proc, "big", "Big", size=BIG_ANSWER)  # a large answer to a small call
    except BaseException:
        proc.stop()
        raise
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def gw(mlserver: MLServerProcess, lt: LoopThread) -> Iterator[Gateway]:
    gateway = Gateway(lt, grpc=True, routes=_table(mlserver), max_request_bytes=MAX_REQUEST, grpc_limits=LIMITS,
                      rest_limits=REST_LIMITS)
    yield gateway
    gateway.stop()


def _table(mlserver: MLServerProcess) -> RoutingTable:
    grpc_address = (f"127.0.0.1:{mlserver.grpc_port}",)
    return RoutingTable(revision=1, models=[route(name, mlserver.http_address, grpc=grpc_address)
                                            for name in ("iris", "sleepy", "big")])


@pytest.fixture
def hostile(gw: Gateway) -> Iterator[Hostile]:
    conn = Hostile(gw.grpc)
    yield conn
    conn.close()


def assert_served(gw: Gateway) -> None:
    """A well-behaved client, on its own connections, gets its answers (gRPC and REST)."""
    with grpc.insecure_channel(gw.grpc) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        answer = stub.ModelInfer(pb.ModelInferRequest.FromString(infer_message()), timeout=10)
        assert answer.model_name == "iris" and answer.outputs
    r = httpx.post(f"{gw.url}/v2/models/iris/infer", json=IRIS_INPUT, timeout=10)
    assert r.status_code == 200, r.text


# ---- HTTP/2: clocks ----

def test_a_connection_that_never_sends_the_preface_is_closed(gw: Gateway) -> None:
    silent = Hostile(gw.grpc, preface=False)
    try:
        started = time.monotonic()
        assert_served(gw)
        silent.wait(lambda: silent.closed, 5)
        assert silent.closed and time.monotonic() - started < 3.5  # preface_timeout 0.5 s (and its clock's tick)
    finally:
        silent.close()


def test_an_idle_connection_gets_goaway_no_error(gw: Gateway, hostile: Hostile) -> None:
    assert_served(gw)
    code, text = hostile.goaway(5)
    assert code == NO_ERROR and "no stream for 1s" in text
    assert 0.9 < time.monotonic() - hostile.opened < 4


def test_an_answer_stuck_on_a_zero_stream_window_is_reset(gw: Gateway, hostile: Hostile) -> None:
    hostile.send(settings({S_INITIAL_WINDOW_SIZE: 0}))
    hostile.send(hostile.headers(1, request_fields()) + frame(DATA, END_STREAM, 1, grpc_framed(infer_message())))
    hostile.wait(lambda: bool(hostile.of(HEADERS, 1)))
    assert hostile.fields(1)[b":status"] == b"200" and not hostile.of(DATA, 1)  # the answer waits for window
    assert_served(gw)
    hostile.wait(lambda: bool(hostile.of(RST_STREAM, 1)), 5)
    assert [int.from_bytes(f[3], "big") for f in hostile.of(RST_STREAM, 1)] == [CANCEL]
    assert not hostile.closed  # the connection itself had window: only the stream went


# ---- HTTP/2: streams and resets ----

def test_streams_over_the_advertised_maximum_are_refused(gw: Gateway, hostile: Hostile) -> None:
    hostile.wait(lambda: bool(hostile.of(SETTINGS)), 2)
    advertised = dict(struct.unpack(">HL", hostile.of(SETTINGS)[0][3][i:i + 6])
                      for i in range(0, len(hostile.of(SETTINGS)[0][3]), 6))
    assert advertised[S_MAX_CONCURRENT_STREAMS] == 8 and advertised[S_MAX_HEADER_LIST_SIZE] == 16384
    for sid in range(1, 20, 2):  # ten requests whose bodies never end
        hostile.send(hostile.headers(sid, request_fields()))
    hostile.wait(lambda: len(hostile.of(RST_STREAM)) >= 2, 3)
    assert [(f[2], int.from_bytes(f[3], "big")) for f in hostile.of(RST_STREAM)] == [(17, REFUSED_STREAM),
                                                                                     (19, REFUSED_STREAM)]
    assert_served(gw)


def test_rapid_reset_ends_the_connection_with_enhance_your_calm(gw: Gateway) -> None:
    client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    client.initiate_connection()
    attacker = Hostile(gw.grpc, preface=False)
    try:
        burst = b""
        for i in range(100):  # open and cancel at once, as CVE-2023-44487 does
            sid = 1 + 2 * i
            client.send_headers(sid, request_fields())
            client.reset_stream(sid)
        burst = client.data_to_send()
        attacker.send(burst)
        assert_served(gw)
        code, text = attacker.goaway()
        assert code == ENHANCE_YOUR_CALM and "too many reset streams" in text
    finally:
        attacker.close()


# ---- HTTP/2: header blocks ----

def test_a_header_list_over_the_advertised_size_is_refused_before_it_is_forwarded(gw: Gateway,
                                                                                  hostile: Hostile) -> None:
    # HPACK amplification: one 4,000-byte entry in the dynamic table, then a 4 KB block referring to it 4,000
    # times (16 MB of headers if decoded and kept)
    hostile.send(hostile.headers(1, request_fields(INFER, (b"x-big", b"v" * 4000)), end_stream=True))
    bomb = b"\xbe" * 4000  # indexed field 62: the newest dynamic entry
    hostile.send(frame(HEADERS, END_HEADERS | END_STREAM, 3, hostile.block(request_fields()) + bomb))
    assert_served(gw)
    hostile.wait(lambda: bool(hostile.of(HEADERS, 3)), 3)
    answer = hostile.fields(3)
    assert answer[b"grpc-status"] == b"8" and b"16384" in answer[b"grpc-message"]
    assert answer[b"berth-error-code"] == b"PayloadTooLarge"
    # the connection goes on: its HPACK state is intact
    hostile.send(hostile.headers(5, [(b":method", b"POST"), (b":scheme", b"http"),
                                     (b":path", b"/inference.GRPCInferenceService/ServerReady"),
                                     (b":authority", b"gateway"), (b"content-type", b"application/grpc")])
                 + frame(DATA, END_STREAM, 5, grpc_framed(b"")))
    hostile.wait(lambda: any(f[1] & END_STREAM for f in hostile.of(HEADERS, 5)), 3)
    assert hostile.fields(5)[b"grpc-status"] == b"0" and not hostile.closed


def test_too_many_continuation_frames_end_the_connection(gw: Gateway, hostile: Hostile) -> None:
    block = hostile.block(request_fields())
    hostile.send(frame(HEADERS, 0, 1, block[:4]) + b"".join(frame(CONTINUATION, 0, 1, b"") for _ in range(40)))
    assert_served(gw)
    code, text = hostile.goaway()
    assert code == ENHANCE_YOUR_CALM and "CONTINUATION" in text


def test_a_header_block_over_its_byte_limit_ends_the_connection(gw: Gateway, hostile: Hostile) -> None:
    hostile.send(frame(HEADERS, 0, 1, b"\x00" * 16384) + frame(CONTINUATION, 0, 1, b"\x00" * 16384)
                 + frame(CONTINUATION, 0, 1, b"\x00" * 16384))
    assert_served(gw)
    code, text = hostile.goaway()
    assert code == ENHANCE_YOUR_CALM and "32768 bytes" in text


def test_an_hpack_table_larger_than_advertised_is_a_compression_error(gw: Gateway, hostile: Hostile) -> None:
    hostile.send(frame(HEADERS, END_HEADERS, 1, b"\x3f\xe1\xff\x03" + hostile.block(request_fields())))  # 65536
    assert_served(gw)
    code, text = hostile.goaway()
    assert code == COMPRESSION_ERROR and "dynamic table size 65536 exceeds the 4096 allowed" in text


# ---- HTTP/2: floods ----

@pytest.mark.parametrize(("flood", "words"), [
    pytest.param(b"".join(frame(PING, 0, 0, i.to_bytes(8, "big")) for i in range(100)), "PINGs", id="ping"),
    pytest.param(b"".join(settings({S_INITIAL_WINDOW_SIZE: 65535 + i}) for i in range(100)), "SETTINGS frames",
                 id="settings"),
    pytest.param(frame(SETTINGS, 0, 0, struct.pack(">HL", S_HEADER_TABLE_SIZE, 4096) * 2000), "2000 entries",
                 id="settings-of-2000-entries"),
    pytest.param(b"".join(frame(PRIORITY, 0, 1, b"\x00\x00\x00\x00\x10") for _ in range(200)), "carry nothing",
                 id="priority"),
    pytest.param(b"".join(frame(WINDOW_UPDATE, 0, 99, b"\x00\x00\x00\x01") for _ in range(200)),
                 "WINDOW_UPDATE", id="window-update-on-closed-streams"),
])
def test_floods_of_control_frames_end_the_connection(gw: Gateway, hostile: Hostile, flood: bytes, words: str) -> None:
    hostile.send(flood)
    assert_served(gw)
    code, text = hostile.goaway()
    assert code == ENHANCE_YOUR_CALM and words in text
    assert len(hostile.of(PING)) <= 21  # the budget's burst, then no more answers


def test_a_flood_of_empty_data_frames_ends_the_connection(gw: Gateway, hostile: Hostile) -> None:
    hostile.send(hostile.headers(1, request_fields()) + frame(DATA, 0, 1, b"") * 200)
    assert_served(gw)
    code, text = hostile.goaway()
    assert code == ENHANCE_YOUR_CALM and "empty DATA" in text


# ---- gRPC messages ----

@pytest.fixture(scope="module")
def bomb() -> bytes:
    """~64 KB of gzip inflating to 64 MiB (made before the attacking connection opens: it takes a while)."""
    data = gzip.compress(infer_message() + b"\x00" * (64 * MAX_REQUEST), 9)
    assert len(data) < MAX_REQUEST // 8
    return data


def test_a_gzip_bomb_is_refused_at_the_limit_without_inflating_it_all(gw: Gateway, bomb: bytes,
                                                                      hostile: Hostile) -> None:
    hostile.send(hostile.headers(1, request_fields(INFER, (b"grpc-encoding", b"gzip")))
                 + b"".join(frame(DATA, 0, 1, chunk) for chunk in _chunks(grpc_framed(bomb, compressed=True)))
                 + frame(DATA, END_STREAM, 1))
    started = time.monotonic()
    assert_served(gw)
    hostile.wait(lambda: any(f[1] & END_STREAM for f in hostile.of(HEADERS, 1)), 5)
    answer = hostile.fields(1)
    assert answer.get(b"grpc-status") == b"8", (answer, hostile.frames[-5:], hostile.closed)
    assert b"inflates" in answer[b"grpc-message"]
    assert time.monotonic() - started < 5


def test_a_streaming_message_over_the_limit_is_refused_at_its_prefix(gw: Gateway, hostile: Hostile) -> None:
    # the first message announces 64 MiB and sends 16 KB of it: refused at once, nothing more is read
    hostile.send(hostile.headers(1, request_fields(STREAM_INFER))
                 + frame(DATA, 0, 1, b"\x00" + (64 * MAX_REQUEST).to_bytes(4, "big") + b"\x00" * 16000))
    assert_served(gw)
    hostile.wait(lambda: any(f[1] & END_STREAM for f in hostile.of(HEADERS, 1)), 5)
    answer = hostile.fields(1)
    assert answer[b"grpc-status"] == b"8" and b"first message of the stream is 67108864 bytes" in answer[
        b"grpc-message"]


def test_a_later_streaming_message_over_the_limit_ends_the_call(gw: Gateway, hostile: Hostile) -> None:
    first = grpc_framed(infer_message())
    hostile.send(hostile.headers(1, request_fields(STREAM_INFER)) + frame(DATA, 0, 1, first)
                 + frame(DATA, 0, 1, b"\x00" + (2 * MAX_REQUEST).to_bytes(4, "big") + b"\x00" * 100))
    assert_served(gw)
    hostile.wait(lambda: any(f[1] & END_STREAM for f in hostile.of(HEADERS, 1)), 5)
    answer = hostile.fields(1)
    assert answer[b"grpc-status"] == b"8" and b"message 2 of the stream is 2097152 bytes" in answer[b"grpc-message"]


def _chunks(data: bytes, size: int = 16384) -> list[bytes]:
    return [data[i:i + size] for i in range(0, len(data), size)]


# ---- REST (HTTP/1.1) ----

def _rest_socket(gw: Gateway) -> socket.socket:
    host, port = gw.url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


def _closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    deadline = time.monotonic() + seconds
    got = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return False, got
        except OSError:
            return True, got
        if not chunk:
            return True, got
        got += chunk
    return False, got


def test_rest_a_silent_connection_is_closed(gw: Gateway) -> None:
    sock = _rest_socket(gw)
    try:
        assert_served(gw)
        closed, _ = _closed_within(sock, 4)
        assert closed
    finally:
        sock.close()


def test_rest_a_head_sent_slowly_is_cut_off(gw: Gateway) -> None:
    sock = _rest_socket(gw)
    try:
        started = time.monotonic()
        sock.sendall(b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: gateway\r\n")
        for i in range(20):  # slowloris: a header line every 0.25 s, never the blank line
            try:
                sock.sendall(f"x-slow-{i}: 1\r\n".encode())
            except OSError:
                break
            if i == 1:
                assert_served(gw)
            time.sleep(0.25)
        closed, _ = _closed_within(sock, 3)
        assert closed and time.monotonic() - started < 6
    finally:
        sock.close()


def test_rest_a_body_sent_slowly_gets_408(gw: Gateway) -> None:
    sock = _rest_socket(gw)
    try:
        sock.sendall(b"POST /v2/models/iris/infer HTTP/1.1\r\nHost: gateway\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n{\"inputs\": ")
        assert_served(gw)
        _, answer = _closed_within(sock, 3)  # (aiohttp then lingers up to 10 s reading what still comes)
        assert answer.startswith(b"HTTP/1.1 408") and b"Connection: close" in answer, answer[:200]
        assert b'"code": "Timeout"' in answer and b"did not arrive within 1s" in answer
    finally:
        sock.close()


# ---- HTTP/2: what one client makes the gateway hold ----

# a second gateway whose clocks stay out of the way (what these tests see is the limit itself, not a timeout), with
# a small cap on what may pile up for a client that does not read and a small connection window
TIGHT = replace(LIMITS, max_queued_control_bytes=32 << 10, connection_window=64 << 10, idle_timeout=30.0,
                send_timeout=30.0)
TIGHT_REQUEST = 64 << 10


@pytest.fixture(scope="module")
def tight(mlserver: MLServerProcess, lt: LoopThread) -> Iterator[Gateway]:
    gateway = Gateway(lt, grpc=True, routes=_table(mlserver), max_request_bytes=TIGHT_REQUEST, grpc_limits=TIGHT,
                      rest_limits=REST_LIMITS)
    yield gateway
    gateway.stop()


def _unary(conn: Hostile, sid: int, model: str) -> bytes:
    return conn.headers(sid, request_fields()) + frame(DATA, END_STREAM, sid, grpc_framed(infer_message(model)))


def test_reset_streams_whose_handlers_still_run_count_against_the_maximum(gw: Gateway, hostile: Hostile) -> None:
    slow = list(range(1, 17, 2))  # as many calls to the slow model as the connection may have (8)
    hostile.send(b"".join(_unary(hostile, sid, "sleepy") for sid in slow))
    hostile.read(time.monotonic() + 0.5)  # their handlers now wait on the model
    assert not hostile.of(RST_STREAM) and not hostile.of(HEADERS) and not hostile.closed
    # reset them all and open as many again at once: the reset ones still count while their handlers stop
    more = list(range(17, 33, 2))
    hostile.send(b"".join(frame(RST_STREAM, 0, sid, CANCEL.to_bytes(4, "big")) for sid in slow)
                 + b"".join(_unary(hostile, sid, "iris") for sid in more))
    hostile.wait(lambda: len(hostile.of(RST_STREAM)) >= len(more), 3)
    assert [(f[2], int.from_bytes(f[3], "big")) for f in hostile.of(RST_STREAM)] == [(sid, REFUSED_STREAM)
                                                                                     for sid in more]
    assert not hostile.of(HEADERS) and not hostile.of(GOAWAY)
    hostile.read(time.monotonic() + 0.3)  # the handlers are stopped: the connection takes streams again
    hostile.send(_unary(hostile, 33, "iris"))
    assert_served(gw)
    hostile.wait(lambda: any(f[1] & END_STREAM for f in hostile.of(HEADERS, 33)), 5)
    assert hostile.fields(33).get(b"grpc-status") == b"0" and not hostile.closed


def test_data_beyond_the_receive_window_is_a_flow_control_error(tight: Gateway) -> None:
    # the tight gateway lets a connection hold about 80 KiB it has not consumed (64 KiB, raised to its 64 KiB
    # request limit + 16 KiB); a unary request is consumed when it is whole, so its bytes hold the window until then
    body = b"\x00" * 60000
    attacker = Hostile(tight.grpc)
    try:
        attacker.wait(lambda: bool(attacker.of(WINDOW_UPDATE, 0)), 2)
        window = 65535 + int.from_bytes(attacker.of(WINDOW_UPDATE, 0)[0][3], "big")  # the greeting's
        assert TIGHT_REQUEST + 16384 <= window < 2 * len(body)
        attacker.send(attacker.headers(1, request_fields()) + b"".join(frame(DATA, 0, 1, c) for c in _chunks(body)))
        attacker.read(time.monotonic() + 0.3)
        assert not attacker.of(WINDOW_UPDATE, 0)[1:] and not attacker.closed  # held: nothing given back
        attacker.send(frame(DATA, END_STREAM, 1))  # now whole, handed on: its 60,000 bytes are given back
        attacker.wait(lambda: len(attacker.of(WINDOW_UPDATE, 0)) > 1, 3)
        assert [int.from_bytes(f[3], "big") for f in attacker.of(WINDOW_UPDATE, 0)[1:]] == [len(body)]
        # two requests that never end, 120,000 bytes held at once: past the window it was given
        attacker.send(attacker.headers(3, request_fields()) + attacker.headers(5, request_fields())
                      + b"".join(frame(DATA, 0, 3, c) + frame(DATA, 0, 5, c) for c in _chunks(body)))
        assert_served(tight)
        code, text = attacker.goaway()
        assert code == FLOW_CONTROL_ERROR and f"connection's flow-control window of {window} bytes" in text
    finally:
        attacker.close()


def _drain(sock: socket.socket, until: float, enough: int = 1 << 40) -> tuple[bytes, bool]:
    """Read ``sock`` until it ends (True), ``enough`` bytes came, or ``until`` (monotonic) passes."""
    got = b""
    while len(got) < enough and time.monotonic() < until:
        sock.settimeout(max(until - time.monotonic(), 0.01))
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            break
        except OSError:
            return got, True
        if not chunk:
            return got, True
        got += chunk
    return got, False


def test_a_client_that_does_not_read_is_dropped_when_a_control_frame_is_due(tight: Gateway) -> None:
    ping = frame(PING, 0, 0, b"12345678")
    # two clients open every window wide, ask for an 8 MiB answer and read nothing: the answers back up in the
    # gateway; one of them then sends PINGs (well within their budget), the other waits
    reader = Hostile(tight.grpc, preface=False, rcvbuf=4096)
    patient = Hostile(tight.grpc, preface=False, rcvbuf=4096)
    try:
        for conn in (reader, patient):
            conn.send(PREFACE + settings({S_INITIAL_WINDOW_SIZE: (1 << 31) - 1})
                      + frame(WINDOW_UPDATE, 0, 0, ((1 << 31) - 1 - 65535).to_bytes(4, "big")) + _unary(conn, 1, "big"))
        time.sleep(1.0)
        for _ in range(4):
            reader.send(ping)
            time.sleep(0.5)
        assert_served(tight)
        got, ended = _drain(reader.sock, time.monotonic() + 3)
        # dropped: what the kernel still held came, then the end; never the whole answer, nor a PING's ACK
        assert ended and len(got) < BIG_ANSWER and frame(PING, 0x1, 0, b"12345678") not in got, (ended, len(got))
        # the one that only waited was not dropped: it reads its whole answer now
        got, ended = _drain(patient.sock, time.monotonic() + 5, enough=BIG_ANSWER + 1024)
        assert not ended and len(got) > BIG_ANSWER, (ended, len(got))
    finally:
        reader.close()
        patient.close()
