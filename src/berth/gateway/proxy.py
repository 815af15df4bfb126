"""Forward one V2 request to an inference server over pooled keep-alive connections.

The request body is read once and sent as bytes; the answer's status, body and encoding come back
untouched (the session never decompresses or re-encodes).  A request whose connection could not be
opened is retried once on another replica holding the model; a request that reached a model is never
retried.  Every failure becomes a Berth error naming the address and what went wrong.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping

import aiohttp
from aiohttp import web

from berth.errors import BerthError, Timeout, Unavailable
from berth.gateway.balance import Balancer
from berth.gateway.table import Target, describe_connect_error

# uvicorn (MLServer's HTTP server) drops idle keep-alive connections after 5 s: give ours back first,
# so a request never goes out on a connection the server is closing.
KEEPALIVE_S = 4.0
# A replica that refused a connection is passed over this long (unless no other replica is left), so
# one dead replica in the table does not cost every request a failed connect before its retry.
EJECT_S = 2.0
_BAD_GATEWAY = 502
_ANSWER_HEADERS = ("Content-Type", "Content-Encoding", "x-request-id")


def error_response(err: BerthError, status: int | None = None) -> web.Response:
    """The JSON answer ``{code, message, details}`` for ``err``."""
    return web.Response(status=status or err.http_status, body=json.dumps(err.to_dict()).encode(),
                        content_type="application/json")


class Proxy:
    """Holds the shared client session and the balancer; forwards requests to chosen replicas."""

    def __init__(self, balancer: Balancer | None = None, *, upstream_timeout: float = 60.0,
                 connect_timeout: float = 5.0, connections_per_host: int = 512) -> None:
        self.balancer = balancer or Balancer()
        self.upstream_timeout = upstream_timeout
        self.connect_timeout = min(connect_timeout, upstream_timeout)
        self.connections_per_host = connections_per_host
        self._session: aiohttp.ClientSession | None = None
        self._down: dict[str, float] = {}  # address -> monotonic time until which it is passed over

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=0, limit_per_host=self.connections_per_host,
                                         keepalive_timeout=KEEPALIVE_S, ttl_dns_cache=300)
        timeout = aiohttp.ClientTimeout(total=self.upstream_timeout, sock_connect=self.connect_timeout)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=("Content-Type", "User-Agent"))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def forward(self, target: Target, kind: str, version: str | None, method: str, body: bytes,
                      headers: Mapping[str, str]) -> web.Response:
        """Send the request for ``target`` to one replica (two on a connect failure) and answer."""
        session = self._session
        if session is None:
            raise RuntimeError("Proxy.forward called before Proxy.start")
        balancer = self.balancer
        upstream = _upstream_headers(headers)
        data = body or None
        failed: list[str] = []
        problems: list[str] = []
        address = self._pick(target, failed)
        while address is not None:
            url = target.url(address, kind, version)
            balancer.acquire(address)
            try:
                async with session.request(method, url, data=data, headers=upstream) as resp:
                    payload = await resp.read()
                    answer = {"x-seldon-route": target.route}
                    for name in _ANSWER_HEADERS:
                        value = resp.headers.get(name)
                        if value is not None:
                            answer[name] = value
                    if self._down:
                        self._down.pop(address, None)
                    return web.Response(status=resp.status, body=payload, headers=answer)
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                failed.append(address)
                self._down[address] = time.monotonic() + EJECT_S
                problems.append(describe_connect_error(f"inference server {address}", exc))
            except TimeoutError:
                return error_response(self._timeout(target, address))
            except aiohttp.ClientError as exc:
                return error_response(_broken(target, address, exc), _BAD_GATEWAY)
            finally:
                balancer.release(address)
            if len(failed) >= 2:
                break
            address = self._pick(target, failed)
        total = len(target.addresses)
        tried = f"; tried {len(failed)} of {total} replicas" if total > 1 else ""
        err = Unavailable(
            f"model {target.name} in namespace {target.namespace}: " + "; ".join(problems) + tried
            + "; check that the inference server is running (berth get servers)",
            details={"model": target.name, "namespace": target.namespace, "tried": failed,
                     "errors": problems})
        return error_response(err, _BAD_GATEWAY)

    def _pick(self, target: Target, failed: list[str]) -> str | None:
        """The replica for the next attempt: not failed in this request, not recently refusing."""
        down = self._down
        if down:
            now = time.monotonic()
            for address in [a for a, until in down.items() if until <= now]:
                del down[address]
            if down:
                choice = self.balancer.choose(target.key, target.addresses, exclude=down.keys() | failed)
                if choice is not None:
                    return choice
        return self.balancer.choose(target.key, target.addresses, exclude=failed)

    def _timeout(self, target: Target, address: str) -> Timeout:
        return Timeout(
            f"inference server {address} did not answer model {target.name} in namespace "
            f"{target.namespace} within {self.upstream_timeout:g}s; raise the gateway's upstream timeout "
            "if the model is this slow, or check the server's load",
            details={"model": target.name, "namespace": target.namespace, "address": address,
                     "timeout_s": self.upstream_timeout})


def _upstream_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Only what the inference server needs: body type and encodings (passed through as sent)."""
    out = {"Accept-Encoding": headers.get("Accept-Encoding", "identity")}
    for name in ("Content-Type", "Content-Encoding", "x-request-id"):
        value = headers.get(name)
        if value is not None:
            out[name] = value
    return out


def _broken(target: Target, address: str, exc: aiohttp.ClientError) -> Unavailable:
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        detail = "closed the connection before answering"
    return Unavailable(
        f"inference server {address} failed while answering model {target.name} in namespace "
        f"{target.namespace}: {detail}; the request reached the server, so it was not retried",
        details={"model": target.name, "namespace": target.namespace, "address": address,
                 "error": type(exc).__name__})
