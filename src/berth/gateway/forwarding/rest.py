"""Forward one V2 REST request to an inference server over pooled keep-alive connections.

The request body is read once and sent as bytes; the answer's status, body and encoding come back
untouched (never decompressed or re-encoded).  A request whose connection could not be opened, or whose
replica vanished (the connection died before a single byte of an answer: killed, restarting), is
retried once on another replica holding the model.  A request that got an answer, part of one, or no
answer in time is never retried.  Every failure becomes a Berth error naming the address and what went
wrong.  Those decisions are the forwarding core's (:mod:`forward`), shared with gRPC; this module only
builds the HTTP/1.1 request of each attempt.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Mapping

from aiohttp import web

from berth.errors import BerthError, Timeout, Unavailable
from berth.gateway.forwarding.balance import Balancer
from berth.gateway.forwarding.core import EJECT_S as EJECT_S  # re-exported: where REST's users found them
from berth.gateway.forwarding.core import Forwarder
from berth.gateway.forwarding.core import not_resent as not_resent
from berth.gateway.forwarding.upstream import Answer, Pool
from berth.gateway.routing.router import Decision
from berth.gateway.routing.table import Target

_BAD_GATEWAY = 502
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="berth"'}
_FORWARDED = (("Content-Type", b"Content-Type: "), ("Content-Encoding", b"Content-Encoding: "),
              ("x-request-id", b"x-request-id: "))


def error_response(err: BerthError, status: int | None = None) -> web.Response:
    """The JSON answer ``{code, message, details}`` for ``err`` (with ``WWW-Authenticate`` on a 401)."""
    code = status or err.http_status
    return web.Response(status=code, body=json.dumps(err.to_dict()).encode(), content_type="application/json",
                        headers=_CHALLENGE if code == 401 else None)


def _head(line: bytes, headers: Mapping[str, str], length: int) -> bytes:
    """Request line, Host, the headers the inference server needs (as sent), Content-Length, blank line."""
    parts = [line, b"Accept-Encoding: ", headers.get("Accept-Encoding", "identity").encode("utf-8", "surrogateescape"),
             b"\r\n"]
    for name, prefix in _FORWARDED:
        value = headers.get(name)
        if value is not None:
            parts += (prefix, value.encode("utf-8", "surrogateescape"), b"\r\n")
    if length:
        parts += (b"Content-Length: ", str(length).encode(), b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


class Proxy:
    """The REST transport over the forwarding core (:mod:`forward`): builds each attempt's request and answers
    with the inference server's answer, or the core's error as JSON (502 unreachable or broken, 504 timeout)."""

    def __init__(self, balancer: Balancer | None = None, *, upstream_timeout: float = 60.0,
                 connect_timeout: float = 5.0) -> None:
        self.balancer = balancer or Balancer()
        self.upstream_timeout = upstream_timeout
        self.connect_timeout = min(connect_timeout, upstream_timeout)
        self.pool = Pool(connect_timeout=self.connect_timeout)
        self.core = Forwarder(self.balancer)

    async def start(self) -> None:
        """Nothing to open up front: connections are made on first use and kept."""

    async def close(self) -> None:
        self.pool.close()

    async def forward(self, decision: Decision, kind: str, version: str | None, method: str, body: bytes,
                      headers: Mapping[str, str]) -> web.Response:
        """Send the request to one replica of the decided model (two on a connect failure) and answer."""
        target = decision.target
        pool, timeout = self.pool, self.upstream_timeout

        def attempt(address: str) -> Awaitable[Answer]:
            return pool.request(address, _head(target.line(address, kind, version), headers, len(body)), body,
                                timeout)

        try:
            answer = await self.core.call(target, attempt, _same, timeout)
        except Timeout as err:
            return error_response(err)
        except Unavailable as err:
            return error_response(err, _BAD_GATEWAY)
        answer.headers["x-seldon-route"] = decision.route
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers)

    async def copy(self, target: Target, kind: str, version: str | None, body: bytes,
                   headers: Mapping[str, str]) -> str:
        """Send a copy of a request to ``target`` (an experiment's mirror); answers the outcome, drops the body."""
        pool, timeout = self.pool, self.upstream_timeout

        async def attempt(address: str) -> bool:
            answer = await pool.request(address, _head(target.line(address, kind, version), headers, len(body)),
                                        body, timeout)
            return answer.status < 400

        return await self.core.copy(target, attempt)


def _same(address: str) -> str:
    return address
