"""The sans-IO HTTP/2 core (berth.gateway.http2.core) driven with bytes alone: no socket, no event loop, no clock.

The peer is python-hyper's ``h2`` (an independent implementation): its bytes go into the core, the core's
``data_to_send`` goes back into it, and both sides' events are checked."""

from __future__ import annotations

import time
from collections.abc import Iterator

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest

from berth.gateway.http2.clientcore import ClientCore
from berth.gateway.http2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    PingReceived,
    RequestReceived,
    ResponseReceived,
    SettingsChanged,
    StreamEnded,
    StreamReset,
)
from berth.gateway.http2.limits import ENHANCE_YOUR_CALM, Limits
from berth.gateway.http2.servercore import ServerCore

PATH = b"/inference.GRPCInferenceService/ModelInfer"
STREAM_PATH = b"/inference.GRPCInferenceService/ModelStreamInfer"


def request(path: bytes = PATH, extra: list[tuple[bytes, bytes]] | None = None) -> list[tuple[bytes, bytes]]:
    return [(b":method", b"POST"), (b":scheme", b"http"), (b":path", path), (b":authority", b"gw"),
            (b"content-type", b"application/grpc"), (b"te", b"trailers"), *(extra or [])]


@pytest.fixture(autouse=True)
def no_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The core never reads a clock: time is what the test passes in."""
    def refuse() -> float:
        raise AssertionError("the protocol core read the clock")
    monkeypatch.setattr(time, "monotonic", refuse)
    yield


class Peer:
    """An ``h2`` client talking to a :class:`ServerCore`; ``now`` is the test's own clock."""

    def __init__(self, limits: Limits | None = None, **options: object) -> None:
        self.now = 100.0
        self.core = ServerCore(limits or Limits(), now=self.now, **options)  # type: ignore[arg-type]
        self.client = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.client.initiate_connection()
        self.seen: list[h2.events.Event] = []
        self.exchange()

    def exchange(self, split: bool = False) -> list[Event]:
        """Carry the client's bytes to the core (byte by byte with ``split``) and the core's answer back."""
        data = self.client.data_to_send()
        events: list[Event] = []
        if split:
            for i in range(len(data)):
                events += self.core.receive_data(data[i:i + 1], self.now)
        elif data:
            events = self.core.receive_data(data, self.now)
        self.back()
        return events

    def back(self) -> list[h2.events.Event]:
        answer = self.core.data_to_send()
        seen = self.client.receive_data(answer) if answer else []
        self.seen += seen
        return seen


def test_a_unary_request_is_one_event_once_whole_and_its_answer_reaches_the_peer() -> None:
    peer = Peer()
    assert any(isinstance(e, h2.events.RemoteSettingsChanged) for e in peer.seen)
    settings = peer.client.remote_settings
    assert settings.max_concurrent_streams == 128 and settings.max_header_list_size == 16 * 1024
    peer.client.send_headers(1, request())
    peer.client.send_data(1, b"first half ")
    assert peer.exchange() == []  # not whole yet
    peer.client.send_data(1, b"second half", end_stream=True)
    events = peer.exchange()
    assert [type(e) for e in events] == [RequestReceived]
    stream = events[0].stream  # type: ignore[attr-defined]
    assert stream.sid == 1 and stream.body() == b"first half second half" and dict(stream.headers)[b":path"] == PATH
    peer.core.respond(stream, [(b":status", b"200")], b"answer", [(b"grpc-status", b"0")])
    seen = peer.back()
    assert [type(e) for e in seen] == [h2.events.ResponseReceived, h2.events.DataReceived,
                                       h2.events.TrailersReceived, h2.events.StreamEnded]
    assert isinstance(seen[1], h2.events.DataReceived) and seen[1].data == b"answer"
    assert isinstance(seen[2], h2.events.TrailersReceived) and seen[2].headers == [(b"grpc-status", b"0")]
    assert peer.core.streams == {}


