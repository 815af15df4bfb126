"""The gateway's settings: ``GatewaySettings``, one typed declaration (see
``berth.resources.process_settings``) from which ``berth gateway``'s options, its environment variables and
``docs/settings.md`` all come.  The token it watches routes with is not a setting: it travels in a file
(``--token-file``) or ``BERTH_TOKEN``, never on a command line."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from berth.gateway.app import MAX_REQUEST_BYTES
from berth.resources.process_settings import QUANTITY, ProcessSettings, setting

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class GatewaySettings(ProcessSettings):
    """Listeners, the control plane it follows, upstream timeouts and request limits of one gateway."""

    PROCESS: ClassVar[str] = "gateway"
    TITLE: ClassVar[str] = "Gateway"
    COMMAND: ClassVar[str] = "berth gateway"

    host: str = setting("127.0.0.1", "BERTH_GATEWAY_BIND", flag="--host", doc="Address to listen on")
    port: int = setting(9000, "BERTH_GATEWAY_PORT", flag="--port", ge=1, le=65535, doc="V2 REST port")
    grpc_port: int = setting(9001, "BERTH_GATEWAY_GRPC_PORT", flag="--grpc-port", ge=-1, le=65535,
                             doc="V2 gRPC port (-1: no gRPC endpoint)")
    control: str = setting("http://127.0.0.1:9004", "BERTH_CONTROL_URL", flag="--control",
                           doc="Control plane to follow for routes ('' for none)")
    routes: Path | None = setting(None, "BERTH_ROUTES_FILE", flag="--routes",
                                  doc="Static routing table (JSON) to serve from")
    upstream_timeout: float = setting(60.0, "BERTH_UPSTREAM_TIMEOUT", flag="--upstream-timeout", gt=0, le=3600,
                                      doc="Seconds per upstream request")
    connect_timeout: float = setting(5.0, "BERTH_CONNECT_TIMEOUT", flag="--connect-timeout", gt=0, le=600,
                                     doc="Seconds to open a connection to an inference server")
    max_request_bytes: int = setting(MAX_REQUEST_BYTES, "BERTH_MAX_REQUEST_BYTES", flag="--max-request-bytes",
                                     fmt=QUANTITY, ge=1, le=4 << 30,
                                     doc="Largest request body accepted (413 / RESOURCE_EXHAUSTED above)")
    check_inputs: bool = setting(True, "BERTH_CHECK_INPUTS", flag="--check-inputs/--no-check-inputs",
                                 doc="Check that JSON bodies parse and data fills each input's shape")
    token_file: Path | None = setting(None, "BERTH_GATEWAY_TOKEN_FILE", flag="--token-file",
                                      doc="File holding the token to watch routes with (else BERTH_TOKEN)")
    log_level: str = setting("INFO", "BERTH_LOG_LEVEL", flag="--log-level", choices=LOG_LEVELS, doc="Log level")
