"""Process commands (`control`, `agent`, `gateway`, `up`) added to the `berth` program."""

from __future__ import annotations

import typer

from berth.daemons import agent_cmd, control_cmd, gateway_cmd, up


def register(app: typer.Typer) -> None:
    app.command()(control_cmd.control)
    app.command()(agent_cmd.agent)
    app.command()(gateway_cmd.gateway)
    app.command()(up.up)
