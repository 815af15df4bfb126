"""Who an agent is and where its neighbours are: ``AgentConfig`` and its environment variables.

Each setting reads ``BERTH_*`` first, then the name Seldon Core v2's agent uses (``POD_NAME`` gives
server and replica as Seldon's StatefulSet pods are named, ``mlserver-2``), so an agent runs in a
Seldon-shaped pod unchanged.  Explicit keyword overrides (the CLI's flags) win over both; ``None``
overrides are ignored.

The agent's credential — a token minted for exactly this (namespace, server, replica) — comes from
``BERTH_AGENT_TOKEN_FILE`` (re-read on every connection, so a rotated file is picked up) or
``BERTH_AGENT_TOKEN``; it is never printed (``repr`` leaves it out).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from berth.errors import ConfigError, InvalidInput
from berth.resources.names import name_problem
from berth.resources.quantity import parse_quantity
from berth.wire.agent import AGENT_PATH, InferenceAddress

# Capabilities of Seldon's stock MLServer ServerConfig, narrowed to the runtimes Berth installs.
DEFAULT_CAPABILITIES = ("mlserver", "sklearn", "scikit-learn", "mlflow", "xgboost", "python", "numpy")
DEFAULT_MEMORY = 1 << 30  # 1Gi, Seldon's default memory request for an MLServer replica
DEFAULT_CONTROL_PORT = 9004  # the control plane serves agents on its API port

# field -> environment variables read for it, first found wins
ENV_NAMES: dict[str, tuple[str, ...]] = {
    "server": ("BERTH_SERVER",),
    "replica": ("BERTH_REPLICA",),
    "namespace": ("BERTH_NAMESPACE", "POD_NAMESPACE"),
    "capabilities": ("BERTH_CAPABILITIES", "SELDON_SERVER_CAPABILITIES"),
    "memory": ("BERTH_MEMORY", "MEMORY_REQUEST"),
    "overcommit_percent": ("BERTH_OVERCOMMIT_PERCENT", "SELDON_OVERCOMMIT_PERCENTAGE"),
    "inference_host": ("BERTH_INFERENCE_HOST",),
    "inference_http_port": ("BERTH_INFERENCE_HTTP_PORT", "SELDON_SERVER_HTTP_PORT"),
    "inference_grpc_port": ("BERTH_INFERENCE_GRPC_PORT", "SELDON_SERVER_GRPC_PORT"),
    "inference_pid": ("BERTH_INFERENCE_PID",),
    "control_host": ("BERTH_CONTROL_HOST", "SELDON_SCHEDULER_HOST"),
    "control_port": ("BERTH_CONTROL_PORT", "SELDON_SCHEDULER_PORT"),
    "data_dir": ("BERTH_DATA_DIR",),
    "repository_dir": ("BERTH_REPOSITORY_DIR", "MLSERVER_MODEL_REPOSITORY_ROOT"),
    "token": ("BERTH_AGENT_TOKEN",),
    "token_file": ("BERTH_AGENT_TOKEN_FILE",),
}
_POD_NAME = re.compile(r"^(?P<server>[a-z0-9]([-a-z0-9]*[a-z0-9])?)-(?P<replica>[0-9]+)$")


@dataclass(frozen=True)
class AgentConfig:
    """Identity, capacity and addresses of one agent (one per server replica)."""

    server: str = "mlserver"
    replica: int = 0
    namespace: str = "default"
    capabilities: tuple[str, ...] = DEFAULT_CAPABILITIES
    memory: int = DEFAULT_MEMORY
    overcommit_percent: int = 10
    inference_host: str = "127.0.0.1"
    inference_http_port: int = 8080
    inference_grpc_port: int = 8081
    inference_pid: int | None = None  # found from the HTTP port's listener when None
    control_host: str = "127.0.0.1"
    control_port: int = DEFAULT_CONTROL_PORT
    data_dir: Path | None = None  # default .berth/agents/<namespace>.<server>-<replica>
    repository_dir: Path | None = None  # MLServer's model_repository_root; default <data dir>/repository
    ready_poll_not_ready: float = 0.5
    ready_poll_ready: float = 2.0
    probe_timeout: float = 2.0
    reconnect_min: float = 0.2
    reconnect_max: float = 5.0
    load_timeout: float = 600.0
    refused_retry: float = 30.0  # seconds before trying again after the control plane refused this agent
    token: str | None = field(default=None, repr=False)  # the agent token (token_file wins when both are set)
    token_file: Path | None = None

    def __post_init__(self) -> None:
        for what, label in (("server", True), ("namespace", True)):
            problem = name_problem(getattr(self, what), what=what, label=label)
            if problem:
                raise ConfigError(f"agent {problem}")
        _check_int("replica", self.replica, 0, None)
        _check_int("memory", self.memory, 0, None)
        _check_int("overcommit_percent", self.overcommit_percent, 0, 1000)
        for port in ("inference_http_port", "inference_grpc_port", "control_port"):
            _check_int(port, getattr(self, port), 1, 65535)
        if self.inference_pid is not None:
            _check_int("inference_pid", self.inference_pid, 1, None)
        if self.token_file is not None:
            self.bearer_token()  # unreadable or empty: say so at start, not at the first refusal
        if self.reconnect_min <= 0 or self.reconnect_max < self.reconnect_min:
            raise ConfigError(f"agent reconnect backoff must satisfy 0 < min <= max, got "
                              f"{self.reconnect_min}..{self.reconnect_max}")

    @property
    def data_path(self) -> Path:
        if self.data_dir is not None:
            return Path(self.data_dir)
        return Path(".berth") / "agents" / f"{self.namespace}.{self.server}-{self.replica}"

    @property
    def models_dir(self) -> Path:
        """Local copies of fetched artifacts: ``<data dir>/models/<name>/<generation>/``."""
        return self.data_path / "models"

    @property
    def repository(self) -> Path:
        return Path(self.repository_dir) if self.repository_dir is not None else self.data_path / "repository"

    @property
    def control_url(self) -> str:
        return f"ws://{self.control_host}:{self.control_port}{AGENT_PATH}"

    @property
    def inference(self) -> InferenceAddress:
        return InferenceAddress(host=self.inference_host, http_port=self.inference_http_port,
                                grpc_port=self.inference_grpc_port)

    @property
    def identity(self) -> str:
        return f"{self.namespace}/{self.server}/{self.replica}"

    def bearer_token(self) -> str | None:
        """The token to present: the token file's content (read now), else ``token``, else None."""
        if self.token_file is None:
            return self.token.strip() if self.token and self.token.strip() else None
        try:
            text = Path(self.token_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"agent token file {self.token_file}: {exc.strerror or exc}") from exc
        if not text:
            raise ConfigError(f"agent token file {self.token_file} is empty")
        return text

    @classmethod
    def from_env(cls, env: Mapping[str, str], **overrides: Any) -> AgentConfig:
        """Build from environment variables (see ``ENV_NAMES``); ConfigError names the bad variable."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown agent setting(s): {', '.join(unknown)}")
        values: dict[str, Any] = {}
        pod = env.get("POD_NAME", "").strip()
        if pod:
            m = _POD_NAME.match(pod)
            if not m:
                raise ConfigError(f"POD_NAME={pod!r} is not of the form <server>-<replica index> "
                                  "(e.g. mlserver-2); set BERTH_SERVER and BERTH_REPLICA instead")
            values["server"] = m.group("server")
            values["replica"] = int(m.group("replica"))
        for name, variables in ENV_NAMES.items():
            found = next(((v, env[v]) for v in variables if env.get(v, "").strip()), None)
            if found is not None:
                values[name] = _parse(name, *found)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def _check_int(what: str, value: object, low: int, high: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"agent {what}: expected an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ConfigError(f"agent {what}: must be {bound}, got {value}")


_INTS: dict[str, tuple[int, int | None]] = {
    "replica": (0, None), "overcommit_percent": (0, 1000), "inference_http_port": (1, 65535),
    "inference_grpc_port": (1, 65535), "control_port": (1, 65535), "inference_pid": (1, None),
}


def _parse(name: str, variable: str, raw: str) -> Any:
    """The value of setting ``name`` from ``variable``; ConfigError names the variable and its value."""
    text = raw.strip()
    where = f"{variable}={raw!r}"
    if name == "capabilities":
        return tuple(c.strip() for c in text.split(",") if c.strip())
    if name == "memory":
        try:
            return parse_quantity(text, field=variable)
        except InvalidInput as exc:
            raise ConfigError(f"{where}: {exc.message.split(': ', 1)[-1]}") from exc
    if name == "token":
        return text
    if name in ("data_dir", "repository_dir", "token_file"):
        return Path(text)
    if name in ("server", "namespace"):
        problem = name_problem(text, what=where, label=True)
        if problem:
            raise ConfigError(problem)
        return text
    if name in _INTS:
        try:
            value = int(text)
        except ValueError as exc:
            raise ConfigError(f"{where}: expected a whole number") from exc
        low, high = _INTS[name]
        if value < low or (high is not None and value > high):
            if name.endswith("port"):
                raise ConfigError(f"{where}: a port must be between 1 and 65535")
            if value < 0:
                raise ConfigError(f"{where}: must not be negative")
            raise ConfigError(f"{where}: must be between {low} and {high}")
        return value
    return text
