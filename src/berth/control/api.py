"""The control plane's HTTP/JSON API over the store.

    POST   /api/v1/apply                          JSON {"documents": [...], "dryRun": bool} or YAML text
    GET    /api/v1/{kind}?namespace=&selector=    list (kind: models, servers, ..., or "all")
    GET    /api/v1/namespaces/{ns}/{kind}/{name}  get
    DELETE /api/v1/namespaces/{ns}/{kind}/{name}  delete
    GET    /api/v1/watch?kinds=&namespace=&since= NDJSON event stream (or WebSocket on upgrade)
    GET    /api/v1/agents                         connected and lost replicas, as the hub knows them
    GET    /api/v1/routes[/watch]                 routing table for gateways
    GET    /api/v1/agents/connect                 agent WebSocket
    GET    /healthz, /api/v1/version

Errors answer ``{code, message, details}`` with the error's HTTP status; bad input changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import yaml
from aiohttp import web

import berth
from berth.control import checks
from berth.control.hub import AgentHub
from berth.control.metrics import ControlMetrics
from berth.control.routes import RoutesPublisher
from berth.control.secrets import redact
from berth.control.tokens import TokenRegistry
from berth.errors import BerthError, InvalidInput, InvalidManifest, NotFound, PayloadTooLarge
from berth.resources.kinds import ALL_KINDS, APPLY_ORDER, kind_from_alias
from berth.resources.manifest import unacted_warnings, validate_document
from berth.resources.names import check_name
from berth.store.base import Event, Store
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
        return error_response(err)
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


def shown(doc: dict[str, Any]) -> dict[str, Any]:
    return redact(doc) if doc.get("kind") == "Secret" else doc


class ControlAPI:
    def __init__(self, store: Store, hub: AgentHub, routes: RoutesPublisher,
                 metrics: ControlMetrics | None = None, tokens: TokenRegistry | None = None) -> None:
        self.store = store
        self.tokens = tokens or TokenRegistry(None)
        self.metrics = metrics
        self.hub = hub
        self.routes = routes
        self._watches: set[asyncio.Event] = set()  # one wake-up per open watch
        self.closing = False
        store.add_listener(self._on_event)

    def close(self) -> None:
        """End every open watch (on shutdown)."""
        self.closing = True
        self._on_event(None)
        self.routes.close()

    def _on_event(self, ev: Event | None) -> None:
        for wake in self._watches:
            wake.set()

    def app(self, *, max_body: int = DEFAULT_MAX_BODY) -> web.Application:
        app = web.Application(middlewares=[errors_middleware], client_max_size=max_body)
        r = app.router
        r.add_get("/healthz", self.healthz)
        if self.metrics is not None:
            r.add_get("/metrics", self.metrics.handler)
        r.add_get("/api/v1/version", self.version)
        r.add_post("/api/v1/apply", self.apply)
        r.add_get("/api/v1/watch", self.watch)
        r.add_get(AGENT_PATH, self.hub.handle)
        r.add_get("/api/v1/agents", self.agents)
        r.add_get(ROUTES_PATH, self.routes.get)
        r.add_get(ROUTES_WATCH_PATH, self.routes.watch)
        r.add_get("/api/v1/namespaces/{ns}/models/{name}/storage", checks.storage_handler(self.store))
        r.add_get("/api/v1/namespaces/{ns}/{kind}/{name}", self.get)
        r.add_delete("/api/v1/namespaces/{ns}/{kind}/{name}", self.delete)
        r.add_get("/api/v1/{kind}", self.list)
        return app

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True, "revision": self.store.revision()})

    async def version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": berth.__version__, "api": "v1"})

    async def agents(self, request: web.Request) -> web.Response:
        ns = request.query.get("namespace")
        rows = [r.summary() for k, r in sorted(self.hub.replicas.items()) if ns in (None, "", k[0])]
        return web.json_response({"items": rows})

    async def apply(self, request: web.Request) -> web.Response:
        raw = await request.read()
        dry_run = request.query.get("dryRun", "").lower() in ("1", "true", "yes")
        ctype = request.content_type
        try:
            if ctype in ("application/yaml", "application/x-yaml", "text/yaml", "text/plain"):
                documents = [d for d in yaml.safe_load_all(raw.decode("utf-8")) if d is not None]
            else:
                body = json.loads(raw or b"null")
                if not isinstance(body, dict) or not isinstance(body.get("documents"), list):
                    raise InvalidInput('apply body must be {"documents": [...]} (JSON) or YAML text')
                documents = body["documents"]
                dry_run = dry_run or bool(body.get("dryRun"))
        except (UnicodeDecodeError, json.JSONDecodeError, yaml.YAMLError) as exc:
            raise InvalidInput(f"request body is not valid {'YAML' if 'yaml' in ctype else 'JSON'}: "
                               f"{str(exc).splitlines()[0]}") from exc
        default_ns = request.query.get("namespace") or "default"
        problems: list[str] = []
        warnings: list[str] = []
        seen: set[str] = set()
        bodies: list[dict[str, Any]] = []
        for i, doc in enumerate(documents, start=1):
            body, errs = validate_document(doc, f"document#{i}", default_namespace=default_ns,
                                           warnings=warnings, seen_unknown=seen)
            problems.extend(errs)
            if body is not None:
                bodies.append(body)
        if problems:
            raise InvalidManifest(problems)
        warnings.extend(w for b in bodies for w in unacted_warnings(b))  # kept, but not acted on here
        bodies.sort(key=lambda b: APPLY_ORDER.get(b["kind"], 99))
        if dry_run:
            results = [{"kind": b["kind"], "namespace": b["metadata"]["namespace"],
                        "name": b["metadata"]["name"], "action": "validated"} for b in bodies]
            return web.json_response({"results": results, "warnings": warnings, "dryRun": True})
        applied = self.store.apply_many(bodies)
        results = [{"kind": obj["kind"], "namespace": obj["metadata"]["namespace"],
                    "name": obj["metadata"]["name"], "action": action,
                    "generation": obj["metadata"]["generation"]} for obj, action in applied]
        return web.json_response({"results": results, "warnings": warnings})

    def _kind(self, text: str) -> str:
        return kind_from_alias(text)

    async def list(self, request: web.Request) -> web.Response:
        text = request.match_info["kind"]
        ns = request.query.get("namespace") or None
        selector = _selector(request.query.get("selector", ""))
        kinds = ("Model", "Server", "Experiment", "Pipeline") if text == "all" else (self._kind(text),)
        if ns is not None:
            check_name(ns, what="namespace", label=True)
        items = [shown(d) for k in kinds for d in self.store.list(k, ns, selector)]
        return web.json_response({"items": items, "revision": self.store.revision()})

    async def get(self, request: web.Request) -> web.Response:
        kind, ns, name = self._ref(request)
        return web.json_response(shown(self.store.get(kind, ns, name)))

    async def delete(self, request: web.Request) -> web.Response:
        kind, ns, name = self._ref(request)
        return web.json_response(shown(self.store.delete(kind, ns, name)))

    def _ref(self, request: web.Request) -> tuple[str, str, str]:
        kind = self._kind(request.match_info["kind"])
        ns = check_name(request.match_info["ns"], what="namespace", label=True)
        name = check_name(request.match_info["name"], what="name")
        return kind, ns, name

    async def watch(self, request: web.Request) -> web.StreamResponse:
        kinds_q = request.query.get("kinds", "")
        kinds = tuple(self._kind(k) for k in kinds_q.split(",") if k) or None
        ns = request.query.get("namespace") or None
        since_q = request.query.get("since")
        if since_q is not None and not since_q.isdigit():
            raise InvalidInput(f"since: expected a resourceVersion (integer), got {since_q!r}")
        since = int(since_q) if since_q is not None else None
        if since is not None:
            self.store.events_since(since, kinds=kinds, namespace=ns, limit=1)  # Expired → 410 now
        ws = web.WebSocketResponse(heartbeat=20.0)
        use_ws = ws.can_prepare(request).ok
        if use_ws:
            await ws.prepare(request)
            resp: web.StreamResponse = ws
        else:
            resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
            await resp.prepare(request)

        async def send(payload: dict[str, Any]) -> None:
            line = json.dumps(payload)
            if use_ws:
                await ws.send_str(line)
            else:
                await resp.write(line.encode() + b"\n")

        wake = asyncio.Event()
        self._watches.add(wake)
        reader: asyncio.Task[None] | None = None
        if use_ws:  # read the client's frames, so a close is answered at once and ends the watch
            async def drain() -> None:
                async for _ in ws:
                    pass
                wake.set()

            reader = asyncio.create_task(drain())
        try:
            if since is None:
                since = self.store.revision()
                for k in kinds or ALL_KINDS:
                    for doc in self.store.list(k, ns):
                        await send({"type": "ADDED", "revision": since, "object": shown(doc)})
            while not self.closing and not (use_ws and ws.closed):
                wake.clear()
                head = self.store.revision()
                events = self.store.events_since(since, kinds=kinds, namespace=ns)
                for ev in events:
                    since = ev.revision
                    await send({"type": ev.type, "revision": ev.revision, "object": shown(ev.object)})
                if events:
                    continue
                since = max(since, head)  # nothing matched up to head: never fall behind compaction
                try:
                    await asyncio.wait_for(wake.wait(), timeout=15.0)
                except TimeoutError:
                    if not use_ws:
                        await resp.write(b"\n")  # keep-alive
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        except BerthError as err:  # e.g. Expired while streaming
            await send({"type": "ERROR", "object": err.to_dict()})
        finally:
            self._watches.discard(wake)
            if reader is not None:
                reader.cancel()
        return resp


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
