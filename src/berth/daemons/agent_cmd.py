"""`berth agent`: one agent for one server replica (flags override BERTH_* / Seldon env vars)."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import typer

from berth.agent.config import AgentConfig, cli_help
from berth.agent.runner import run_agent
from berth.daemons.runtime import run_until_signalled, setup_logging
from berth.errors import ConfigError
from berth.resources.quantity import parse_quantity


def agent(
    server: str | None = typer.Option(None, "--server", help=cli_help("server")),
    replica: int | None = typer.Option(None, "--replica", help=cli_help("replica")),
    namespace: str | None = typer.Option(None, "--namespace", "-n", help=cli_help("namespace")),
    capabilities: str | None = typer.Option(None, "--capabilities", help=cli_help("capabilities", ", comma-separated")),
    memory: str | None = typer.Option(None, "--memory", help=cli_help("memory", ", e.g. 2Gi")),
    overcommit: int | None = typer.Option(None, "--overcommit", help=cli_help("overcommit_percent")),
    inference_host: str | None = typer.Option(None, "--inference-host", help=cli_help("inference_host")),
    inference_http_port: int | None = typer.Option(None, "--inference-http-port",
                                                   help=cli_help("inference_http_port")),
    inference_grpc_port: int | None = typer.Option(None, "--inference-grpc-port",
                                                   help=cli_help("inference_grpc_port")),
    repository_dir: Path | None = typer.Option(None, "--repository-dir", help=cli_help("repository_dir")),
    data_dir: Path | None = typer.Option(None, "--data-dir", help=cli_help("data_dir")),
    control: str | None = typer.Option(
        None, "--control", help="Control plane HOST:PORT (env BERTH_CONTROL_HOST/SELDON_SCHEDULER_HOST and "
                                 "BERTH_CONTROL_PORT/SELDON_SCHEDULER_PORT)"),
    token_file: Path | None = typer.Option(
        None, "--token-file",
        help=cli_help("token_file", "; or the token itself in BERTH_AGENT_TOKEN; create one with: "
                                    "berth token create NAME --agent NS/SERVER/REPLICA")),
    log_level: str = typer.Option("INFO", "--log-level"),
) -> None:
    """Run an agent beside an MLServer: report capacity and readiness, load and unload models.

    The agent enrols with the control plane using a token minted for exactly its namespace, server and
    replica; without one it is refused."""
    os.umask(0o077)  # downloaded artifacts and model settings are private to this user
    setup_logging(log_level)
    control_host = control_port = None
    if control:
        host, _, port = control.replace("http://", "").replace("ws://", "").rstrip("/").rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"--control {control!r}: expected HOST:PORT, e.g. 127.0.0.1:9004")
        control_host, control_port = host, int(port)
    config = AgentConfig.from_env(
        os.environ, server=server, replica=replica, namespace=namespace,
        capabilities=tuple(c.strip() for c in capabilities.split(",") if c.strip()) if capabilities else None,
        memory=parse_quantity(memory, field="--memory") if memory else None,
        overcommit_percent=overcommit, inference_host=inference_host,
        inference_http_port=inference_http_port, inference_grpc_port=inference_grpc_port,
        repository_dir=repository_dir, data_dir=data_dir, control_host=control_host, control_port=control_port,
        token_file=token_file)
    os.environ.pop("BERTH_AGENT_TOKEN", None)  # read: nothing this process starts inherits it

    async def main(stop: asyncio.Event) -> None:
        await run_agent(config, stop)

    run_until_signalled(main)
