"""Who an agent is and where its neighbours are: ``AgentConfig``, one typed settings object (pydantic-settings).

Each setting is declared once, with the environment variables it is read from (``AliasChoices``): ``BERTH_*``
first, then the name Seldon Core v2's agent uses (``POD_NAME`` gives server and replica as Seldon's
StatefulSet pods are named, ``mlserver-2``), so an agent runs in a Seldon-shaped pod unchanged.  Its range or
format is declared beside it and checked in one place; a wrong value is a one-line ``ConfigError`` naming the
variable and what it accepts.  Explicit keyword overrides (the CLI's flags) win over the environment; ``None``
overrides are ignored.  ``python -m berth.agent.config --markdown`` prints the table in
``docs/agent-settings.md``; the CLI's help texts come from the same declaration (``cli_help``).

The environment is read only by ``from_env(env)`` (the mapping it is given); constructing ``AgentConfig(...)``
directly reads no environment variable.

The agent's credential — a token minted for exactly this (namespace, server, replica) — comes from
``BERTH_AGENT_TOKEN_FILE`` (re-read on every connection, so a rotated file is picked up) or
``BERTH_AGENT_TOKEN``; it is never printed (``repr`` leaves it out).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from berth.errors import ConfigError, InvalidInput
from berth.resources.names import name_problem
from berth.resources.quantity import parse_quantity
from berth.wire.agent import AGENT_PATH, InferenceAddress

# Capabilities of Seldon's stock MLServer ServerConfig, narrowed to the runtimes Berth installs.
DEFAULT_CAPABILITIES = ("mlserver", "sklearn", "scikit-learn", "mlflow", "xgboost", "python", "numpy")
DEFAULT_MEMORY = 1 << 30  # 1Gi, Seldon's default memory request for an MLServer replica
DEFAULT_CONTROL_PORT = 9004  # the control plane serves agents on its API port

_POD_NAME = re.compile(r"^(?P<server>[a-z0-9]([-a-z0-9]*[a-z0-9])?)-(?P<replica>[0-9]+)$")
_ENV: ContextVar[Mapping[str, str] | None] = ContextVar("berth_agent_env", default=None)


def _setting(default: Any, *env: str, doc: str, low: int | None = None, high: int | None = None,
             fmt: str | None = None, flag: str | None = None, repr: bool = True) -> Any:
    """One setting: its default, the variables it is read from (first set wins), its range or format, its flag."""
    extra: dict[str, Any] = {"env": list(env)}
    if low is not None:
        extra["range"] = [low, high]
    if fmt is not None:
        extra["format"] = fmt
    if flag is not None:
        extra["flag"] = flag
    return Field(default, validation_alias=AliasChoices(*env) if env else None, description=doc, repr=repr,
                 json_schema_extra=extra)


@dataclass(frozen=True)
class _FromEnv:
    """A raw environment value on its way to the field validator, which names ``variable`` in any error."""

    variable: str
    raw: str


class _MappingSource(PydanticBaseSettingsSource):
    """Reads each field's declared variables (``AliasChoices``, first non-empty wins) from one mapping."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.env = env

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        for variable in env_names(field):
            raw = self.env.get(variable, "")
            if raw.strip():
                return _FromEnv(variable, raw), variable, False
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            value, _, _ = self.get_field_value(field, name)
            if value is not None:
                out[name] = value
        return out


