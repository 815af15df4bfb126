"""Who an agent is and where its neighbours are: ``AgentConfig``, one typed settings object on the same base as
the control plane's and the gateway's (``berth.resources.process_settings``).

Each setting is declared once, with the environment variables it is read from (``AliasChoices``): ``BERTH_*``
first, then the name Seldon Core v2's agent uses (``POD_NAME`` gives server and replica as Seldon's
StatefulSet pods are named, ``mlserver-2``), so an agent runs in a Seldon-shaped pod unchanged.  Its range or
format is declared beside it and checked in one place; a wrong value is a one-line ``ConfigError`` naming the
variable and what it accepts.  Explicit keyword overrides (the CLI's flags) win over the environment; ``None``
overrides are ignored.  ``python -m berth.agent.config --markdown`` prints the table in
``docs/agent-settings.md``; ``berth agent``'s options come from the same declaration
(``berth.daemons.options``).

The environment is read only by ``from_env(env)`` (the mapping it is given); constructing ``AgentConfig(...)``
directly reads no environment variable.

The agent's credential — a token minted for exactly this (namespace, server, replica) — comes from
``BERTH_AGENT_TOKEN_FILE`` (re-read on every connection, so a rotated file is picked up) or
``BERTH_AGENT_TOKEN``; it is never printed (``repr`` leaves it out).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, ClassVar

from pydantic import model_validator

from berth.errors import ConfigError
from berth.resources.names import name_problem
from berth.resources.process_settings import QUANTITY, ProcessSettings, env_names, setting
from berth.wire.agent import AGENT_PATH, InferenceAddress

# Capabilities of Seldon's stock MLServer ServerConfig, narrowed to the runtimes Berth installs.
DEFAULT_CAPABILITIES = ("mlserver", "sklearn", "scikit-learn", "mlflow", "xgboost", "python", "numpy")
DEFAULT_MEMORY = 1 << 30  # 1Gi, Seldon's default memory request for an MLServer replica
DEFAULT_CONTROL_PORT = 9004  # the control plane serves agents on its API port

_POD_NAME = re.compile(r"^(?P<server>[a-z0-9]([-a-z0-9]*[a-z0-9])?)-(?P<replica>[0-9]+)$")
_LABEL = "DNS-1123 label"


class AgentConfig(ProcessSettings):
    """Identity, capacity and addresses of one agent (one per server replica)."""

    PROCESS: ClassVar[str] = "agent"
    TITLE: ClassVar[str] = "Agent"
    COMMAND: ClassVar[str] = "berth agent"

    server: str = setting("mlserver", "BERTH_SERVER", "POD_NAME", flag="--server", fmt=_LABEL,
                          doc="Server name (from POD_NAME `<server>-<replica>` in a Seldon pod)")
    replica: int = setting(0, "BERTH_REPLICA", "POD_NAME", ge=0, flag="--replica",
                           doc="Replica index (from POD_NAME `<server>-<replica>` in a Seldon pod)")
    namespace: str = setting("default", "BERTH_NAMESPACE", "POD_NAMESPACE", flag="--namespace,-n", fmt=_LABEL,
                             doc="Namespace")
    capabilities: tuple[str, ...] = setting(DEFAULT_CAPABILITIES, "BERTH_CAPABILITIES", "SELDON_SERVER_CAPABILITIES",
                                            flag="--capabilities", fmt="comma-separated list",
                                            doc="What the server can run")
    memory: int = setting(DEFAULT_MEMORY, "BERTH_MEMORY", "MEMORY_REQUEST", ge=0, flag="--memory", fmt=QUANTITY,
                          doc="Memory offered to models")
    overcommit_percent: int = setting(10, "BERTH_OVERCOMMIT_PERCENT", "SELDON_OVERCOMMIT_PERCENTAGE", ge=0, le=1000,
                                      flag="--overcommit", doc="Memory overcommit, percent")
    inference_host: str = setting("127.0.0.1", "BERTH_INFERENCE_HOST", "SELDON_SERVER_HOST", flag="--inference-host",
                                  doc="Host of the inference server (MLServer)")
    inference_http_port: int = setting(8080, "BERTH_INFERENCE_HTTP_PORT", "SELDON_SERVER_HTTP_PORT", ge=1, le=65535,
                                       flag="--inference-http-port", doc="MLServer REST port")
    inference_grpc_port: int = setting(8081, "BERTH_INFERENCE_GRPC_PORT", "SELDON_SERVER_GRPC_PORT", ge=1, le=65535,
                                       flag="--inference-grpc-port", doc="MLServer gRPC port")
    inference_pid: int | None = setting(None, "BERTH_INFERENCE_PID", ge=1,
                                        doc="MLServer's process id (found from the HTTP port's listener when unset)")
    # where gateways reach this replica (docs/kubernetes.md): in a pod, its IP and the agent's relay ports
    advertise_host: str | None = setting(None, "BERTH_ADVERTISE_HOST", "POD_IP",
                                         doc="Address gateways reach this replica at, e.g. the pod's IP from the "
                                             "downward API's status.podIP (default: the inference host)")
    relay_http_port: int | None = setting(None, "BERTH_RELAY_HTTP_PORT", "SELDON_REVERSE_PROXY_HTTP_PORT", ge=1,
                                          le=65535, doc="Listen on the advertised address at this port and relay "
                                                        "each connection to MLServer's REST port (unset: no relay, "
                                                        "MLServer's own port is advertised)")
    relay_grpc_port: int | None = setting(None, "BERTH_RELAY_GRPC_PORT", "SELDON_REVERSE_PROXY_GRPC_PORT", ge=1,
                                          le=65535, doc="The same for MLServer's gRPC port")
    control_host: str = setting("127.0.0.1", "BERTH_CONTROL_HOST", "SELDON_SCHEDULER_HOST", flag="--control",
                                doc="Control plane host")
    control_port: int = setting(DEFAULT_CONTROL_PORT, "BERTH_CONTROL_PORT", "SELDON_SCHEDULER_PORT", ge=1, le=65535,
                                flag="--control", doc="Control plane port (its API port)")
    control_ca: Path | None = setting(None, "BERTH_CONTROL_CA",
                                      doc="CA (PEM, e.g. ca.crt of the control plane's TLS Secret): reach the "
                                          "control plane over wss:// trusting only this CA")
    data_dir: Path | None = setting(None, "BERTH_DATA_DIR", flag="--data-dir",
                                    doc="Where artifacts are downloaded (default "
                                        "`.berth/agents/<namespace>.<server>-<replica>`)")
    repository_dir: Path | None = setting(None, "BERTH_REPOSITORY_DIR", "MLSERVER_MODEL_REPOSITORY_ROOT",
                                          flag="--repository-dir",
                                          doc="MLServer's model_repository_root (default `<data dir>/repository`)")
    ready_poll_not_ready: float = setting(0.5, gt=0, doc="Seconds between readiness probes while not ready")
    ready_poll_ready: float = setting(2.0, gt=0, doc="Seconds between readiness probes while ready")
    resync_interval: float = setting(10.0, gt=0, doc="Seconds between two checks, while the inference server is "
                                                     "ready, that it still holds a model the agent loaded (one "
                                                     "model each time, in turn; a resync when it is gone): a "
                                                     "restart quicker than two readiness probes loses models "
                                                     "unseen")
    probe_timeout: float = setting(2.0, gt=0, doc="Seconds a readiness probe may take")
    reconnect_min: float = setting(0.2, gt=0, doc="First reconnect backoff, seconds (0 < min <= max)")
    reconnect_max: float = setting(5.0, gt=0, doc="Longest reconnect backoff, seconds")
    load_timeout: float = setting(600.0, gt=0, doc="Seconds a model load may take")
    refused_retry: float = setting(30.0, ge=0, doc="Seconds before asking again after the control plane refused "
                                                   "this agent")
    token: str | None = setting(None, "BERTH_AGENT_TOKEN", secret=True,
                                doc="The agent token itself (the token file wins when both are set; never printed)")
    token_file: Path | None = setting(None, "BERTH_AGENT_TOKEN_FILE", flag="--token-file",
                                      doc="File holding this replica's agent token, re-read on every connection")

    @classmethod
    def parse_value(cls, name: str, where: str, raw: str) -> Any:
        """Seldon's ``POD_NAME`` (``<server>-<replica>``) gives server and replica; names must be DNS labels."""
        text = raw.strip()
        if where == "POD_NAME":
            m = _POD_NAME.match(text)
            if not m:
                raise ConfigError(f"POD_NAME={text!r} is not of the form <server>-<replica index> "
                                  "(e.g. mlserver-2); set BERTH_SERVER and BERTH_REPLICA instead")
            return m.group("server") if name == "server" else int(m.group("replica"))
        if name in ("server", "namespace"):
            problem = name_problem(text, what=f"{where}={raw!r}", label=True)
            if problem:
                raise ConfigError(problem)
            return text
        return super().parse_value(name, where, raw)

    @model_validator(mode="after")
    def _check(self) -> AgentConfig:
        for what in ("server", "namespace"):
            problem = name_problem(getattr(self, what), what=what, label=True)
            if problem:
                raise ConfigError(f"agent {problem}")
        if self.token_file is not None:
            self.bearer_token()  # unreadable or empty: say so at start, not at the first refusal
        for relay, target, what in ((self.relay_http_port, self.inference_http_port, "HTTP"),
                                    (self.relay_grpc_port, self.inference_grpc_port, "GRPC")):
            if relay == target and (self.advertise_host or self.inference_host) == self.inference_host:
                raise ConfigError(f"BERTH_RELAY_{what}_PORT={relay} is MLServer's own port on the same host "
                                  f"{self.inference_host}; relay on another port or advertise another host")
        if self.reconnect_min <= 0 or self.reconnect_max < self.reconnect_min:
            raise ConfigError(f"agent reconnect backoff must satisfy 0 < min <= max, got "
                              f"{self.reconnect_min}..{self.reconnect_max}")
        return self

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
        """``wss://`` when a CA is configured (the token never goes in clear), else ``ws://``."""
        scheme = "wss" if self.control_ca is not None else "ws"
        return f"{scheme}://{self.control_host}:{self.control_port}{AGENT_PATH}"

    @property
    def inference(self) -> InferenceAddress:
        """Where gateways reach the inference server: the advertised host, the relay's ports where it relays."""
        return InferenceAddress(host=self.advertise_host or self.inference_host,
                                http_port=self.relay_http_port or self.inference_http_port,
                                grpc_port=self.relay_grpc_port or self.inference_grpc_port)

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


