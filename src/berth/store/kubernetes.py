"""The Store protocol over the Kubernetes API: Berth's kinds as custom resources, Secrets as Secrets.

Reads and writes go to the API server (the source of truth, shared with ``kubectl``); the event log that
``events_since`` and listeners serve is fed by one list + watch per kind, as an informer does:

- **watch with resourceVersion.**  Each kind is listed once, then watched from the list's resourceVersion;
  a dropped or timed-out watch resumes from the last resourceVersion it saw (bookmarks included), and an
  event already seen for an object is not logged twice.  A ``410 Gone``/``Expired`` answer (history
  compacted) re-lists and logs the differences as ADDED / MODIFIED / DELETED events.
- **optimistic concurrency.**  Updates carry the resourceVersion they were computed from.  With an
  ``expect_version`` a ``409 Conflict`` is the caller's :class:`~berth.errors.Conflict`; without one the
  object is read again and the write recomputed (a few times), as ``kubectl apply`` does.
- **status** goes through the ``status`` subresource (the main endpoint never changes it, and a spec change
  bumps ``metadata.generation`` server-side); Berth's statuses carry ``observedGeneration``.
- **Secrets** are read from and written to the API's ``v1 Secret``s.

Differences from the SQLite store, all inherent to an API server (docs/kubernetes.md):
listeners run in the store's watch thread when the API server reports the write, a moment after the write
returns (:meth:`KubernetesStore.wait_for` waits for a revision); ``apply_many`` checks every
expected version before writing but is not atomic (a failure part-way leaves the earlier documents written,
and says so); revisions are the API server's resourceVersions, which etcd keeps global and increasing.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from kubernetes_asyncio.client.exceptions import ApiException

from berth.errors import BerthError, Conflict, Forbidden, InvalidInput, NotFound
from berth.kubeapi import KIND_APIS, Api, KindApi, as_error, connect
from berth.store.base import ApplyAction, Event, Listener, StatusUpdate
from berth.store.common import (
    DEFAULT_MAX_EVENTS,
    SERVER_FIELDS,
    canonical,
    check_expected,
    describe,
    expected_version,
    key_of,
    matches_selector,
)
from berth.store.kube_watch import EventLog, Watcher

log = logging.getLogger("berth.store.kubernetes")
T = TypeVar("T")
RETRIES = 5  # re-reads after a 409 when the caller gave no expected version


def _content(obj: dict[str, Any]) -> str:
    out = {k: v for k, v in obj.items() if k not in ("status", "metadata")}
    out["metadata"] = {k: v for k, v in (obj.get("metadata") or {}).items() if k not in SERVER_FIELDS}
    return canonical(out)


def _api(kind: str) -> KindApi:
    api = KIND_APIS.get(kind)
    if api is None:
        raise InvalidInput(f"kind {kind!r} is not stored in Kubernetes by Berth; known: {', '.join(KIND_APIS)}")
    return api


class KubernetesStore:
    """A :class:`berth.store.base.Store` over a Kubernetes API server (one namespace, or all of them)."""

    def __init__(self, *, kubeconfig: str | None = None, context: str | None = None,
                 namespace: str | None = None, max_events: int = DEFAULT_MAX_EVENTS,
                 request_timeout: float = 30.0, watch_timeout: int = 300) -> None:
        self.namespace = namespace  # None: cluster-wide; else a namespaced install reads only this one
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="berth-kube", daemon=True)
        self._thread.start()
        self.events = EventLog(max_events)
        self._watchers: list[Watcher] = []
        try:
            self._api = self._run(self._open(kubeconfig, context, request_timeout))
            for api in KIND_APIS.values():
                watcher = Watcher(self._api, api, namespace, self.events, watch_timeout)
                self._run(watcher.prime(), f"list {api.plural}{f' in {namespace}' if namespace else ''} to watch them")
                self._watchers.append(watcher)
            for watcher in self._watchers:
                watcher.start(self._loop)
        except BaseException:
            if hasattr(self, "_api"):
                asyncio.run_coroutine_threadsafe(self._api.close(), self._loop).result(10)
            self._stop_loop()
            raise

    def __repr__(self) -> str:
        return f"KubernetesStore({self._api.host}, namespace={self.namespace or '*'})"

    async def _open(self, kubeconfig: str | None, context: str | None, timeout: float) -> Api:
        return Api(await connect(kubeconfig, context), timeout)

    def _run(self, coro: Coroutine[Any, Any, T], what: str = "") -> T:
        try:
            return asyncio.run_coroutine_threadsafe(coro, self._loop).result()
        except BerthError:
            raise
        except Exception as exc:  # noqa: BLE001 - every other failure is the API's, named once here
            host = getattr(getattr(self, "_api", None), "host", "(not connected)")
            raise as_error(exc, what or "Kubernetes call", host) from exc

    def _scope(self, namespace: str | None) -> str | None:
        if self.namespace is not None and namespace not in (None, self.namespace):
            raise Forbidden(f"this control plane is installed for namespace {self.namespace} only and never "
                            f"reads {namespace}; install one there, or a cluster-wide one")
        return namespace if namespace is not None else self.namespace

    # -- reads ----------------------------------------------------------------------------------------
    async def _get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return _normal(kind, await self._api.call("GET", _api(kind).path(namespace, name)))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        self._scope(namespace)
        obj = self._run(self._get(kind, namespace, name), f"get {describe((kind, namespace, name))}")
        if obj is None:
            raise NotFound(f"{kind} {name!r} not found in namespace {namespace!r}; check the name and namespace",
                           details={"kind": kind, "namespace": namespace, "name": name})
        return obj

    def list(self, kind: str | None = None, namespace: str | None = None,
             selector: dict[str, str] | None = None) -> builtins.list[dict[str, Any]]:
        ns = self._scope(namespace)

        async def run() -> builtins.list[dict[str, Any]]:
            out: builtins.list[dict[str, Any]] = []
            for k in [kind] if kind else builtins.list(KIND_APIS):
                query = [("labelSelector", ",".join(f"{a}={b}" for a, b in selector.items()))] if selector else []
                found = await self._api.call("GET", _api(k).path(ns), query=query)
                out += [_normal(k, item) for item in found.get("items") or []]
            return out

        items = self._run(run(), f"list {kind or 'resources'}{f' in {ns}' if ns else ''}")
        items = [i for i in items if matches_selector(i, selector)]
        return sorted(items, key=lambda o: (o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]))

    # -- writes ---------------------------------------------------------------------------------------
    async def _apply(self, body: dict[str, Any], expect_version: str | None) -> tuple[dict[str, Any], ApplyAction]:
        key = key_of(body)
        api = _api(key[0])
        expect = expected_version(body, expect_version)
        for _ in range(RETRIES):
            current = await self._get(*key)
            check_expected(current, key, expect)
            doc = {k: v for k, v in body.items() if k != "status"}
            meta = {k: v for k, v in (body.get("metadata") or {}).items() if k not in SERVER_FIELDS}
            meta["namespace"] = key[1]
            doc["metadata"] = meta
            doc["apiVersion"] = api.api_version
            try:
                if current is None:
                    return self.events.seen(_normal(key[0], await self._api.call("POST", api.path(key[1]), doc))), \
                        "created"
                if _content(doc) == _content(current):
                    return current, "unchanged"
                meta["resourceVersion"] = current["metadata"]["resourceVersion"]
                stored = await self._api.call("PUT", api.path(key[1], key[2]), doc)
                return self.events.seen(_normal(key[0], stored)), "configured"
            except ApiException as exc:
                if exc.status != 409 or expect is not None:
                    raise
                log.info("%s changed while applying it; reading it again", describe(key))
        raise Conflict(f"{describe(key)} kept changing while Berth applied it ({RETRIES} tries); retry")

    def apply(self, body: dict[str, Any], *, expect_version: str | None = None
              ) -> tuple[dict[str, Any], ApplyAction]:
        self._scope(key_of(body)[1])
        return self._run(self._apply(body, expect_version), f"apply {describe(key_of(body))}")

    def apply_many(self, bodies: builtins.list[dict[str, Any]]
                   ) -> builtins.list[tuple[dict[str, Any], ApplyAction]]:
        """Check every expected version first, then apply in order (not atomic: the API has no transactions)."""
        for body in bodies:
            key = key_of(body)
            self._scope(key[1])
            expect = expected_version(body, None)
            if expect is not None:
                check_expected(self._run(self._get(*key), f"get {describe(key)}"), key, expect)
        done: builtins.list[tuple[dict[str, Any], ApplyAction]] = []
        for body in bodies:
            try:
                done.append(self.apply(body))
            except BerthError as exc:
                if done:
                    exc.message += (f" ({len(done)} earlier document(s) were written: "
                                    f"{', '.join(describe(key_of(d)) for d, _ in done)})")
                raise
        return done

    async def _update_status(self, kind: str, namespace: str, name: str, status: dict[str, Any],
                             expect: str | None) -> dict[str, Any]:
        api = _api(kind)
        if kind not in {"Model", "Server", "ServerConfig", "Experiment", "Pipeline", "SeldonRuntime"}:
            raise InvalidInput(f"{kind} has no status subresource")
        key = (kind, namespace, name)
        for _ in range(RETRIES):
            current = await self._get(kind, namespace, name)
            check_expected(current, key, expect)
            if current is None:
                raise NotFound(f"{kind} {name!r} not found in namespace {namespace!r}",
                               details={"kind": kind, "namespace": namespace, "name": name})
            doc = {"apiVersion": api.api_version, "kind": kind, "status": status,
                   "metadata": {"name": name, "namespace": namespace,
                                "resourceVersion": current["metadata"]["resourceVersion"]}}
            try:
                stored = await self._api.call("PUT", api.path(namespace, name, status=True), doc)
                return self.events.seen(_normal(kind, stored))
            except ApiException as exc:
                if exc.status != 409 or expect is not None:
                    raise
        raise Conflict(f"{describe(key)} kept changing while Berth wrote its status ({RETRIES} tries)")

    def update_status(self, kind: str, namespace: str, name: str, status: dict[str, Any], *,
                      expect_version: str | None = None) -> dict[str, Any]:
        self._scope(namespace)
        return self._run(self._update_status(kind, namespace, name, status, expect_version),
                         f"update the status of {describe((kind, namespace, name))}")

    def update_statuses(self, updates: builtins.list[StatusUpdate]
                        ) -> builtins.list[dict[str, Any] | Conflict | NotFound]:
        out: builtins.list[dict[str, Any] | Conflict | NotFound] = []
        for u in updates:
            try:
                out.append(self.update_status(u.kind, u.namespace, u.name, u.status, expect_version=u.expect_version))
            except (Conflict, NotFound) as exc:
                out.append(exc)
        return out

    async def _delete(self, kind: str, namespace: str, name: str, expect: str | None) -> dict[str, Any]:
        key = (kind, namespace, name)
        for _ in range(RETRIES):
            current = await self._get(kind, namespace, name)
            check_expected(current, key, expect)
            if current is None:
                raise NotFound(f"{kind} {name!r} not found in namespace {namespace!r}; check the name and "
                               "namespace", details={"kind": kind, "namespace": namespace, "name": name})
            options = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background",
                       "preconditions": {"resourceVersion": current["metadata"]["resourceVersion"]}}
            try:
                await self._api.call("DELETE", _api(kind).path(namespace, name), options)
                return current
            except ApiException as exc:
                if exc.status != 409 or expect is not None:
                    raise
        raise Conflict(f"{describe(key)} kept changing while Berth deleted it ({RETRIES} tries)")

    def delete(self, kind: str, namespace: str, name: str, *, expect_version: str | None = None) -> dict[str, Any]:
        self._scope(namespace)
        return self._run(self._delete(kind, namespace, name, expect_version),
                         f"delete {describe((kind, namespace, name))}")

    # -- events ---------------------------------------------------------------------------------------
    def revision(self) -> int:
        return self.events.revision

    def events_since(self, revision: int, *, kinds: tuple[str, ...] | None = None,
                     namespace: str | None = None, limit: int = 1000) -> builtins.list[Event]:
        return self.events.since(revision, kinds=kinds, namespace=namespace, limit=limit)

    def wait_for(self, revision: int, timeout: float = 10.0) -> bool:
        """Wait until the watches have logged ``revision`` (a write of this store is seen as an event)."""
        return self.events.wait_for(revision, timeout)

    def add_listener(self, listener: Listener) -> None:
        self.events.add_listener(listener)

    def remove_listener(self, listener: Listener) -> None:
        self.events.remove_listener(listener)

    def close(self) -> None:
        if not self._loop.is_running():
            return

        async def shut() -> None:
            for watcher in self._watchers:
                await watcher.stop()
            await self._api.close()

        try:
            asyncio.run_coroutine_threadsafe(shut(), self._loop).result(10)
        except Exception as exc:  # noqa: BLE001 - closing: nothing left to tell but the log
            log.warning("closing the Kubernetes store: %s", exc)
        self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._loop.is_running():
            self._loop.close()


def _normal(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    """The API's object as the Store protocol hands it out: kind and apiVersion always set."""
    obj.setdefault("kind", kind)
    obj.setdefault("apiVersion", KIND_APIS[kind].api_version)
    return obj

