"""`berth agent`: one agent for one server replica.

Its options are generated from ``berth.agent.config.AgentConfig`` (each also read from its environment
variables, Berth's and Seldon's; a flag wins); ``docs/agent-settings.md`` lists them.  ``--control HOST:PORT``
gives two settings at once (``control_host``, ``control_port``)."""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Mapping
from typing import Any

import typer

from berth.agent.config import AgentConfig
from berth.agent.runner import run_agent
from berth.daemons.options import with_settings_options
from berth.daemons.runtime import run_until_signalled, setup_logging
from berth.errors import ConfigError

LOG_LEVEL = inspect.Parameter("log_level", inspect.Parameter.KEYWORD_ONLY, annotation=str,
                              default=typer.Option("INFO", "--log-level", help="DEBUG, INFO, WARNING or ERROR"))


def control_address(text: str) -> dict[str, str]:
    """``--control HOST:PORT`` (an ``http://`` or ``ws://`` prefix and a trailing ``/`` are allowed) as the
    settings it gives; the port is checked as the settings check it."""
    host, _, port = text.strip().replace("http://", "").replace("ws://", "").rstrip("/").rpartition(":")
    if not host or not port:
        raise ConfigError(f"--control={text!r}: expected HOST:PORT, e.g. 127.0.0.1:9004")
    return {"control_host": host, "control_port": port}


def agent_config(env: Mapping[str, str], control: str | None = None, **flags: Any) -> AgentConfig:
    """The agent's settings from ``env`` and its command's flags (``--control`` split into its two)."""
    if control:
        flags.update(control_address(control))
    return AgentConfig.from_env(env, **flags)


@with_settings_options(AgentConfig, LOG_LEVEL, joined={"--control": "Control plane HOST:PORT"})
def agent(*, control: str | None = None, log_level: str = "INFO", **flags: Any) -> None:
    """Run an agent beside an MLServer: report capacity and readiness, load and unload models.

    The agent enrols with the control plane using a token minted for exactly its namespace, server and
    replica (--token-file, or the token itself in BERTH_AGENT_TOKEN; an admin creates one with: berth token
    create NAME --agent NS/SERVER/REPLICA); without one it is refused."""
    config = agent_config(os.environ, control, **flags)  # a wrong value stops here, naming it
    os.umask(0o077)  # downloaded artifacts and model settings are private to this user
    setup_logging(log_level)
    os.environ.pop("BERTH_AGENT_TOKEN", None)  # read: nothing this process starts inherits it

    async def main(stop: asyncio.Event) -> None:
        await run_agent(config, stop)

    run_until_signalled(main)
