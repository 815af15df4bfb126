"""A lean HTTP/1.1 client for the gateway's upstream requests, over pooled keep-alive connections.

The gateway sends one kind of request (a V2 call with a body it already holds) to one kind of server
(MLServer's uvicorn), so a general client's machinery is mostly overhead.  Here a request is one
``transport.write`` of a head built from a per-target prefix plus the body, and the answer is parsed
from the bytes as they arrive: status line, the few headers the gateway passes on, and a body framed
by ``Content-Length``, chunked encoding, or the connection's end.  Connections are kept per address
and reused while younger than the server's keep-alive; a connection that misbehaves is closed.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from berth.gateway.forwarding.failures import (
    ConnectFailed as ConnectFailed,  # one tree for both transports, re-exported
)
from berth.gateway.forwarding.failures import Cut as Cut
from berth.gateway.forwarding.failures import Disconnected as Disconnected
from berth.gateway.forwarding.failures import Vanished as Vanished

KEEPALIVE_S = 4.0  # uvicorn (MLServer) drops idle connections after 5 s: reuse only younger ones
IDLE_PER_ADDRESS = 256
_HEAD_END = b"\r\n\r\n"
_KEPT = {b"content-type": "Content-Type", b"content-encoding": "Content-Encoding", b"x-request-id": "x-request-id"}


class Answer:
    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers  # only Content-Type, Content-Encoding, x-request-id (as the upstream sent them)
        self.body = body


class _Conn(asyncio.Protocol):
    __slots__ = ("transport", "waiter", "buf", "closed", "reusable", "idle_since", "answering", "_head", "_length",
                 "_chunked", "_status", "_headers")

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[Answer] | None = None
        self.buf = bytearray()
        self.closed = False
        self.reusable = True
        self.idle_since = 0.0
        self.answering = False  # a byte of the answer to the request in flight has arrived
        self._reset()

    def _reset(self) -> None:
        self._head = -1  # end of the head in buf, once known
        self._length = -1  # Content-Length, or -1 (chunked or until the end)
        self._chunked = False
        self._status = 0
        self._headers: dict[str, str] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.waiter is None:  # nothing asked: the server is talking out of turn
            self.close()
            return
        self.answering = True
        self.buf += data
        try:
            self._parse()
        except (ValueError, IndexError) as exc:
            self._fail(Disconnected(f"sent a malformed HTTP answer ({exc})"))

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            if self._head >= 0 and self._length < 0 and not self._chunked:  # body framed by the connection's end
                self.reusable = False
                self._finish(bytes(self.buf[self._head:]))
            else:
                detail = f" ({exc})" if exc else ""
                if self.answering:
                    waiter.set_exception(Cut(f"closed the connection in the middle of its answer{detail}"))
                else:
                    waiter.set_exception(Vanished(f"closed the connection before answering{detail}"))

    def close(self) -> None:
        self.closed = True
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    def _fail(self, exc: Exception) -> None:
        waiter = self.waiter
        self.close()
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def _parse(self) -> None:
        buf = self.buf
        while self._head < 0:
            end = buf.find(_HEAD_END)
            if end < 0:
                return
            self._read_head(bytes(buf[:end]))
            if 100 <= self._status < 200:  # an interim answer (100 Continue, 103 Early Hints): skip it
                del buf[:end + 4]
                self._reset()
                continue
            self._head = end + 4
            if self._status in (204, 304):
                self._length = 0
        if self._length >= 0:
            stop = self._head + self._length
            if len(buf) >= stop:
                if len(buf) > stop:
                    self.reusable = False
                self._finish(bytes(buf[self._head:stop]))
        elif self._chunked:
            self._parse_chunks()

    def _read_head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        self._status = int(lines[0].split(b" ", 2)[1])
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            key = name.strip().lower()
            if key == b"content-length":
                self._length = int(value)
            elif key == b"transfer-encoding":
                self._chunked = b"chunked" in value.lower()
            elif key == b"connection":
                if b"close" in value.lower():
                    self.reusable = False
            else:
                kept = _KEPT.get(key)
                if kept is not None:
                    self._headers[kept] = value.strip().decode("latin-1")
        if lines[0].startswith(b"HTTP/1.0"):
            self.reusable = False
        if self._chunked:  # Transfer-Encoding wins over Content-Length (RFC 9112 6.3)
            self._length = -1

    def _parse_chunks(self) -> None:
        buf = self.buf
        pos = self._head
        body = bytearray()
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return
            size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
            start = eol + 2
            if size == 0:
                trailer_end = buf.find(_HEAD_END, eol)
                if trailer_end < 0:
                    return
                if len(buf) > trailer_end + 4:
                    self.reusable = False
                self._finish(bytes(body))
                return
            if len(buf) < start + size + 2:
                return
            body += buf[start:start + size]
            pos = start + size + 2

    def _finish(self, body: bytes) -> None:
        waiter = self.waiter
        answer = Answer(self._status, self._headers, body)
        self.buf = bytearray()
        self._reset()
        if waiter is not None and not waiter.done():
            waiter.set_result(answer)


def _expire(waiter: asyncio.Future[Answer]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Pool:
    """Keep-alive connections per ``host:port``; :meth:`request` sends one request and reads its answer."""

    def __init__(self, *, connect_timeout: float = 5.0, idle_per_address: int = IDLE_PER_ADDRESS) -> None:
        self.connect_timeout = connect_timeout
        self.idle_per_address = idle_per_address
        self._idle: dict[str, deque[_Conn]] = {}
        self._open: set[_Conn] = set()

    def _take(self, address: str) -> _Conn | None:
        idle = self._idle.get(address)
        if not idle:
            return None
        now = time.monotonic()
        while idle:
            conn = idle.pop()  # the most recently used: warmest, least likely to be expiring
            if not conn.closed and now - conn.idle_since < KEEPALIVE_S:
                return conn
            conn.close()
            self._open.discard(conn)
        return None

    async def _connect(self, address: str) -> _Conn:
        host, _, port = address.rpartition(":")
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(loop.create_connection(_Conn, host.strip("[]"), int(port)),
                                             self.connect_timeout)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ConnectFailed(f"cannot connect to {address}: {exc}") from exc
        self._open.add(conn)
        return conn

    async def request(self, address: str, head: bytes, body: bytes, timeout: float) -> Answer:
        """Send ``head`` (request line and headers, ending in a blank line) and ``body``; the whole answer.

        ConnectFailed: nothing was sent.  Vanished: the connection died before any byte of an answer.
        Cut: it died in the middle of the answer.  Either way the replica is gone and nothing reached
        the client.  Disconnected (a malformed answer) or TimeoutError: the server is there but
        misbehaving or slow.  The timeout counts from the moment the request is sent.
        """
        conn = self._take(address) or await self._connect(address)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Answer] = loop.create_future()
        conn.waiter = waiter
        conn.answering = False
        transport = conn.transport
        assert transport is not None
        if len(body) <= 65536:
            transport.write(head + body)
        else:
            transport.write(head)
            transport.write(body)
        timer = loop.call_later(timeout, _expire, waiter)
        try:
            answer = await waiter
        except BaseException:
            conn.close()
            self._open.discard(conn)
            raise
        finally:
            timer.cancel()
            conn.waiter = None
        if conn.reusable and not conn.closed:
            idle = self._idle.get(address)
            if idle is None:
                idle = self._idle[address] = deque()
            if len(idle) < self.idle_per_address:
                conn.idle_since = time.monotonic()
                idle.append(conn)
                return answer
        conn.close()
        self._open.discard(conn)
        return answer

    def close(self) -> None:
        for conn in self._open:
            conn.close()
        self._open.clear()
        self._idle.clear()
