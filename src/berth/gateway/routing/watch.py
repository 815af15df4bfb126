"""Follow the control plane's routing table: ``routes/watch`` NDJSON, one whole table per line.

Each line replaces the router's table; when the control plane is away the watcher retries with
backoff and the gateway keeps serving from the last table it had.  The gateway's token (a gateway token,
or an admin's of every namespace) goes with the request as ``Authorization: Bearer``; a control plane that
refuses it (401/403) is retried like one that is away, and the log says which token to give.
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
from pydantic import ValidationError

from berth.errors import BerthError, InvalidInput, Unavailable
from berth.gateway.routing.router import Router
from berth.gateway.routing.table import describe_connect_error
from berth.wire.routes import ROUTES_WATCH_PATH, RoutingTable

log = logging.getLogger("berth.gateway")


class TableWatcher:
    """Follows ``control_url`` + ROUTES_WATCH_PATH into a holder; reconnects with backoff forever."""

    def __init__(self, control_url: str, holder: Router | None = None, *,
                 backoff_initial: float = 0.2, backoff_max: float = 5.0,
                 connect_timeout: float = 5.0, token: str | None = None) -> None:
        self.control_url = control_url.rstrip("/")
        self.url = self.control_url + ROUTES_WATCH_PATH
        self.holder = holder if holder is not None else Router()
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.connect_timeout = connect_timeout
        self.connected = False
        self._headers = {"Accept": "application/x-ndjson"}
        if token:
            self._headers["Authorization"] = f"Bearer {token.strip()}"

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the stream until ``stop`` is set."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            follow = asyncio.create_task(self._follow_forever(session))
            stopping = asyncio.create_task(stop.wait())
            try:
                await asyncio.wait({follow, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (follow, stopping):
                    task.cancel()
                await asyncio.gather(follow, stopping, return_exceptions=True)
        if follow.done() and not follow.cancelled() and follow.exception() is not None:
            raise follow.exception()  # type: ignore[misc]

    async def _follow_forever(self, session: aiohttp.ClientSession) -> None:
        delay = self.backoff_initial
        reported = ""
        while True:
            try:
                received = await self._follow(session)
                problem = f"control plane at {self.control_url} closed the routes stream"
                if received:
                    delay = self.backoff_initial
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                problem = describe_connect_error(f"control plane at {self.control_url}", exc)
            except (aiohttp.ClientError, TimeoutError, BerthError) as exc:
                problem = f"routes stream from {self.url} failed: {exc or type(exc).__name__}"
            self.connected = False
            self.holder.problem = problem
            if problem != reported:
                kept = f"; serving table revision {self.holder.revision}" if self.holder.ready else ""
                log.warning("%s; retrying with backoff%s", problem, kept)
                reported = problem
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff_max)

    async def _follow(self, session: aiohttp.ClientSession) -> int:
        """Read one stream to its end; returns how many tables it carried."""
        received = 0
        async with session.get(self.url, headers=self._headers) as resp:
            if resp.status != 200:
                text = (await resp.text(errors="replace"))[:300]
                if resp.status in (401, 403):
                    given = "the token given was refused" if "Authorization" in self._headers else "no token given"
                    raise Unavailable(f"control plane refused the gateway's routes watch (HTTP {resp.status}, "
                                      f"{given}): {text}; give the gateway a gateway token (or an admin token of "
                                      "every namespace) with --token-file or BERTH_TOKEN")
                raise Unavailable(f"control plane answered HTTP {resp.status}: {text}")
            self.connected = True
            log.info("following routes from %s", self.url)
            buf = bytearray()
            async for chunk in resp.content.iter_any():
                buf.extend(chunk)
                while (end := buf.find(b"\n")) >= 0:
                    line = bytes(buf[:end])
                    del buf[: end + 1]
                    if line.strip():
                        self._apply(line)
                        received += 1
        return received

    def _apply(self, line: bytes) -> None:
        try:
            table = RoutingTable.model_validate_json(line)
        except ValidationError as exc:
            raise InvalidInput(f"a line of the routes stream is not a routing table: "
                               f"{exc.errors()[0]['msg']} ({line[:120]!r})") from exc
        self.holder.set(table)
        self.holder.problem = ""
