"""`berth control`: the control plane process."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import typer

from berth.control.server import ControlOptions, run_control
from berth.daemons.runtime import run_until_signalled, setup_logging
from berth.resources.quantity import parse_quantity


def control(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on"),
    port: int = typer.Option(9004, "--port"),
    data_dir: Path = typer.Option(Path(".berth"), "--data-dir", envvar="BERTH_DATA_DIR"),
    store: str | None = typer.Option(None, "--store", help="SQLite file (default DATA_DIR/berth.db), or :memory:"),
    provision: bool = typer.Option(False, "--provision/--no-provision",
                                   help="Run each Server's replicas as local processes"),
    replica_memory: str = typer.Option("2Gi", "--replica-memory", help="Memory each local replica offers"),
    overcommit: int = typer.Option(10, "--overcommit", help="Overcommit percent of local replicas"),
    max_body: str = typer.Option("8Mi", "--max-body", help="Largest request body accepted"),
    admin_token_file: Path | None = typer.Option(
        None, "--admin-token-file", envvar="BERTH_ADMIN_TOKEN_FILE",
        help="File holding the admin token of every namespace; created 0600 with a new token if absent"),
    gateway_token_file: Path | None = typer.Option(
        None, "--gateway-token-file", envvar="BERTH_GATEWAY_TOKEN_FILE",
        help="File holding the token a gateway watches routes with (made valid as a gateway token)"),
    secrets_key: Path | None = typer.Option(
        None, "--secrets-key", envvar="BERTH_SECRETS_KEY_FILE",
        help="Master key file of sealed Secrets (default DATA_DIR/secrets.key, created 0600)"),
    log_level: str = typer.Option("INFO", "--log-level"),
) -> None:
    """Run the control plane: API, store, scheduler, agent hub (and, with --provision, local replicas)."""
    os.umask(0o077)  # every file and folder it (and the replicas it starts) writes is private to this user
    setup_logging(log_level)
    opts = ControlOptions(host=host, port=port, data_dir=data_dir,
                          store_path=Path(store) if store else None, provision=provision,
                          replica_memory=parse_quantity(replica_memory, field="--replica-memory"),
                          overcommit_percent=overcommit,
                          max_body=parse_quantity(max_body, field="--max-body"),
                          admin_token_file=admin_token_file, gateway_token_file=gateway_token_file,
                          secrets_key_file=secrets_key)

    async def main(stop: asyncio.Event) -> None:
        await run_control(opts, stop)

    run_until_signalled(main)
