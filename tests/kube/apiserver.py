"""An emulated Kubernetes API server for Berth's kinds and Secrets, speaking the real HTTP API on 127.0.0.1.

What it keeps as a real API server does (the parts Berth's Kubernetes store relies on):

- one global, strictly increasing ``resourceVersion`` (etcd's revision) stamped on every write;
- ``metadata.generation`` on custom resources, bumped only when something outside metadata and status
  changes (the status subresource is enabled for every CRD); Secrets carry none, as in Kubernetes;
- ``PUT`` needs ``metadata.resourceVersion`` and answers ``409 Conflict`` when it is stale; ``POST`` of an
  existing name answers ``409 AlreadyExists``; ``DELETE`` honours ``preconditions.resourceVersion``;
- ``PUT .../status`` changes only ``status`` (and the main endpoint never changes it);
- list + watch from a ``resourceVersion``: a watch replays the history after it, then streams live events;
  one older than the kept history gets an ``ERROR`` event with a ``410 Expired`` Status;
- custom resources are validated against Berth's generated CRD schemas (``422 Invalid``);
- every request needs the bearer token of the kubeconfig it writes (``401`` otherwise).

Hooks for the tests: :meth:`drop_watches` (the connection breaks, as on an API server restart or a load
balancer's idle timeout), :meth:`compact` (history forgotten, as etcd compaction does), and
:meth:`touch` (a concurrent writer changes an object, bumping its resourceVersion).

kmock's ``KubernetesEmulator`` was the first choice; its 0.8 release registers a pytest plugin that needs
pytest-asyncio (absent here: installing kmock breaks every pytest run of the suite), keeps no
resourceVersion or generation and never answers 409 or 410, so the parts tested here would have been
reactions of our own anyway.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import secrets
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import jsonschema
import yaml
from aiohttp import web

from berth.kube.crds import GROUP, VERSION, all_crds
from berth.kube.openapi import json_schema
from tests.kube.service_proxy import PROXY, proxy

Key = tuple[str, str, str]  # (plural, namespace, name)
KINDS = {c["spec"]["names"]["plural"]: c["spec"]["names"]["kind"] for c in all_crds()}
# The API groups served, and their resources (the provisioner's objects besides Berth's kinds and Secrets).
SERVED: dict[tuple[str, ...], set[str]] = {
    ("apis", GROUP, VERSION): set(KINDS),
    ("api", "v1"): {"secrets", "services", "serviceaccounts", "pods", "namespaces"},
    ("apis", "apps", "v1"): {"statefulsets", "deployments"},
    ("apis", "networking.k8s.io", "v1"): {"networkpolicies"},
}
NO_GENERATION = {"secrets", "services", "serviceaccounts", "pods"}  # core kinds the API server keeps no generation for
SCHEMAS = {c["spec"]["names"]["plural"]: jsonschema.Draft4Validator(
    json_schema(c["spec"]["versions"][0]["schema"]["openAPIV3Schema"])) for c in all_crds()}


def _status(code: int, reason: str, message: str) -> web.Response:
    return web.json_response({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                              "code": code, "reason": reason, "message": message}, status=code)


def _secret_data(obj: dict[str, Any]) -> dict[str, Any]:
    """``stringData`` is write-only: the API server merges it into ``data`` (base64) and drops it."""
    if "stringData" in obj:
        data = dict(obj.get("data") or {})
        data.update({k: base64.b64encode(str(v).encode()).decode() for k, v in obj.pop("stringData").items()})
        obj["data"] = data
    return obj


def _content(obj: dict[str, Any]) -> Any:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status", "apiVersion", "kind")}


class ApiServer:
    """Run with ``with ApiServer(tmp_path) as api: ...``; ``api.kubeconfig`` is the file to hand clients."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.token = secrets.token_hex(16)
        self.objects: dict[Key, dict[str, Any]] = {}
        self.history: list[tuple[int, str, str, dict[str, Any]]] = []  # (rv, type, plural, object)
        self.floor = 0  # the oldest resourceVersion a watch may start from
        self.rev = 100
        self.requests: list[tuple[str, str]] = []
        self.interfere_puts = 0  # the next N PUTs lose a race against another writer (409)
        self.tokens: dict[str, dict[str, Any]] = {}  # ServiceAccount tokens TokenReview knows
        self.pod_ports: dict[str, dict[int, int]] = {}  # pod IP -> container port -> host port (kubelet.py)
        self._watchers: set[asyncio.Queue[Any]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kube-apiserver", daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- lifecycle ------------------------------------------------------------------------------------
    def __enter__(self) -> ApiServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _stop(self) -> None:
        for q in list(self._watchers):
            q.put_nowait(None)
        assert self._runner is not None
        await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def kubeconfig(self) -> Path:
        path = self.folder / "kubeconfig"
        if not path.exists():
            path.write_text(yaml.safe_dump({
                "apiVersion": "v1", "kind": "Config", "current-context": "emulated",
                "clusters": [{"name": "emulated", "cluster": {"server": self.url}}],
                "users": [{"name": "berth", "user": {"token": self.token}}],
                "contexts": [{"name": "emulated", "context": {"cluster": "emulated", "user": "berth"}}]}))
        return path

    # -- hooks ----------------------------------------------------------------------------------------
    def _sync(self, fn: Any, *args: Any) -> Any:
        async def run() -> Any:
            return fn(*args)
        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(10)

    def drop_watches(self) -> None:
        """Break every open watch connection (clients must resume from their last resourceVersion)."""
        def run() -> None:
            for q in list(self._watchers):
                q.put_nowait(None)
        self._sync(run)

    def compact(self) -> None:
        """Forget the history: a watch from any earlier resourceVersion now gets 410 Expired."""
        def run() -> None:
            self.history.clear()
            self.floor = self.rev
        self._sync(run)

    def touch(self, plural: str, namespace: str, name: str) -> None:
        """A concurrent writer: change an annotation, so the object's resourceVersion moves on."""
        def run() -> None:
            obj = self.objects[(plural, namespace, name)]
            obj["metadata"].setdefault("annotations", {})["test/touched"] = str(time.monotonic())
            self._write("MODIFIED", plural, obj)
        self._sync(run)

    def issue_token(self, namespace: str, account: str, audiences: list[str],
                    pod: dict[str, Any] | None = None, expires_in: float | None = None) -> str:
        """A ServiceAccount token as the kubelet projects it (bound to ``pod`` when given); with ``expires_in``,
        shaped as a JWT whose ``exp`` claim is that many seconds on (the signature is random: only this
        server's TokenReview vouches for it)."""
        token = secrets.token_urlsafe(24)
        if expires_in is not None:
            claims = {"exp": time.time() + expires_in, "aud": audiences, "sub": f"system:serviceaccount:{namespace}:"
                      f"{account}"}
            token = ".".join(base64.urlsafe_b64encode(json.dumps(part).encode()).decode().rstrip("=")
                             for part in ({"alg": "RS256", "typ": "JWT"}, claims)) + "." + token
        extra = ({"authentication.kubernetes.io/pod-name": [pod["metadata"]["name"]],
                  "authentication.kubernetes.io/pod-uid": [pod["metadata"]["uid"]]} if pod else {})
        self.tokens[token] = {"audiences": audiences, "user": {
            "username": f"system:serviceaccount:{namespace}:{account}", "uid": str(uuid.uuid4()),
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"], "extra": extra}}
        return token

    def _review(self, body: dict[str, Any]) -> web.Response:
        spec = body.get("spec") or {}
        known = self.tokens.get(str(spec.get("token")))
        wanted = spec.get("audiences") or []
        status: dict[str, Any] = {"authenticated": False}
        if known is None:
            status["error"] = "invalid bearer token"
        elif wanted and not set(wanted) & set(known["audiences"]):
            status["error"] = f"token audiences {known['audiences']} is invalid for the target audiences {wanted}"
        else:
            status = {"authenticated": True, "user": known["user"],
                      "audiences": [a for a in known["audiences"] if not wanted or a in wanted]}
        return web.json_response({**body, "status": status}, status=201)

    # -- the API --------------------------------------------------------------------------------------
    def _write(self, kind: str, plural: str, obj: dict[str, Any]) -> dict[str, Any]:
        self.rev += 1
        obj["metadata"]["resourceVersion"] = str(self.rev)
        self.history.append((self.rev, kind, plural, copy.deepcopy(obj)))
        for q in self._watchers:
            q.put_nowait((self.rev, kind, plural, copy.deepcopy(obj)))
        return obj

    @staticmethod
    def _route(path: str) -> tuple[str, str | None, str | None, bool] | None:
        """(plural, namespace, name, status) of an API path, or None when it is none of ours."""
        parts = path.strip("/").split("/")
        prefix = next((p for p in SERVED if parts[:len(p)] == list(p)), None)
        if prefix is None:
            return None
        plurals, rest = SERVED[prefix], parts[len(prefix):]
        ns = None
        if len(rest) >= 2 and rest[0] == "namespaces":
            ns, rest = rest[1], rest[2:]
        if not rest or rest[0] not in plurals or len(rest) > 3:
            return None
        status = len(rest) == 3 and rest[2] == "status"
        if len(rest) == 3 and not status:
            return None
        return rest[0], ns, rest[1] if len(rest) > 1 else None, status

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path_qs))
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _status(401, "Unauthorized", "Unauthorized")
        if request.method == "POST" and request.path == "/apis/authentication.k8s.io/v1/tokenreviews":
            return self._review(await request.json())
        if request.path == "/version":
            return web.json_response({"major": "1", "minor": "31", "gitVersion": "v1.31.0-emulated"})
        if (proxied := PROXY.fullmatch(request.path)) is not None:  # services/NAME:PORT/proxy/...
            return await proxy(self, request, *proxied.groups())
        route = self._route(request.path)
        if route is None:
            return _status(404, "NotFound", f"the server could not find the requested resource {request.path}")
        plural, ns, name, status = route
        if name is None:
            if request.method == "GET":
                if request.query.get("watch") in ("1", "true"):
                    return await self._watch(request, plural, ns)
                return self._list(request, plural, ns)
            if request.method == "POST" and ns is not None:
                return self._create(plural, ns, await request.json())
            return _status(405, "MethodNotAllowed", f"{request.method} is not allowed here")
        assert ns is not None
        key = (plural, ns, name)
        current = self.objects.get(key)
        if request.method == "GET":
            return web.json_response(current) if current else self._not_found(plural, name)
        if request.method == "PUT":
            return self._replace(key, current, await request.json(), status)
        if request.method == "DELETE":
            body = await request.json() if request.can_read_body else {}
            return self._delete(key, current, body)
        return _status(405, "MethodNotAllowed", f"{request.method} is not allowed here")

    @staticmethod
    def _not_found(plural: str, name: str) -> web.Response:
        return _status(404, "NotFound", f'{plural}.{GROUP} "{name}" not found')

    def _invalid(self, plural: str, body: dict[str, Any]) -> web.Response | None:
        if plural not in SCHEMAS:
            return None
        errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in SCHEMAS[plural].iter_errors(body)]
        return _status(422, "Invalid", "; ".join(errors)) if errors else None

    def _list(self, request: web.Request, plural: str, ns: str | None) -> web.Response:
        wanted = dict(p.split("=", 1) for p in request.query.get("labelSelector", "").split(",") if "=" in p)
        items = [o for (p, n, _), o in sorted(self.objects.items())
                 if p == plural and (ns is None or n == ns)
                 and all((o["metadata"].get("labels") or {}).get(k) == v for k, v in wanted.items())]
        return web.json_response({"apiVersion": "v1", "kind": "List", "items": items,
                                  "metadata": {"resourceVersion": str(self.rev)}})

    async def _watch(self, request: web.Request, plural: str, ns: str | None) -> web.StreamResponse:
        since = int(request.query.get("resourceVersion") or 0)
        timeout = float(request.query.get("timeoutSeconds") or 300)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        if since < self.floor:
            gone = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410, "reason": "Expired",
                    "message": f"too old resource version: {since} ({self.floor})"}
            await response.write(json.dumps({"type": "ERROR", "object": gone}).encode() + b"\n")
            return response
        queue: asyncio.Queue[Any] = asyncio.Queue()
        for item in self.history:
            if item[0] > since:
                queue.put_nowait(item)
        self._watchers.add(queue)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    break
                if item is None:  # dropped by the test: close the connection mid-stream
                    if request.transport is not None:
                        request.transport.close()
                    break
                rev, kind, item_plural, obj = item
                if item_plural == plural and (ns is None or obj["metadata"]["namespace"] == ns):
                    await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
        except ConnectionError:  # the client went away
            pass
        finally:
            self._watchers.discard(queue)
        return response

    def _create(self, plural: str, ns: str, body: dict[str, Any]) -> web.Response:
        meta = body.get("metadata") or {}
        key = (plural, ns, str(meta.get("name")))
        if key in self.objects:
            return _status(409, "AlreadyExists", f'{plural}.{GROUP} "{key[2]}" already exists')
        if (bad := self._invalid(plural, body)) is not None:
            return bad
        obj = {k: v for k, v in body.items() if k != "status"}
        obj["metadata"] = {**{k: v for k, v in meta.items() if k not in ("resourceVersion", "generation")},
                           "namespace": ns, "uid": str(uuid.uuid4()),
                           "creationTimestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        if plural not in NO_GENERATION:
            obj["metadata"]["generation"] = 1
        if plural == "secrets":
            _secret_data(obj)
        if plural == "services" and not obj.get("spec", {}).get("clusterIP"):
            obj["spec"]["clusterIP"] = f"10.96.{self.rev // 250 % 250}.{self.rev % 250 + 1}"
        self.objects[key] = self._write("ADDED", plural, obj)
        return web.json_response(obj, status=201)

    def _replace(self, key: Key, current: dict[str, Any] | None, body: dict[str, Any],
                 status: bool) -> web.Response:
        if current is None:
            return self._not_found(key[0], key[2])
        if self.interfere_puts > 0:  # a concurrent writer gets there first
            self.interfere_puts -= 1
            current["metadata"].setdefault("annotations", {})["test/raced"] = str(time.monotonic())
            current = self._write("MODIFIED", key[0], current)
        rv = (body.get("metadata") or {}).get("resourceVersion")
        if not rv:
            return _status(422, "Invalid", "metadata.resourceVersion: Invalid value: 0x0: must be specified "
                                           "for an update")
        if str(rv) != current["metadata"]["resourceVersion"]:
            return _status(409, "Conflict", f'Operation cannot be fulfilled on {key[0]}.{GROUP} "{key[2]}": '
                                            "the object has been modified; please apply your changes to the "
                                            "latest version and try again")
        if status:
            obj = copy.deepcopy(current)
            obj["status"] = body.get("status")
        else:
            if (bad := self._invalid(key[0], body)) is not None:
                return bad
            if key[0] == "services" and (body.get("spec") or {}).get("clusterIP") != current["spec"]["clusterIP"]:
                return _status(422, "Invalid", f'Service "{key[2]}" is invalid: spec.clusterIP: Invalid value: '
                                               f'"{(body.get("spec") or {}).get("clusterIP", "")}": field is immutable')
            obj = {k: v for k, v in body.items() if k != "status"}
            if "status" in current:
                obj["status"] = current["status"]
            kept = {k: current["metadata"][k] for k in ("uid", "creationTimestamp", "generation", "namespace")
                    if k in current["metadata"]}
            obj["metadata"] = {**body.get("metadata", {}), **kept}
            if key[0] == "secrets":
                _secret_data(obj)
            if "generation" in kept and _content(obj) != _content(current):
                obj["metadata"]["generation"] = kept["generation"] + 1
        if obj == current:
            return web.json_response(current)  # a no-op update writes nothing
        self.objects[key] = self._write("MODIFIED", key[0], obj)
        return web.json_response(obj)

    def _delete(self, key: Key, current: dict[str, Any] | None, body: dict[str, Any]) -> web.Response:
        if current is None:
            return self._not_found(key[0], key[2])
        want = ((body or {}).get("preconditions") or {}).get("resourceVersion")
        if want and str(want) != current["metadata"]["resourceVersion"]:
            return _status(409, "Conflict", f"Precondition failed: ResourceVersion in precondition: {want}, "
                                            f"ResourceVersion in object meta: {current['metadata']['resourceVersion']}")
        del self.objects[key]
        gone = self._write("DELETED", key[0], copy.deepcopy(current))
        return web.json_response(gone)


@contextmanager
def api_server(folder: Path) -> Iterator[ApiServer]:
    with ApiServer(folder) as api:
        yield api
