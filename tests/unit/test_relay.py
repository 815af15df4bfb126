"""The agent's byte-level TCP relay (berth.agent.relay): every byte both ways, half-closes passed on, a bound
on connections, an unreachable MLServer closing the client, and backpressure instead of buffering."""

from __future__ import annotations

import asyncio
import importlib.util
import os

import pytest

from berth.adapters.mlserver_proc import free_port
from berth.agent.config import AgentConfig
from berth.agent.relay import HIGH_WATER, Relay, start_relays
from berth.errors import ConfigError


async def _echo_server() -> tuple[asyncio.Server, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write(b"<eof>")  # the client's half-close arrived: say so, then end our side
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, int(server.sockets[0].getsockname()[1])


async def _relayed(**kw: object) -> tuple[asyncio.Server, Relay, int]:
    server, port = await _echo_server()
    relay = Relay("127.0.0.1", 0, "127.0.0.1", port, **kw)  # type: ignore[arg-type]
    return server, relay, await relay.start()


LOOPS = ["asyncio"] + (["uvloop"] if importlib.util.find_spec("uvloop") else [])  # the agent runs on uvloop


@pytest.mark.parametrize("loop", LOOPS)
def test_bytes_both_ways_and_the_half_close(loop: str) -> None:
    async def main() -> None:
        server, relay, port = await _relayed()
        try:
            payload = os.urandom(3 << 20)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)

            async def send() -> None:
                writer.write(payload)
                await writer.drain()
                writer.write_eof()

            sender = asyncio.create_task(send())
            got = await asyncio.wait_for(reader.read(-1), 30)  # until the relayed EOF
            await sender
            assert got == payload + b"<eof>"
            writer.close()
            for _ in range(50):
                if relay.open_connections == 0:
                    break
                await asyncio.sleep(0.02)
            assert relay.open_connections == 0 and relay.stats.accepted == 1
        finally:
            await relay.close()
            server.close()
    if loop == "uvloop":
        import uvloop
        uvloop.run(main())
    else:
        asyncio.run(main())


def test_connections_over_the_bound_are_closed_at_once() -> None:
    async def main() -> None:
        server, relay, port = await _relayed(max_connections=2)
        try:
            held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
            for _, w in held:
                w.write(b"x")
            for r, _ in held:
                assert await asyncio.wait_for(r.read(1), 5) == b"x"
            reader, _ = await asyncio.open_connection("127.0.0.1", port)
            assert await asyncio.wait_for(reader.read(1), 5) == b""  # closed: over the bound
            assert relay.stats.refused == 1
            for _, w in held:
                w.close()
        finally:
            await relay.close()
            server.close()
    asyncio.run(main())


def test_an_unreachable_mlserver_closes_the_client() -> None:
    async def main() -> None:
        relay = Relay("127.0.0.1", 0, "127.0.0.1", free_port(), connect_timeout=2)
        port = await relay.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\n\r\n")
            assert await asyncio.wait_for(reader.read(-1), 5) == b""
            assert relay.stats.failed == 1
        finally:
            await relay.close()
    asyncio.run(main())


def test_a_client_that_does_not_read_stalls_its_upstream_instead_of_filling_memory() -> None:
    async def main() -> None:
        sent = 0
        stalled = asyncio.Event()

        async def firehose(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal sent
            chunk = b"y" * 65536
            try:
                while sent < 256 << 20:
                    writer.write(chunk)
                    try:
                        await asyncio.wait_for(writer.drain(), 1.0)
                    except TimeoutError:
                        stalled.set()  # the relay stopped reading from us: backpressure reached the source
                        await asyncio.sleep(3600)
                    sent += len(chunk)
            except (ConnectionError, asyncio.CancelledError):
                pass

        server = await asyncio.start_server(firehose, "127.0.0.1", 0)
        relay = Relay("127.0.0.1", 0, "127.0.0.1", int(server.sockets[0].getsockname()[1]))
        port = await relay.start()
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port, limit=HIGH_WATER)
            await asyncio.wait_for(stalled.wait(), 20)
            assert sent < 64 << 20, sent  # socket buffers and the relay's bounded buffers, not the whole stream
            writer.close()
        finally:
            await relay.close()
            server.close()
    asyncio.run(main())


def test_start_relays_and_the_advertised_address() -> None:
    cfg = AgentConfig.from_env({"POD_IP": "10.42.0.7", "SELDON_REVERSE_PROXY_HTTP_PORT": "9999",
                                "BERTH_RELAY_GRPC_PORT": "9998"})
    assert (cfg.inference.http, cfg.inference.grpc) == ("10.42.0.7:9999", "10.42.0.7:9998")
    assert cfg.inference_host == "127.0.0.1"  # the agent itself still talks to MLServer on loopback
    plain = AgentConfig.from_env({})
    assert plain.inference.http == "127.0.0.1:8080"
    with pytest.raises(ConfigError, match="MLServer's own port"):
        AgentConfig.from_env({"BERTH_RELAY_HTTP_PORT": "8080"})

    async def main() -> None:
        taken = free_port()
        relays = await start_relays("127.0.0.1", "127.0.0.1", [(None, 8080, "REST"), (taken, 8081, "gRPC")])
        try:
            assert [r.name for r in relays] == ["gRPC"]
            with pytest.raises(OSError):
                await start_relays("127.0.0.1", "127.0.0.1", [(free_port(), 1, "a"), (taken, 2, "b")])
        finally:
            for relay in relays:
                await relay.close()
    asyncio.run(main())
