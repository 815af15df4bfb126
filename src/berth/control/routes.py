"""The routing table gateways follow: which replicas serve which model, and experiments.

Rebuilt per namespace after each reconcile pass; watchers get the whole table (a few KB) as one
NDJSON line whenever it changes.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from berth.control.hub import ReplicaRecord
from berth.control.tokens import TokenRegistry
from berth.errors import Unavailable
from berth.wire.routes import Candidate, Endpoint, ExperimentRoute, ModelRoute, RoutingTable

IDEMPOTENT_ANNOTATION = "berth.io/idempotent"  # "false": the gateway never re-sends a request

class RoutesPublisher:
    def __init__(self, tokens: TokenRegistry | None = None) -> None:
        self.tokens = tokens or TokenRegistry(None)
        self._models: dict[str, list[ModelRoute]] = {}
        self._experiments: dict[str, list[ExperimentRoute]] = {}
        # Revisions start from the clock so a restarted control plane never goes backwards.
        self.revision = int(time.time() * 1000)
        self._encoded = RoutingTable(revision=self.revision).model_dump_json()
        self._changed = asyncio.Condition()
        self.closing = False
        # Gateways get no table until the first reconcile after start-up has seen the replicas
        # reconnect: a restarted control plane must not push an empty table over a good one.
        self.warm = asyncio.Event()

    def set_warm(self) -> None:
        if not self.warm.is_set():
            self.warm.set()
            asyncio.ensure_future(self._notify())

    def close(self) -> None:
        self.closing = True
        self.warm.set()  # wakes watches still waiting for the start-up table; they see `closing` and end
        asyncio.ensure_future(self._notify())

    def table(self) -> RoutingTable:
        return RoutingTable.model_validate_json(self._encoded)

    def encoded(self) -> str:
        return self._encoded

    def publish_namespace(self, ns: str, models: list[dict[str, Any]], records: dict[str, ReplicaRecord],
                          experiments: list[dict[str, Any]]) -> None:
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
        if self._models.get(ns) == routes and self._experiments.get(ns) == exps:
            return
        self._models[ns] = routes
        self._experiments[ns] = exps
        self.revision += 1
        table = RoutingTable(revision=self.revision,
                             models=[r for n in sorted(self._models) for r in self._models[n]],
                             experiments=[e for n in sorted(self._experiments) for e in self._experiments[n]])
        self._encoded = table.model_dump_json()
        asyncio.ensure_future(self._notify())

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def get(self, request: web.Request) -> web.Response:
        if not self.warm.is_set():
            raise Unavailable("the control plane is starting: waiting for replicas to reconnect before it "
                              "publishes routes; retry in a few seconds")
        return web.Response(text=self._encoded, content_type="application/json")

    async def watch(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson",
                                           "Cache-Control": "no-cache"})
        await resp.prepare(request)
        sent = -1
        try:
            while not self.warm.is_set() and not self.closing:
                try:
                    await asyncio.wait_for(self.warm.wait(), timeout=15.0)
                except TimeoutError:
                    await resp.write(b"\n")
            while not self.closing:
                if sent != self.revision:
                    sent = self.revision
                    await resp.write(self._encoded.encode() + b"\n")
                async with self._changed:
                    try:
                        await asyncio.wait_for(self._changed.wait(), timeout=15.0)
                    except TimeoutError:
                        await resp.write(b"\n")  # keep-alive: an empty line gateways skip
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        return resp
