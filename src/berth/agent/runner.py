"""The agent's main loop: stay connected to the control plane and do what it asks.

One WebSocket to ``ws://<control>/api/v1/agents/connect``.  The first frame is ``hello`` (identity,
capacity, readiness, what is loaded); the control plane answers ``welcome`` and then pushes ``load``
and ``unload``.  The agent sends ``status`` when readiness changes, ``model`` for each outcome and a
``heartbeat`` every ``welcome.heartbeat_interval`` seconds.  When the control plane goes away the agent
keeps its inference server as it is, queues model outcomes, and reconnects with exponential backoff.

The upgrade request carries ``Authorization: Bearer <token>`` (the token minted for this replica); a
control plane that refuses the agent (``Unauthenticated``, ``Forbidden``) is asked again only after
``refused_retry`` seconds, one that says the replica is already connected (``Conflict``) at the usual pace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Coroutine
from typing import Any

import aiohttp
from pydantic import BaseModel, ValidationError

from berth.adapters import storage_check
from berth.adapters.mlserver import MLServerClient
from berth.adapters.mlserver_proc import mlserver_executable
from berth.agent import capabilities
from berth.agent.config import AgentConfig
from berth.agent.control_view import ControlReporter
from berth.agent.loader import ModelLoader
from berth.agent.readiness import ReadinessWatcher
from berth.agent.relay import start_relays
from berth.aiotasks import GuardedTask, guarded
from berth.errors import ConfigError
from berth.wire import agent as wire
from berth.wire import batch
from berth.wire.tls import client_context

log = logging.getLogger("berth.agent")

_MAX_PENDING = 1000
_REPORT_WINDOW = 0.02  # outcomes wait this long for others to share their frame (protocol 2: docs/loading.md)
_WELCOME_TIMEOUT = 10.0
_REFUSED = ("Unauthenticated", "Forbidden")  # retrying soon would not change the answer


class Refused(Exception):
    """The control plane answered hello with an error frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class Agent:
    """One agent: readiness watcher, model loader and the control-plane connection."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.client = MLServerClient(config.inference_host, config.inference_http_port,
                                     config.inference_grpc_port, probe_timeout=config.probe_timeout,
                                     load_timeout=config.load_timeout)
        self.loader = ModelLoader(config, self.client, self.emit)
        self.readiness = ReadinessWatcher(self.client, self._on_readiness,
                                          poll_not_ready=config.ready_poll_not_ready,
                                          poll_ready=config.ready_poll_ready)
        self.connected = asyncio.Event()
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._send_lock = asyncio.Lock()
        self._pending: deque[wire.ModelEvent] = deque(maxlen=_MAX_PENDING)
        self._outbox: list[wire.ModelEvent] = []  # outcomes for the next flush (batched: docs/loading.md)
        self._flush: asyncio.Task[Any] | None = None
        self._protocol = 1  # the control plane's, from its welcome: 2 takes ``models`` batches
        self._tasks: set[asyncio.Task[Any]] = set()
        self._resync: asyncio.Task[Any] | None = None
        self.probe: capabilities.ProbeResult | None = None  # what the capability probe found (once per start)
        # what this agent saw reaching the control plane, sent up in hello and heartbeats (agent/control_view.py)
        self.view = ControlReporter(config.control_url, config.control_host, config.control_port)
        # --control-ca: wss:// trusting only that CA (wire/tls.py); a bad file stops the agent at start
        self._tls = client_context(config.control_ca) if config.control_ca is not None else None

    # -- outgoing ------------------------------------------------------------------------------
    def hello(self) -> wire.Hello:
        cfg = self.config
        readiness = self.readiness.current
        return wire.Hello(
            namespace=cfg.namespace, server=cfg.server, replica=cfg.replica,
            capabilities=list(cfg.capabilities), memory=cfg.memory,
            overcommit_percent=cfg.overcommit_percent, inference=cfg.inference, readiness=readiness,
            loaded=self.loader.loaded_models(), kept=self.loader.kept_models(),
            pid=self.loader.inference_pid() if readiness.ready else None,
            unavailable=list(self.probe.problems) if self.probe else [],
            probed_with=self.probe.python if self.probe and not self.probe.error else None,
            control=self.view.report())

    async def probe_capabilities(self) -> capabilities.ProbeResult:
        """Ask the inference server's Python whether each claimed capability's runtime is there (once)."""
        pid = self.loader.inference_pid() if self.readiness.current.ready else self.config.inference_pid
        try:
            program: str | None = mlserver_executable()
        except ConfigError:
            program = None
        python = capabilities.interpreter(pid, program)
        try:
            result = await asyncio.to_thread(capabilities.probe, self.config.capabilities, python)
        except Exception as exc:  # the probe must never keep the agent from serving
            log.exception("capability probe failed")
            result = capabilities.ProbeResult(python, error=f"probe failed: {type(exc).__name__}: {exc}")
        if result.error:
            log.warning("capability probe: %s; claimed capabilities are reported unchecked", result.error)
        for problem in result.problems:
            log.warning("%s: models requiring it will not be placed here",
                        capabilities.describe(problem, self.config.server))
        self.probe = result
        return result

    async def _send(self, msg: BaseModel) -> bool:
        """Send on the live connection; False when there is none (or it just broke)."""
        async with self._send_lock:
            ws = self._ws
            if ws is None or ws.closed:
                return False
            if self._outbox:  # outcomes reported before this message go before it
                await self._flush_locked()
            try:
                await ws.send_str(wire.dump(msg))
                return True
            except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
                log.info("sending %s to the control plane failed: %s", msg.__class__.__name__, exc)
                return False

    async def emit(self, event: wire.ModelEvent) -> None:
        """Report a model outcome now, or after reconnecting when the control plane is away."""
        log.info("model %s generation %d: %s%s", event.name, event.generation, event.state,
                 f" ({event.message})" if event.message else "")
        self._outbox.append(event)  # sent with the others reported within _REPORT_WINDOW
        if self._flush is None:
            self._flush = self._spawn(self._flush_outbox(), "report model outcomes")

    async def _flush_outbox(self) -> None:
        await asyncio.sleep(_REPORT_WINDOW)
        self._flush = None
        async with self._send_lock:
            await self._flush_locked()

    async def _flush_locked(self) -> None:
        """Send the outbox (``_send_lock`` held): batched to a control plane of protocol 2, one frame per
        outcome to an older one; what cannot be sent waits for the next connection."""
        events, self._outbox = self._outbox, []
        ws, sent = self._ws, 0
        try:
            if ws is None or ws.closed:
                raise ConnectionError("not connected")
            texts = (wire.dump(e) for e in events)
            for frame, count in (batch.frames("models", texts) if self._protocol >= wire.BATCH_PROTOCOL
                                 else ((text, 1) for text in texts)):
                await ws.send_str(frame)
                sent += count
        except (ConnectionError, RuntimeError, aiohttp.ClientError) as exc:
            if ws is not None:
                log.info("sending %d model outcomes to the control plane failed: %s", len(events) - sent, exc)
            self._pending.extend(events[sent:])

    async def _on_readiness(self, new: wire.Readiness, old: wire.Readiness) -> None:
        await self._send(wire.Status(readiness=new))
        if new.ready and not old.ready:
            self._resync = self._spawn(self.loader.resync(), "resync")

    async def _resync_every(self, stop: asyncio.Event) -> None:
        """Every ``resync_interval`` seconds while the inference server is ready (and no resync runs): ask it
        about one model this agent loaded, the next in turn (``ModelLoader.still_held``), and resync when it
        no longer holds it.  A restart quicker than two readiness probes (a kubelet starting a killed MLServer
        again within ``ready_poll_ready``) is never seen as "not ready", and the models it lost would count as
        loaded for ever: found here, reported UNLOADED, and the control plane loads them again."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.config.resync_interval)
            if stop.is_set() or not self.readiness.current.ready or (self._resync is not None
                                                                     and not self._resync.done()):
                continue
            if not await self.loader.still_held():
                log.warning("the inference server %s lost a model this agent loaded (restarted?): resyncing",
                            self.client.base_url)
                self._resync = self._spawn(self.loader.resync(), "resync")

    # -- incoming ------------------------------------------------------------------------------
    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """A one-shot task (a load, an unload, a resync): kept until done, its failure logged with its name."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("agent task %s failed", task.get_name(), exc_info=task.exception())

    async def _do_load(self, msg: wire.Load) -> None:
        await self.emit(await self.loader.load(msg))

    async def _do_unload(self, msg: wire.Unload) -> None:
        await self.emit(await self.loader.unload(msg.name, keep_artifact=msg.keep_artifact))

    async def _do_check(self, msg: wire.CheckStorage) -> None:
        """``berth doctor``'s storage check, from this host (the control plane never reads storage itself)."""
        checks = await asyncio.to_thread(storage_check.check, msg.source)
        await self._send(wire.StorageReport(id=msg.id, checks=checks))

    def _dispatch(self, text: str) -> None:
        try:
            msg = wire.parse_control(text)
        except ValidationError as exc:
            loads, problems = batch.salvage(text, wire.Load)  # one bad load of a batch costs only itself
            log.warning("ignoring an invalid frame from the control plane: %s", "; ".join(problems[:3])
                        if loads or problems != ["not a batch frame"] else exc.errors()[0]["msg"])
            if not loads:
                return
            msg = wire.LoadBatch(loads=loads)
        for one in batch.items_of(msg):  # each load of a batch exactly as a lone load
            self._handle(one)

    def _handle(self, msg: Any) -> None:
        if isinstance(msg, wire.Load):
            if msg.namespace is not None and msg.namespace != self.config.namespace:
                log.error("ignoring a load of model %s for namespace %s: this agent serves namespace %s",
                          msg.name, msg.namespace, self.config.namespace)
                return
            self._spawn(self._do_load(msg), f"load {msg.name}")
        elif isinstance(msg, wire.Unload):
            self._spawn(self._do_unload(msg), f"unload {msg.name}")
        elif isinstance(msg, wire.CheckStorage):
            if msg.namespace != self.config.namespace:
                log.error("ignoring a storage check of model %s for namespace %s: this agent serves namespace %s",
                          msg.name, msg.namespace, self.config.namespace)
                return
            self._spawn(self._do_check(msg), f"check {msg.name}")
        elif isinstance(msg, wire.ErrorMsg):
            log.error("control plane error %s: %s", msg.code, msg.message)

    # -- connection ----------------------------------------------------------------------------
    async def _session(self, session: aiohttp.ClientSession) -> bool:
        """One connection, until it drops (or the task is cancelled); True when it got as far as welcome."""
        url = self.config.control_url
        token = self.config.bearer_token()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        await self.view.resolve()
        ws = await session.ws_connect(url, heartbeat=20.0, max_msg_size=8 * 1024 * 1024, headers=headers,
                                      ssl=self._tls if self._tls is not None else True, autoping=False)
        self.view.connected(ws)  # autoping off: the pongs of our pings time the round trip
        heartbeat: GuardedTask | None = None
        try:
            hello = self.hello()
            await ws.send_str(wire.dump(hello))
            first = await ws.receive(timeout=_WELCOME_TIMEOUT)
            while first.type in (aiohttp.WSMsgType.PING, aiohttp.WSMsgType.PONG):
                if first.type == aiohttp.WSMsgType.PING:
                    await ws.pong(first.data)
                first = await ws.receive(timeout=_WELCOME_TIMEOUT)
            if first.type != aiohttp.WSMsgType.TEXT:
                log.warning("control plane %s closed the connection before welcome (%s)", url, first.type)
                return False
            answer = wire.parse_control(first.data)
            if isinstance(answer, wire.ErrorMsg):
                log.error("control plane %s refused this agent %s (%s): %s", url, self.config.identity,
                          answer.code, answer.message)
                self.view.rejected(f"{answer.code}: {answer.message}")
                raise Refused(answer.code, answer.message)
            if not isinstance(answer, wire.Welcome):
                log.warning("control plane %s answered hello with %s, not welcome", url, answer.type)
                return False
            self._protocol = answer.protocol
            async with self._send_lock:
                while self._pending:
                    await ws.send_str(wire.dump(self._pending[0]))
                    self._pending.popleft()
                if self.readiness.current != hello.readiness:  # changed while saying hello
                    await ws.send_str(wire.dump(wire.Status(readiness=self.readiness.current)))
                self._ws = ws
            self.connected.set()
            log.info("connected to control plane %s as %s", url, self.config.identity)
            interval = max(0.1, answer.heartbeat_interval)
            heartbeat = guarded("agent-heartbeat", lambda: self._heartbeat(interval), restart=True,
                                backoff=(interval, max(interval, 30.0)))
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    self._dispatch(msg.data)
                elif msg.type == aiohttp.WSMsgType.PING:
                    await ws.pong(msg.data)
                elif msg.type == aiohttp.WSMsgType.PONG:
                    self.view.pong(msg.data)
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    break
            return True
        finally:
            async with self._send_lock:
                self._ws = None
            self.connected.clear()
            self.view.disconnected()
            if heartbeat is not None:
                heartbeat.cancel()
            await ws.close()

    async def _heartbeat(self, interval: float) -> None:
        while True:
            ws = self._ws
            if ws is not None and not ws.closed:  # timed by its pong: the next heartbeat carries the round trip
                await self.view.ping(ws)
            await asyncio.sleep(interval)
            await self._send(wire.Heartbeat(control=self.view.changed()))

    async def _connect_loop(self, stop: asyncio.Event) -> None:
        cfg = self.config
        delay = cfg.reconnect_min
        failures = 0
        timeout = aiohttp.ClientTimeout(total=None, connect=10.0, sock_connect=5.0)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while not stop.is_set():
                attempt = asyncio.ensure_future(self._session(session))
                stopped = asyncio.ensure_future(stop.wait())
                await asyncio.wait({attempt, stopped}, return_when=asyncio.FIRST_COMPLETED)
                stopped.cancel()
                if stop.is_set():
                    attempt.cancel()
                    await asyncio.gather(attempt, return_exceptions=True)
                    return
                wait = delay
                try:
                    welcomed = attempt.result()
                    reason = "connection closed"
                except Refused as exc:
                    welcomed, reason = False, f"refused ({exc})"
                    if exc.code in _REFUSED:
                        wait = max(delay, cfg.refused_retry)
                except (aiohttp.ClientError, OSError, TimeoutError, ValidationError, ConfigError) as exc:
                    welcomed, reason = False, str(exc) or type(exc).__name__
                    self.view.failed(exc)
                except Exception as exc:  # keep serving the inference server whatever went wrong
                    log.exception("control plane session failed")
                    welcomed, reason = False, f"unexpected {type(exc).__name__}: {exc}"
                if welcomed:
                    delay, failures = cfg.reconnect_min, 0
                failures += 1
                level = logging.WARNING if failures == 1 else logging.DEBUG
                log.log(level, "control plane %s: %s; reconnecting in %.1fs", cfg.control_url, reason, wait)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=wait)
                delay = min(delay * 2, cfg.reconnect_max)

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set; the inference server is left as it is."""
        cfg = self.config
        try:  # in a pod: the pod's address relayed to MLServer on loopback (agent/relay.py)
            relays = await start_relays(cfg.advertise_host or cfg.inference_host, cfg.inference_host, [
                (cfg.relay_http_port, cfg.inference_http_port, "REST relay"),
                (cfg.relay_grpc_port, cfg.inference_grpc_port, "gRPC relay")])
        except OSError as exc:
            raise ConfigError(f"the agent cannot listen on {cfg.inference.host} for its relay (ports "
                              f"{cfg.relay_http_port}, {cfg.relay_grpc_port}): {exc.strerror or exc}; check "
                              "BERTH_ADVERTISE_HOST and BERTH_RELAY_*_PORT") from exc
        watcher = guarded("agent-readiness", lambda: self.readiness.run(stop), restart=True, stop=stop)
        drift = guarded("agent-resync", lambda: self._resync_every(stop), restart=True, stop=stop)
        connection: GuardedTask | None = None
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.readiness.probed.wait(), timeout=self.config.probe_timeout + 1)
            await self.probe_capabilities()
            if self._resync is not None:  # adopt what a previous agent loaded before saying hello
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._resync), timeout=10)
            connection = guarded("agent-connection", lambda: self._connect_loop(stop), restart=True, stop=stop)
            await connection.wait()
        finally:
            if connection is not None:
                connection.cancel()
            watcher.cancel()
            drift.cancel()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(watcher.task, drift.task, *(() if connection is None else (connection.task,)),
                                 *self._tasks, return_exceptions=True)
            await self.client.aclose()
            for relay in relays:
                await relay.close()


async def run_agent(config: AgentConfig, stop: asyncio.Event) -> None:
    """Run one agent until ``stop`` is set (the ``berth agent`` command calls this)."""
    relayed = (f" (relayed from {config.inference.http})" if config.relay_http_port or config.relay_grpc_port
               else "")
    log.info("agent %s: inference server %s:%d%s, control plane %s, repository %s", config.identity,
             config.inference_host, config.inference_http_port, relayed, config.control_url, config.repository)
    if config.token_file is None and not config.token:
        log.warning("agent %s has no token (--token-file or BERTH_AGENT_TOKEN): a control plane that enrols "
                    "agents will refuse it", config.identity)
    await Agent(config).run(stop)
