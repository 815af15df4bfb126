"""`berth gateway`: the V2 data plane process (REST and gRPC), on uvloop where installed.

Its options are generated from ``berth.gateway.settings.GatewaySettings`` (each also read from its
environment variable; a flag wins); ``docs/settings.md`` lists them."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from berth.daemons.options import with_settings_options
from berth.daemons.runtime import run_until_signalled, setup_logging
from berth.errors import ConfigError
from berth.gateway.app import run_gateway
from berth.gateway.routing.table import load_routes
from berth.gateway.settings import GatewaySettings
from berth.resources.names import name_problem


@with_settings_options(GatewaySettings)
def gateway(**flags: Any) -> None:
    """Run the gateway: one V2 endpoint routing to the replicas that hold each model."""
    s = GatewaySettings.from_env(os.environ, **flags)  # a wrong value stops here, naming it
    problem = name_problem(s.namespace, what="namespace", label=True)
    if problem:
        raise ConfigError(f"--namespace / BERTH_GATEWAY_NAMESPACE: {problem}")
    setup_logging(s.log_level)
    table = load_routes(s.routes) if s.routes is not None else None
    token = _token(s.token_file)
    rest_limits, h2_limits = s.limits()

    async def main(stop: asyncio.Event) -> None:
        await run_gateway(s.host, s.port, s.control or None, stop, routes=table,
                          grpc_port=s.grpc_port if s.grpc_port >= 0 else None, upstream_timeout=s.upstream_timeout,
                          connect_timeout=s.connect_timeout, max_request_bytes=s.max_request_bytes,
                          check_inputs=s.check_inputs, token=token, rest_limits=rest_limits, grpc_limits=h2_limits,
                          usage_interval=s.usage_interval, wake_timeout=s.wake_timeout, control_ca=s.control_ca,
                          token_file=s.token_file, namespace=s.namespace)

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
