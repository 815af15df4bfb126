"""The routing table gateways follow: which replicas serve which model, and experiments.

Rebuilt per namespace after each reconcile pass; watchers get the whole table (a few KB) as one
NDJSON line whenever it changes.

The table also says who may call what (``auth``): the namespaces whose SeldonRuntime carries
``berth.io/inference-auth: "required"``, each with the SHA-256 hashes of the tokens holding a role there
(tokens with a role in every namespace listed once, in ``everywhere``), and the hashes of the operators
(admin of every namespace) who may read the gateways' metrics and probe.  Only hashes leave the control
plane.  It is rebuilt whenever a token is created or revoked (``TokenRegistry.on_change``) and when the
next token expires, so gateways stop honouring a revoked or expired token within one push.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from berth.aiotasks import log_failure
from berth.control.auth import auth_of
from berth.control.hub import ReplicaRecord
from berth.control.tokens import TokenRegistry
from berth.errors import Unavailable
from berth.resources.identity import ALL, Principal
from berth.wire.routes import (
    Candidate,
    Endpoint,
    ExperimentRoute,
    ModelRoute,
    NamespaceAuth,
    RoutingTable,
    TableAuth,
)

IDEMPOTENT_ANNOTATION = "berth.io/idempotent"  # "false": the gateway never re-sends a request
# on a namespace's SeldonRuntime: "required": the gateway serves that namespace only to callers with a token
INFERENCE_AUTH_ANNOTATION = "berth.io/inference-auth"
_EXPIRY_SLACK_S = 0.05  # rebuild this long after a token's expiry (its hash is then no longer valid)


def requires_auth(runtime: dict[str, Any] | None) -> bool:
    """Whether a namespace's SeldonRuntime asks for inference tokens (``berth.io/inference-auth: "required"``)."""
    annotations = ((runtime or {}).get("metadata") or {}).get("annotations") or {}
    return str(annotations.get(INFERENCE_AUTH_ANNOTATION, "")).strip().lower() == "required"


