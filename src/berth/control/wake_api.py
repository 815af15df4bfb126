"""``POST /api/v1/namespaces/{ns}/models/{name}/wake``: a gateway asks for an evicted model to be reloaded.

A gateway holding a request for a model whose copies are all evicted (its route says ``evicted``) calls this
once per model (it coalesces its own held requests); the control plane records the wake
(:meth:`berth.control.residency.ResidencyBook.wake`: a wake already in force for the model is not recorded
again, so a flood of wakes for one model makes one reload) and marks the namespace for a reconcile pass, in
which residency loads the woken model first (docs/overcommit.md).

Security: a gateway token only (the middleware refuses anything else, audited), and a namespace's gateway
only for its own namespace (refused and audited here); a wake that starts a reload is audited, one that
joins a wake in force is not (it changes nothing); no body is read; at most
:data:`~berth.control.residency.MAX_PENDING_WAKES` wakes are in force at once (503 beyond, audited).  The
answer says only what the caller may know: the model's name in the namespace it may serve.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from aiohttp import web

from berth.control.auth import auth_of, gateway_scope
from berth.control.residency import MAX_PENDING_WAKES, ResidencyBook
from berth.errors import Forbidden, InvalidInput, NotFound, Unavailable
from berth.resources.names import name_problem
from berth.store.base import Store
from berth.store.offloop import off_loop
from berth.wire.routes import WAKE_PATH


class WakeAPI:
    def __init__(self, store: Store, book: ResidencyBook, mark: Callable[[str], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.book = book
        self.mark = mark  # the reconciler's: a pass over the namespace soon
        self.clock = clock

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_post(WAKE_PATH, self.wake)

    async def wake(self, request: web.Request) -> web.Response:
        auth = auth_of(request)
        principal = auth.require_gateway(request, action="wake", kind="Model", namespace=request.match_info["ns"],
                                         name=request.match_info["name"])
        ns, name = request.match_info["ns"], request.match_info["name"]
        scope = gateway_scope(principal)
        if scope is not None and ns not in scope:
            auth.record(request, principal.name, "wake", "Model", ns, name, outcome="forbidden",
                        reason="a namespace's gateway wakes only its own namespace's models")
            raise Forbidden(f"forbidden: {principal.name} is the gateway of namespace {', '.join(sorted(scope))} "
                            f"and may not wake models of namespace {ns}", details={"namespace": ns, "right": "gateway"})
        problem = name_problem(name, what="model name") or name_problem(ns, what="namespace", label=True)
        if problem:
            auth.record(request, principal.name, "wake", "Model", ns, name[:253], outcome="invalid", reason=problem)
            raise InvalidInput(problem, details={"namespace": ns, "model": name})
        try:
            await off_loop(self.store.get, "Model", ns, name)
        except NotFound:
            auth.record(request, principal.name, "wake", "Model", ns, name, outcome="not-found",
                        reason="no such model")
            raise
        if not self.book.evictions_of(ns, name):  # loaded (or never placed): nothing to wake
            return web.json_response({"namespace": ns, "model": name, "waking": False, "coalesced": False})
        now = self.clock()
        if self.book.woken(ns, name, now) is None and self.book.pending_wakes(now) >= MAX_PENDING_WAKES:
            auth.record(request, principal.name, "wake", "Model", ns, name, outcome="unavailable",
                        reason=f"{MAX_PENDING_WAKES} wakes already in force")
            raise Unavailable(f"{MAX_PENDING_WAKES} model wake-ups are already under way; retry in a few seconds",
                              details={"namespace": ns, "model": name})
        started = self.book.wake(ns, name, now)
        if started:  # a reload it asked for is a change: audited (a wake that joined one in force changes nothing)
            await off_loop(auth.record, request, principal.name, "wake", "Model", ns, name, outcome="ok",
                           reason="reload of the evicted model requested")
            self.mark(ns)
        return web.json_response({"namespace": ns, "model": name, "waking": True, "coalesced": not started},
                                 status=202)
