"""`berth gateway`: the V2 data plane process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import typer

from berth.daemons.runtime import run_until_signalled, setup_logging
from berth.gateway.app import run_gateway
from berth.gateway.table import load_routes


def gateway(
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(9000, "--port", help="V2 REST port"),
    control: str | None = typer.Option("http://127.0.0.1:9004", "--control", envvar="BERTH_CONTROL_URL",
                                       help="Control plane to follow for routes ('' for none)"),
    routes: Path | None = typer.Option(None, "--routes", help="Static routing table (JSON) to serve from"),
    upstream_timeout: float = typer.Option(60.0, "--upstream-timeout", help="Seconds per upstream request"),
    log_level: str = typer.Option("INFO", "--log-level"),
) -> None:
    """Run the gateway: one V2 endpoint routing to the replicas that hold each model."""
    setup_logging(log_level)
    table = load_routes(routes) if routes is not None else None

    async def main(stop: asyncio.Event) -> None:
        await run_gateway(host, port, control or None, stop, routes=table, upstream_timeout=upstream_timeout)

    run_until_signalled(main)
