"""Follow the control plane's routing table: ``routes/watch`` NDJSON, one whole table per line.

Each line replaces the router's table; when the control plane is away the watcher retries with
backoff and the gateway keeps serving from the last table it had.  The gateway's token (a gateway token,
or an admin's of every namespace) goes with the request as ``Authorization: Bearer``; a control plane that
refuses it (401/403) is retried like one that is away, and the log says which token to give.  With ``ca`` (the
control plane's CA, :mod:`berth.wire.tls`) the URL must be ``https://`` (a token is never sent in clear) and
only that CA is trusted.  With ``token_file`` the token is read from that file at every connection, so a
token the kubelet rotates (a pod's projected token, docs/kubernetes.md) is picked up on the next reconnect.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import aiohttp
from pydantic import ValidationError

from berth.errors import BerthError, InvalidInput, Unavailable
from berth.gateway.routing.router import Router
from berth.gateway.routing.table import describe_connect_error
from berth.wire.routes import ROUTES_WATCH_PATH, RoutingTable
from berth.wire.tls import client_context
from berth.wire.tls import control_url as tls_url

log = logging.getLogger("berth.gateway")


class TableWatcher:
    """Follows ``control_url`` + ROUTES_WATCH_PATH into a holder; reconnects with backoff forever."""

    def __init__(self, control_url: str, holder: Router | None = None, *,
                 backoff_initial: float = 0.2, backoff_max: float = 5.0,
                 connect_timeout: float = 5.0, token: str | None = None, ca: Path | None = None,
                 token_file: Path | None = None) -> None:
        self.control_url = tls_url(control_url, ca).rstrip("/")  # http:// with a CA: ConfigError
        self._tls = client_context(ca) if ca is not None else None
        self.url = self.control_url + ROUTES_WATCH_PATH
        self.holder = holder if holder is not None else Router()
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.connect_timeout = connect_timeout
        self.connected = False
        self._headers = {"Accept": "application/x-ndjson"}
        self._token_file = token_file
        if token:
            self._headers["Authorization"] = f"Bearer {token.strip()}"

    def headers(self) -> dict[str, str]:
        """The request's headers: the token file's content now (a rotated token), else the token given."""
        return bearer_headers(self._headers, self._token_file)

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the stream until ``stop`` is set."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout)
        connector = aiohttp.TCPConnector(ssl=self._tls if self._tls is not None else True)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
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
        headers = self.headers()
        async with session.get(self.url, headers=headers) as resp:
            if resp.status != 200:
                text = (await resp.text(errors="replace"))[:300]
                if resp.status in (401, 403):
                    given = "the token given was refused" if "Authorization" in headers else "no token given"
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
        if line.lstrip().startswith(b'{"type"'):  # the stream's last word: {"type": "ERROR", "object": {...}}
            try:
                event = json.loads(line)
            except ValueError:
                event = None
            if isinstance(event, dict) and event.get("type") == "ERROR":
                error = event.get("object") or {}
                # the table held stays: an ended watch (token revoked or expired) is not an empty table
                raise Unavailable(f"control plane ended the routes stream: {error.get('code', 'error')}: "
                                  f"{error.get('message', '')}")
        try:
            table = RoutingTable.model_validate_json(line)
        except ValidationError as exc:
            raise InvalidInput(f"a line of the routes stream is not a routing table: "
                               f"{exc.errors()[0]['msg']} ({line[:120]!r})") from exc
        self.holder.set(table)
        self.holder.problem = ""


def bearer_headers(headers: dict[str, str], token_file: Path | None) -> dict[str, str]:
    """``headers`` with ``Authorization: Bearer`` the token in ``token_file`` as it reads now (a token the kubelet
    rotated), or as given when there is no file (or it is empty); the routes watch, usage reports and wake calls
    all send their token through here."""
    if token_file is None:
        return headers
    try:
        token = token_file.read_text().strip()
    except OSError as exc:
        raise Unavailable(f"the gateway's token file {token_file} cannot be read: {exc.strerror or exc}; "
                          "mount the token (a projected ServiceAccount token) where --token-file says") from exc
    return {**headers, "Authorization": f"Bearer {token}"} if token else headers
