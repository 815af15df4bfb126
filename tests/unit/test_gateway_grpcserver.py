"""The gRPC endpoint's pure parts (timeouts, message framing, statuses) and its answers on a fake socket."""

from __future__ import annotations

import asyncio
import gzip
import random
import zlib
from typing import Any

import hpack
import pytest

from berth.errors import BerthError, InvalidInput, NotFound, PayloadTooLarge, Timeout, Unavailable
from berth.gateway.forwarding.balance import Balancer
from berth.gateway.forwarding.mirror import Mirrors
from berth.gateway.http2 import frames as h2frames
from berth.gateway.http2 import headerblock
from berth.gateway.metrics import Metrics
from berth.gateway.routing.router import Decision, Router
from berth.gateway.transports.grpcmessages import (
    DEADLINE_EXCEEDED,
    INTERNAL,
    INVALID_ARGUMENT,
    NOT_FOUND,
    RESOURCE_EXHAUSTED,
    UNAVAILABLE,
    framed,
    grpc_status,
    grpc_timeout,
    message,
    status_of,
)
from berth.gateway.transports.grpcserver import GrpcGateway
from berth.wire import protowire
from berth.wire.routes import Endpoint, ModelRoute, RoutingTable
from tests.unit.test_gateway_h2 import FakeTransport


def test_grpc_timeout_units() -> None:
    assert grpc_timeout(b"100m") == pytest.approx(0.1)
    assert grpc_timeout(b"29999982u") == pytest.approx(29.999982)
    assert grpc_timeout(b"2S") == 2.0
    assert grpc_timeout(b"1M") == 60.0
    assert grpc_timeout(b"1H") == 3600.0
    assert grpc_timeout(b"500n") == pytest.approx(5e-7)
    for bad in (b"", b"m", b"10", b"10x", b"-1S", b"1.5S"):
        assert grpc_timeout(bad) is None


def test_message_unframes_and_decompresses() -> None:
    data = protowire.string_field(1, "iris") + b"\x12\x03abc"
    assert message(framed(data), None) == data
    assert message(b"\x01" + len(gz := gzip.compress(data)).to_bytes(4, "big") + gz, b"gzip") == data
    assert message(b"\x01" + len(df := zlib.compress(data)).to_bytes(4, "big") + df, b"deflate") == data


