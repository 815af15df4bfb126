"""`berth gateway`: the V2 data plane process (REST and gRPC), on uvloop where installed."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import typer

from berth.daemons.runtime import run_until_signalled, setup_logging
from berth.errors import ConfigError
from berth.gateway.app import MAX_REQUEST_BYTES, run_gateway
from berth.gateway.table import load_routes


def gateway(
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(9000, "--port", help="V2 REST port"),
    grpc_port: int = typer.Option(9001, "--grpc-port", help="V2 gRPC port (-1: no gRPC endpoint)"),
    control: str | None = typer.Option("http://127.0.0.1:9004", "--control", envvar="BERTH_CONTROL_URL",
                                       help="Control plane to follow for routes ('' for none)"),
    routes: Path | None = typer.Option(None, "--routes", help="Static routing table (JSON) to serve from"),
    upstream_timeout: float = typer.Option(60.0, "--upstream-timeout", help="Seconds per upstream request"),
    connect_timeout: float = typer.Option(5.0, "--connect-timeout",
                                          help="Seconds to open a connection to an inference server"),
    max_request_bytes: int = typer.Option(MAX_REQUEST_BYTES, "--max-request-bytes",
                                          help="Largest request body accepted (413 / RESOURCE_EXHAUSTED above)"),
    check_inputs: bool = typer.Option(True, "--check-inputs/--no-check-inputs",
                                      help="Check that JSON bodies parse and data fills each input's shape"),
    token_file: Path | None = typer.Option(None, "--token-file",
                                           help="File holding the token to watch routes with (else BERTH_TOKEN)"),
    log_level: str = typer.Option("INFO", "--log-level"),
) -> None:
    """Run the gateway: one V2 endpoint routing to the replicas that hold each model."""
    setup_logging(log_level)
    table = load_routes(routes) if routes is not None else None
    token = _token(token_file)

    async def main(stop: asyncio.Event) -> None:
        await run_gateway(host, port, control or None, stop, routes=table, grpc_port=grpc_port if grpc_port >= 0
                          else None, upstream_timeout=upstream_timeout, connect_timeout=connect_timeout,
                          max_request_bytes=max_request_bytes, check_inputs=check_inputs, token=token)

    run_until_signalled(main)


def _token(path: Path | None) -> str | None:
    """The gateway's token for the control plane: ``--token-file``, else ``BERTH_TOKEN`` (never a flag's value,
    which any user could read in ``ps``)."""
    if path is not None:
        try:
            return path.read_text().strip() or None
        except OSError as exc:
            raise ConfigError(f"--token-file {path}: cannot read it ({exc.strerror or exc})") from exc
    return os.environ.get("BERTH_TOKEN", "").strip() or None
