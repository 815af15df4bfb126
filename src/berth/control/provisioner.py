"""The local provisioner: each Server resource becomes ``spec.replicas`` running replicas (or as many as
autoscaling decided, between its ``minReplicas`` and ``maxReplicas``: docs/autoscaling.md).

As Seldon's operator turns a Server into a StatefulSet, this turns it into pairs of supervised local
processes — a real MLServer on free loopback ports and a ``berth agent`` beside it — and keeps that
true when the Server is scaled, changed or deleted.  A replica whose process dies is restarted with
backoff; one that keeps crashing is reported in the log and left stopped.  Replicas outlive a killed
control plane: their pids are kept in ``<data dir>/replicas/state.json`` and the next control plane
adopts the ones still running instead of starting duplicates.

Each agent enrols with a token minted for its replica alone (named ``agent.<namespace>.<server>.<index>``),
handed over in its environment (``BERTH_AGENT_TOKEN``), never on its command line.  The token is kept in
``auth.db`` (hashed), so an adopted agent still enrols after a control-plane restart; one whose token is
no longer valid (revoked, or kept only in memory by the previous control plane) gets a new agent with a new
token.  A replica that is removed has its token revoked.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from berth.adapters.mlserver_proc import MLServerProcess
from berth.control.localproc import Handle
from berth.control.tokens import TokenRegistry
from berth.errors import InvalidInput, NotFound
from berth.resources.identity import AgentIdentity, new_token
from berth.resources.kinds import server_spec
from berth.resources.podspec import RUNS, inference_server, replica_shape, server_config_for, unsupported_message
from berth.scheduler.build import server_info
from berth.store.base import Store

log = logging.getLogger("berth.control.provisioner")
MAX_RESTARTS = 5  # within RESTART_WINDOW seconds, then give up and report
RESTART_WINDOW = 120.0

Key = tuple[str, str, int]
TOKEN_ENV = "BERTH_AGENT_TOKEN"
# Credentials of the control plane's own user that an agent must not inherit.
NOT_INHERITED = ("BERTH_TOKEN", TOKEN_ENV, "BERTH_AGENT_TOKEN_FILE")


def token_name(key: Key) -> str:
    """The name of the token minted for local replica ``key``: dots cannot occur in a namespace or an index,
    so no two replicas share one.  A server name too long for that (names are at most 253 characters) is
    replaced by its digest."""
    ns, server, index = key
    name = f"agent.{ns}.{server}.{index}"
    if len(name) > 253:
        name = f"agent.{ns}.sha256-{hashlib.sha256(server.encode()).hexdigest()}.{index}"
    return name


@dataclass(frozen=True)
class Shape:
    """What every replica of one Server offers."""

    capabilities: tuple[str, ...]
    memory: int
    overcommit: int


def decide(doc: dict[str, Any], configs: list[dict[str, Any]], *, replica_memory: int,
           overcommit_percent: int) -> tuple[Shape | None, str | None]:
    """What each replica of Server ``doc`` offers, or None when Berth does not run its inference server;
    and a note for the log: why it is not run, or a bad value replaced by the defaults."""
    config = server_config_for(doc, configs)
    kind = inference_server(doc, config)
    if kind != RUNS:
        meta = doc["metadata"]
        return None, (f"server {meta['namespace']}/{meta['name']} gets no replicas: "
                      f"{unsupported_message((doc.get('spec') or {}).get('serverConfig'), kind)}")
    caps = server_info(doc, config).capabilities
    try:
        shape = replica_shape(doc, config, memory=(replica_memory, "--replica-memory"),
                              overcommit_percent=(overcommit_percent, "--overcommit"))
    except InvalidInput as exc:
        return Shape(caps, replica_memory, overcommit_percent), \
            f"{exc}; replicas offer --replica-memory and --overcommit instead"
    return Shape(caps, shape.memory, shape.overcommit), None


@dataclass
class LocalReplica:
    key: Key
    workdir: Path
    capabilities: tuple[str, ...]
    memory: int
    overcommit: int = 10
    mlserver: Handle | None = None
    agent: Handle | None = None
    http_port: int = 0
    grpc_port: int = 0
    restarts: list[float] = field(default_factory=list)
    next_start: float = 0.0
    gave_up: bool = False

    def alive(self) -> bool:
        return self.mlserver is not None and self.mlserver.alive() and \
            self.agent is not None and self.agent.alive()

    def record(self) -> dict[str, Any]:
        return {"workdir": str(self.workdir), "capabilities": list(self.capabilities), "memory": self.memory,
                "overcommit": self.overcommit, "http_port": self.http_port, "grpc_port": self.grpc_port,
                "mlserver": self.mlserver.record() if self.mlserver else None,
                "agent": self.agent.record() if self.agent else None}


class LocalProvisioner:
    def __init__(self, store: Store, control_host: str, control_port: int, data_dir: Path, *,
                 replica_memory: int, overcommit_percent: int = 10, tokens: TokenRegistry | None = None) -> None:
        self.store = store
        self.tokens = tokens or TokenRegistry(None)
        self.control_host = control_host
        self.control_port = control_port
        self.root = data_dir.resolve() / "replicas"
        self.replica_memory = replica_memory
        self.overcommit_percent = overcommit_percent
        self.replicas: dict[Key, LocalReplica] = {}
        # the replicas autoscaling decided for a Server (None: its spec's); control/autoscale_loop.py
        self.replicas_of: Callable[[str, str], int | None] = lambda ns, name: None
        self._noted: set[str] = set()  # notes (bad podSpec values, servers not run) already logged
        self._wake = asyncio.Event()
        self._tokens_changed = False  # set (from any thread) when a token was created or revoked
        self._converging = threading.Lock()  # converge and stop_all run in worker threads: one at a time
        self.tokens.on_change.append(self._on_tokens_changed)
        self._adopt()

    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    def changed(self) -> None:
        self._wake.set()

    def _on_tokens_changed(self) -> None:
        self._tokens_changed = True

    async def run(self, stop: asyncio.Event) -> None:
        crashed = False
        try:
            while not stop.is_set():
                self._wake.clear()
                # In a worker thread: process starts (fork, ports) and stops (SIGTERM, then up to 10 s of
                # waiting, then SIGKILL) never hold up the event loop that serves the API and the agents.
                await asyncio.to_thread(self.converge)
                if self._wake.is_set():
                    continue  # changed while converging: once more
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=0.5)
                except TimeoutError:
                    pass
        except Exception:
            crashed = True  # the guarded restart carries on with the replicas still running
            raise
        finally:
            if not crashed:  # stopped or cancelled: the replicas stop with the control plane
                await asyncio.get_running_loop().run_in_executor(None, self.stop_all)

    def desired(self) -> dict[Key, Shape]:
        """Every replica the Servers ask for that Berth runs, with what it should offer."""
        out: dict[Key, Shape] = {}
        configs = self.store.list("ServerConfig")
        for doc in self.store.list("Server"):
            ns, name = doc["metadata"]["namespace"], doc["metadata"]["name"]
            shape, note = decide(doc, configs, replica_memory=self.replica_memory,
                                 overcommit_percent=self.overcommit_percent)
            if note is not None and note not in self._noted:
                self._noted.add(note)
                log.warning("%s", note)
            if shape is None:
                continue
            scaled = self.replicas_of(ns, name)
            for i in range(server_spec(doc).desired_replicas() if scaled is None else scaled):
                out[(ns, name, i)] = shape
        return out

    def converge(self) -> None:
        with self._converging:
            self._converge()

    def _converge(self) -> None:
        want = self.desired()
        dirty = False
        for key in sorted(set(self.replicas) - set(want), reverse=True):
            log.info("stopping replica %s/%s/%d (server scaled down or deleted)", *key)
            self._stop(self.replicas.pop(key))
            self._revoke(key)
            dirty = True
        if self._tokens_changed:
            self._tokens_changed = False
            dirty = self._renew_revoked() or dirty
        now = time.monotonic()
        for key, shape in sorted(want.items()):
            rep = self.replicas.get(key)
            if rep is not None and Shape(rep.capabilities, rep.memory, rep.overcommit) != shape:
                log.info("replica %s/%s/%d: server changed (capabilities, memory or overcommit); restarting it",
                         *key)
                self._stop(self.replicas.pop(key))
                rep = None
            if rep is None:
                rep = LocalReplica(key, self.root / key[0] / f"{key[1]}-{key[2]}", shape.capabilities,
                                   shape.memory, shape.overcommit)
                self.replicas[key] = rep
                self._start(rep)
                dirty = True
            elif not rep.alive() and not rep.gave_up and now >= rep.next_start:
                self._restart(rep, now)
                dirty = True
        if dirty:
            self._save()

    def _start(self, rep: LocalReplica) -> None:
        mls = MLServerProcess(rep.workdir / "mlserver")
        proc = mls.start()
        rep.mlserver = Handle.of(proc)
        rep.http_port, rep.grpc_port = mls.http_port, mls.grpc_port
        self._start_agent(rep)
        log.info("started replica %s/%s/%d: mlserver pid %d on %s, agent pid %d", *rep.key, proc.pid,
                 mls.http_address, rep.agent.pid if rep.agent else 0)

    def _start_agent(self, rep: LocalReplica) -> None:
        """Start the agent beside the replica's MLServer, with a token minted for this replica now."""
        ns, name, index = rep.key
        mls = MLServerProcess(rep.workdir / "mlserver", http_port=rep.http_port, grpc_port=rep.grpc_port)
        token = new_token()
        self.tokens.ensure(token_name(rep.key), token, grants={}, kind="agent",
                           agent=AgentIdentity(ns, name, index))
        env = {k: v for k, v in os.environ.items() if k not in NOT_INHERITED}
        env.update({
            TOKEN_ENV: token,
            "BERTH_NAMESPACE": ns, "BERTH_SERVER": name, "BERTH_REPLICA": str(index),
            "BERTH_CAPABILITIES": ",".join(rep.capabilities), "BERTH_MEMORY": str(rep.memory),
            "BERTH_OVERCOMMIT_PERCENT": str(rep.overcommit),
            "BERTH_INFERENCE_HOST": mls.host,
            "BERTH_INFERENCE_HTTP_PORT": str(rep.http_port),
            "BERTH_INFERENCE_GRPC_PORT": str(rep.grpc_port),
            "BERTH_INFERENCE_PID": str(rep.mlserver.pid if rep.mlserver else ""),
            "BERTH_REPOSITORY_DIR": str(mls.repository),
            "BERTH_DATA_DIR": str(rep.workdir / "agent"),
            "BERTH_CONTROL_HOST": self.control_host, "BERTH_CONTROL_PORT": str(self.control_port),
        })
        log_file = open(rep.workdir / "agent.log", "ab")  # noqa: SIM115 - handed to the child
        agent = subprocess.Popen([sys.executable, "-m", "berth.main", "agent"], env=env,
                                 stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 start_new_session=True)
        log_file.close()
        rep.agent = Handle.of(agent)

    def _renew_revoked(self) -> bool:
        """A running replica whose token was revoked (or expired) gets a new agent with a new token; its
        MLServer and the models it holds stay.  True when one did."""
        renewed = False
        for key, rep in sorted(self.replicas.items()):
            if rep.agent is None or not rep.agent.alive() or self.tokens.valid(token_name(key)):
                continue
            log.warning("replica %s/%s/%d: its agent token was revoked or has expired; restarting its agent "
                        "with a new one", *key)
            rep.agent.stop()
            self._start_agent(rep)
            renewed = True
        return renewed

    def _revoke(self, key: Key) -> None:
        try:
            self.tokens.revoke(token_name(key))
        except NotFound:
            pass

    def _restart(self, rep: LocalReplica, now: float) -> None:
        what = [f"{label} {h.exit_text()}" for label, h in (("mlserver", rep.mlserver), ("agent", rep.agent))
                if h is not None and not h.alive()]
        rep.restarts = [t for t in rep.restarts if now - t < RESTART_WINDOW] + [now]
        self._stop(rep)
        if len(rep.restarts) > MAX_RESTARTS:
            rep.gave_up = True
            log.error("replica %s/%s/%d keeps crashing (%d restarts in %.0fs; last: %s); not restarting it "
                      "again — see the logs in %s", *rep.key, len(rep.restarts) - 1, RESTART_WINDOW,
                      ", ".join(what), rep.workdir)
            return
        rep.next_start = now + min(30.0, 0.5 * 2 ** (len(rep.restarts) - 1))
        log.warning("replica %s/%s/%d: %s; restarting it (restart %d)", *rep.key, ", ".join(what),
                    len(rep.restarts))
        self._start(rep)

    def _stop(self, rep: LocalReplica) -> None:
        for handle in (rep.agent, rep.mlserver):
            if handle is not None:
                handle.stop()

    def stop_all(self) -> None:
        with self._converging:
            self._stop_all()

    def _stop_all(self) -> None:
        for key in sorted(self.replicas, reverse=True):
            self._stop(self.replicas.pop(key))
        self._save()

    # -- surviving a control plane restart ---------------------------------------------------------
    def _save(self) -> None:
        records = {"/".join(map(str, k)): r.record() for k, r in sorted(self.replicas.items())}
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = self.state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(records, indent=1))
            os.replace(tmp, self.state_path)
        except OSError as exc:
            log.warning("cannot record replicas in %s: %s", self.state_path, exc)

    def _adopt(self) -> None:
        try:
            records = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return
        for text, rec in records.items():
            ns, name, index = text.rsplit("/", 2)
            mls = Handle.adopt(rec.get("mlserver") or {})
            agent = Handle.adopt(rec.get("agent") or {})
            if mls is None or agent is None:
                for h in (agent, mls):
                    if h is not None:
                        h.stop()
                continue
            key = (ns, name, int(index))
            if not self.tokens.valid(token_name(key)):
                log.info("replica %s/%s/%s: its agent token is no longer valid; starting it afresh", *key)
                for h in (agent, mls):
                    h.stop()
                continue
            self.replicas[key] = LocalReplica(
                key, Path(rec["workdir"]), tuple(rec["capabilities"]), int(rec["memory"]),
                int(rec.get("overcommit", self.overcommit_percent)), mlserver=mls, agent=agent,
                http_port=rec["http_port"], grpc_port=rec["grpc_port"])
            log.info("adopted running replica %s/%s/%s (mlserver pid %d, agent pid %d)", ns, name, index,
                     mls.pid, agent.pid)
