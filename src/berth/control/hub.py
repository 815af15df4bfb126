"""The agent hub: one record per server replica, fed by the agents' WebSockets.

The hub keeps what each agent last said (identity, capacity, readiness, per-model states) and what the
control plane last asked of it, so the reconciler can diff plans against reality.  It remembers replicas
whose agent went away (with when and why), so a model's status can name them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web
from pydantic import ValidationError

from berth.control.tokens import TokenRegistry
from berth.wire import agent as wire

log = logging.getLogger("berth.control.hub")

ReplicaKey = tuple[str, str, int]  # (namespace, server, replica index)


@dataclass
class ReplicaModel:
    """One model on one replica, as the hub knows it."""

    state: str  # LOADING, LOADED, LOAD_FAILED, DRAINING (routes dropped, unload next), UNLOADING, UNLOAD_FAILED
    generation: int
    memory: int = 0
    message: str = ""
    since: float = field(default_factory=time.time)
    duration: float = 0.0  # seconds the agent's last load took (fetch + MLServer load + verify)
    inference_seconds: float = 0.0  # of which MLServer's own load call
    attempts: int = 0  # consecutive failed loads of this generation
    retry_at: float = 0.0  # no new load before this time (backoff after a failure); DRAINING: unload then


@dataclass
class ReplicaRecord:
    key: ReplicaKey
    hello: wire.Hello
    readiness: wire.Readiness
    connected: bool = True
    connected_at: float = field(default_factory=time.time)
    disconnected_at: float | None = None
    disconnect_reason: str = ""
    last_heartbeat: float = field(default_factory=time.time)
    models: dict[str, ReplicaModel] = field(default_factory=dict)
    ws: web.WebSocketResponse | None = None
    send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def namespace(self) -> str:
        return self.key[0]

    @property
    def server(self) -> str:
        return self.key[1]

    @property
    def index(self) -> int:
        return self.key[2]

    def summary(self) -> dict[str, object]:
        return {
            "namespace": self.namespace, "server": self.server, "replica": self.index,
            "connected": self.connected, "connectedAt": self.connected_at,
            "disconnectedAt": self.disconnected_at, "disconnectReason": self.disconnect_reason,
            "lastHeartbeat": self.last_heartbeat, "ready": self.readiness.ready,
            "address": self.readiness.address, "error": self.readiness.error,
            "since": self.readiness.since, "capabilities": self.hello.capabilities,
            "memory": self.hello.memory, "overcommitPercent": self.hello.overcommit_percent,
            "inference": self.hello.inference.model_dump(),
            "models": {n: {"state": m.state, "generation": m.generation, "memory": m.memory,
                           "message": m.message, "since": m.since} for n, m in self.models.items()},
        }


class AgentHub:
    """Accepts agent WebSockets and keeps their records.  ``on_change`` is called on every change."""

    def __init__(self, on_change: Callable[[str], None], tokens: TokenRegistry | None = None) -> None:
        self.tokens = tokens or TokenRegistry(None)
        self.replicas: dict[ReplicaKey, ReplicaRecord] = {}
        self.on_model_event: Callable[[str, str], None] | None = None  # (namespace, state)
        self._on_change = on_change
        self.heartbeat_interval = 5.0

    def in_namespace(self, namespace: str) -> list[ReplicaRecord]:
        return [r for k, r in sorted(self.replicas.items()) if k[0] == namespace]

    def forget(self, key: ReplicaKey) -> None:
        """Drop a disconnected replica's record (its server was scaled down or deleted)."""
        rec = self.replicas.get(key)
        if rec is not None and not rec.connected:
            del self.replicas[key]

    async def send(self, rec: ReplicaRecord, msg: wire.Load | wire.Unload) -> bool:
        ws = rec.ws
        if ws is None or ws.closed or not rec.connected:
            return False
        try:
            async with rec.send_lock:
                await ws.send_str(wire.dump(msg))
            return True
        except (ConnectionError, RuntimeError) as exc:
            log.warning("send to agent %s failed: %s", rec.key, exc)
            return False

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=8 * 1024 * 1024)
        await ws.prepare(request)
        peer = request.remote or "?"
        rec: ReplicaRecord | None = None
        reason = "agent closed the connection"
        try:
            first = await ws.receive(timeout=30)
            if first.type != WSMsgType.TEXT:
                await self._refuse(ws, "first frame must be a hello message")
                return ws
            try:
                hello = wire.parse_agent(first.data)
            except ValidationError as exc:
                await self._refuse(ws, f"invalid hello: {exc.errors()[0]['msg']}")
                return ws
            if not isinstance(hello, wire.Hello):
                await self._refuse(ws, "first frame must be a hello message")
                return ws
            rec = self._register(hello, ws)
            log.info("agent %s/%s/%d connected from %s (ready=%s)", *rec.key, peer, hello.readiness.ready)
            await ws.send_str(wire.dump(wire.Welcome(heartbeat_interval=self.heartbeat_interval)))
            self._on_change(rec.namespace)
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    parsed = wire.parse_agent(msg.data)
                except ValidationError as exc:
                    log.warning("agent %s sent an invalid frame: %s", rec.key, exc.errors()[0]["msg"])
                    continue
                self._apply(rec, parsed)
            if ws.exception() is not None:
                reason = f"connection lost: {ws.exception()}"
        except TimeoutError:
            reason = "no hello within 30s"
        finally:
            if rec is not None and rec.ws is ws:
                rec.connected = False
                rec.ws = None
                rec.disconnected_at = time.time()
                rec.disconnect_reason = reason
                log.info("agent %s/%s/%d disconnected: %s", *rec.key, reason)
                self._on_change(rec.namespace)
        return ws

    async def _refuse(self, ws: web.WebSocketResponse, message: str) -> None:
        await ws.send_str(wire.dump(wire.ErrorMsg(code="InvalidInput", message=message)))
        await ws.close()

    def _register(self, hello: wire.Hello, ws: web.WebSocketResponse) -> ReplicaRecord:
        key: ReplicaKey = (hello.namespace, hello.server, hello.replica)
        old = self.replicas.get(key)
        if old is not None and old.ws is not None and not old.ws.closed:
            asyncio.ensure_future(old.ws.close(message=b"replaced by a newer connection"))
        rec = ReplicaRecord(key=key, hello=hello, readiness=hello.readiness, ws=ws)
        # What the agent holds is the truth; keep failure history for models it does not hold.
        for lm in hello.loaded:
            rec.models[lm.name] = ReplicaModel("LOADED", lm.generation, lm.memory)
        if old is not None:
            for name, m in old.models.items():
                if name not in rec.models and m.state == "LOAD_FAILED":
                    rec.models[name] = m
        self.replicas[key] = rec
        return rec

    def _apply(self, rec: ReplicaRecord, msg: object) -> None:
        rec.last_heartbeat = time.time()
        if isinstance(msg, wire.Heartbeat):
            return
        if isinstance(msg, wire.Status):
            rec.readiness = msg.readiness
        elif isinstance(msg, wire.ModelEvent):
            self._model_event(rec, msg)
        else:
            return
        self._on_change(rec.namespace)

    def _model_event(self, rec: ReplicaRecord, ev: wire.ModelEvent) -> None:
        if self.on_model_event is not None:
            self.on_model_event(rec.namespace, ev.state)
        current = rec.models.get(ev.name)
        if ev.state == "UNLOADED":
            rec.models.pop(ev.name, None)
            return
        if current is not None and ev.generation < current.generation:
            return  # an outcome for an older generation than the one asked for since
        if ev.state == "LOAD_FAILED":
            attempts = (current.attempts if current is not None else 0) + 1
            backoff = min(300.0, 5.0 * 2 ** (attempts - 1))
            rec.models[ev.name] = ReplicaModel("LOAD_FAILED", ev.generation, 0, ev.message,
                                               attempts=attempts, retry_at=time.time() + backoff)
            log.warning("load of %s on %s/%s/%d failed (attempt %d, retry in %.0fs): %s", ev.name,
                        *rec.key, attempts, backoff, ev.message)
        else:
            rec.models[ev.name] = ReplicaModel(ev.state, ev.generation, ev.memory, ev.message,
                                               duration=ev.duration, inference_seconds=ev.inference_seconds)
