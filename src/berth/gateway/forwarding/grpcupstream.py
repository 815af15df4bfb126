"""The gateway's upstream side for gRPC: one HTTP/2 connection per inference server's gRPC address."""

from __future__ import annotations

import asyncio

from berth.gateway.forwarding.upstream import ConnectFailed
from berth.gateway.http2.client import ClientConnection


class Upstreams:
    """One HTTP/2 connection per inference-server gRPC address, opened on first use and shared by all calls."""

    def __init__(self, connect_timeout: float, *, coalesce: bool = False) -> None:
        self.connect_timeout = connect_timeout
        self.coalesce = coalesce  # the requests made in one round of the loop go out in one write
        self._conns: dict[str, ClientConnection] = {}
        self._opening: dict[str, asyncio.Future[ClientConnection]] = {}

    def ready(self, address: str) -> ClientConnection | None:
        """The open connection to ``address`` when there is one that takes calls (no coroutine: the common case)."""
        conn = self._conns.get(address)
        return conn if conn is not None and conn.usable else None

    async def get(self, address: str) -> ClientConnection:
        conn = self._conns.get(address)
        if conn is not None and conn.usable:
            return conn
        opening = self._opening.get(address)
        if opening is None:
            opening = asyncio.ensure_future(self._open(address))
            self._opening[address] = opening
            opening.add_done_callback(lambda _: self._opening.pop(address, None))
        return await asyncio.shield(opening)

    async def _open(self, address: str) -> ClientConnection:
        host, _, port = address.rpartition(":")
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: ClientConnection(address), host.strip("[]"), int(port)),
                self.connect_timeout)
        except (OSError, TimeoutError, ValueError) as exc:
            raise ConnectFailed(f"cannot connect to {address}: {exc}") from exc
        conn.coalesce = self.coalesce
        old = self._conns.get(address)
        if old is not None:
            old.retire()
        self._conns[address] = conn
        return conn

    def prune(self, keep: frozenset[str]) -> None:
        """Close the connections of addresses no longer routed, each once its calls in flight are answered."""
        for address in [a for a in self._conns if a not in keep]:
            self._conns.pop(address).retire()

    async def close(self) -> None:
        for conn in self._conns.values():
            conn.close()
        self._conns.clear()
