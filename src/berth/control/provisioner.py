"""The local provisioner: each Server resource becomes ``spec.replicas`` running replicas.

As Seldon's operator turns a Server into a StatefulSet, this turns it into pairs of supervised local
processes — a real MLServer on free loopback ports and a ``berth agent`` beside it — and keeps that
true when the Server is scaled or deleted.  A replica whose process dies is restarted with backoff;
one that keeps crashing is reported in the log and left stopped.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from berth.adapters.mlserver_proc import MLServerProcess
from berth.resources.kinds import server_spec
from berth.resources.quantity import parse_quantity
from berth.scheduler.build import server_info
from berth.store.base import Store

log = logging.getLogger("berth.control.provisioner")
MEMORY_ANNOTATION = "berth.io/replica-memory"
MAX_RESTARTS = 5  # within RESTART_WINDOW seconds, then give up and report
RESTART_WINDOW = 120.0

Key = tuple[str, str, int]


@dataclass
class LocalReplica:
    key: Key
    workdir: Path
    capabilities: tuple[str, ...]
    memory: int
    mlserver: MLServerProcess
    agent: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)
    next_start: float = 0.0
    gave_up: bool = False

    def alive(self) -> bool:
        proc = self.mlserver.process
        return (proc is not None and proc.poll() is None
                and self.agent is not None and self.agent.poll() is None)


class LocalProvisioner:
    def __init__(self, store: Store, control_host: str, control_port: int, data_dir: Path, *,
                 replica_memory: int, overcommit_percent: int = 10) -> None:
        self.store = store
        self.control_host = control_host
        self.control_port = control_port
        self.root = data_dir / "replicas"
        self.replica_memory = replica_memory
        self.overcommit_percent = overcommit_percent
        self.replicas: dict[Key, LocalReplica] = {}
        self._wake = asyncio.Event()

    def changed(self) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        try:
            while not stop.is_set():
                self.converge()
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout=1.0)
                except TimeoutError:
                    pass
        finally:
            await asyncio.get_running_loop().run_in_executor(None, self.stop_all)

    def desired(self) -> dict[Key, dict[str, Any]]:
        out: dict[Key, dict[str, Any]] = {}
        for doc in self.store.list("Server"):
            ns, name = doc["metadata"]["namespace"], doc["metadata"]["name"]
            for i in range(server_spec(doc).desired_replicas()):
                out[(ns, name, i)] = doc
        return out

    def converge(self) -> None:
        want = self.desired()
        for key in sorted(set(self.replicas) - set(want), reverse=True):
            log.info("stopping replica %s/%s/%d (server scaled down or deleted)", *key)
            self._stop(self.replicas.pop(key))
        now = time.monotonic()
        for key, doc in sorted(want.items()):
            rep = self.replicas.get(key)
            if rep is None:
                rep = self._new(key, doc)
                self.replicas[key] = rep
                self._start(rep)
            elif not rep.alive() and not rep.gave_up and now >= rep.next_start:
                self._restart(rep, now)

    def _new(self, key: Key, doc: dict[str, Any]) -> LocalReplica:
        ns, name, index = key
        workdir = self.root / ns / f"{name}-{index}"
        annotations = doc["metadata"].get("annotations") or {}
        memory = self.replica_memory
        if MEMORY_ANNOTATION in annotations:
            memory = parse_quantity(annotations[MEMORY_ANNOTATION], field=MEMORY_ANNOTATION)
        return LocalReplica(key=key, workdir=workdir, capabilities=server_info(doc).capabilities,
                            memory=memory, mlserver=MLServerProcess(workdir / "mlserver"))

    def _start(self, rep: LocalReplica) -> None:
        ns, name, index = rep.key
        rep.mlserver.http_port = rep.mlserver.grpc_port = rep.mlserver.metrics_port = 0
        proc = rep.mlserver.start()
        env = dict(os.environ)
        env.update({
            "BERTH_NAMESPACE": ns, "BERTH_SERVER": name, "BERTH_REPLICA": str(index),
            "BERTH_CAPABILITIES": ",".join(rep.capabilities), "BERTH_MEMORY": str(rep.memory),
            "BERTH_OVERCOMMIT_PERCENT": str(self.overcommit_percent),
            "BERTH_INFERENCE_HOST": rep.mlserver.host,
            "BERTH_INFERENCE_HTTP_PORT": str(rep.mlserver.http_port),
            "BERTH_INFERENCE_GRPC_PORT": str(rep.mlserver.grpc_port),
            "BERTH_INFERENCE_PID": str(proc.pid),
            "BERTH_REPOSITORY_DIR": str(rep.mlserver.repository),
            "BERTH_DATA_DIR": str(rep.workdir / "agent"),
            "BERTH_CONTROL_HOST": self.control_host, "BERTH_CONTROL_PORT": str(self.control_port),
        })
        log_file = open(rep.workdir / "agent.log", "ab")  # noqa: SIM115 - handed to the child
        rep.agent = subprocess.Popen([sys.executable, "-m", "berth.main", "agent"], env=env,
                                     stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        log_file.close()
        log.info("started replica %s/%s/%d: mlserver pid %d on %s, agent pid %d", ns, name, index,
                 proc.pid, rep.mlserver.http_address, rep.agent.pid)

    def _restart(self, rep: LocalReplica, now: float) -> None:
        what = []
        if rep.mlserver.process is not None and rep.mlserver.process.poll() is not None:
            what.append(f"mlserver exited with status {rep.mlserver.process.returncode}")
        if rep.agent is not None and rep.agent.poll() is not None:
            what.append(f"agent exited with status {rep.agent.returncode}")
        rep.restarts = [t for t in rep.restarts if now - t < RESTART_WINDOW] + [now]
        self._stop(rep)
        if len(rep.restarts) > MAX_RESTARTS:
            rep.gave_up = True
            log.error("replica %s/%s/%d keeps crashing (%d restarts in %.0fs; last: %s); not restarting it "
                      "again — see %s", *rep.key, len(rep.restarts) - 1, RESTART_WINDOW, ", ".join(what),
                      rep.workdir)
            return
        delay = min(30.0, 0.5 * 2 ** (len(rep.restarts) - 1))
        rep.next_start = now + delay
        log.warning("replica %s/%s/%d: %s; restarting (restart %d)", *rep.key, ", ".join(what),
                    len(rep.restarts))
        self._start(rep)

    def _stop(self, rep: LocalReplica) -> None:
        if rep.agent is not None and rep.agent.poll() is None:
            try:
                os.killpg(rep.agent.pid, signal.SIGTERM)
                rep.agent.wait(timeout=5)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(rep.agent.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        rep.mlserver.stop()

    def stop_all(self) -> None:
        for key in sorted(self.replicas, reverse=True):
            self._stop(self.replicas.pop(key))