class RoutesPublisher:
    def __init__(self, tokens: TokenRegistry | None = None) -> None:
        self.tokens = tokens or TokenRegistry(None)
        self._models: dict[str, list[ModelRoute]] = {}
        self._experiments: dict[str, list[ExperimentRoute]] = {}
        self._guarded: set[str] = set()  # namespaces requiring inference tokens
        self._loop: asyncio.AbstractEventLoop | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._auth = self._build_auth()
        self.tokens.on_change.append(self._tokens_changed)
        # Revisions start from the clock so a restarted control plane never goes backwards.
        self.revision = int(time.time() * 1000)
        self._encoded = RoutingTable(revision=self.revision, auth=self._auth).model_dump_json()
        self._changed = asyncio.Condition()
        self.closing = False
        # Gateways get no table until the first reconcile after start-up has seen the replicas
        # reconnect: a restarted control plane must not push an empty table over a good one.
        self.warm = asyncio.Event()

    def set_warm(self) -> None:
        self._remember_loop()
        if not self.warm.is_set():
            self.warm.set()
            log_failure(asyncio.ensure_future(self._notify()), "routes notify")

    def close(self) -> None:
        self.closing = True
        if self._tokens_changed in self.tokens.on_change:
            self.tokens.on_change.remove(self._tokens_changed)
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        self.warm.set()  # wakes watches still waiting for the start-up table; they see `closing` and end
        log_failure(asyncio.ensure_future(self._notify()), "routes notify")

    def table(self) -> RoutingTable:
        return RoutingTable.model_validate_json(self._encoded)

    def encoded(self) -> str:
        return self._encoded

    def publish_namespace(self, ns: str, models: list[dict[str, Any]], records: dict[str, ReplicaRecord],
                          experiments: list[dict[str, Any]], runtime: dict[str, Any] | None = None) -> None:
        """Replace namespace ``ns``'s routes; ``runtime`` is its SeldonRuntime (whose annotation
        ``berth.io/inference-auth: "required"`` makes the gateways ask for tokens there)."""
        self._remember_loop()
        routes: list[ModelRoute] = []
        for doc in models:
            name = doc["metadata"]["name"]
            st = doc.get("status") or {}
            endpoints: list[Endpoint] = []
            for key in sorted(st.get("replicaStatus") or {}):
                rec = records.get(key)
                m = rec.models.get(name) if rec is not None else None
                if rec is None or m is None or m.state != "LOADED" or not rec.connected \
                        or not rec.readiness.ready:
                    continue
                inf = rec.hello.inference
                endpoints.append(Endpoint(server=rec.server, replica=rec.index, http=inf.http, grpc=inf.grpc))
            flag = str((doc["metadata"].get("annotations") or {}).get(IDEMPOTENT_ANNOTATION, "true"))
            routes.append(ModelRoute(namespace=ns, name=name, state=st.get("state", "ModelProgressing"),
                                     reason=st.get("message", ""), endpoints=endpoints,
                                     idempotent=flag.strip().lower() not in ("false", "no", "0")))
        exps: list[ExperimentRoute] = []
        for doc in experiments:
            spec = doc.get("spec") or {}
            ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                        for c in (doc.get("status") or {}).get("conditions", []))
            mirror = spec.get("mirror") or {}
            exps.append(ExperimentRoute(
                namespace=ns, name=doc["metadata"]["name"], default=spec.get("default"),
                candidates=[Candidate(name=c["name"], weight=c["weight"]) for c in spec.get("candidates", [])],
                mirror=mirror.get("name"), mirror_percent=mirror.get("percent", 0), ready=ready,
                reason=(doc.get("status") or {}).get("message", "")))
        guarded = requires_auth(runtime)
        guard_changed = guarded != (ns in self._guarded)
        if not guard_changed and self._models.get(ns) == routes and self._experiments.get(ns) == exps:
            return
        self._models[ns] = routes
        self._experiments[ns] = exps
        if guard_changed:
            if guarded:
                self._guarded.add(ns)
            else:
                self._guarded.discard(ns)
            self._auth = self._build_auth()
        self._publish()

    def _publish(self, *, notify: bool = True) -> None:
        self.revision += 1
        table = RoutingTable(revision=self.revision,
                             models=[r for n in sorted(self._models) for r in self._models[n]],
                             experiments=[e for n in sorted(self._experiments) for e in self._experiments[n]],
                             auth=self._auth)
        self._encoded = table.model_dump_json()
        if notify:
            log_failure(asyncio.ensure_future(self._notify()), "routes notify")

    # --- who may call what ---------------------------------------------------------------------------------

    def _build_auth(self) -> TableAuth:
        """Hashes of the valid tokens allowed in each guarded namespace, everywhere, and of the operators;
        schedules the next rebuild at the next token's expiry."""
        tokens = self.tokens

        def here(ns: str) -> Callable[[Principal], bool]:
            return lambda p: p.can("infer", ns) and not p.can("infer", ALL)

        auth = TableAuth(namespaces=[NamespaceAuth(namespace=ns, tokens=tokens.hashes(here(ns)))
                                     for ns in sorted(self._guarded)],
                         everywhere=tokens.hashes(lambda p: p.can("infer", ALL)),
                         operators=tokens.hashes(lambda p: p.can("admin", ALL)))
        self._schedule_expiry()
        return auth

    def _schedule_expiry(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self._loop is None or self._loop.is_closed():
            return
        now = time.time()
        upcoming = [t.expires for t in self.tokens.all() if t.revoked is None and t.expires and t.expires > now]
        if upcoming:
            self._expiry = self._loop.call_later(min(upcoming) - now + _EXPIRY_SLACK_S, self.refresh_auth)

    def refresh_auth(self) -> None:
        """Rebuild the table's auth from the token registry; push it when it changed (on the event loop)."""
        self._expiry = None
        auth = self._build_auth()
        if auth != self._auth:
            self._auth = auth
            self._publish()

    def _tokens_changed(self) -> None:
        """``TokenRegistry.on_change``: rebuild at once when called on the event loop, else hand it over."""
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not None and (self._loop is None or running is self._loop):
            self._loop = running
            self.refresh_auth()
        elif self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.refresh_auth)
        else:  # no event loop yet, so nobody watches: the table is rebuilt, nobody is told
            self._auth = self._build_auth()
            self._publish(notify=False)

    def _remember_loop(self) -> None:
        if self._loop is None:
            try:
                self._loop = asyncio.get_running_loop()
            except RuntimeError:
                return
            self._schedule_expiry()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def get(self, request: web.Request) -> web.Response:
        auth_of(request).require_gateway(request, action="get")  # gateways and admins of every namespace
        if not self.warm.is_set():
            raise Unavailable("the control plane is starting: waiting for replicas to reconnect before it "
                              "publishes routes; retry in a few seconds")
        return web.Response(text=self._encoded, content_type="application/json")

    async def watch(self, request: web.Request) -> web.StreamResponse:
        auth = auth_of(request)
        auth.require_gateway(request, action="watch")
        self._remember_loop()
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        sent = -1
        guard = auth.guard(request)  # the stream ends with an ERROR line once the token is revoked/expired
        try:
            while not self.warm.is_set() and not self.closing and guard.reason is None:
                if not await guard.race(self.warm.wait(), 15.0) and guard.reason is None:
                    await resp.write(b"\n")
            while not self.closing and guard.reason is None:
                if sent != self.revision:
                    sent = self.revision
                    await resp.write(self._encoded.encode() + b"\n")
                async with self._changed:
                    if not await guard.race(self._changed.wait(), 15.0) and guard.reason is None:
                        await resp.write(b"\n")  # keep-alive: an empty line gateways skip
            if guard.reason is not None:
                await resp.write(json.dumps(guard.event()).encode() + b"\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            guard.__exit__()
        return resp
