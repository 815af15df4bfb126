"""The Kubernetes provisioner: makes a namespace's cluster objects match what Berth wants.

For each namespace touched by a Server, ServerConfig or SeldonRuntime event (and every namespace on a
periodic resync), it computes :func:`berth.kube.desired.desired_objects`, lists the objects Berth manages
there (label ``app.kubernetes.io/managed-by=berth``), then creates what is missing, replaces what Berth's
intent changed for (``berth.io/desired-hash``), and deletes what is no longer wanted (owner references
let Kubernetes' garbage collector do the same when a Server is deleted; deleting here also covers objects
whose owner was replaced).  A 409 leaves the namespace marked for the next pass.  An object of the same
name that Berth does not manage is left alone and reported.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from berth.kube.desired import HASH, MANAGED, desired_objects
from berth.kube.workloads import MANAGED_BY, Install
from berth.kubeapi import Api, as_error
from berth.store.base import Event, Store
from berth.store.offloop import off_loop, on_loop

log = logging.getLogger("berth.control.kube_provisioner")
WATCHED = ("Server", "ServerConfig", "SeldonRuntime")
PLURALS = {kind: (api_version, plural) for api_version, kind, plural in MANAGED}


def object_path(api_version: str, plural: str, namespace: str, name: str | None = None) -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return f"{base}/namespaces/{namespace}/{plural}" + (f"/{name}" if name else "")


@dataclass
class Outcome:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    unchanged: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def writes(self) -> int:
        return len(self.created) + len(self.updated) + len(self.deleted)


def _carry_immutable(doc: dict[str, Any], current: Mapping[str, Any]) -> None:
    """Fields the API server assigns and never lets an update change: carried from the stored object."""
    if doc["kind"] == "Service":
        for key in ("clusterIP", "clusterIPs"):
            if key in (current.get("spec") or {}):
                doc["spec"][key] = current["spec"][key]


class KubeProvisioner:
    def __init__(self, store: Store, api: Api, install: Install, *,
                 storage: Sequence[Mapping[str, Any]] = (), resync_s: float = 60.0) -> None:
        self.store, self.api, self.install, self.storage, self.resync_s = store, api, install, storage, resync_s
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        # Servers as autoscaling decided them (spec.replicas replaced; control/autoscale_loop.py)
        self.adjust: Callable[[str, list[dict[str, Any]]], list[dict[str, Any]]] = lambda ns, docs: docs

    # -- one namespace ---------------------------------------------------------------------------------
    async def _managed(self, namespace: str) -> dict[tuple[str, str], dict[str, Any]]:
        found: dict[tuple[str, str], dict[str, Any]] = {}
        for api_version, kind, plural in MANAGED:
            listed = await self.api.call("GET", object_path(api_version, plural, namespace),
                                         query=[("labelSelector", f"{MANAGED_BY}=berth")])
            for item in listed.get("items") or []:
                found[(kind, item["metadata"]["name"])] = item
        return found

    async def reconcile(self, namespace: str) -> Outcome:
        servers = self.adjust(namespace, await off_loop(self.store.list, "Server", namespace))
        configs = await off_loop(self.store.list, "ServerConfig", namespace)
        runtimes = await off_loop(self.store.list, "SeldonRuntime", namespace)
        want = desired_objects(namespace, servers, configs, runtimes, self.install, storage=self.storage)
        have = await self._managed(namespace)
        out = Outcome()
        for doc in want:
            name = doc["metadata"]["name"]
            api_version, plural = PLURALS[doc["kind"]]
            current = have.pop((doc["kind"], name), None)
            label = f"{doc['kind']} {namespace}/{name}"
            try:
                if current is None:
                    await self.api.call("POST", object_path(api_version, plural, namespace), doc)
                    out.created.append(label)
                elif (current["metadata"].get("annotations") or {}).get(HASH) == doc["metadata"]["annotations"][HASH]:
                    out.unchanged += 1
                else:
                    doc["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
                    _carry_immutable(doc, current)
                    await self.api.call("PUT", object_path(api_version, plural, namespace, name), doc)
                    out.updated.append(label)
            except ApiException as exc:
                if exc.status == 409 and current is None:
                    out.problems.append(f"{label} exists and is not managed by Berth; delete or rename it")
                elif exc.status == 409:
                    self._dirty.add(namespace)  # changed under us: the next pass reads it again
                else:
                    out.problems.append(as_error(exc, f"write {label}", self.api.host).message)
        for (kind, name), _obj in sorted(have.items()):
            api_version, plural = PLURALS[kind]
            try:
                await self.api.call("DELETE", object_path(api_version, plural, namespace, name),
                                    {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"})
                out.deleted.append(f"{kind} {namespace}/{name}")
            except ApiException as exc:
                if exc.status != 404:
                    out.problems.append(as_error(exc, f"delete {kind} {namespace}/{name}", self.api.host).message)
        for line in out.problems:
            log.warning("provisioning %s: %s", namespace, line)
        if out.writes:
            log.info("provisioned %s: created %s, updated %s, deleted %s", namespace, out.created, out.updated,
                     out.deleted)
        return out

    # -- the loop ----------------------------------------------------------------------------------------
    def _on_event(self, event: Event) -> None:
        if event.kind in WATCHED:
            on_loop(self._loop, self.mark, event.namespace)

    def changed(self) -> None:
        """Wake the loop (the reconciler's hook, and shutdown); the store's events say which namespaces."""
        on_loop(self._loop, self._wake.set)

    def mark(self, namespace: str) -> None:
        self._dirty.add(namespace)
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Reconcile marked namespaces as events arrive, and every namespace with Berth's kinds on resync."""
        self._loop = asyncio.get_running_loop()
        self.store.add_listener(self._on_event)
        try:
            for doc in await off_loop(self.store.list, None, None):
                if doc["kind"] in WATCHED:
                    self._dirty.add(doc["metadata"]["namespace"])
            while not stop.is_set():
                self._wake.clear()  # before the pass: a namespace marked during it wakes the next one at once
                for namespace in sorted(self._dirty):
                    self._dirty.discard(namespace)
                    try:
                        await self.reconcile(namespace)
                    except Exception as exc:  # noqa: BLE001 - one namespace's failure must not stop the others
                        log.warning("provisioning %s failed (%s); retrying on the next pass", namespace,
                                    as_error(exc, f"provision {namespace}", self.api.host).message)
                waits = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())]
                await asyncio.wait(waits, timeout=self.resync_s, return_when=asyncio.FIRST_COMPLETED)
                for w in waits:
                    w.cancel()
                if not self._wake.is_set() and not stop.is_set():  # a resync: every namespace again
                    self._dirty.update(d["metadata"]["namespace"] for d in await off_loop(self.store.list, None, None)
                                       if d["kind"] in WATCHED)
        finally:
            self.store.remove_listener(self._on_event)
