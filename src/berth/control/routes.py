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
from pydantic import TypeAdapter

from berth.aiotasks import log_failure
from berth.control.auth import auth_of
from berth.control.hub import ReplicaRecord
from berth.control.pipelines import pipeline_routes
from berth.control.slices import Slicer
from berth.control.tokens import TokenRegistry
from berth.errors import Unavailable
from berth.resources.identity import ALL, Principal
from berth.resources.instances import instance
from berth.resources.statuses import condition_of, experiment_status_of, model_status_of
from berth.wire.routes import (
    Candidate,
    Endpoint,
    ExperimentRoute,
    ModelRoute,
    NamespaceAuth,
    PipelineRoute,
    RoutingTable,
    TableAuth,
)

IDEMPOTENT_ANNOTATION = "berth.io/idempotent"  # "false": the gateway never re-sends a request
# on a namespace's SeldonRuntime: "required": the gateway serves that namespace only to callers with a token
INFERENCE_AUTH_ANNOTATION = "berth.io/inference-auth"
_EXPIRY_SLACK_S = 0.05  # rebuild this long after a token's expiry (its hash is then no longer valid)
_EXPERIMENTS = TypeAdapter(list[ExperimentRoute])
_PIPELINES = TypeAdapter(list[PipelineRoute])
# a model's route: what it is made from (state, reason, endpoints, idempotent, upstream) and its JSON
_RouteMemo = dict[str, tuple[tuple[Any, ...], str]]


def requires_auth(runtime: dict[str, Any] | None) -> bool:
    """Whether a namespace's SeldonRuntime asks for inference tokens (``berth.io/inference-auth: "required"``)."""
    annotations = ((runtime or {}).get("metadata") or {}).get("annotations") or {}
    return str(annotations.get(INFERENCE_AUTH_ANNOTATION, "")).strip().lower() == "required"


