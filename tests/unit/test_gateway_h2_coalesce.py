"""The gateway's HTTP/2 connections write once per round of the event loop (``coalesce``), and a connection to an
inference server times its calls out with one shared timer instead of one per call."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import hpack

from berth.gateway.http2.client import ClientConnection
from berth.gateway.http2.frames import Stream
from berth.gateway.http2.server import ServerConnection
from tests.unit.test_gateway_h2 import FakeTransport

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS = 0, 1, 4
END_STREAM, END_HEADERS = 0x1, 0x4
REQUEST = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", b"/inference.GRPCInferenceService/ModelInfer"),
           (b":authority", b"upstream:8001"), (b"content-type", b"application/grpc"), (b"te", b"trailers")]


def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((ftype, flags)) + sid.to_bytes(4, "big") + payload


def frames(data: bytes) -> list[tuple[int, int, int]]:
    """(type, flags, stream id) of each frame in ``data``."""
    out, pos = [], 0
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 3], "big")
        out.append((data[pos + 3], data[pos + 4], int.from_bytes(data[pos + 5:pos + 9], "big")))
        pos += 9 + length
    assert pos == len(data), "a partial frame was written"
    return out


class Transport(FakeTransport):
    """Records each write separately (what a system call each would be)."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        assert not self.closed, "written after close"
        self.writes.append(data)
        super().write(data)


def run(main: Any) -> None:
    asyncio.run(asyncio.wait_for(main(), 5))


def test_answers_of_one_round_go_out_in_one_write_and_without_coalesce_each_at_once() -> None:
    async def main() -> None:
        for coalesce in (True, False):
            streams: list[Stream] = []
            server = ServerConnection(lambda conn, stream, into=streams: into.append(stream))  # type: ignore[misc]
            server.coalesce = coalesce
            transport = Transport()
            server.connection_made(cast(asyncio.Transport, transport))
            encoder = hpack.Encoder()
            calls = b"".join(frame(HEADERS, END_HEADERS, sid, encoder.encode(REQUEST))
                             + frame(DATA, END_STREAM, sid, b"\x00\x00\x00\x00\x01x") for sid in (1, 3, 5))
            server.data_received(PREFACE + frame(SETTINGS, 0, 0) + calls)  # three calls in one read
            assert [s.sid for s in streams] == [1, 3, 5]
            before = len(transport.writes)
            for stream in streams:  # three handlers answering in the same round
                server.respond(stream, [(b":status", b"200"), (b"content-type", b"application/grpc")],
                               b"\x00\x00\x00\x00\x01y", [(b"grpc-status", b"0")])
            if coalesce:
                assert len(transport.writes) == before  # nothing yet: the round is not over
                await asyncio.sleep(0)
                assert len(transport.writes) == before + 1
                ends = [f for f in frames(transport.writes[-1]) if f[0] == HEADERS and f[1] & END_STREAM]
                assert [sid for _, _, sid in ends] == [1, 3, 5]  # every answer whole, in order, in one write
            else:
                assert len(transport.writes) == before + 3
            await asyncio.sleep(0)
            assert not server.core.outbound

    run(main)


def test_a_queued_answer_is_not_written_after_the_transport_closed() -> None:
    async def main() -> None:
        streams: list[Stream] = []
        server = ServerConnection(lambda conn, stream: streams.append(stream))
        server.coalesce = True
        transport = Transport()
        server.connection_made(cast(asyncio.Transport, transport))
        server.data_received(PREFACE + frame(SETTINGS, 0, 0) + frame(
            HEADERS, END_HEADERS | END_STREAM, 1, hpack.Encoder().encode(REQUEST)))
        server.respond(streams[0], [(b":status", b"200")], b"x", [(b"grpc-status", b"0")])
        transport.closed = True  # the client went away before the round ended
        server.connection_lost(None)
        await asyncio.sleep(0)  # (the transport asserts that nothing is written once closed)

    run(main)


def test_requests_of_one_round_go_upstream_in_one_write() -> None:
    async def main() -> None:
        client = ClientConnection("upstream:8001")
        client.coalesce = True
        transport = Transport()
        client.connection_made(cast(asyncio.Transport, transport))
        client.data_received(frame(SETTINGS, 0, 0))
        before = len(transport.writes)
        for _ in range(4):
            client.request(REQUEST, b"\x00\x00\x00\x00\x01x")
        await asyncio.sleep(0)
        assert len(transport.writes) == before + 1
        assert [sid for kind, _, sid in frames(transport.writes[-1]) if kind == HEADERS] == [1, 3, 5, 7]

    run(main)


def test_calls_time_out_at_their_own_deadline_through_one_timer() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        client = ClientConnection("upstream:8001")
        client.connection_made(cast(asyncio.Transport, Transport()))
        client.data_received(frame(SETTINGS, 0, 0))
        slow = client.request(REQUEST, b"", 5.0)
        alarm = client._alarm
        assert alarm is not None
        later = client.request(REQUEST, b"", 6.0)
        assert client._alarm is alarm  # a later deadline: the same timer
        started = loop.time()
        quick = [client.request(REQUEST, b"", 0.05), client.request(REQUEST, b"", 0.08)]
        assert client._alarm is not alarm  # an earlier one: armed for it
        untimed = client.request(REQUEST, b"")
        for call in quick:
            assert call.future is not None
            try:
                await call.future
            except TimeoutError:
                pass
            else:
                raise AssertionError("a call past its deadline was not failed")
        waited = loop.time() - started
        assert 0.07 <= waited < 1.0
        assert client._alarm_at == slow.deadline  # armed for the next deadline only
        for call in (slow, later, untimed):
            assert call.future is not None and not call.future.done()
        for call in quick:  # (as the caller does with a call that timed out)
            client.cancel(call)
        client.connection_lost(None)
        assert client._alarm is None  # a lost connection holds no timer
        for call in (slow, later, untimed):  # failed by the lost connection, not by a timer
            assert call.future is not None and not isinstance(call.future.exception(), TimeoutError)

    run(main)
