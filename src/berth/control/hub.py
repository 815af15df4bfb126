"""The agent hub: one record per server replica, fed by the agents' WebSockets.

The hub keeps what each agent last said (identity, capacity, readiness, per-model states) and what the
control plane last asked of it, so the reconciler can diff plans against reality.  It remembers replicas
whose agent went away (with when and why), so a model's status can name them.

Agents are enrolled, not trusted: the upgrade request carries ``Authorization: Bearer <token>``, and the
``hello`` is accepted only when that token is a valid agent token minted for exactly the (namespace,
server, replica) it claims, and no live connection holds that replica already.  Every refusal and every
enrolment is audited.  A Load carrying a Secret's values is sent only to a connection enrolled in the
model's namespace whose token is still valid.

Loads sent inside :meth:`AgentHub.batch` (the reconcile pass sends its loads so) to an agent that speaks
protocol 2 are batched (docs/loading.md): :meth:`AgentHub.send` queues the load on its replica's outbox and a
flush, ``BATCH_WINDOW`` after the first load queued (at once when a frame is full, and when the batch ends),
sends everything queued in as few ``loads`` frames as wire/batch.py's bounds allow.  Outside a batch a load
goes at once, as before.  Any other
message sent to that replica flushes the outbox first, so the agent sees them in the order they were sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMessage, WSMsgType, web
from pydantic import ValidationError

from berth.aiotasks import log_failure
from berth.control.slices import Slicer
from berth.control.tokens import TokenRegistry
from berth.errors import BerthError
from berth.resources.identity import AgentIdentity, Principal, bearer
from berth.wire import agent as wire
from berth.wire import batch
from berth.wire.control_view import ControlView

log = logging.getLogger("berth.control.hub")

ReplicaKey = tuple[str, str, int]  # (namespace, server, replica index)

MAX_FRAME = 8 * 1024 * 1024  # an enrolled agent's frames (a hello lists every loaded model)
MAX_FRAME_UNAUTHENTICATED = 64 * 1024  # enough for any hello; all a caller without an agent token may send
HELLO_TIMEOUT = 30.0
HELLO_TIMEOUT_UNAUTHENTICATED = 10.0
STALE_HEARTBEATS = 3  # a connection silent this many heartbeat intervals no longer holds its replica
MAX_UNENROLLED = 128  # connections waiting for their hello at once; more are answered 503 before the upgrade
# a load queued for a batch frame waits at most this long for others to join it (a full frame goes at once);
# small beside a load's own seconds, long enough that a pass slowed by a busy host still fills frames
BATCH_WINDOW = 0.05


@dataclass(frozen=True)
class Caller:
    """Who opened an agent connection, as far as its token says."""

    principal: Principal | None
    name: str  # the token's name, "anonymous" (no token) or "invalid-token" (unknown, revoked or expired)
    peer: str


@dataclass(frozen=True)
class Refusal:
    """Why a hello is not accepted: ``message`` goes to the caller, ``reason`` to the audit log."""

    code: str  # Unauthenticated, Forbidden, Conflict, InvalidInput
    message: str
    reason: str


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
    principal: Principal | None = None  # the agent token this connection enrolled with
    peer: str = ""  # the address it connected from
    control: ControlView | None = None  # the agent's view of the control plane, as it last reported it
    # loads queued for the next batch frame (protocol 2): (instance name, generation, the load's own frame)
    outbox: list[tuple[str, int, str]] = field(default_factory=list)
    flush_task: asyncio.Task[bool] | None = None  # the flush that will send the outbox
    frames_sent: int = 0  # load/loads frames sent on this connection (for tests and benchmarks)

    @property
    def batches(self) -> bool:
        """Whether this agent takes ``loads`` batches (its hello says protocol 2 or later)."""
        return self.hello.protocol >= wire.BATCH_PROTOCOL

    @property
    def enrolled(self) -> bool:
        """Whether this connection proved it is exactly this replica (an agent token minted for it)."""
        p = self.principal
        return p is not None and p.kind == "agent" and p.agent == AgentIdentity(*self.key)

    @property
    def namespace(self) -> str:
        return self.key[0]

    @property
    def server(self) -> str:
        return self.key[1]

    @property
    def index(self) -> int:
        return self.key[2]

    @property
    def unimportable(self) -> tuple[tuple[str, str], ...]:
        """(capability, module) for each claimed capability whose runtime the inference server cannot import."""
        return tuple((p.capability, p.module) for p in self.hello.unavailable)

    def summary(self) -> dict[str, object]:
        return {
            "namespace": self.namespace, "server": self.server, "replica": self.index,
            "connected": self.connected, "connectedAt": self.connected_at, "peer": self.peer,
            "disconnectedAt": self.disconnected_at, "disconnectReason": self.disconnect_reason,
            "lastHeartbeat": self.last_heartbeat, "ready": self.readiness.ready,
            "address": self.readiness.address, "error": self.readiness.error,
            "since": self.readiness.since, "capabilities": self.hello.capabilities,
            "unavailableCapabilities": [p.model_dump() for p in self.hello.unavailable],
            "probedWith": self.hello.probed_with,
            "controlPlane": self.control.model_dump() if self.control is not None else None,
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
        self._unenrolled = 0  # connections upgraded whose hello is not yet judged
        self._checks: dict[str, tuple[ReplicaKey, asyncio.Future[list[dict[str, Any]]]]] = {}  # storage checks
        # (namespace, server) -> whether that Server allows custom runtimes (its berth.io/allow-custom-runtime
        # annotation); stamped on every load sent, so an artifact's own model-settings.json is judged by it
        self.allows_custom_runtime: Callable[[str, str], bool] = lambda ns, server: False
        # Kubernetes mode (control/kube_mode.py): a token the registry does not know is reviewed by the API
        # server (TokenReview), and a connection so enrolled stays valid while ``review_valid`` says so.
        self.review_token: Callable[[str], Awaitable[Principal]] | None = None
        self.review_valid: Callable[[Principal], bool] = lambda principal: False
        self._batching = 0  # open batch() blocks: loads sent meanwhile go in batch frames

    @asynccontextmanager
    async def batch(self) -> AsyncIterator[None]:
        """Loads sent in this block to agents of protocol 2 go in batch frames, ``BATCH_WINDOW`` after the
        first one queued; what is still queued when the block ends is flushed then (without waiting)."""
        self._batching += 1
        try:
            yield
        finally:
            self._batching -= 1
            loop = asyncio.get_running_loop()
            for rec in self.replicas.values():
                if rec.outbox:
                    log_failure(loop.create_task(self.flush(rec), name=f"flush {rec.key}"),
                                f"flush loads to {rec.key}")

    def in_namespace(self, namespace: str) -> list[ReplicaRecord]:
        return [r for k, r in sorted(self.replicas.items()) if k[0] == namespace]

    def forget(self, key: ReplicaKey) -> None:
        """Drop a disconnected replica's record (its server was scaled down or deleted)."""
        rec = self.replicas.get(key)
        if rec is not None and not rec.connected:
            del self.replicas[key]

    async def send(self, rec: ReplicaRecord, msg: wire.Load | wire.Unload | wire.CheckStorage) -> bool:
        ws = rec.ws
        if ws is None or ws.closed or not rec.connected:
            return False
        if isinstance(msg, wire.Load):  # the replica's own Server decides, whatever the sender set
            custom = self.allows_custom_runtime(rec.namespace, rec.server)
            msg = msg.model_copy(update={"source": msg.source.model_copy(update={"allow_custom_runtime": custom})})
        if isinstance(msg, wire.Load | wire.CheckStorage) and msg.source.secret is not None:
            problem = self._secret_problem(rec, msg)
            if problem is not None:
                log.error("not sending model %s (with the values of Secret %s) to replica %s/%s/%d: %s",
                          msg.name, msg.source.secret_name, *rec.key, problem)
                self._audit(rec.principal, rec.peer, "agent-load", rec.namespace, f"{rec.server}/{rec.index}",
                            "refused", f"Secret {msg.source.secret_name} for model {msg.name} withheld: {problem}")
                if not rec.enrolled or not self._still_valid(rec):
                    await self._close(ws, "Unauthenticated", "this agent's token is no longer valid; reconnecting "
                                      "needs a valid agent token")
                return False
        if isinstance(msg, wire.Load) and rec.batches and self._batching:
            rec.outbox.append((msg.name, msg.generation, wire.dump(msg)))
            if len(rec.outbox) >= wire.MAX_BATCH_ITEMS:  # a full frame goes now: the outbox stays bounded
                return await self.flush(rec)
            if rec.flush_task is None:
                rec.flush_task = asyncio.get_running_loop().create_task(self.flush(rec, BATCH_WINDOW),
                                                                        name=f"flush {rec.key}")
                log_failure(rec.flush_task, f"flush loads to {rec.key}")
            return True
        try:
            async with rec.send_lock:
                if rec.outbox and not await self._flush_locked(rec, ws):
                    return False
                await ws.send_str(wire.dump(msg))
            return True
        except (ConnectionError, RuntimeError) as exc:
            log.warning("send to agent %s failed: %s", rec.key, exc)
            return False

    async def flush(self, rec: ReplicaRecord, after: float = 0.0) -> bool:
        """Send the loads queued for ``rec`` in batch frames (``after`` seconds from now); False when the
        connection failed (the loads of the frames not sent are then no longer marked LOADING, so a later pass
        sends them again)."""
        if after > 0:
            await asyncio.sleep(after)
        if asyncio.current_task() is rec.flush_task:
            rec.flush_task = None  # loads queued from now on need another flush
        ws = rec.ws
        async with rec.send_lock:
            return await self._flush_locked(rec, ws)

    async def _flush_locked(self, rec: ReplicaRecord, ws: web.WebSocketResponse | None) -> bool:
        queued, rec.outbox = rec.outbox, []
        if not queued:
            return True
        sent = 0
        try:
            if ws is None or ws.closed or not rec.connected:
                raise ConnectionError("the agent's connection is closed")
            for frame, count in batch.frames("loads", (text for _, _, text in queued)):
                await ws.send_str(frame)
                rec.frames_sent += 1
                sent += count
        except (ConnectionError, RuntimeError) as exc:
            log.warning("sending %d loads to agent %s failed: %s", len(queued) - sent, rec.key, exc)
            for name, generation, _ in queued[sent:]:
                m = rec.models.get(name)
                if m is not None and m.state == "LOADING" and m.generation == generation:
                    del rec.models[name]
            self._on_change(rec.namespace)
            return False
        return True

    async def ask_storage(self, rec: ReplicaRecord, msg: wire.CheckStorage,
                          timeout: float = 20.0) -> list[dict[str, Any]] | None:
        """Run ``berth doctor``'s storage check on this replica's agent; its checks, or None when it could not
        be asked (not connected, Secret withheld) or did not answer within ``timeout``."""
        future: asyncio.Future[list[dict[str, Any]]] = asyncio.get_running_loop().create_future()
        self._checks[msg.id] = (rec.key, future)
        try:
            if not await self.send(rec, msg):
                return None
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return None
        finally:
            self._checks.pop(msg.id, None)

    def _secret_problem(self, rec: ReplicaRecord, msg: wire.Load | wire.CheckStorage) -> str | None:
        """Why a Secret's values may not go to this connection, or None: it must be enrolled as this very
        replica, in the model's namespace, with a token still valid."""
        if not rec.enrolled:
            return "the connection is not enrolled with an agent token for this replica"
        if msg.namespace != rec.namespace:
            return f"the model's namespace ({msg.namespace or 'not given'}) is not the agent's ({rec.namespace})"
        if not self._still_valid(rec):
            return "the agent's token was revoked or has expired"
        return None

    def _still_valid(self, rec: ReplicaRecord) -> bool:
        return rec.principal is not None and (self.tokens.valid(rec.principal.name)
                                              or self.review_valid(rec.principal))

    async def _reviewed(self, token: str, peer: str) -> Principal | None:
        """The principal the API server's TokenReview gives ``token``, or None (the reason logged)."""
        assert self.review_token is not None
        self._unenrolled += 1  # a review in flight counts against MAX_UNENROLLED like a pending hello
        try:
            return await asyncio.wait_for(self.review_token(token), HELLO_TIMEOUT_UNAUTHENTICATED)
        except BerthError as exc:  # Unauthenticated, saying which check failed
            log.warning("agent connection from %s: %s", peer, exc.message)
        except TimeoutError:
            log.warning("agent connection from %s: the token review took over %.0f s", peer,
                        HELLO_TIMEOUT_UNAUTHENTICATED)
        finally:
            self._unenrolled -= 1
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        peer = request.remote or "?"
        if self._unenrolled >= MAX_UNENROLLED:
            log.warning("refused an agent connection from %s: %d connections are already waiting for their hello",
                        peer, self._unenrolled)
            return web.json_response({"code": "Unavailable", "details": None,
                                      "message": "too many agent connections waiting to enrol; try again"},
                                     status=503)
        token = bearer(request.headers.get("Authorization"))
        principal = self.tokens.verify(token)
        if principal is None and token and self.review_token is not None:
            principal = await self._reviewed(token, peer)
        agent = principal is not None and principal.kind == "agent"
        # A caller without an agent token only gets as far as its hello, in one small frame.
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=MAX_FRAME if agent else MAX_FRAME_UNAUTHENTICATED)
        await ws.prepare(request)
        caller = Caller(principal, principal.name if principal else "invalid-token" if token else "anonymous", peer)
        rec: ReplicaRecord | None = None
        reason = "agent closed the connection"
        self._unenrolled += 1
        try:
            try:
                first = await ws.receive(timeout=HELLO_TIMEOUT if agent else HELLO_TIMEOUT_UNAUTHENTICATED)
            finally:
                self._unenrolled -= 1
            hello = self._hello(first)
            if isinstance(hello, Refusal):
                await self._refuse(ws, None, caller, hello)
                return ws
            refusal = self.admission(hello, principal, token is not None) or self._taken(hello, peer)
            if refusal is not None:
                await self._refuse(ws, hello, caller, refusal)
                return ws
            rec = self._register(hello, ws, principal, peer)
            self._audit(principal, peer, "agent-connect", rec.namespace, f"{rec.server}/{rec.index}", "ok",
                        f"enrolled as {rec.namespace}/{rec.server}/{rec.index}")
            log.info("agent %s/%s/%d connected from %s (ready=%s)", *rec.key, peer, hello.readiness.ready)
            await ws.send_str(wire.dump(wire.Welcome(heartbeat_interval=self.heartbeat_interval,
                                                     protocol=wire.PROTOCOL_VERSION)))
            self._on_change(rec.namespace)
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    parsed = wire.parse_agent(msg.data)
                except ValidationError as exc:
                    events, problems = batch.salvage(msg.data, wire.ModelEvent)
                    log.warning("agent %s sent an invalid frame: %s", rec.key, "; ".join(problems[:3])
                                if events or problems != ["not a batch frame"] else exc.errors()[0]["msg"])
                    if not events:
                        continue
                    parsed = wire.ModelEvents(events=events)
                if isinstance(parsed, wire.Heartbeat) and not self._still_valid(rec):
                    reason = "its token was revoked or has expired"
                    self._audit(principal, peer, "agent-connect", rec.namespace, f"{rec.server}/{rec.index}",
                                "refused", "disconnected: the agent token was revoked or has expired")
                    await self._close(ws, "Unauthenticated", "this agent's token was revoked or has expired")
                    break
                if isinstance(parsed, wire.ModelEvents):
                    await self._apply_events(rec, parsed)
                else:
                    self._apply(rec, parsed)
            if ws.exception() is not None:
                reason = f"connection lost: {ws.exception()}"
        except TimeoutError:
            reason = "no hello within the time allowed"
            if rec is None:
                await self._refuse(ws, None, caller, Refusal("InvalidInput", reason, reason))
        finally:
            if rec is not None and rec.ws is ws:
                rec.connected = False
                rec.ws = None
                rec.disconnected_at = time.time()
                rec.disconnect_reason = reason
                log.info("agent %s/%s/%d disconnected: %s", *rec.key, reason)
                self._on_change(rec.namespace)
        return ws

    @staticmethod
    def _hello(first: WSMessage) -> wire.Hello | Refusal:
        """The hello of the first frame, or why it is none."""
        if first.type != WSMsgType.TEXT:
            return Refusal("InvalidInput", "first frame must be a hello message", "no hello frame")
        try:
            parsed = wire.parse_agent(first.data)
        except ValidationError as exc:
            problem = exc.errors()[0]["msg"]
            return Refusal("InvalidInput", f"invalid hello: {problem}", f"invalid hello: {problem}")
        if not isinstance(parsed, wire.Hello):
            return Refusal("InvalidInput", "first frame must be a hello message",
                           f"first frame was {parsed.type}, not hello")
        return parsed

    async def _refuse(self, ws: web.WebSocketResponse, hello: wire.Hello | None, caller: Caller,
                      refusal: Refusal) -> None:
        self._audit_refusal(hello, caller, refusal)
        log.warning("refused agent from %s%s: %s", caller.peer,
                    f" claiming {hello.namespace}/{hello.server}/{hello.replica}" if hello else "", refusal.reason)
        await self._close(ws, refusal.code, refusal.message)

    @staticmethod
    def admission(hello: wire.Hello, principal: Principal | None, presented: bool) -> Refusal | None:
        """Whether ``principal`` (from the token presented, if any) may be the replica ``hello`` claims."""
        claim = AgentIdentity(hello.namespace, hello.server, hello.replica)
        how = (f"start the agent with the token minted for replica {claim} (--token-file FILE or "
               f"BERTH_AGENT_TOKEN; an admin creates one with: berth token create NAME --agent {claim})")
        if principal is None and not presented:
            return Refusal("Unauthenticated", f"no agent token: the connection must carry Authorization: Bearer "
                           f"<token>; {how}", "no token")
        if principal is None:
            return Refusal("Unauthenticated", f"the agent token is not valid (unknown, revoked or expired); {how}",
                           "token not valid (unknown, revoked or expired)")
        if principal.kind != "agent" or principal.agent is None:
            return Refusal("Forbidden", f"a {principal.kind} token cannot enrol an agent; {how}",
                           f"a {principal.kind} token, not an agent token")
        if principal.agent != claim:
            return Refusal("Forbidden", f"this token was not minted for replica {claim}; {how}",
                           "the agent token was minted for another replica")
        return None

    def _taken(self, hello: wire.Hello, peer: str) -> Refusal | None:
        """A live connection holding the replica ``hello`` claims refuses a second one; a connection gone
        silent for ``STALE_HEARTBEATS`` heartbeats is closed and gives way."""
        key: ReplicaKey = (hello.namespace, hello.server, hello.replica)
        old = self.replicas.get(key)
        if old is None or old.ws is None or old.ws.closed or not old.connected:
            return None
        silent = time.time() - old.last_heartbeat
        if silent > STALE_HEARTBEATS * self.heartbeat_interval:
            log.warning("agent %s/%s/%d from %s silent for %.0fs; %s takes the replica over", *key, old.peer,
                        silent, peer)
            log_failure(asyncio.ensure_future(old.ws.close(message=b"replaced: no heartbeat")), "close stale agent")
            return None
        since = time.strftime("%H:%M:%S", time.localtime(old.connected_at))
        return Refusal("Conflict", f"replica {hello.namespace}/{hello.server}/{hello.replica} is already connected "
                       "(a live agent holds it); a second agent may not claim it until that connection is gone",
                       f"replica {hello.namespace}/{hello.server}/{hello.replica} is already connected from "
                       f"{old.peer or '?'} (since {since})")

    def _audit(self, principal: Principal | None, peer: str, verb: str, namespace: str, name: str,
               outcome: str, reason: str) -> None:
        self.tokens.audit(principal=principal.name if principal else "anonymous", source=peer, verb=verb,
                          kind="Agent", namespace=namespace, name=name, outcome=outcome, reason=reason)

    def _audit_refusal(self, hello: wire.Hello | None, caller: Caller, refusal: Refusal) -> None:
        """Record a refused hello under the namespace it claimed.  A record names only what belongs to its
        namespace: a token of another namespace is recorded there too, without the claim it was used for."""
        principal = caller.principal
        if hello is None:
            self.tokens.audit(principal=caller.name, source=caller.peer, verb="agent-hello", kind="Agent",
                              outcome="refused", reason=refusal.reason)
            return
        ns = hello.namespace
        own = principal is None or (principal.agent.namespace == ns if principal.agent is not None
                                    else principal.role_in(ns) is not None)
        self.tokens.audit(principal=caller.name if own else "(a token of another namespace)", source=caller.peer,
                          verb="agent-hello", kind="Agent", namespace=ns, name=f"{hello.server}/{hello.replica}",
                          outcome="refused", reason=refusal.reason)
        if principal is not None and principal.agent is not None and not own:
            mine = principal.agent
            self.tokens.audit(principal=principal.name, source=caller.peer, verb="agent-hello", kind="Agent",
                              namespace=mine.namespace, name=f"{mine.server}/{mine.replica}", outcome="refused",
                              reason="this agent token was presented for a replica it was not minted for")

    async def _close(self, ws: web.WebSocketResponse, code: str, message: str) -> None:
        """Say why (an ``error`` frame) and close; a peer that is already gone is no error."""
        try:
            if not ws.closed:
                await ws.send_str(wire.dump(wire.ErrorMsg(code=code, message=message)))
            await ws.close()
        except (ConnectionError, RuntimeError) as exc:
            log.debug("closing an agent connection: %s", exc)

    def _register(self, hello: wire.Hello, ws: web.WebSocketResponse, principal: Principal | None = None,
                  peer: str = "") -> ReplicaRecord:
        key: ReplicaKey = (hello.namespace, hello.server, hello.replica)
        old = self.replicas.get(key)
        rec = ReplicaRecord(key=key, hello=hello, readiness=hello.readiness, ws=ws, principal=principal,
                            peer=peer, control=hello.control)
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
            old, rec.control = rec.control, msg.control or rec.control
            if msg.control is None or (old is not None and old.essentials() == msg.control.essentials()):
                return  # nothing new, or only the round trip moved: no status rewrite for that
        elif isinstance(msg, wire.Status):
            rec.readiness = msg.readiness
        elif isinstance(msg, wire.ModelEvent):
            self._model_event(rec, msg)
        elif isinstance(msg, wire.StorageReport):  # only from the replica it was asked of
            key, future = self._checks.get(msg.id, (None, None))
            if key == rec.key and future is not None and not future.done():
                future.set_result(msg.checks)
            return
        else:
            return
        self._on_change(rec.namespace)

    async def _apply_events(self, rec: ReplicaRecord, msg: wire.ModelEvents) -> None:
        """A frame of model events (up to 256 load outcomes), each as if it came alone, in slices of the loop:
        applied and logged in one go, a frame of failures held the loop 10-20 ms.  One change for the frame."""
        rec.last_heartbeat = time.time()
        slicer = Slicer()
        for event in msg.events:
            self._model_event(rec, event)
            await slicer.tick()
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
