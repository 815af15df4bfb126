"""Start and stop a real MLServer process on loopback (used by the local provisioner and tests).

The process gets its own folder holding ``settings.json`` (ports, no parallel workers, an empty model
repository that agents load into through the repository API, read by Berth's own repository class) and a
log file.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from berth.adapters.logfile import tail
from berth.errors import ConfigError, Unavailable


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_ports(count: int, host: str = "127.0.0.1", *, avoid: tuple[int, ...] = ()) -> list[int]:
    """``count`` distinct free ports, held open together while chosen so none repeats."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(s)
            s.bind((host, 0))
            port = int(s.getsockname()[1])
            if port not in avoid:
                ports.append(port)
    finally:
        for s in held:
            s.close()
    return ports


# What an inference server process inherits: nothing of the control plane's or agent's environment (tokens,
# cloud credentials, BERTH_*) but what it needs to run: its program path and home, locale and time zone, a temp
# folder, its own MLSERVER_* settings, proxy and CA settings when set, and the GPU runtime's device selection.
KEPT_ENV = frozenset({"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP",
                      "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "no_proxy",
                      "all_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
                      "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "LD_LIBRARY_PATH"})
KEPT_ENV_PREFIXES = ("LC_", "MLSERVER_")


def scrubbed_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment an inference server starts with: :data:`KEPT_ENV` and :data:`KEPT_ENV_PREFIXES` only."""
    return {k: v for k, v in environ.items() if k in KEPT_ENV or k.startswith(KEPT_ENV_PREFIXES)}


def mlserver_executable() -> str:
    """Path of the ``mlserver`` program: ``BERTH_MLSERVER``, else next to this Python, else on PATH."""
    chosen = os.environ.get("BERTH_MLSERVER")
    if chosen:
        if Path(chosen).is_file() and os.access(chosen, os.X_OK):
            return chosen
        raise ConfigError(f"BERTH_MLSERVER={chosen!r} is not an executable file; point it at the `mlserver` "
                          "program or unset it")
    beside = Path(sys.executable).parent / "mlserver"
    if beside.exists():
        return str(beside)
    found = shutil.which("mlserver")
    if found:
        return found
    raise ConfigError("MLServer is not installed: no 'mlserver' program next to "
                      f"{sys.executable} or on PATH; install it with: pip install 'modelberth[serve]' "
                      "(mlserver==1.7.1 mlserver-sklearn mlserver-mlflow)")


GRPC_MAX_MESSAGE = 256 << 20  # bytes, each way
# MLServer finds a model by reading <repository>/<name>/model-settings.json only, not by parsing every model's
# settings on each load (see berth.adapters.mlserver_repo; named here so the control plane need not import MLServer)
REPOSITORY_IMPLEMENTATION = "berth.adapters.mlserver_repo.BerthModelRepository"
# Runtime modules MLServer imports while starting, before it answers ready, instead of in its event loop on the
# first load (scikit-learn and SciPy: 2-4 s of CPU, during which the replica loads and answers nothing);
# one that is not installed is skipped with a warning in the MLServer log (docs/loading.md)
PRELOAD = ("mlserver_sklearn",)


@dataclass
class MLServerProcess:
    """One MLServer process with its own folder, ports and log."""

    workdir: Path
    host: str = "127.0.0.1"
    http_port: int = 0
    grpc_port: int = 0
    metrics_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    preload: tuple[str, ...] = PRELOAD

    @property
    def repository(self) -> Path:
        return self.workdir / "models"

    @property
    def log_path(self) -> Path:
        return self.workdir / "mlserver.log"

    @property
    def http_address(self) -> str:
        return f"{self.host}:{self.http_port}"

    def write_settings(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.repository.mkdir(parents=True, exist_ok=True)
        taken = tuple(p for p in (self.http_port, self.grpc_port, self.metrics_port) if p)
        fresh = iter(free_ports(3 - len(taken), self.host, avoid=taken))
        self.http_port = self.http_port or next(fresh)
        self.grpc_port = self.grpc_port or next(fresh)
        self.metrics_port = self.metrics_port or next(fresh)
        settings = {
            "host": self.host,
            "http_port": self.http_port,
            "grpc_port": self.grpc_port,
            "metrics_port": self.metrics_port,
            "parallel_workers": 0,
            "load_models_at_startup": False,
            "model_repository_root": str(self.repository),
            "model_repository_implementation": REPOSITORY_IMPLEMENTATION,
            # `mlserver start WORKDIR` sets model_repository_root to WORKDIR; Berth's class reads this folder
            "model_repository_implementation_args": {"folder": str(self.repository), "preload": list(self.preload)},
            "debug": False,
            # gRPC's 4 MiB default would refuse tensors REST takes; the gateway's own limit is the same
            "grpc_max_message_length": GRPC_MAX_MESSAGE,
        }
        (self.workdir / "settings.json").write_text(json.dumps(settings, indent=2))

    def start(self) -> subprocess.Popen[bytes]:
        """Start the process (does not wait for readiness; see :meth:`wait_ready`)."""
        exe = mlserver_executable()
        self.write_settings()
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        env = scrubbed_env(os.environ)
        env.setdefault("MLSERVER_LOGGING_LEVEL", "WARNING")
        self.process = subprocess.Popen(
            [exe, "start", str(self.workdir)], stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=str(self.workdir), env=env, start_new_session=True)
        log.close()
        return self.process

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Block until /v2/health/ready answers 200; returns seconds waited."""
        started = time.monotonic()
        url = f"http://{self.http_address}/v2/health/ready"
        last = "no answer yet"
        while time.monotonic() - started < timeout:
            if self.process is not None and self.process.poll() is not None:
                tail = self.log_tail()
                raise Unavailable(f"MLServer exited with status {self.process.returncode} before it was "
                                  f"ready (log {self.log_path}): {tail}")
            try:
                r = httpx.get(url, timeout=1.0)
                if r.status_code == 200:
                    return time.monotonic() - started
                last = f"HTTP {r.status_code}"
            except httpx.HTTPError as exc:
                last = type(exc).__name__
            time.sleep(0.1)
        raise Unavailable(f"MLServer at {url} not ready after {timeout:.0f}s (last: {last}); "
                          f"see {self.log_path}")

    def log_tail(self, lines: int = 5) -> str:
        return tail(self.log_path, lines)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left."""
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=5)
