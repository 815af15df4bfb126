"""The forwarding core under both transports: replica choice, the retry rule, mirror copies, timeouts and
the errors they become, written once (as MLServer keeps one handler layer under REST and gRPC).

A transport (REST in :mod:`proxy`, gRPC in :mod:`grpcserver`) only says how one attempt is made on one
replica (``attempt(address)``, raising the :mod:`failures` tree or ``TimeoutError``) and how it names that
replica's upstream address; :meth:`Forwarder.call` decides the rest:

- the replica: least outstanding requests, ties taking turns, passing over replicas that refused a
  connection in the last ``EJECT_S`` seconds (unless nothing else is left);
- a connection that could not be opened is retried once on another replica; so is a replica that went
  away with the request (``Vanished``, ``Cut``), unless the model is annotated ``berth.io/idempotent:
  "false"`` and the server may have acted on it;
- a timeout, a reset stream or a broken answer from a live server is never retried;
- every failure becomes a :class:`~berth.errors.BerthError` (``Unavailable``, ``Timeout``) naming the model,
  namespace and address; the transport maps it to its status (REST 502/504, gRPC UNAVAILABLE/DEADLINE_EXCEEDED).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from berth.errors import Timeout, Unavailable
from berth.gateway.forwarding.balance import Balancer, Ejections
from berth.gateway.forwarding.failures import ConnectFailed, Cut, Disconnected, Vanished
from berth.gateway.routing.table import Target, describe_connect_error

# A replica that refused a connection is passed over this long (unless no other replica is left), so
# one dead replica in the table does not cost every request a failed connect before its retry.
EJECT_S = 2.0

A = TypeVar("A")


class Forwarder:
    """One per transport (its replicas' ports fail separately); the balancer is shared, so outstanding
    requests are counted per replica across REST and gRPC."""

    __slots__ = ("balancer", "down", "label", "_gone")

    def __init__(self, balancer: Balancer, label: str = "") -> None:
        self.balancer = balancer
        self.down = Ejections()  # replica (REST address) -> until when it is passed over
        self.label = label  # after an upstream address in messages: "" (REST) or " (gRPC)"
        self._gone = " went away: " if label else " "

    def pick(self, target: Target) -> str | None:
        """A replica for one attempt outside :meth:`call` (a stream, a mirror copy)."""
        return self.down.pick(self.balancer, target.key, target.addresses, (), time.monotonic)

    def failed(self, address: str) -> None:
        """``address`` could not be reached: pass it over for a while."""
        self.down.eject(address, time.monotonic() + EJECT_S)

    async def call(self, target: Target, attempt: Callable[[str], Awaitable[A]], upstream: Callable[[str], str],
                   timeout: float) -> A:
        """``attempt`` on one replica of ``target`` (two when the first could not be reached); its answer, or a
        BerthError saying what failed.  ``upstream(address)`` names the address the attempt used."""
        balancer = self.balancer
        failed: list[str] = []
        problems: list[str] = []
        address = self.down.pick(balancer, target.key, target.addresses, failed, time.monotonic)
        while address is not None:
            balancer.acquire(address)
            try:
                answer = await attempt(address)
            except ConnectFailed as exc:
                problems.append(describe_connect_error(f"inference server {upstream(address)}{self.label}", exc))
            except (Vanished, Cut) as exc:  # the replica died with the request: nothing reached the client
                if not target.idempotent and not exc.unprocessed:
                    raise not_resent(target, f"{upstream(address)}{self.label}", exc) from exc
                problems.append(f"inference server {upstream(address)}{self.label}{self._gone}{exc}")
            except TimeoutError as exc:
                raise timed_out(target, upstream(address), timeout) from exc
            except Disconnected as exc:  # a reset stream, or a broken answer from a server that is up
                raise broken(target, upstream(address), str(exc)) from exc
            else:
                self.down.restore(address)
                return answer
            finally:
                balancer.release(address)
            failed.append(address)
            self.failed(address)
            if len(failed) >= 2:
                break
            address = self.down.pick(balancer, target.key, target.addresses, failed, time.monotonic)
        total = len(target.addresses)
        tried = f"; tried {len(failed)} of {total} replicas" if total > 1 else ""
        raise Unavailable(
            f"model {target.name} in namespace {target.namespace}: " + "; ".join(problems) + tried
            + "; check that the inference server is running (berth get servers)",
            details={"model": target.name, "namespace": target.namespace, "tried": [upstream(a) for a in failed],
                     "errors": problems})

    async def copy(self, target: Target, attempt: Callable[[str], Awaitable[bool]]) -> str:
        """A mirror copy on one replica of ``target`` (no retry); its outcome for the metrics: ``ok``, ``error``
        (``attempt`` answered False, or the server broke), ``timeout``, ``unavailable``."""
        address = self.pick(target)
        if address is None:
            return "unavailable"
        self.balancer.acquire(address)
        try:
            return "ok" if await attempt(address) else "error"
        except ConnectFailed:
            self.failed(address)
            return "unavailable"
        except TimeoutError:
            return "timeout"
        except Disconnected:
            return "error"
        finally:
            self.balancer.release(address)


def timed_out(target: Target, address: str, timeout: float) -> Timeout:
    return Timeout(
        f"inference server {address} did not answer model {target.name} in namespace {target.namespace} within "
        f"{timeout:g}s; raise the gateway's upstream timeout if the model is this slow, or check the server's load",
        details={"model": target.name, "namespace": target.namespace, "address": address, "timeout_s": timeout})


def not_resent(target: Target, address: str, exc: BaseException) -> Unavailable:
    """The error for a request whose replica went away after it was sent, for a model that must not get a
    request twice."""
    return Unavailable(
        f"inference server {address} went away with the request for model {target.name} in namespace "
        f"{target.namespace} ({exc}); it was not sent again because the model is annotated "
        "berth.io/idempotent: \"false\" (the server may or may not have acted on it)",
        details={"model": target.name, "namespace": target.namespace, "address": address, "resent": False})


def broken(target: Target, address: str, detail: str) -> Unavailable:
    return Unavailable(
        f"inference server {address} failed while answering model {target.name} in namespace "
        f"{target.namespace}: {detail}; the server is up but its answer was broken, so the request was not "
        "retried",
        details={"model": target.name, "namespace": target.namespace, "address": address,
                 "error": "Disconnected"})
