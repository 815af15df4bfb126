"""`berth up`: the whole platform on one machine, on loopback.

Starts the control plane (with the local provisioner) and the gateway as supervised children, ensures
a default Server ``mlserver`` in namespace ``default``, shows a live status line until it is ready,
prints the addresses, and on Ctrl-C/SIGTERM stops every process it started (replicas included).

Identity: the data dir is private (0700).  The control plane creates ``admin.token`` there (0600) on first
start: the admin of every namespace, for this user; ``berth up`` registers it for the control plane's and
gateway's addresses so the CLI finds it with no flags (``BERTH_TOKEN`` overrides).  Each start mints a gateway
token (``gateway.token``, 0600) that the control plane accepts for the routes watch and the gateway presents;
tokens travel in files, never on a command line that ``ps`` shows.

Its options are generated from ``UpSettings``, declared on the same base as the control plane's and the
gateway's settings (``berth.resources.process_settings``): each is also read from its environment variables
(Berth's name, then Seldon's where Seldon has one; a flag wins), a wrong value is one line naming the variable
or flag and what it accepts, and ``docs/settings.md`` lists them.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import httpx
from rich.console import Console

from berth.adapters.mlserver_proc import mlserver_executable
from berth.client import credentials
from berth.client.http import BerthClient
from berth.control.storage_policy import load_policy
from berth.daemons.options import with_settings_options
from berth.daemons.supervisor import Child, Supervisor, sweep
from berth.errors import BerthError, ConfigError, NotFound, Unavailable
from berth.resources.identity import new_token
from berth.resources.process_settings import QUANTITY, ProcessSettings, setting

console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 400)
RUNTIMES = {"mlserver_sklearn": ["sklearn", "scikit-learn"], "mlserver_mlflow": ["mlflow"],
            "mlserver_xgboost": ["xgboost"], "mlserver_lightgbm": ["lightgbm"],
            "torch": ["torch", "pytorch"]}  # MLflow models of PyTorch networks (the seeds' requirements)


class UpSettings(ProcessSettings):
    """What ``berth up`` starts and where: one machine, loopback by default."""

    PROCESS: ClassVar[str] = "berth up"
    TITLE: ClassVar[str] = "berth up"
    COMMAND: ClassVar[str] = "berth up"

    data_dir: Path = setting(Path(".berth"), "BERTH_DATA_DIR", flag="--data-dir",
                             doc="State, logs and replicas live here")
    host: str = setting("127.0.0.1", "BERTH_UP_HOST", flag="--host",
                        doc="Address the control plane and the gateway listen on")
    control_port: int = setting(9004, "BERTH_CONTROL_PORT", "SELDON_SCHEDULER_PORT", flag="--control-port",
                                ge=1, le=65535, doc="Control plane port (API, agents, routes watch)")
    gateway_port: int = setting(9000, "BERTH_GATEWAY_PORT", flag="--gateway-port", ge=1, le=65535,
                                doc="Gateway V2 REST port")
    grpc_port: int = setting(9001, "BERTH_GATEWAY_GRPC_PORT", flag="--grpc-port", ge=1, le=65535,
                             doc="Gateway V2 gRPC port")
    replica_memory: int = setting(2 << 30, "BERTH_REPLICA_MEMORY", "MEMORY_REQUEST", flag="--replica-memory",
                                  fmt=QUANTITY, ge=1, doc="Memory each local replica offers")
    overcommit: int = setting(10, "BERTH_OVERCOMMIT_PERCENT", "SELDON_OVERCOMMIT_PERCENTAGE", flag="--overcommit",
                              ge=0, le=1000, doc="Memory overcommit of each local replica, percent (a Server's "
                                                 "berth.io/overcommit annotation wins; docs/overcommit.md)")
    default_server: bool = setting(True, flag="--default-server/--no-default-server",
                                   doc="Create the Server mlserver in namespace default")
    wait_timeout: float = setting(120.0, "BERTH_UP_TIMEOUT", flag="--timeout", gt=0, le=3600,
                                  doc="Seconds to wait for the default Server to be ready")
    storage_policy: Path | None = setting(
        None, "BERTH_STORAGE_POLICY", flag="--storage-policy",
        doc="YAML file: which artifact locations each namespace may use (default: permissive for local "
            "paths; see docs/storage.md)")


def installed_capabilities() -> list[str]:
    """Capabilities of the MLServer runtimes installed here (what the default Server advertises)."""
    caps = ["mlserver", "python", "numpy"]
    for module, names in RUNTIMES.items():
        if importlib.util.find_spec(module) is not None:
            caps += names
    return caps


def default_server() -> dict[str, Any]:
    return {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Server",
            "metadata": {"name": "mlserver", "namespace": "default"},
            "spec": {"serverConfig": "mlserver", "capabilities": installed_capabilities(), "replicas": 1}}


def _check_port(host: str, port: int, what: str, flag: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"port {port} on {host} for the {what} is in use ({exc.strerror}); stop what "
                              f"uses it (another `berth up`?) or choose another with {flag}") from exc


def _wait(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (httpx.HTTPError, BerthError) as exc:
            last = str(exc)
        time.sleep(0.1)
    raise Unavailable(f"{what} not up after {timeout:.0f}s ({last or 'no answer'})")


@with_settings_options(UpSettings)
def up(**flags: Any) -> None:
    """Start control plane, gateway and local MLServer replicas on loopback; Ctrl-C stops them all."""
    settings = UpSettings.from_env(os.environ, **flags)  # a wrong value stops here, naming it
    host, control_port, gateway_port, grpc_port = (settings.host, settings.control_port, settings.gateway_port,
                                                   settings.grpc_port)
    storage_policy, no_default_server = settings.storage_policy, not settings.default_server
    mlserver_executable()  # a clear ConfigError when MLServer is missing
    load_policy(storage_policy)  # a bad --storage-policy file: one line naming the field, before anything starts
    os.umask(0o077)  # the data dir, logs and every replica's files are private to this user
    _check_port(host, control_port, "control plane", "--control-port")
    _check_port(host, gateway_port, "gateway", "--gateway-port")
    _check_port(host, grpc_port, "gateway's gRPC endpoint", "--grpc-port")
    data_dir = settings.data_dir.resolve()
    logs = data_dir / "logs"
    admin_file, gateway_file = prepare_identity(data_dir)
    child_env = {k: v for k, v in os.environ.items() if k != "BERTH_TOKEN"}  # children get their own tokens
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    sup = Supervisor(lambda line: console.print(f"[yellow]supervisor:[/yellow] {line}"))
    control_url = f"http://{host}:{control_port}"
    gateway_url = f"http://{host}:{gateway_port}"
    py = [sys.executable, "-m", "berth.main"]
    try:
        with console.status("starting control plane…") as status:
            sup.add(Child("control plane", py + ["control", "--provision", "--host", host, "--port",
                                                 str(control_port), "--data-dir", str(data_dir),
                                                 "--replica-memory", str(settings.replica_memory),
                                                 "--overcommit", str(settings.overcommit),
                                                 "--admin-token-file", str(admin_file),
                                                 "--gateway-token-file", str(gateway_file)]
                          + (["--storage-policy", str(storage_policy.resolve())] if storage_policy else []),
                          logs / "control.log", env={**child_env, "BERTH_GATEWAY": gateway_url}))
            _wait(lambda: httpx.get(f"{control_url}/healthz", timeout=1).status_code == 200, 30,
                  f"control plane at {control_url} (log {logs / 'control.log'})")
            credentials.register(control_url, admin_file, [gateway_url, f"{host}:{grpc_port}"])
            client = BerthClient(control_url, token=admin_file.read_text().strip())
            if not no_default_server:
                try:
                    client.get("Server", "default", "mlserver")
                except NotFound:
                    client.apply([default_server()])
            status.update("starting gateway…")
            sup.add(Child("gateway", py + ["gateway", "--host", host, "--port", str(gateway_port),
                                           "--grpc-port", str(grpc_port), "--control", control_url,
                                           "--token-file", str(gateway_file)],
                          logs / "gateway.log", env=child_env))
            _wait(lambda: httpx.get(f"{gateway_url}/v2/health/live", timeout=1).status_code == 200, 30,
                  f"gateway at {gateway_url} (log {logs / 'gateway.log'})")
            if not no_default_server:
                _wait_server(client, status, settings.wait_timeout, stop)
        console.print(f"[green]berth is up[/green]\n  control plane    {control_url}\n"
                      f"  gateway gRPC     {host}:{grpc_port}\n"
                      f"  gateway (V2)     {gateway_url}\n  data and logs    {data_dir}\n"
                      f"  admin token      {admin_file} (the CLI finds it; BERTH_TOKEN overrides)")
        console.print("apply models with `berth apply -f FILE`; Ctrl-C stops everything")
        note = kubeconfig_note(os.environ, control_url)
        if note:
            console.print(f"[yellow]note[/yellow]: {note}")
        sys.stdout.flush()
        while not stop.is_set():
            sup.check()
            stop.wait(0.5)
    finally:
        console.print("stopping…")
        sup.stop_all()
        left = sweep(str(data_dir))
        if left:
            console.print(f"stopped {len(left)} leftover process(es): {left}")
        console.print("stopped")


def kubeconfig_note(env: Mapping[str, str], control_url: str) -> str | None:
    """What to tell a user whose environment names a cluster: with ``KUBECONFIG`` set and neither
    ``BERTH_ADDRESS`` nor ``--server`` given, the CLI reads that cluster as kubectl does, not this ``berth up``."""
    if not credentials.names_cluster(env):
        return None
    return (f"KUBECONFIG is set ({env['KUBECONFIG']}): the berth CLI talks to that cluster, as kubectl does, not to "
            f"this berth up; to reach this one, add `--server {control_url}` or `export BERTH_ADDRESS={control_url}` "
            "(or unset KUBECONFIG)")


def prepare_identity(data_dir: Path) -> tuple[Path, Path]:
    """A private data dir, and a fresh gateway token in it: (admin token file, gateway token file).  The admin
    token file is created by the control plane on its first start and kept across restarts."""
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(data_dir, 0o700)
    gateway_file = data_dir / "gateway.token"
    fd = os.open(gateway_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(new_token() + "\n")
    os.chmod(gateway_file, 0o600)
    return data_dir / "admin.token", gateway_file


def _wait_server(client: BerthClient, status: Any, timeout: float, stop: threading.Event) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stop.is_set():
        doc = client.get("Server", "default", "mlserver")
        conditions = (doc.get("status") or {}).get("conditions", [])
        cond: dict[str, Any] = next((c for c in conditions if c["type"] == "Ready"), {})
        if cond.get("status") == "True":
            return
        status.update(f"waiting for server mlserver: {cond.get('message', 'starting replicas')}")
        time.sleep(0.25)
    if not stop.is_set():
        console.print(f"[yellow]warning:[/yellow] server mlserver not ready after {timeout:.0f}s; "
                      "`berth describe server mlserver` says why")
