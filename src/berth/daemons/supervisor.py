"""A small process supervisor: start children, restart the ones that die (with backoff), stop all.

A child that keeps crashing (more than ``max_restarts`` in ``window`` seconds) is reported and left
stopped instead of looping forever.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from berth.adapters.logfile import tail


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str] | None = None
    process: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)
    next_start: float = 0.0
    gave_up: bool = False

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.process = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, env=self.env, start_new_session=True)
        log.close()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 3) -> str:
        return tail(self.log_path, lines)


class Supervisor:
    def __init__(self, report: Callable[[str], None], *, max_restarts: int = 5, window: float = 120.0) -> None:
        self.children: list[Child] = []
        self.report = report
        self.max_restarts = max_restarts
        self.window = window

    def add(self, child: Child) -> Child:
        self.children.append(child)
        child.start()
        return child

    def check(self) -> None:
        """Restart children that exited; give up on one that keeps crashing."""
        now = time.monotonic()
        for c in self.children:
            if c.running() or c.gave_up or c.process is None or now < c.next_start:
                continue
            code = c.process.returncode
            c.restarts = [t for t in c.restarts if now - t < self.window] + [now]
            if len(c.restarts) > self.max_restarts:
                c.gave_up = True
                self.report(f"{c.name} keeps crashing ({len(c.restarts) - 1} restarts in {self.window:.0f}s, "
                            f"last exit status {code}); left stopped. Last log lines ({c.log_path}): "
                            f"{c.log_tail()}")
                continue
            delay = min(30.0, 0.5 * 2 ** (len(c.restarts) - 1))
            self.report(f"{c.name} exited with status {code}; restarting (restart {len(c.restarts)}, "
                        f"next backoff {delay:.1f}s)")
            c.next_start = now + delay
            c.start()

    def stop_all(self, timeout: float = 20.0) -> None:
        """SIGTERM every child (last started first), wait, then SIGKILL what is left."""
        for c in reversed(self.children):
            if c.running() and c.process is not None:
                try:
                    os.killpg(c.process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for c in reversed(self.children):
            if c.process is None:
                continue
            try:
                c.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(c.process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                c.process.wait(timeout=5)


def sweep(marker: str) -> list[int]:
    """Kill leftover processes whose command line or BERTH_DATA_DIR mentions ``marker`` (a data dir)."""
    killed: list[int] = []
    spared = {os.getpid()} | {p.pid for p in psutil.Process().parents()}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.pid in spared:
            continue
        try:
            cmd = " ".join(proc.info.get("cmdline") or [])
            env_dir = proc.environ().get("BERTH_DATA_DIR", "") if marker not in cmd else marker
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if marker in cmd or env_dir.startswith(marker):
            try:
                proc.kill()
                killed.append(proc.pid)
            except psutil.NoSuchProcess:
                pass
    return killed
