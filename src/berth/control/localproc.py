"""Handles on local processes the provisioner runs: its own children, or ones adopted after a restart.

A control plane that was killed leaves its replicas running (they are session leaders); the next one
adopts them from the state file instead of starting duplicates.  A handle knows its process by pid
and start time, so a reused pid is never mistaken for it.
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass
from typing import Any

import psutil


@dataclass
class Handle:
    pid: int
    create_time: float
    popen: subprocess.Popen[bytes] | None = None  # set when the process is our child

    @classmethod
    def of(cls, popen: subprocess.Popen[bytes]) -> Handle:
        try:
            created = psutil.Process(popen.pid).create_time()
        except psutil.NoSuchProcess:
            created = 0.0
        return cls(popen.pid, created, popen)

    @classmethod
    def adopt(cls, data: dict[str, Any]) -> Handle | None:
        """A handle on a recorded process if it still runs (same pid and start time), else None."""
        try:
            proc = psutil.Process(int(data["pid"]))
            if abs(proc.create_time() - float(data["create_time"])) > 0.05 or \
                    proc.status() == psutil.STATUS_ZOMBIE:
                return None
        except (psutil.NoSuchProcess, psutil.AccessDenied, KeyError, ValueError, TypeError):
            return None
        return cls(int(data["pid"]), float(data["create_time"]))

    def record(self) -> dict[str, Any]:
        return {"pid": self.pid, "create_time": self.create_time}

    def alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        try:
            proc = psutil.Process(self.pid)
            return bool(proc.status() != psutil.STATUS_ZOMBIE and abs(proc.create_time() - self.create_time) <= 0.05)
        except psutil.NoSuchProcess:
            return False

    def exit_text(self) -> str:
        if self.popen is not None and self.popen.returncode is not None:
            code = self.popen.returncode
            return f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
        return "exited"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, wait, then SIGKILL; reaps our own children."""
        if not self.alive():
            if self.popen is not None:
                self.popen.poll()
            return
        try:
            os.killpg(self.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            return
        if self._wait(timeout):
            return
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        self._wait(5.0)

    def _wait(self, timeout: float) -> bool:
        if self.popen is not None:
            try:
                self.popen.wait(timeout=timeout)
                return True
            except subprocess.TimeoutExpired:
                return False
        try:
            psutil.Process(self.pid).wait(timeout=timeout)
            return True
        except psutil.NoSuchProcess:
            return True
        except psutil.TimeoutExpired:
            return False