class AgentConfig(BaseSettings):
    """Identity, capacity and addresses of one agent (one per server replica)."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid", populate_by_name=True,
                                      validate_default=False)

    server: str = _setting("mlserver", "BERTH_SERVER", "POD_NAME", flag="--server", fmt="DNS-1123 label",
                           doc="Server name (from POD_NAME `<server>-<replica>` in a Seldon pod)")
    replica: int = _setting(0, "BERTH_REPLICA", "POD_NAME", low=0, flag="--replica",
                            doc="Replica index (from POD_NAME `<server>-<replica>` in a Seldon pod)")
    namespace: str = _setting("default", "BERTH_NAMESPACE", "POD_NAMESPACE", flag="--namespace",
                              fmt="DNS-1123 label", doc="Namespace")
    capabilities: tuple[str, ...] = _setting(DEFAULT_CAPABILITIES, "BERTH_CAPABILITIES", "SELDON_SERVER_CAPABILITIES",
                                             flag="--capabilities", fmt="comma-separated list",
                                             doc="What the server can run")
    memory: int = _setting(DEFAULT_MEMORY, "BERTH_MEMORY", "MEMORY_REQUEST", low=0, flag="--memory",
                           fmt="quantity (bytes, 500M, 2Gi)", doc="Memory offered to models")
    overcommit_percent: int = _setting(10, "BERTH_OVERCOMMIT_PERCENT", "SELDON_OVERCOMMIT_PERCENTAGE", low=0,
                                       high=1000, flag="--overcommit", doc="Memory overcommit, percent")
    inference_host: str = _setting("127.0.0.1", "BERTH_INFERENCE_HOST", "SELDON_SERVER_HOST", flag="--inference-host",
                                   doc="Host of the inference server (MLServer)")
    inference_http_port: int = _setting(8080, "BERTH_INFERENCE_HTTP_PORT", "SELDON_SERVER_HTTP_PORT", low=1,
                                        high=65535, flag="--inference-http-port", doc="MLServer REST port")
    inference_grpc_port: int = _setting(8081, "BERTH_INFERENCE_GRPC_PORT", "SELDON_SERVER_GRPC_PORT", low=1,
                                        high=65535, flag="--inference-grpc-port", doc="MLServer gRPC port")
    inference_pid: int | None = _setting(None, "BERTH_INFERENCE_PID", low=1,
                                         doc="MLServer's process id (found from the HTTP port's listener when unset)")
    control_host: str = _setting("127.0.0.1", "BERTH_CONTROL_HOST", "SELDON_SCHEDULER_HOST", flag="--control",
                                 doc="Control plane host")
    control_port: int = _setting(DEFAULT_CONTROL_PORT, "BERTH_CONTROL_PORT", "SELDON_SCHEDULER_PORT", low=1,
                                 high=65535, flag="--control", doc="Control plane port (its API port)")
    data_dir: Path | None = _setting(None, "BERTH_DATA_DIR", flag="--data-dir", fmt="path",
                                     doc="Where artifacts are downloaded (default "
                                         "`.berth/agents/<namespace>.<server>-<replica>`)")
    repository_dir: Path | None = _setting(None, "BERTH_REPOSITORY_DIR", "MLSERVER_MODEL_REPOSITORY_ROOT",
                                           flag="--repository-dir", fmt="path",
                                           doc="MLServer's model_repository_root (default `<data dir>/repository`)")
    ready_poll_not_ready: float = _setting(0.5, doc="Seconds between readiness probes while not ready")
    ready_poll_ready: float = _setting(2.0, doc="Seconds between readiness probes while ready")
    probe_timeout: float = _setting(2.0, doc="Seconds a readiness probe may take")
    reconnect_min: float = _setting(0.2, doc="First reconnect backoff, seconds (0 < min <= max)")
    reconnect_max: float = _setting(5.0, doc="Longest reconnect backoff, seconds")
    load_timeout: float = _setting(600.0, doc="Seconds a model load may take")
    refused_retry: float = _setting(30.0, doc="Seconds before asking again after the control plane refused "
                                              "this agent")
    token: str | None = _setting(None, "BERTH_AGENT_TOKEN", repr=False,
                                 doc="The agent token itself (the token file wins when both are set; never printed)")
    token_file: Path | None = _setting(None, "BERTH_AGENT_TOKEN_FILE", flag="--token-file", fmt="path",
                                       doc="File holding this replica's agent token, re-read on every connection")

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        env = _ENV.get()  # set by from_env only: direct construction reads no environment
        return (init_settings,) if env is None else (init_settings, _MappingSource(settings_cls, env))

    @field_validator("*", mode="before")
    @classmethod
    def _from_env(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, _FromEnv):
            assert info.field_name is not None
            return _parse(info.field_name, value.variable, value.raw)
        return value

    @model_validator(mode="after")
    def _check(self) -> AgentConfig:
        for what in ("server", "namespace"):
            problem = name_problem(getattr(self, what), what=what, label=True)
            if problem:
                raise ConfigError(f"agent {problem}")
        for name, field in type(self).model_fields.items():
            bounds = _range(field)
            value = getattr(self, name)
            if bounds is not None and value is not None:
                _check_int(name, value, *bounds)
        if self.token_file is not None:
            self.bearer_token()  # unreadable or empty: say so at start, not at the first refusal
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
        unknown = sorted(set(overrides) - set(cls.model_fields))
        if unknown:
            raise ConfigError(f"unknown agent setting(s): {', '.join(unknown)}")
        token = _ENV.set(env)
        try:
            return cls(**{k: v for k, v in overrides.items() if v is not None})
        except ValidationError as exc:
            raise ConfigError(_describe(exc)) from None
        finally:
            _ENV.reset(token)


def env_names(field: FieldInfo) -> tuple[str, ...]:
    """The environment variables a field is read from, in order (first set wins)."""
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return tuple(str(choice) for choice in alias.choices)
    return ()


def _extra(field: FieldInfo) -> dict[str, Any]:
    return field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}


def _range(field: FieldInfo) -> tuple[int, int | None] | None:
    bounds = _extra(field).get("range")
    return (int(bounds[0]), bounds[1]) if isinstance(bounds, list) else None


# field -> environment variables read for it, first found wins (derived from the declaration above)
ENV_NAMES: dict[str, tuple[str, ...]] = {
    name: env_names(field) for name, field in AgentConfig.model_fields.items() if env_names(field)}


def _describe(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "settings"
    return f"agent {where}: {err['msg']}, got {err.get('input')!r}"


def _check_int(what: str, value: object, low: int, high: int | None) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"agent {what}: expected an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ConfigError(f"agent {what}: must be {bound}, got {value}")


def _parse(name: str, variable: str, raw: str) -> Any:
    """The value of setting ``name`` from ``variable``; ConfigError names the variable and its value."""
    text = raw.strip()
    where = f"{variable}={raw!r}"
    if variable == "POD_NAME":
        m = _POD_NAME.match(text)
        if not m:
            raise ConfigError(f"POD_NAME={text!r} is not of the form <server>-<replica index> "
                              "(e.g. mlserver-2); set BERTH_SERVER and BERTH_REPLICA instead")
        return m.group("server") if name == "server" else int(m.group("replica"))
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
    bounds = _range(AgentConfig.model_fields[name])
    if bounds is not None:
        try:
            value = int(text)
        except ValueError as exc:
            raise ConfigError(f"{where}: expected a whole number") from exc
        low, high = bounds
        if value < low or (high is not None and value > high):
            if name.endswith("port"):
                raise ConfigError(f"{where}: a port must be between 1 and 65535")
            if value < 0:
                raise ConfigError(f"{where}: must not be negative")
            raise ConfigError(f"{where}: must be between {low} and {high}")
        return value
    return text


def cli_help(name: str, extra: str = "") -> str:
    """The help text of the CLI flag for setting ``name``: its description and the variables it overrides."""
    field = AgentConfig.model_fields[name]
    env = env_names(field)
    text = f"{field.description}{extra}"
    return f"{text} (env {', '.join(env)})" if env else text


def settings_markdown() -> str:
    """The agent's settings as a Markdown table (``docs/agent-settings.md``)."""
    lines = [
        "# Agent settings",
        "",
        "<!-- Generated from `berth.agent.config.AgentConfig` by `python -m berth.agent.config --markdown`;"
        " do not edit. -->",
        "",
        "`berth agent` reads these environment variables (the first one set wins, so Berth's name beats "
        "Seldon's); a command-line flag wins over both. A wrong value stops the agent at start with one line "
        "naming the variable and what it accepts. Settings without a variable are set only by code.",
        "",
        "| Setting | Environment variables | Flag | Default | Accepts | Meaning |",
        "|---|---|---|---|---|---|",
    ]
    for name, field in AgentConfig.model_fields.items():
        extra = _extra(field)
        env = ", ".join(f"`{v}`" for v in env_names(field)) or "—"
        flag = f"`{extra['flag']}`" if "flag" in extra else "—"
        default = field.default
        if name == "capabilities":
            shown = "`" + ",".join(default) + "`"
        elif name == "memory":
            shown = "`1Gi`"
        else:
            shown = "—" if default is None else f"`{default}`"
        bounds = _range(field)
        if bounds is not None:
            low, high = bounds
            accepts = f"integer {low}–{high}" if high is not None else f"integer ≥ {low}"
            if "format" in extra:
                accepts = f"{extra['format']}, ≥ {low}"
        else:
            accepts = extra.get("format") or {str: "text", float: "seconds"}.get(type(default), "text")
        lines.append(f"| `{name}` | {env} | {flag} | {shown} | {accepts} | {field.description} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if argv != ["--markdown"]:
        print("usage: python -m berth.agent.config --markdown", file=sys.stderr)
        return 2
    sys.stdout.write(settings_markdown())
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised by tests/unit/test_agent_config.py through main()
    sys.exit(main(sys.argv[1:]))
