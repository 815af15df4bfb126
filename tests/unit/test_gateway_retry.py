"""The gateway's retry rules (docs/gateway.md, "Resilience and timeouts") against stand-in replicas.

REST goes through :meth:`Proxy.forward`, gRPC through :class:`GrpcGateway` on a fake client connection.
Replicas are tiny loopback servers (HTTP/1.1, or the gateway's own HTTP/2 server side) that answer, never
answer, refuse the stream, send GOAWAY, or drop the connection once the request arrived; a closed port
refuses connections.  Each attempt is counted where the gateway makes it (its pool, its upstreams).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from berth.adapters.mlserver_proc import free_ports
from berth.gateway.forwarding import core as forward
from berth.gateway.forwarding.balance import Balancer
from berth.gateway.forwarding.grpcupstream import Upstreams
from berth.gateway.forwarding.mirror import Mirrors
from berth.gateway.forwarding.rest import EJECT_S, Proxy
from berth.gateway.forwarding.upstream import Answer, Pool
from berth.gateway.http2 import headerblock
from berth.gateway.http2.client import ClientConnection
from berth.gateway.http2.frames import INTERNAL_ERROR, REFUSED_STREAM, Stream
from berth.gateway.http2.server import ServerConnection
from berth.gateway.metrics import Metrics
from berth.gateway.routing.router import Decision, Router
from berth.gateway.routing.table import compile_route
from berth.gateway.transports.grpcmessages import DEADLINE_EXCEEDED, OK, UNAVAILABLE, framed, grpc_message, grpc_status
from berth.gateway.transports.grpcserver import GrpcGateway
from berth.wire import protowire
from berth.wire.routes import Endpoint, ModelRoute, RoutingTable
from tests.unit.test_gateway_h2 import (
    DATA,
    END_HEADERS,
    END_STREAM,
    HEADERS,
    NO_ERROR,
    PREFACE,
    FakeTransport,
    decode,
    frame,
    goaway,
    hpack_decoder,
    parse,
    settings,
)

NOT_RESENT = 'it was not sent again because the model is annotated berth.io/idempotent: "false"'
_GRPC_HEAD = [(b":status", b"200"), (b"content-type", b"application/grpc")]


class Replica:
    """A stand-in inference server; ``requests`` counts the requests that reached it whole."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.requests = 0
        self.address = ""
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await self._listen()
        self.address = f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _listen(self) -> asyncio.Server:
        raise NotImplementedError

    def stop(self) -> None:
        if self.server is not None:
            self.server.close()


class Closed(Replica):
    """A port nothing listens on: every connection is refused."""

    def __init__(self, port: int) -> None:
        super().__init__("refuse")
        self.address = f"127.0.0.1:{port}"

    async def start(self) -> None:
        pass


