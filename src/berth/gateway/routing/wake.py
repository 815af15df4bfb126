"""Hold a request for an evicted model while the control plane reloads it (docs/overcommit.md).

When every copy of a model is evicted, its route says ``evicted`` and :meth:`Router.decide` raises
:class:`~berth.gateway.routing.table.ModelEvicted`.  REST, gRPC and pipeline steps then call :func:`held`
(one helper for all three), which:

- asks the control plane to wake the model (``POST`` :data:`~berth.wire.routes.WAKE_PATH` with the gateway's
  token), at most one call in flight per model however many requests are held for it;
- waits for the routing table to show the model loaded (each new table is looked at as it arrives), and
  returns the decision as :meth:`Router.decide` makes it then;
- past ``timeout`` seconds (``--wake-timeout``, 30 s by default), answers 503 ``ModelNotReady`` saying the
  model was evicted, how long it waited and why it is not back.

Requests held at once are bounded (:data:`MAX_HELD`, 503 beyond), so a flood cannot make the gateway hold
unbounded work.  The counters are in the gateway's /metrics: ``berth_gateway_held_requests_total`` (by
outcome), ``berth_gateway_held_requests`` (now) and ``berth_gateway_wakeups_total`` (calls to the control
plane, by outcome).  The hot path does not come here: a loaded model never raises ModelEvicted.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path
from urllib.parse import quote

import aiohttp
from prometheus_client import CollectorRegistry, Counter, Gauge

from berth.aiotasks import log_failure
from berth.errors import ModelNotReady, Unavailable
from berth.gateway.routing.router import Decision, Router
from berth.gateway.routing.table import ModelEvicted
from berth.gateway.routing.watch import bearer_headers
from berth.wire.routes import WAKE_PATH

log = logging.getLogger("berth.gateway.wake")
DEFAULT_WAKE_TIMEOUT = 30.0
MAX_HELD = 10_000  # requests held at once, every model together
WAKE_CALL_TIMEOUT = 10.0  # seconds for one call to the control plane's wake endpoint


class Waker:
    """The gateway's wake-ups: installed on a :class:`Router` (``router.waker``), used by :func:`held`."""

    def __init__(self, router: Router, control_url: str | None, token: str | None = None, *,
                 timeout: float = DEFAULT_WAKE_TIMEOUT, registry: CollectorRegistry | None = None,
                 tls: ssl.SSLContext | None = None, token_file: Path | None = None) -> None:
        self.router = router
        self.url = control_url.rstrip("/") if control_url else None
        self.timeout = timeout
        self._headers = {"Authorization": f"Bearer {token.strip()}"} if token else {}
        self._tls = tls  # verifies an https:// control plane (only its CA), as the routes watch's context
        self._token_file = token_file  # re-read at every call: a rotated token is used from the next one
        self._changed = asyncio.Event()
        self._calls: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._session: aiohttp.ClientSession | None = None
        self.holding = 0
        registry = registry or CollectorRegistry()
        self.held_total = Counter("berth_gateway_held_requests", "Requests held for an evicted model, by outcome "
                                  "(served once it reloaded, failed: its reload failed, or timeout)",
                                  ("namespace", "outcome"), registry=registry)
        self.held_now = Gauge("berth_gateway_held_requests_now", "Requests held now for evicted models",
                              registry=registry)
        self.wakeups = Counter("berth_gateway_wakeups", "Wake calls to the control plane, by outcome",
                               ("namespace", "outcome"), registry=registry)
        router.listeners.append(self._table_changed)
        router.waker = self

    def _table_changed(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def close(self) -> None:
        for task in list(self._calls.values()):
            task.cancel()
        await asyncio.gather(*self._calls.values(), return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def _ask(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        if self.url is None or key in self._calls:
            return  # no control plane to ask (a static table), or asked already and not answered yet
        task = asyncio.ensure_future(self._call(namespace, name))
        self._calls[key] = task
        task.add_done_callback(lambda _: self._calls.pop(key, None))
        log_failure(task, f"wake {namespace}/{name}")

    async def _call(self, namespace: str, name: str) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=WAKE_CALL_TIMEOUT),
                                                  connector=aiohttp.TCPConnector(ssl=self._tls or True))
        url = f"{self.url}{WAKE_PATH.format(ns=quote(namespace, safe=''), name=quote(name, safe=''))}"
        try:
            async with self._session.post(url, headers=bearer_headers(self._headers, self._token_file)) as resp:
                outcome = "ok" if resp.status < 300 else f"http-{resp.status}"
                if resp.status >= 300:
                    log.warning("the control plane refused to wake model %s/%s: HTTP %d %s", namespace, name,
                                resp.status, (await resp.text())[:300])
        except (aiohttp.ClientError, TimeoutError, Unavailable) as exc:
            outcome = "unreachable"
            log.warning("cannot ask the control plane at %s to wake model %s/%s: %s", self.url, namespace, name,
                        exc or type(exc).__name__)
        self.wakeups.labels(namespace, outcome).inc()

    async def hold(self, namespace: str, name: str, route_header: str | None, first: ModelEvicted) -> Decision:
        if self.holding >= MAX_HELD:
            raise Unavailable(f"model {name} in namespace {namespace} is evicted and {MAX_HELD} requests already wait "
                              "for evicted models to reload; retry in a few seconds",
                              details={"model": name, "namespace": namespace})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        self.holding += 1
        self.held_now.inc()
        outcome = "timeout"
        last = first
        try:
            self._ask(namespace, name)
            while True:
                changed = self._changed
                try:
                    decision = self.router.decide(namespace, name, route_header)
                except ModelEvicted as exc:
                    last = exc
                except ModelNotReady:  # no longer evicted but not loaded either: its reload failed
                    outcome = "failed"
                    raise
                else:
                    outcome = "served"
                    return decision
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    await asyncio.wait_for(changed.wait(), remaining)
                except TimeoutError:
                    break
        finally:
            self.holding -= 1
            self.held_now.dec()
            self.held_total.labels(namespace, outcome).inc()
        reason = (last.details or {}).get("reason") or "no copy is loaded"
        raise ModelNotReady(
            f"model {name} in namespace {namespace} was evicted to make room on its server and did not reload within "
            f"{self.timeout:g}s ({reason}); retry, raise the gateway's --wake-timeout, or pin the model "
            '(annotation berth.io/pinned: "true")',
            details={"model": name, "namespace": namespace, "evicted": True, "waited_s": self.timeout,
                     "reason": reason})


async def held(router: Router, namespace: str, name: str, route_header: str | None,
               evicted: ModelEvicted) -> Decision:
    """The decision for a request whose model is evicted, once it is loaded again; ``evicted`` is raised as it is
    when the router has no :class:`Waker` (a gateway without a control plane)."""
    waker = router.waker
    if not isinstance(waker, Waker):
        raise evicted
    return await waker.hold(namespace, name, route_header, evicted)