@pytest.mark.parametrize(("body", "encoding", "words"), [
    (b"\x00\x00\x00", None, "fewer than 5 bytes"),
    (b"\x00\x00\x00\x00\x09abc", None, "says 9 bytes but 3 came"),
    (b"\x01\x00\x00\x00\x03abc", b"gzip", "does not decompress with gzip"),
    (b"\x01\x00\x00\x00\x03abc", b"snappy", "compressed with 'snappy'"),
    (b"\x01\x00\x00\x00\x03abc", None, "'no grpc-encoding'"),
])
def test_bad_messages_are_invalid_input(body: bytes, encoding: bytes | None, words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        message(body, encoding)


def test_statuses() -> None:
    assert grpc_status([(b"grpc-status", b"0")]) == 0
    assert grpc_status([(b"grpc-message", b"x"), (b"grpc-status", b"14")]) == 14
    assert grpc_status([]) == grpc_status(None) == grpc_status([(b"grpc-status", b"x")]) == 2
    assert status_of(NotFound("x")) == NOT_FOUND
    assert status_of(PayloadTooLarge("x")) == RESOURCE_EXHAUSTED
    assert status_of(InvalidInput("x")) == INVALID_ARGUMENT
    assert status_of(Unavailable("x")) == UNAVAILABLE
    assert status_of(Timeout("x")) == DEADLINE_EXCEEDED
    assert status_of(BerthError("x")) == INTERNAL


def frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    out = []
    pos = 0
    while pos + 9 <= len(data):
        length = int.from_bytes(data[pos:pos + 3], "big")
        out.append((data[pos + 3], data[pos + 4], int.from_bytes(data[pos + 5:pos + 9], "big"),
                    bytes(data[pos + 9:pos + 9 + length])))
        pos += 9 + length
    return out


class BrokenRouter(Router):
    def decide(self, namespace: str, name: str, route: str | None = None) -> Decision:
        raise RuntimeError("boom")


def call(gateway: GrpcGateway, method: str, request: bytes, *extra: tuple[bytes, bytes]) -> dict[str, str]:
    """One call over a fake connection (``method`` of the V2 service, or a whole path); the answer's headers
    and trailers, merged (decoded with hpack), and its message as hex under "data"."""
    path = method if method.startswith("/") else f"/inference.GRPCInferenceService/{method}"

    async def run() -> dict[str, str]:
        transport = FakeTransport()
        conn = gateway.connection()
        conn.connection_made(transport)  # type: ignore[arg-type]
        head = headerblock.encode([(b":method", b"POST"), (b":scheme", b"http"),
                                   (b":path", path.encode()),
                                   (b":authority", b"gw"), (b"content-type", b"application/grpc"),
                                   (b"te", b"trailers"), *extra])
        conn.data_received(h2frames.PREFACE + h2frames.settings_frame({})
                           + h2frames.frame(h2frames.HEADERS, h2frames.END_HEADERS, 1, head)
                           + h2frames.frame(h2frames.DATA, h2frames.END_STREAM, 1, framed(request)))
        for _ in range(50):
            await asyncio.sleep(0)
        decoder = hpack.Decoder()
        answer: dict[str, str] = {}
        for ftype, _, sid, payload in frames(transport.take()):
            if ftype == h2frames.HEADERS and sid == 1:
                answer.update({k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
                               for k, v in decoder.decode(payload)})
            elif ftype == h2frames.DATA and sid == 1:
                answer["data"] = payload.hex()
        return answer

    return asyncio.run(run())


def gateway(router: Router) -> GrpcGateway:
    metrics = Metrics()
    return GrpcGateway(router, Balancer(), metrics, Mirrors(metrics))


TABLE = RoutingTable(revision=1, models=[ModelRoute(namespace="default", name="iris", state="ModelAvailable",
                                                    endpoints=[Endpoint(server="s", replica=0, http="127.0.0.1:1",
                                                                        grpc="127.0.0.1:1")])])


def test_a_bug_inside_the_gateway_answers_internal_not_silence(caplog: Any) -> None:
    answer = call(gateway(BrokenRouter(TABLE)), "ModelInfer", protowire.string_field(1, "iris"))
    assert answer["grpc-status"] == str(INTERNAL)
    assert "RuntimeError" in answer["grpc-message"] and "bug in Berth" in answer["grpc-message"]
    assert "failed inside the gateway" in caplog.text


def test_local_and_unknown_methods() -> None:
    gw = gateway(Router(TABLE))
    live = call(gw, "ServerLive", b"")
    assert live["grpc-status"] == "0" and bytes.fromhex(live["data"]) == framed(b"\x08\x01")
    assert call(gw, "RepositoryIndex", b"")["grpc-status"] == "12"
    missing = call(gw, "ModelInfer", protowire.string_field(1, "nosuch"))
    assert missing["grpc-status"] == str(NOT_FOUND) and missing["berth-error-code"] == "NotFound"
    assert "nosuch" in missing["grpc-message"]
    garbled = call(gw, "ModelInfer", bytes(random.Random(1).randrange(256) for _ in range(3)) + b"\x0f")
    assert garbled["grpc-status"] == str(INVALID_ARGUMENT)


def test_health_check_follows_the_routing_table() -> None:
    def health(router: Router) -> bytes:
        return bytes.fromhex(call(gateway(router), "/grpc.health.v1.Health/Check", b"")["data"])

    assert health(Router(TABLE)) == framed(b"\x08\x01")  # SERVING
    assert health(Router()) == framed(b"\x08\x02")  # NOT_SERVING: no routing table yet


def test_gateway_messages_are_percent_encoded() -> None:
    answer = call(gateway(Router(TABLE)), "ModelInfer", protowire.string_field(1, "ün%"))
    assert "%C3%BCn%25" in answer["grpc-message"]  # grpc-message is percent-encoded UTF-8 (the gRPC spec)


def test_a_namespace_gateway_takes_calls_without_seldon_namespace_as_its_own() -> None:
    table = RoutingTable(revision=1, models=[ModelRoute(namespace="team-a", name="iris", state="ModelProgressing",
                                                        reason="loading on s-0")])
    request = protowire.string_field(1, "iris")
    own = gateway(Router(table))
    own.namespace = "team-a"  # berth gateway --namespace team-a (a SeldonRuntime's gateway)
    answer = call(own, "ModelInfer", request)
    assert answer["berth-error-code"] == "ModelNotReady" and "namespace team-a" in answer["grpc-message"]
    # the header still wins, and a gateway of no namespace keeps "default"
    assert call(own, "ModelInfer", request, (b"seldon-namespace", b"default"))["grpc-status"] == str(NOT_FOUND)
    assert call(gateway(Router(table)), "ModelInfer", request)["grpc-status"] == str(NOT_FOUND)
