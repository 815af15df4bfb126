"""The gateway's upstream HTTP/1.1 client against a scripted loopback server: framing, reuse, failures."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from berth.adapters.mlserver_proc import free_port
from berth.gateway.forwarding.upstream import ConnectFailed, Cut, Disconnected, Pool, Vanished
from berth.gateway.routing.table import describe_connect_error

BODY = b'{"model_name":"iris","outputs":[]}'


class Scripted:
    """A loopback HTTP server: the request path picks how it answers; records requests and connections."""

    def __init__(self) -> None:
        self.requests: list[tuple[bytes, bytes]] = []
        self.connections = 0
        self.server: asyncio.Server | None = None
        self.address = ""

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                self.requests.append((head, body))
                path = head.split(b" ")[1].decode()
                if not await self._answer(path, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    async def _answer(self, path: str, writer: asyncio.StreamWriter) -> bool:
        ok = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-request-id: r1\r\nserver: uvicorn\r\n"
        if path == "/cl":
            writer.write(ok + b"content-length: %d\r\n\r\n" % len(BODY) + BODY)
        elif path == "/trickle":
            for byte in ok + b"content-length: %d\r\n\r\n" % len(BODY) + BODY:
                writer.write(bytes([byte]))
                await writer.drain()
        elif path == "/chunked":
            writer.write(ok + b"transfer-encoding: chunked\r\n\r\n")
            for piece in (BODY[:10], BODY[10:]):
                writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                await writer.drain()
            writer.write(b"0\r\n\r\n")
        elif path == "/interim":
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
            writer.write(ok + b"content-length: %d\r\n\r\n" % len(BODY) + BODY)
        elif path == "/both":  # Transfer-Encoding wins over a (wrong) Content-Length
            writer.write(ok + b"content-length: 3\r\ntransfer-encoding: chunked\r\n\r\n")
            writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(BODY), BODY))
        elif path == "/until-close":
            writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-encoding: gzip\r\n\r\n" + BODY)
            return False
        elif path == "/close":
            writer.write(ok + b"connection: close\r\ncontent-length: 2\r\n\r\n{}")
        elif path == "/drop":
            return False
        elif path == "/half":  # starts answering, then goes away
            writer.write(ok + b"content-length: 100\r\n\r\n{")
            await writer.drain()
            return False
        elif path == "/slow":
            await asyncio.sleep(5)
        await writer.drain()
        return True


def run(test: Callable[[Scripted, Pool], Awaitable[Any]]) -> None:
    async def main() -> None:
        server = Scripted()
        await server.start()
        pool = Pool(connect_timeout=2)
        try:
            await test(server, pool)
        finally:
            pool.close()
            await server.stop()
    asyncio.run(main())


def head(path: str, extra: bytes = b"") -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: x\r\n%s\r\n" % (path.encode(), extra)


def test_content_length_answers_reuse_one_connection() -> None:
    async def go(server: Scripted, pool: Pool) -> None:
        for _ in range(3):
            answer = await pool.request(server.address, head("/cl", b"content-length: 2\r\n"), b"{}", 5)
            assert (answer.status, answer.body) == (200, BODY)
            assert answer.headers == {"Content-Type": "application/json", "x-request-id": "r1"}
        assert server.connections == 1
        assert [body for _, body in server.requests] == [b"{}"] * 3
    run(go)


def test_answers_arriving_byte_by_byte_chunked_or_after_an_interim_answer_are_reassembled() -> None:
    async def go(server: Scripted, pool: Pool) -> None:
        assert (await pool.request(server.address, head("/trickle"), b"", 5)).body == BODY
        assert (await pool.request(server.address, head("/chunked"), b"", 5)).body == BODY
        assert (await pool.request(server.address, head("/both"), b"", 5)).body == BODY
        interim = await pool.request(server.address, head("/interim"), b"", 5)
        assert (interim.status, interim.body) == (200, BODY)
        assert (await pool.request(server.address, head("/cl"), b"", 5)).body == BODY
        assert server.connections == 1
    run(go)


def test_large_body_is_sent_whole() -> None:
    async def go(server: Scripted, pool: Pool) -> None:
        big = b"x" * 300_000
        answer = await pool.request(server.address, head("/cl", b"content-length: %d\r\n" % len(big)), big, 5)
        assert answer.status == 200
        assert server.requests[-1][1] == big
    run(go)


def test_close_delimited_and_connection_close_answers_are_not_reused() -> None:
    async def go(server: Scripted, pool: Pool) -> None:
        answer = await pool.request(server.address, head("/until-close"), b"", 5)
        assert (answer.status, answer.body, answer.headers) == (404, BODY, {"Content-Encoding": "gzip"})
        assert (await pool.request(server.address, head("/close"), b"", 5)).body == b"{}"
        assert (await pool.request(server.address, head("/cl"), b"", 5)).status == 200
        assert server.connections == 3
    run(go)


def test_server_closing_before_answering_has_vanished_and_after_starting_is_disconnected() -> None:
    async def go(server: Scripted, pool: Pool) -> None:
        with pytest.raises(Vanished, match="closed the connection before answering"):
            await pool.request(server.address, head("/drop"), b"", 5)
        assert (await pool.request(server.address, head("/cl"), b"", 5)).status == 200
        with pytest.raises(Disconnected) as info:
            await pool.request(server.address, head("/half"), b"", 5)
        assert isinstance(info.value, Cut) and not isinstance(info.value, Vanished)
    run(go)


def test_slow_answer_times_out_and_its_connection_is_dropped() -> None:
    async def go(server: Scripted, pool: Pool) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(TimeoutError):
            await pool.request(server.address, head("/slow"), b"", 0.2)
        assert loop.time() - started < 1.5
        assert (await pool.request(server.address, head("/cl"), b"", 5)).status == 200
        assert server.connections == 2
    run(go)


def test_refused_connection_is_connect_failed_and_says_so() -> None:
    async def go(server: Scripted, pool: Pool) -> None:
        dead = f"127.0.0.1:{free_port()}"
        with pytest.raises(ConnectFailed) as info:
            await pool.request(dead, head("/cl"), b"", 5)
        assert describe_connect_error(f"inference server {dead}", info.value) == \
            f"inference server {dead} refused connection"
    run(go)


def test_connection_closed_by_the_server_while_idle_is_not_reused() -> None:
    async def go(server: Scripted, pool: Pool) -> None:
        await pool.request(server.address, head("/cl"), b"", 5)
        await pool.request(server.address, head("/close"), b"", 5)  # answered, then closed by the server
        await pool.request(server.address, head("/cl"), b"", 5)
        idle = pool._idle[server.address]
        assert len(idle) == 1
        idle[0].idle_since -= 60  # older than the server's keep-alive: must not be used again
        await pool.request(server.address, head("/cl"), b"", 5)
        assert server.connections == 3
    run(go)
