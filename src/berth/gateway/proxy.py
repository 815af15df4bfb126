"""Forward one V2 REST request to an inference server over pooled keep-alive connections.

The request body is read once and sent as bytes; the answer's status, body and encoding come back
untouched (never decompressed or re-encoded).  A request whose connection could not be opened, or whose
replica vanished (the connection died before a single byte of an answer: killed, restarting), is
retried once on another replica holding the model.  A request that got an answer, part of one, or no
answer in time is never retried.  Every failure becomes a Berth error naming the address and what went
wrong.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping

from aiohttp import web

from berth.errors import BerthError, Timeout, Unavailable
from berth.gateway.balance import Balancer, Ejections
from berth.gateway.routing import Decision
from berth.gateway.table import Target, describe_connect_error
from berth.gateway.upstream import ConnectFailed, Cut, Disconnected, Pool, Vanished

# A replica that refused a connection is passed over this long (unless no other replica is left), so
# one dead replica in the table does not cost every request a failed connect before its retry.
EJECT_S = 2.0
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
    """Holds the connection pool and the balancer; forwards requests to chosen replicas."""

    def __init__(self, balancer: Balancer | None = None, *, upstream_timeout: float = 60.0,
                 connect_timeout: float = 5.0) -> None:
        self.balancer = balancer or Balancer()
        self.upstream_timeout = upstream_timeout
        self.connect_timeout = min(connect_timeout, upstream_timeout)
        self.pool = Pool(connect_timeout=self.connect_timeout)
        self._down = Ejections()  # replicas passed over for a while after refusing a connection

    async def start(self) -> None:
        """Nothing to open up front: connections are made on first use and kept."""

    async def close(self) -> None:
        self.pool.close()

    async def forward(self, decision: Decision, kind: str, version: str | None, method: str, body: bytes,
                      headers: Mapping[str, str]) -> web.Response:
        """Send the request to one replica of the decided model (two on a connect failure) and answer."""
        target = decision.target
        balancer = self.balancer
        failed: list[str] = []
        problems: list[str] = []
        address = self._down.pick(self.balancer, target.key, target.addresses, failed, time.monotonic)
        while address is not None:
            head = _head(target.line(address, kind, version), headers, len(body))
            balancer.acquire(address)
            try:
                answer = await self.pool.request(address, head, body, self.upstream_timeout)
            except ConnectFailed as exc:
                failed.append(address)
                self._down.eject(address, time.monotonic() + EJECT_S)
                problems.append(describe_connect_error(f"inference server {address}", exc))
            except (Vanished, Cut) as exc:  # the replica died with the request: nothing reached the client
                if not target.idempotent:
                    return error_response(not_resent(target, address, exc), _BAD_GATEWAY)
                failed.append(address)
                self._down.eject(address, time.monotonic() + EJECT_S)
                problems.append(f"inference server {address} {exc}")
            except TimeoutError:
                return error_response(self._timeout(target, address))
            except Disconnected as exc:
                return error_response(_broken(target, address, str(exc)), _BAD_GATEWAY)
            else:
                self._down.restore(address)
                answer.headers["x-seldon-route"] = decision.route
                return web.Response(status=answer.status, body=answer.body, headers=answer.headers)
            finally:
                balancer.release(address)
            if len(failed) >= 2:
                break
            address = self._down.pick(self.balancer, target.key, target.addresses, failed, time.monotonic)
        total = len(target.addresses)
        tried = f"; tried {len(failed)} of {total} replicas" if total > 1 else ""
        err = Unavailable(
            f"model {target.name} in namespace {target.namespace}: " + "; ".join(problems) + tried
            + "; check that the inference server is running (berth get servers)",
            details={"model": target.name, "namespace": target.namespace, "tried": failed,
                     "errors": problems})
        return error_response(err, _BAD_GATEWAY)

    async def copy(self, target: Target, kind: str, version: str | None, body: bytes,
                   headers: Mapping[str, str]) -> str:
        """Send a copy of a request to ``target`` (an experiment's mirror); answers the outcome, drops the body."""
        address = self._down.pick(self.balancer, target.key, target.addresses, [], time.monotonic)
        if address is None:
            return "unavailable"
        head = _head(target.line(address, kind, version), headers, len(body))
        self.balancer.acquire(address)
        try:
            answer = await self.pool.request(address, head, body, self.upstream_timeout)
            return "ok" if answer.status < 400 else "error"
        except ConnectFailed:
            self._down.eject(address, time.monotonic() + EJECT_S)
            return "unavailable"
        except TimeoutError:
            return "timeout"
        except Disconnected:
            return "error"
        finally:
            self.balancer.release(address)

    def _timeout(self, target: Target, address: str) -> Timeout:
        return Timeout(
            f"inference server {address} did not answer model {target.name} in namespace "
            f"{target.namespace} within {self.upstream_timeout:g}s; raise the gateway's upstream timeout "
            "if the model is this slow, or check the server's load",
            details={"model": target.name, "namespace": target.namespace, "address": address,
                     "timeout_s": self.upstream_timeout})


def not_resent(target: Target, address: str, exc: BaseException) -> Unavailable:
    """The error for a request whose replica went away after it was sent, for a model that must not get a
    request twice."""
    return Unavailable(
        f"inference server {address} went away with the request for model {target.name} in namespace "
        f"{target.namespace} ({exc}); it was not sent again because the model is annotated "
        "berth.io/idempotent: \"false\" (the server may or may not have acted on it)",
        details={"model": target.name, "namespace": target.namespace, "address": address, "resent": False})


def _broken(target: Target, address: str, detail: str) -> Unavailable:
    return Unavailable(
        f"inference server {address} failed while answering model {target.name} in namespace "
        f"{target.namespace}: {detail}; the server is up but its answer was broken, so the request was not "
        "retried",
        details={"model": target.name, "namespace": target.namespace, "address": address,
                 "error": "Disconnected"})
