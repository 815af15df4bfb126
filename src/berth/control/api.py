"""The control plane's HTTP/JSON API over the store.

    POST   /api/v1/apply                          JSON {"documents": [...], "dryRun": bool} or YAML text
    GET    /api/v1/{kind}?namespace=&selector=    list (kind: models, servers, ..., or "all")
    GET    /api/v1/namespaces/{ns}/{kind}/{name}  get
    DELETE /api/v1/namespaces/{ns}/{kind}/{name}  delete
    GET    /api/v1/watch?kinds=&namespace=&since= NDJSON event stream (or WebSocket on upgrade)
    GET    /api/v1/agents                         connected and lost replicas, as the hub knows them
    GET    /api/v1/routes[/watch]                 routing table for gateways
    POST   /api/v1/gateway/usage                  gateways' usage reports (control/usage_api.py)
    GET    /api/v1/agents/connect                 agent WebSocket (the hub authenticates agents)
    POST|GET /api/v1/tokens, DELETE /api/v1/tokens/{name}, GET /api/v1/audit   (control/tokens_api.py)
    GET|PUT /api/v1/namespaces/{ns}/quota          per-namespace quotas, admins of every namespace (control/quotas.py)
    GET    /healthz (open), /api/v1/version

Every route but /healthz needs ``Authorization: Bearer <token>`` (control/auth.py says which right each
needs).  Errors answer ``{code, message, details}`` with the error's HTTP status; bad input changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import yaml
from aiohttp import web

import berth
from berth.control import checks, quotas
from berth.control.auth import Auth, failure, principal_of
from berth.control.hub import AgentHub
from berth.control.listener import ListenerLimits, slowloris_middleware
from berth.control.metrics import ControlMetrics
from berth.control.residency import annotation_problems
from berth.control.routes import RoutesPublisher
from berth.control.slices import respond_in_slices
from berth.control.storage_policy import policy_problems
from berth.control.tokens import TokenRegistry
from berth.control.tokens_api import TokensAPI
from berth.control.usage import UsageBook
from berth.control.usage_api import UsageAPI
from berth.control.watch_api import Watches, shown, visibility
from berth.errors import (
    BerthError,
    InvalidInput,
    InvalidManifest,
    NotFound,
    PayloadTooLarge,
    QuotaExceeded,
    Unauthenticated,
)
from berth.resources.identity import Principal, right_for
from berth.resources.kinds import APPLY_ORDER, kind_from_alias
from berth.resources.manifest import count_problem, read_yaml, unacted_warnings, validate_document
from berth.resources.names import check_name
from berth.resources.policy import PERMISSIVE, StoragePolicy
from berth.store.base import Event, Store
from berth.store.offloop import off_loop
from berth.wire.agent import AGENT_PATH
from berth.wire.routes import ROUTES_PATH, ROUTES_WATCH_PATH

log = logging.getLogger("berth.control.api")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
DEFAULT_MAX_BODY = 8 * 1024 * 1024


def error_response(err: BerthError) -> web.Response:
    return web.json_response(err.to_dict(), status=err.http_status)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except BerthError as err:
        response = error_response(err)
        if isinstance(err, Unauthenticated):
            response.headers["WWW-Authenticate"] = 'Bearer realm="berth"'
        return response
    except web.HTTPRequestEntityTooLarge as exc:
        return error_response(PayloadTooLarge(f"request body too large: {exc.text}"))
    except web.HTTPException as exc:
        if exc.status == 404:
            return error_response(NotFound(f"no such endpoint: {request.method} {request.path}"))
        if exc.status == 405:
            return web.json_response({"code": "MethodNotAllowed", "details": None,
                                      "message": f"{request.method} not allowed on {request.path}"}, status=405)
        raise
    except Exception as exc:  # the last line of defence: a JSON 500, logged with its traceback
        log.exception("internal error on %s %s", request.method, request.path)
        return web.json_response({"code": "Internal", "message": f"internal error: {exc}", "details": None},
                                 status=500)


class ControlAPI:
    def __init__(self, store: Store, hub: AgentHub, routes: RoutesPublisher,
                 metrics: ControlMetrics | None = None, tokens: TokenRegistry | None = None,
                 storage_policy: StoragePolicy = PERMISSIVE, usage: UsageBook | None = None) -> None:
        self.store = store
        self.storage_policy = storage_policy  # judged at apply time (control/storage_policy.py)
        self.tokens = tokens or TokenRegistry(None)
        self.metrics = metrics
        self.hub = hub
        self.routes = routes
        self.auth = Auth(self.tokens)
        self.watches = Watches(store, self.auth)
        self.usage = UsageAPI(usage or UsageBook(time.monotonic), self.auth)  # gateways' usage reports
        # /healthz answers the last revision written without taking the store's lock (a long write in the
        # store thread must not hold a probe up): a listener keeps it (an int assignment, from any thread).
        self._revision = store.revision()
        self._apply_lock = asyncio.Lock()
        store.add_listener(self._on_event)

    def _on_event(self, ev: Event) -> None:
        self._revision = max(self._revision, ev.revision)

    def close(self) -> None:
        """End every open watch (on shutdown)."""
        self.watches.close()
        self.routes.close()
        self.auth.close()

    def app(self, *, max_body: int = DEFAULT_MAX_BODY, limits: ListenerLimits | None = None) -> web.Application:
        guard = slowloris_middleware(limits or ListenerLimits())  # inside the errors middleware: 413 stays JSON
        app = web.Application(middlewares=[errors_middleware, guard], client_max_size=max_body)
        self.auth.install(app)  # after the errors middleware: its 401/403 answer as JSON
        r = app.router
        r.add_get("/healthz", self.healthz)
        if self.metrics is not None:
            r.add_get("/metrics", self.metrics.handler)
        r.add_get("/api/v1/version", self.version)
        r.add_post("/api/v1/apply", self.apply)
        r.add_get("/api/v1/watch", self.watches.handle)
        r.add_get(AGENT_PATH, self.hub.handle)
        r.add_get("/api/v1/agents", self.agents)
        r.add_get(ROUTES_PATH, self.routes.get)
        r.add_get(ROUTES_WATCH_PATH, self.routes.watch)
        self.usage.add_routes(r)
        TokensAPI(self.tokens, self.auth).add_routes(r)
        quotas.QuotaAPI(self.store, self.auth).add_routes(r)
        r.add_get("/api/v1/namespaces/{ns}/models/{name}/storage",
                  checks.storage_handler(self.store, self.hub, self.storage_policy))
        r.add_get("/api/v1/namespaces/{ns}/{kind}/{name}", self.get)
        r.add_delete("/api/v1/namespaces/{ns}/{kind}/{name}", self.delete)
        r.add_get("/api/v1/{kind}", self.list)
        return app

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "revision": self._revision})

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": berth.__version__, "api": "v1"})

    async def agents(self, request: web.Request) -> web.Response:
        ns = request.query.get("namespace") or None
        if ns is not None:
            self.auth.require(request, "read", ns, action="list", kind="Agent")
        seen = self.auth.readable(request) if ns is None else frozenset({ns})
        rows = [r.summary() for k, r in sorted(self.hub.replicas.items()) if seen is None or k[0] in seen]
        return web.json_response({"items": rows})

    async def apply(self, request: web.Request) -> web.Response:
        raw = await request.read()
        dry_run = request.query.get("dryRun", "").lower() in ("1", "true", "yes")
        ctype = request.content_type
        try:
            if ctype in ("application/yaml", "application/x-yaml", "text/yaml", "text/plain"):
                documents = read_yaml(raw.decode("utf-8"), "request body")  # with the manifests' limits
            else:
                body = json.loads(raw or b"null")
                if not isinstance(body, dict) or not isinstance(body.get("documents"), list):
                    raise InvalidInput('apply body must be {"documents": [...]} (JSON) or YAML text')
                documents = body["documents"]
                dry_run = dry_run or bool(body.get("dryRun"))
        except (UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
            raise InvalidInput(f"request body is not valid {'YAML' if 'yaml' in ctype else 'JSON'}: "
                               f"{str(exc).splitlines()[0]}") from exc
        too_many = count_problem(len(documents), "request body")
        if too_many:
            raise InvalidManifest([too_many])
        default_ns = request.query.get("namespace") or "default"
        problems: list[str] = []
        warnings: list[str] = []
        seen: set[str] = set()
        bodies: list[dict[str, Any]] = []

        def validate() -> None:  # pure, and 1,000 documents take a while: in a worker thread, off the loop
            for i, doc in enumerate(documents, start=1):
                body, errs = validate_document(doc, f"document#{i}", default_namespace=default_ns,
                                               warnings=warnings, seen_unknown=seen)
                problems.extend(errs)
                bad = annotation_problems(body["kind"], body["metadata"].get("annotations")) if body else []
                if body is not None and bad:  # berth.io/overcommit, berth.io/pinned (docs/overcommit.md)
                    meta = body["metadata"]
                    problems.extend(f"{body['kind']} {meta['namespace']}/{meta.get('name')}: {p}" for p in bad)
                elif body is not None:
                    bodies.append(body)
            if not problems:
                warnings.extend(w for b in bodies for w in unacted_warnings(b))  # kept, but not acted on here

        await asyncio.to_thread(validate)
        if problems:
            raise InvalidManifest(problems)
        bodies.sort(key=lambda b: APPLY_ORDER.get(b["kind"], 99))
        principal = self._authorize_apply(request, bodies)  # all or nothing: 403 before anything is written
        async with self._apply_lock:  # quotas are counted and written in one step (control/quotas.py)
            try:
                refused = await off_loop(policy_problems, self.store, self.storage_policy, bodies)
                if refused:
                    raise InvalidManifest(refused, message=f"{len(refused)} refused by the storage policy of "
                                                           f"{self.storage_policy.source}; nothing was applied")
                over = await off_loop(quotas.check_apply, self.store, bodies)
                if over:
                    raise QuotaExceeded(over, message=quotas.headline(over))
                if dry_run:
                    results = [{"kind": b["kind"], "namespace": b["metadata"]["namespace"],
                                "name": b["metadata"]["name"], "action": "validated"} for b in bodies]
                    return web.json_response({"results": results, "warnings": warnings, "dryRun": True})
                applied = await off_loop(self.store.apply_many, bodies)
            except BerthError as err:
                self.auth.record_many(request, [{"principal": principal.name, "verb": "apply", "kind": b["kind"],
                                                 "namespace": b["metadata"]["namespace"],
                                                 "name": b["metadata"]["name"], "outcome": "failed",
                                                 "reason": failure(err)} for b in bodies])
                raise
        results = [{"kind": obj["kind"], "namespace": obj["metadata"]["namespace"],
                    "name": obj["metadata"]["name"], "action": action,
                    "generation": obj["metadata"]["generation"]} for obj, action in applied]
        # one commit (fsync) of the audit records: in the store thread, not on the loop
        await off_loop(self.auth.record_many, request, [
            {"principal": principal.name, "verb": "apply", "kind": res["kind"], "namespace": res["namespace"],
             "name": res["name"], "outcome": "ok", "reason": str(res["action"])} for res in results])
        return web.json_response({"results": results, "warnings": warnings})

    def _authorize_apply(self, request: web.Request, bodies: list[dict[str, Any]]) -> Principal:
        """The caller, if it may write every document (Secrets: admin); else 403 naming the first namespace
        it may not write in, each refused document recorded."""
        principal = principal_of(request)
        refused = [b for b in bodies if not principal.can(right_for(b["kind"], "write"), b["metadata"]["namespace"])]
        self.auth.record_many(request, [  # the first one is recorded by require(), which answers the 403
            {"principal": principal.name, "verb": "apply", "kind": b["kind"], "namespace": b["metadata"]["namespace"],
             "name": b["metadata"]["name"], "outcome": "forbidden",
             "reason": f"no {right_for(b['kind'], 'write')} right"} for b in refused[1:]])
        if refused:
            meta = refused[0]["metadata"]
            self.auth.require(request, "write", meta["namespace"], action="apply", kind=refused[0]["kind"],
                              name=meta["name"])
        return principal

    def _kind(self, text: str) -> str:
        return kind_from_alias(text)

    async def list(self, request: web.Request) -> web.StreamResponse:
        text = request.match_info["kind"]
        ns = request.query.get("namespace") or None
        selector = _selector(request.query.get("selector", ""))
        kinds = ("Model", "Server", "Experiment", "Pipeline") if text == "all" else (self._kind(text),)
        visible = visibility(self.auth, request, ns, kinds, "list")
        def read() -> bytes:  # in the store thread: a list of 1,000 models is MBs of JSON to encode
            docs = [d for k in kinds for d in self.store.list(k, ns, selector)]
            # one document at a time: json.dumps holds the interpreter lock for all it encodes in one call, and
            # the loop's thread waits for that lock too
            items = ",".join(json.dumps(shown(d)) for d in docs if visible(d))
            return f'{{"items": [{items}], "revision": {self.store.revision()}}}'.encode()

        return await respond_in_slices(request, await off_loop(read), "application/json; charset=utf-8")

    async def get(self, request: web.Request) -> web.Response:
        kind, ns, name = self._ref(request)  # the caller's right in ns was checked first (control/auth.py)
        return web.json_response(shown(await off_loop(self.store.get, kind, ns, name)))

    async def delete(self, request: web.Request) -> web.Response:
        kind, ns, name = self._ref(request)
        principal = principal_of(request)
        try:
            doc = await off_loop(self.store.delete, kind, ns, name)
        except BerthError as err:
            self.auth.record(request, principal.name, "delete", kind, ns, name, outcome="failed", reason=failure(err))
            raise
        self.auth.record(request, principal.name, "delete", kind, ns, name, outcome="ok", reason="deleted")
        return web.json_response(shown(doc))

    def _ref(self, request: web.Request) -> tuple[str, str, str]:
        kind = self._kind(request.match_info["kind"])
        ns = check_name(request.match_info["ns"], what="namespace", label=True)
        name = check_name(request.match_info["name"], what="name")
        return kind, ns, name

def _selector(text: str) -> dict[str, str] | None:
    if not text:
        return None
    out: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise InvalidInput(f"selector: {part!r} is not key=value")
        out[key.strip()] = value.strip()
    return out