class RoutesPublisher:
    def __init__(self, tokens: TokenRegistry | None = None) -> None:
        self.tokens = tokens or TokenRegistry(None)
        # per namespace: its models', experiments' and pipelines' routes as JSON (a list's items, no brackets);
        # the table is these joined, so a pass re-encodes only what changed and nothing else is re-encoded
        self._parts: dict[str, tuple[str, str, str]] = {}
        self._route_memo: dict[str, _RouteMemo] = {}
        self._scoped: dict[frozenset[str], tuple[Any, str]] = {}  # encoded_for's tables, by scope
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

    async def publish_sliced(self, ns: str, models: list[dict[str, Any]], records: dict[str, ReplicaRecord],
                             experiments: list[dict[str, Any]], runtime: dict[str, Any] | None = None, *,
                             pipelines: list[dict[str, Any]] | None = None, slicer: Slicer | None = None) -> None:
        """:meth:`publish_namespace` for a reconcile pass: the models' routes are made and encoded between
        ``slicer`` ticks (a route unchanged since the last pass is not made again), so a namespace of 1,000
        models never holds the event loop for more than a slice."""
        slicer = slicer or Slicer()
        memo, fresh = self._route_memo.get(ns, {}), _RouteMemo()
        parts: list[str] = []
        for doc in models:
            await slicer.tick()
            parts.append(self._model_route(ns, doc, records, memo, fresh))
        self._route_memo[ns] = fresh
        self.publish_namespace(ns, models, records, experiments, runtime, pipelines=pipelines,
                               models_json=",".join(parts))

    def publish_namespace(self, ns: str, models: list[dict[str, Any]], records: dict[str, ReplicaRecord],
                          experiments: list[dict[str, Any]], runtime: dict[str, Any] | None = None, *,
                          pipelines: list[dict[str, Any]] | None = None, models_json: str | None = None) -> None:
        """Replace namespace ``ns``'s routes; ``runtime`` is its SeldonRuntime (whose annotation
        ``berth.io/inference-auth: "required"`` makes the gateways ask for tokens there); ``pipelines`` are its
        Pipelines with their statuses; ``models_json``: the models' routes as :meth:`publish_sliced` encoded
        them (else they are made here, in one go)."""
        self._remember_loop()
        if models_json is None:
            memo, fresh = self._route_memo.get(ns, {}), _RouteMemo()
            models_json = ",".join([self._model_route(ns, doc, records, memo, fresh) for doc in models])
            self._route_memo[ns] = fresh
        exps: list[ExperimentRoute] = []
        for doc in experiments:
            spec = doc.get("spec") or {}
            est, ready_condition = experiment_status_of(doc), condition_of(doc, "Ready")
            ready = ready_condition is not None and ready_condition["status"] == "True"
            mirror = spec.get("mirror") or {}
            exps.append(ExperimentRoute(
                namespace=ns, name=doc["metadata"]["name"], default=spec.get("default"),
                candidates=[Candidate(name=c["name"], weight=c["weight"]) for c in spec.get("candidates", [])],
                mirror=mirror.get("name"), mirror_percent=mirror.get("percent", 0), ready=ready,
                reason=est.get("message", "") if est else "", resource_type=spec.get("resourceType", "model")))
        pipes = pipeline_routes(ns, pipelines)
        parts = (models_json, _EXPERIMENTS.dump_json(exps).decode()[1:-1], _PIPELINES.dump_json(pipes).decode()[1:-1])
        guarded = requires_auth(runtime)
        guard_changed = guarded != (ns in self._guarded)
        if not guard_changed and self._parts.get(ns) == parts:
            return
        self._parts[ns] = parts
        if guard_changed:
            if guarded:
                self._guarded.add(ns)
            else:
                self._guarded.discard(ns)
            self._auth = self._build_auth()
        self._publish()

    def _model_route(self, ns: str, doc: dict[str, Any], records: dict[str, ReplicaRecord], memo: _RouteMemo,
                     fresh: _RouteMemo) -> str:
        """One model's route as JSON; made again only when what it is made from changed (``memo``: the last
        pass's, ``fresh``: this pass's)."""
        name = doc["metadata"]["name"]
        st = model_status_of(doc)  # None before the model's first pass
        endpoints: list[tuple[str, int, str, str]] = []
        serving = (st.get("servingGeneration") or st.get("artifactGeneration") or 1) if st is not None else 1
        upstream = instance(name, serving)  # the version routes point to (docs/rollouts.md)
        for key in sorted((st.get("replicaStatus") or {}) if st is not None else {}):
            rec = records.get(key)
            m = rec.models.get(upstream) if rec is not None else None
            if rec is None or m is None or m.state != "LOADED" or not rec.connected \
                    or not rec.readiness.ready:
                continue
            inf = rec.hello.inference
            endpoints.append((rec.server, rec.index, inf.http, inf.grpc))
        flag = str((doc["metadata"].get("annotations") or {}).get(IDEMPOTENT_ANNOTATION, "true"))
        # everything the route is made from goes into `inputs`: a route is reused while they are the same
        # evicted (docs/overcommit.md): no copy loaded, one evicted or reloading: a request wakes it
        evicted = not endpoints and st is not None and any(
            "eviction" in row for row in (st.get("replicaStatus") or {}).values())
        inputs = (st.get("state", "ModelProgressing") if st else "ModelProgressing",
                  st.get("message", "") if st else "", tuple(endpoints),
                  flag.strip().lower() not in ("false", "no", "0"), "" if upstream == name else upstream, evicted)
        known = memo.get(name)
        if known is None or known[0] != inputs:
            state, reason, _, idempotent, shown, _ = inputs
            route = ModelRoute(namespace=ns, name=name, state=state, reason=reason, idempotent=idempotent,
                               endpoints=[Endpoint(server=s, replica=i, http=h, grpc=g) for s, i, h, g in endpoints],
                               upstream=shown, evicted=evicted)
            known = (inputs, route.model_dump_json())
        fresh[name] = known
        return known[1]

    def _publish(self, *, notify: bool = True) -> None:
        """The table: each namespace's encoded routes joined, in namespace order, as ``RoutingTable`` would
        encode them (``tests/unit/test_routes_sliced.py`` holds it to that)."""
        self.revision += 1
        self._encoded = _joined(self.revision, [self._parts[n] for n in sorted(self._parts)], self._auth)
        if notify:
            log_failure(asyncio.ensure_future(self._notify()), "routes notify")

    def encoded_for(self, scope: frozenset[str] | None) -> str:
        """The table as a gateway of the namespaces ``scope`` sees it (None: the whole table): their routes and
        the token hashes of their guarded namespaces, nothing of another namespace.  Its revision moves only
        when that part changed, so a namespace's gateway is not told of another's changes."""
        if scope is None:
            return self._encoded
        parts = [self._parts[n] for n in sorted(scope) if n in self._parts]
        auth = self._auth.model_copy(update={"namespaces": [a for a in self._auth.namespaces if a.namespace in scope]})
        key = (tuple(parts), auth)
        known = self._scoped.get(scope)
        if known is None or known[0] != key:
            if len(self._scoped) >= 4096:  # one entry per gateway namespace; a bound all the same
                self._scoped.clear()
            known = (key, _joined(self.revision, parts, auth))
            self._scoped[scope] = known
        return known[1]

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
        scope = auth_of(request).table_scope(request, action="get")  # gateways and admins of every namespace
        if not self.warm.is_set():
            raise Unavailable("the control plane is starting: waiting for replicas to reconnect before it "
                              "publishes routes; retry in a few seconds")
        return web.Response(text=self.encoded_for(scope), content_type="application/json")

    async def watch(self, request: web.Request) -> web.StreamResponse:
        auth = auth_of(request)
        scope = auth.table_scope(request, action="watch")  # a namespace's gateway: that namespace only
        self._remember_loop()
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        sent = ""
        guard = auth.guard(request)  # the stream ends with an ERROR line once the token is revoked/expired
        try:
            while not self.warm.is_set() and not self.closing and guard.reason is None:
                if not await guard.race(self.warm.wait(), 15.0) and guard.reason is None:
                    await resp.write(b"\n")
            while not self.closing and guard.reason is None:
                if (table := self.encoded_for(scope)) != sent:
                    sent = table
                    await resp.write(table.encode() + b"\n")
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


def _joined(revision: int, parts: list[tuple[str, str, str]], auth: TableAuth) -> str:
    """A table of namespaces' encoded routes (``parts``, in namespace order), as ``RoutingTable`` encodes it."""
    models, exps, pipes = (",".join(p[i] for p in parts if p[i]) for i in range(3))
    return (f'{{"revision":{revision},"models":[{models}],"experiments":[{exps}],'
            f'"pipelines":[{pipes}],"auth":{auth.model_dump_json()}}}')