def test_bytes_arriving_one_at_a_time_make_the_same_events() -> None:
    peer = Peer()
    peer.client.send_headers(1, request(extra=[(b"x-k", b"v" * 300)]))
    peer.client.send_data(1, b"body", end_stream=True)
    events = peer.exchange(split=True)
    assert [type(e) for e in events] == [RequestReceived]
    assert events[0].stream.body() == b"body"  # type: ignore[attr-defined]


def test_a_streaming_call_is_handed_over_at_its_headers_and_its_data_comes_as_events() -> None:
    peer = Peer(streaming=frozenset((STREAM_PATH,)))
    peer.client.send_headers(1, request(STREAM_PATH))
    events = peer.exchange()
    assert [type(e) for e in events] == [RequestReceived]
    stream = events[0].stream  # type: ignore[attr-defined]
    assert stream.streaming
    peer.client.send_data(1, b"one")
    peer.client.send_data(1, b"two", end_stream=True)
    events = peer.exchange()
    assert [(type(e), getattr(e, "data", None)) for e in events] == [
        (DataReceived, b"one"), (DataReceived, b"two"), (StreamEnded, None)]
    assert stream.held == 6  # not consumed until the handler says so
    peer.core.release(stream, 6)
    assert stream.held == 0
    peer.core.respond_part(stream, [(b":status", b"200")], b"a1")
    peer.core.respond_end(stream, [(b"grpc-status", b"0")])
    seen = peer.back()
    assert [type(e) for e in seen][-1] is h2.events.StreamEnded


def test_ping_and_settings_are_acknowledged_and_reported() -> None:
    peer = Peer()
    peer.client.ping(b"12345678")
    peer.client.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1000})
    events = peer.exchange()
    assert [type(e) for e in events] == [PingReceived, SettingsChanged]
    assert events[1].changed == {4: 1000}  # type: ignore[attr-defined]
    assert {type(e) for e in peer.seen} >= {h2.events.PingAckReceived, h2.events.SettingsAcknowledged}


def test_a_rapid_reset_flood_ends_in_goaway_enhance_your_calm() -> None:
    peer = Peer(Limits(resets_per_second=1, resets_burst=5))
    events: list[Event] = []
    for sid in range(1, 30, 2):
        peer.client.send_headers(sid, request())
        peer.client.reset_stream(sid)
        events += peer.core.receive_data(peer.client.data_to_send(), peer.now)
        if peer.core.closed:
            break
    assert [type(e) for e in events].count(StreamReset) == 5
    assert isinstance(events[-1], ConnectionTerminated) and events[-1].code == ENHANCE_YOUR_CALM
    assert not events[-1].remote
    peer.back()
    ended = [e for e in peer.seen if isinstance(e, h2.events.ConnectionTerminated)]
    assert ended and ended[0].error_code == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
    assert b"too many reset streams" in (ended[0].additional_data or b"")


def test_the_budgets_refill_with_the_time_passed_in() -> None:
    peer = Peer(Limits(resets_per_second=10, resets_burst=2))
    for i, sid in enumerate(range(1, 41, 2)):
        peer.now += 0.2  # two resets a second, under the budget
        peer.client.send_headers(sid, request())
        peer.client.reset_stream(sid)
        assert [type(e) for e in peer.exchange()] == [StreamReset], i
    assert not peer.core.closed


def test_streams_over_the_limit_are_refused_and_reset_ones_still_running_count() -> None:
    peer = Peer(Limits(max_concurrent_streams=2))
    for sid in (1, 3):
        peer.client.send_headers(sid, request(), end_stream=True)
    assert [type(e) for e in peer.exchange()] == [RequestReceived, RequestReceived]
    peer.client.reset_stream(1)
    events = peer.exchange()
    assert [type(e) for e in events] == [StreamReset] and events[0].remote  # type: ignore[attr-defined]
    peer.core.handler_started()  # the adapter: stream 1's handler has not stopped yet
    peer.client.send_headers(5, request(), end_stream=True)
    assert peer.exchange() == []
    refused = [e for e in peer.seen if isinstance(e, h2.events.StreamReset)]
    assert [(e.stream_id, e.error_code) for e in refused] == [(5, h2.errors.ErrorCodes.REFUSED_STREAM)]
    peer.core.handler_finished()
    peer.client.send_headers(7, request(), end_stream=True)
    assert [type(e) for e in peer.exchange()] == [RequestReceived]