class Rest(Replica):
    """HTTP/1.1, one request per connection. "ok" answers 200; "hang" never answers; "drop" closes the
    connection without answering; "half" starts an answer and closes."""

    async def _listen(self) -> asyncio.Server:
        return await asyncio.start_server(self._serve, "127.0.0.1", 0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lengths = [int(line.split(b":")[1]) for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")]
            await reader.readexactly(lengths[0] if lengths else 0)
            self.requests += 1
            if self.behaviour == "ok":
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n"
                             b"connection: close\r\n\r\n{}")
            elif self.behaviour == "half":
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{")
            elif self.behaviour == "hang":
                await reader.read()  # until the gateway gives up and closes
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


class Grpc(Replica):
    """HTTP/2 (the gateway's own server side), acting once a request arrived whole: "ok" answers OK; "hang"
    never answers; "refuse" resets the stream with REFUSED_STREAM; "goaway" sends GOAWAY naming no stream;
    "reset" resets it with INTERNAL_ERROR; "drop" closes the connection; "half" sends headers, then closes."""

    async def _listen(self) -> asyncio.Server:
        return await asyncio.get_running_loop().create_server(lambda: ServerConnection(self._handle), "127.0.0.1", 0)

    def _handle(self, conn: ServerConnection, stream: Stream) -> None:
        self.requests += 1
        behaviour = self.behaviour
        if behaviour == "ok":
            conn.respond(stream, _GRPC_HEAD, framed(b""), [(b"grpc-status", b"0")])
        elif behaviour in ("refuse", "reset"):
            conn.streams.pop(stream.sid)
            conn.core.reset(stream.sid, REFUSED_STREAM if behaviour == "refuse" else INTERNAL_ERROR)
            conn.flush()
        elif behaviour == "goaway":
            conn.core.write(goaway(max(stream.sid - 2, 0), NO_ERROR))
            conn.flush()
        elif behaviour == "half":
            conn.respond_part(stream, _GRPC_HEAD, b"")
            conn.close()
        elif behaviour == "drop":
            conn.close()


class Clock:
    """Stands in for the ``time`` module of the code under test: monotonic time moves only when told to."""

    perf_counter = staticmethod(time.perf_counter)

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def run(go: Callable[..., Awaitable[None]], *replicas: Replica) -> None:
    """Start the stand-ins, run ``go(*replicas)`` (10 s at most), stop them."""
    async def main() -> None:
        for replica in replicas:
            await replica.start()
        try:
            await asyncio.wait_for(go(*replicas), 10)
        finally:
            for replica in replicas:
                replica.stop()

    asyncio.run(main())


def closed(n: int) -> list[Replica]:
    return [Closed(port) for port in free_ports(n)]


def model(*replicas: Replica, idempotent: bool = True) -> ModelRoute:
    """Model iris on ``replicas`` (each one's address serves as both its REST and its gRPC address)."""
    return ModelRoute(namespace="default", name="iris", state="ModelAvailable", idempotent=idempotent,
                      endpoints=[Endpoint(server="s", replica=i, http=r.address, grpc=r.address)
                                 for i, r in enumerate(replicas)])


# ---- REST ----

class CountingPool(Pool):
    def __init__(self, connect_timeout: float) -> None:
        super().__init__(connect_timeout=connect_timeout)
        self.attempts: list[str] = []

    async def request(self, address: str, head: bytes, body: bytes, timeout: float) -> Answer:
        self.attempts.append(address)
        return await super().request(address, head, body, timeout)


class RestSide:
    """A Proxy whose pool counts attempts, forwarding infer requests for one model."""

    def __init__(self, route: ModelRoute, *, timeout: float = 5.0) -> None:
        self.proxy = Proxy(upstream_timeout=timeout, connect_timeout=1.0)
        self.pool = self.proxy.pool = CountingPool(self.proxy.connect_timeout)
        self.decision = Decision(target=compile_route(route), route=":iris:", labels=("default", "iris", "", ""))

    async def infer(self) -> tuple[int, dict[str, Any]]:
        """The answer's status and JSON body."""
        resp = await self.proxy.forward(self.decision, "infer", None, "POST", b'{"inputs": []}',
                                        {"Content-Type": "application/json"})
        assert isinstance(resp.body, bytes)
        return resp.status, json.loads(resp.body)


def test_rest_refusing_replica_is_passed_over_while_ejected_and_chosen_again_once_that_expires(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(forward, "time", clock)  # the forwarding core keeps the ejections

    async def go(dead: Replica, live: Replica) -> None:
        side = RestSide(model(dead, live))
        assert (await side.infer())[0] == 200
        assert side.pool.attempts == [dead.address, live.address]
        clock.now += EJECT_S - 0.1
        for _ in range(4):
            assert (await side.infer())[0] == 200
        assert side.pool.attempts[2:] == [live.address] * 4
        clock.now += 0.2
        for _ in range(2):
            assert (await side.infer())[0] == 200
        assert dead.address in side.pool.attempts[6:]
        side.proxy.pool.close()

    run(go, *closed(1), Rest("ok"))


def test_rest_three_refusing_replicas_cost_two_attempts_and_a_502_naming_the_refusals() -> None:
    async def go(*dead: Replica) -> None:
        side = RestSide(model(*dead))
        status, body = await side.infer()
        assert len(side.pool.attempts) == len(set(side.pool.attempts)) == 2
        assert status == 502 and body["code"] == "Unavailable"
        for address in side.pool.attempts:
            assert f"inference server {address} refused connection" in body["message"]
        assert "tried 2 of 3 replicas" in body["message"]
        assert body["details"]["tried"] == side.pool.attempts

    run(go, *closed(3))


def test_rest_timeout_is_not_retried_on_the_other_replica() -> None:
    async def go(slow: Replica, other: Replica) -> None:
        side = RestSide(model(slow, other), timeout=0.3)
        status, body = await side.infer()
        assert status == 504 and body["code"] == "Timeout"
        assert f"inference server {slow.address} did not answer model iris" in body["message"]
        assert "within 0.3s" in body["message"]
        assert side.pool.attempts == [slow.address]
        assert (slow.requests, other.requests) == (1, 0)
        side.proxy.pool.close()

    run(go, Rest("hang"), Rest("ok"))


def test_rest_non_idempotent_model_is_still_retried_after_a_connect_failure() -> None:
    async def go(dead: Replica, live: Replica) -> None:
        side = RestSide(model(dead, live, idempotent=False))
        assert (await side.infer())[0] == 200
        assert side.pool.attempts == [dead.address, live.address] and live.requests == 1
        side.proxy.pool.close()

    run(go, *closed(1), Rest("ok"))


@pytest.mark.parametrize("behaviour", ["drop", "half"])  # Vanished, Cut
@pytest.mark.parametrize("idempotent", [True, False])
def test_rest_replica_gone_after_the_request_was_sent_is_retried_only_for_an_idempotent_model(
        behaviour: str, idempotent: bool) -> None:
    async def go(gone: Replica, other: Replica) -> None:
        side = RestSide(model(gone, other, idempotent=idempotent))
        status, body = await side.infer()
        assert gone.requests == 1
        if idempotent:
            assert status == 200 and other.requests == 1
        else:
            assert status == 502 and body["code"] == "Unavailable"
            assert f"inference server {gone.address} went away with the request" in body["message"]
            assert NOT_RESENT in body["message"] and body["details"]["resent"] is False
            assert other.requests == 0 and side.pool.attempts == [gone.address]
        side.proxy.pool.close()

    run(go, Rest(behaviour), Rest("ok"))


# ---- gRPC ----

class CountingUpstreams(Upstreams):
    def __init__(self, connect_timeout: float) -> None:
        super().__init__(connect_timeout)
        self.attempts: list[str] = []

    def ready(self, address: str) -> ClientConnection | None:  # an attempt on an open connection
        conn = super().ready(address)
        if conn is not None:
            self.attempts.append(address)
        return conn

    async def get(self, address: str) -> ClientConnection:  # an attempt that (re)connects first
        self.attempts.append(address)
        return await super().get(address)


def grpc_side(route: ModelRoute, *, timeout: float = 5.0) -> GrpcGateway:
    """A gRPC gateway routing ``route`` whose upstreams count attempts."""
    metrics = Metrics()
    gateway = GrpcGateway(Router(RoutingTable(revision=1, models=[route])), Balancer(), metrics, Mirrors(metrics),
                          upstream_timeout=timeout, connect_timeout=1.0)
    gateway.upstreams = CountingUpstreams(gateway.upstreams.connect_timeout)
    return gateway


def attempts(gateway: GrpcGateway) -> list[str]:
    upstreams = gateway.upstreams
    assert isinstance(upstreams, CountingUpstreams)
    return upstreams.attempts


async def model_infer(gateway: GrpcGateway) -> tuple[int, str]:
    """One ModelInfer for iris from a client on a fake connection: the answer's grpc-status and message."""
    transport = FakeTransport()
    conn = gateway.connection()
    conn.connection_made(transport)  # type: ignore[arg-type]
    head = headerblock.encode([(b":method", b"POST"), (b":scheme", b"http"),
                               (b":path", b"/inference.GRPCInferenceService/ModelInfer"), (b":authority", b"gw"),
                               (b"content-type", b"application/grpc"), (b"te", b"trailers")])
    conn.data_received(PREFACE + settings({}) + frame(HEADERS, END_HEADERS, 1, head)
                       + frame(DATA, END_STREAM, 1, framed(protowire.string_field(1, "iris"))))
    task = conn.streams[1].task
    assert task is not None
    await task
    decoder = hpack_decoder()
    fields = [f for fr in parse(transport.take()) if fr.type == HEADERS and fr.sid == 1
              for f in decode(decoder, [fr])]
    return grpc_status(fields), grpc_message(fields)


def test_grpc_refusing_replica_is_passed_over_while_ejected_and_chosen_again_once_that_expires(
        monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(forward, "time", clock)

    async def go(dead: Replica, live: Replica) -> None:
        gateway = grpc_side(model(dead, live))
        assert (await model_infer(gateway))[0] == OK
        assert attempts(gateway) == [dead.address, live.address]
        clock.now += EJECT_S - 0.1
        for _ in range(4):
            assert (await model_infer(gateway))[0] == OK
        assert attempts(gateway)[2:] == [live.address] * 4
        clock.now += 0.2
        for _ in range(2):
            assert (await model_infer(gateway))[0] == OK
        assert dead.address in attempts(gateway)[6:]
        await gateway.upstreams.close()

    run(go, *closed(1), Grpc("ok"))


def test_grpc_three_refusing_replicas_cost_two_attempts_and_unavailable_naming_the_refusals() -> None:
    async def go(*dead: Replica) -> None:
        gateway = grpc_side(model(*dead))
        status, text = await model_infer(gateway)
        tried = attempts(gateway)
        assert len(tried) == len(set(tried)) == 2
        assert status == UNAVAILABLE
        for address in tried:
            assert f"inference server {address} (gRPC) refused connection" in text
        assert "tried 2 of 3 replicas" in text

    run(go, *closed(3))


def test_grpc_timeout_is_not_retried_on_the_other_replica() -> None:
    async def go(slow: Replica, other: Replica) -> None:
        gateway = grpc_side(model(slow, other), timeout=0.3)
        status, text = await model_infer(gateway)
        assert status == DEADLINE_EXCEEDED
        assert f"inference server {slow.address} did not answer model iris" in text and "within 0.3s" in text
        assert attempts(gateway) == [slow.address]
        assert (slow.requests, other.requests) == (1, 0)
        await gateway.upstreams.close()

    run(go, Grpc("hang"), Grpc("ok"))


@pytest.mark.parametrize("behaviour", ["connect", "refuse", "goaway"])
def test_grpc_refused_connection_or_stream_is_retried_on_another_replica_even_for_a_non_idempotent_model(
        behaviour: str) -> None:
    async def go(refusing: Replica, other: Replica) -> None:
        gateway = grpc_side(model(refusing, other, idempotent=False))
        assert await model_infer(gateway) == (OK, "")
        assert attempts(gateway) == [refusing.address, other.address]
        assert (refusing.requests, other.requests) == (int(behaviour != "connect"), 1)
        await gateway.upstreams.close()

    run(go, closed(1)[0] if behaviour == "connect" else Grpc(behaviour), Grpc("ok"))


@pytest.mark.parametrize("behaviour", ["drop", "half"])  # Vanished, Cut
@pytest.mark.parametrize("idempotent", [True, False])
def test_grpc_stream_that_died_after_the_request_was_sent_is_retried_only_for_an_idempotent_model(
        behaviour: str, idempotent: bool) -> None:
    async def go(gone: Replica, other: Replica) -> None:
        gateway = grpc_side(model(gone, other, idempotent=idempotent))
        status, text = await model_infer(gateway)
        assert gone.requests == 1
        if idempotent:
            assert status == OK and other.requests == 1
        else:
            assert status == UNAVAILABLE
            assert f"inference server {gone.address} (gRPC) went away with the request" in text
            assert NOT_RESENT in text
            assert other.requests == 0 and attempts(gateway) == [gone.address]
        await gateway.upstreams.close()

    run(go, Grpc(behaviour), Grpc("ok"))


def test_grpc_stream_reset_by_the_server_is_never_retried() -> None:
    async def go(resetting: Replica, other: Replica) -> None:
        gateway = grpc_side(model(resetting, other))
        status, text = await model_infer(gateway)
        assert status == UNAVAILABLE
        assert f"inference server {resetting.address} failed while answering model iris" in text
        assert "the request was not retried" in text
        assert (resetting.requests, other.requests) == (1, 0)
        await gateway.upstreams.close()

    run(go, Grpc("reset"), Grpc("ok"))