# field -> environment variables read for it, first found wins (derived from the declaration above)
ENV_NAMES: dict[str, tuple[str, ...]] = {
    name: env_names(field) for name, field in AgentConfig.model_fields.items() if env_names(field)}


def cli_help(name: str, extra: str = "") -> str:
    """The help text of the CLI flag for setting ``name``: its description and the variables it overrides."""
    field = AgentConfig.model_fields[name]
    env = env_names(field)
    text = f"{field.description}{extra}"
    return f"{text} (env {', '.join(env)})" if env else text


HEADER = """# Agent settings

<!-- Generated from `berth.agent.config.AgentConfig` by `python -m berth.agent.config --markdown`; do not edit. -->

The agent's settings are declared on the same base as the control plane's and the gateway's
([settings.md](settings.md)). `berth agent` reads these environment variables (the first one set wins, so
Berth's name beats Seldon's); a command-line flag wins over both. Seldon's `POD_NAME` (`<server>-<replica>`,
as a StatefulSet names its pods) gives both server and replica. A wrong value stops the agent at start with
one line naming the variable and what it accepts, e.g. `SELDON_SERVER_HTTP_PORT='70000': a port must be
between 1 and 65535`. Settings without a variable are set only by code.
"""


def settings_markdown() -> str:
    """The agent's settings as Markdown (``docs/agent-settings.md``)."""
    return "\n".join([HEADER, AgentConfig.markdown()])


def main(argv: list[str]) -> int:
    if argv != ["--markdown"]:
        print("usage: python -m berth.agent.config --markdown", file=sys.stderr)
        return 2
    sys.stdout.write(settings_markdown())
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised by tests/unit/test_agent_config.py through main()
    sys.exit(main(sys.argv[1:]))