def test_a_header_list_over_the_limit_is_answered_resource_exhausted_and_never_handed_over() -> None:
    peer = Peer(Limits(max_header_list_size=1024))
    peer.client.send_headers(1, request(extra=[(b"x-big", b"v" * 2000)]), end_stream=True)
    assert peer.exchange() == []
    trailers = [e for e in peer.seen if isinstance(e, h2.events.ResponseReceived)]
    assert trailers and dict(trailers[0].headers)[b"grpc-status"] == b"8"
    assert not peer.core.closed and peer.core.streams == {}


def test_the_clocks_are_driven_by_tick() -> None:
    limits = Limits(preface_timeout=1.0, idle_timeout=5.0)
    silent = ServerCore(limits, now=0.0)
    silent.data_to_send()
    assert silent.tick(0.5) == []
    events = silent.tick(1.5)
    assert [type(e) for e in events] == [ConnectionTerminated] and events[0].abort  # type: ignore[attr-defined]
    peer = Peer(limits)
    assert peer.core.tick(peer.now + 4) == []
    events = peer.core.tick(peer.now + 6)
    assert [type(e) for e in events] == [ConnectionTerminated] and peer.core.closed
    peer.back()
    assert [e.error_code for e in peer.seen if isinstance(e, h2.events.ConnectionTerminated)] == [0]


def test_an_http1_request_is_refused_with_goaway() -> None:
    core = ServerCore(Limits(), now=0.0)
    core.data_to_send()
    events = core.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0.0)
    assert [type(e) for e in events] == [ConnectionTerminated] and core.closed
    assert b"speaks gRPC (HTTP/2) only" in core.data_to_send()


class Upstream:
    """A :class:`ClientCore` talking to an ``h2`` server."""

    def __init__(self) -> None:
        self.core = ClientCore(now=0.0)
        self.server = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding=None))
        self.server.initiate_connection()
        self.seen: list[h2.events.Event] = []
        self.pump()

    def pump(self) -> list[Event]:
        out = self.core.data_to_send()
        if out:
            self.seen += self.server.receive_data(out)
        back = self.server.data_to_send()
        events = self.core.receive_data(back, 0.0) if back else []
        out = self.core.data_to_send()
        if out:
            self.seen += self.server.receive_data(out)
        return events


def test_the_client_core_sends_a_request_and_reports_its_answer() -> None:
    up = Upstream()
    stream = up.core.request(request(), b"question")
    up.pump()
    received = [e for e in up.seen if isinstance(e, h2.events.DataReceived)]
    assert received[0].data == b"question" and received[0].stream_ended is not None
    up.server.send_headers(1, [(b":status", b"200")])
    up.server.send_data(1, b"answer")
    up.server.send_headers(1, [(b"grpc-status", b"0")], end_stream=True)
    events = up.pump()
    assert [type(e) for e in events] == [ResponseReceived, StreamEnded]
    assert stream.body() == b"answer" and stream.trailers == [(b"grpc-status", b"0")]
    assert up.core.streams == {}


def test_the_client_core_reports_resets_and_goaway() -> None:
    up = Upstream()
    first = up.core.request(request(), b"1")
    up.core.request(request(), b"2")
    up.pump()
    up.server.reset_stream(1, h2.errors.ErrorCodes.REFUSED_STREAM)
    events = up.pump()
    assert [type(e) for e in events] == [StreamReset]
    assert events[0].stream is first and events[0].code == 7  # type: ignore[attr-defined]
    up.server.close_connection(last_stream_id=1)
    events = up.pump()
    assert [type(e) for e in events] == [ConnectionTerminated]
    assert events[0].remote and events[0].last_sid == 1  # type: ignore[attr-defined]
    assert not up.core.usable and 3 in up.core.streams  # the adapter decides what fails
