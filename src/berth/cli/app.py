"""The user-facing commands, thin over berth.client."""

from __future__ import annotations

import typer

import berth
from berth.cli import (
    audit_cmd,
    describe_cmd,
    doctor_cmd,
    infer_cmd,
    plan_cmd,
    quota_cmd,
    render,
    resources_cmd,
    rollout_cmd,
    token_cmd,
)
from berth.cli.context import settings
from berth.cli.crds_cmd import crds as crds_command
from berth.cli.ui_cmd import ui as ui_command
from berth.errors import BerthError


def _root(
    server: str | None = typer.Option(None, "--server", "-s", envvar="BERTH_ADDRESS",
                                      help="Control plane address (default http://127.0.0.1:9004)"),
    gateway: str | None = typer.Option(None, "--gateway", envvar="BERTH_GATEWAY",
                                       help="Gateway address (default http://127.0.0.1:9000)"),
    gateway_grpc: str | None = typer.Option(None, "--gateway-grpc", envvar="BERTH_GATEWAY_GRPC",
                                            help="Gateway's gRPC address (default 127.0.0.1:9001)"),
    token: str | None = typer.Option(None, "--token",
                                     help="Bearer token for the control plane and gateway (default BERTH_TOKEN, "
                                          "else the one `berth up` registered); shown by ps: prefer BERTH_TOKEN"),
    kubeconfig: str | None = typer.Option(None, "--kubeconfig",
                                          help="Read resources from this cluster's API (get, describe, wait), as "
                                               "kubectl does; KUBECONFIG too, when no --server is given"),
    context: str | None = typer.Option(None, "--context", help="The kubeconfig context to use"),
) -> None:
    """Berth: serve many ML models on MLServer from Seldon Core v2 manifests, and say why when not."""
    settings.server = server
    settings.gateway = gateway
    settings.gateway_grpc = gateway_grpc
    settings.use_token(token)
    settings.kubeconfig, settings.kube_context = kubeconfig, context


def version() -> None:
    """Print the CLI version and, when reachable, the control plane's."""
    render.console.print(f"client: berth {berth.__version__}")
    try:
        with settings.client() as client:
            v = client.version()
        render.console.print(f"server: berth {v.get('version')} at {client.address}")
    except BerthError as exc:
        render.console.print(f"server: [yellow]unreachable[/yellow] ({exc.message.split(';')[0]})")


def build() -> typer.Typer:
    app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                      rich_markup_mode=None, callback=_root)
    app.command()(resources_cmd.apply)
    app.command()(resources_cmd.get)
    app.command()(describe_cmd.describe)
    app.command()(resources_cmd.delete)
    app.command()(resources_cmd.wait)
    app.command()(plan_cmd.plan)
    app.command()(infer_cmd.infer)
    app.command()(doctor_cmd.doctor)
    app.add_typer(token_cmd.app, name="token")
    app.add_typer(quota_cmd.app, name="quota")
    app.add_typer(rollout_cmd.app, name="rollout")
    app.command()(audit_cmd.audit)
    app.command("ui")(ui_command)
    app.command(name="crds")(crds_command)
    app.command()(version)
    return app
