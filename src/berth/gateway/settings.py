"""The gateway's settings: ``GatewaySettings``, one typed declaration (see
``berth.resources.process_settings``) from which ``berth gateway``'s options, its environment variables and
``docs/settings.md`` all come.  The token it watches routes with is not a setting: it travels in a file
(``--token-file``) or ``BERTH_TOKEN``, never on a command line."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from berth.gateway.app import MAX_REQUEST_BYTES
from berth.gateway.http2.limits import Limits
from berth.gateway.transports.restlimits import RestLimits
from berth.resources.process_settings import QUANTITY, ProcessSettings, setting

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_REST = RestLimits()  # the defaults
_H2 = Limits()


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
    namespace: str = setting("default", "BERTH_GATEWAY_NAMESPACE", flag="--namespace",
                             doc="Namespace of a REST request without a seldon-namespace header (a namespace's "
                                 "own gateway in Kubernetes: its namespace)")
    routes: Path | None = setting(None, "BERTH_ROUTES_FILE", flag="--routes",
                                  doc="Static routing table (JSON) to serve from")
    upstream_timeout: float = setting(60.0, "BERTH_UPSTREAM_TIMEOUT", flag="--upstream-timeout", gt=0, le=3600,
                                      doc="Seconds per upstream request")
    connect_timeout: float = setting(5.0, "BERTH_CONNECT_TIMEOUT", flag="--connect-timeout", gt=0, le=600,
                                     doc="Seconds to open a connection to an inference server")
    wake_timeout: float = setting(30.0, "BERTH_WAKE_TIMEOUT", flag="--wake-timeout", gt=0, le=600,
                                  doc="Seconds a request for an evicted model is held while it reloads (503 after)")
    max_request_bytes: int = setting(MAX_REQUEST_BYTES, "BERTH_MAX_REQUEST_BYTES", flag="--max-request-bytes",
                                     fmt=QUANTITY, ge=1, le=4 << 30,
                                     doc="Largest request body accepted (413 / RESOURCE_EXHAUSTED above)")
    check_inputs: bool = setting(True, "BERTH_CHECK_INPUTS", flag="--check-inputs/--no-check-inputs",
                                 doc="Check that JSON bodies parse and data fills each input's shape")
    token_file: Path | None = setting(None, "BERTH_GATEWAY_TOKEN_FILE", flag="--token-file",
                                      doc="File holding the token for the control plane (else BERTH_TOKEN); "
                                          "read again at every connection, so a rotated token (a pod's "
                                          "projected ServiceAccount token) is picked up")
    control_ca: Path | None = setting(None, "BERTH_CONTROL_CA", flag="--control-ca",
                                      doc="CA (PEM, e.g. ca.crt of the control plane's TLS Secret): reach the "
                                          "control plane over https:// trusting only this CA (an http:// "
                                          "--control is then refused)")
    rest_header_timeout: float = setting(_REST.header_timeout, "BERTH_REST_HEADER_TIMEOUT",
                                         flag="--rest-header-timeout", gt=0, le=3600,
                                         doc="Seconds for a REST request head, and for an idle keep-alive "
                                             "connection; then the connection is closed")
    rest_body_timeout: float = setting(_REST.body_timeout, "BERTH_REST_BODY_TIMEOUT",
                                       flag="--rest-body-timeout", gt=0, le=3600,
                                       doc="Seconds for a REST request body once its head arrived (408 after)")
    h2_max_concurrent_streams: int = setting(_H2.max_concurrent_streams, "BERTH_H2_MAX_CONCURRENT_STREAMS",
                                             flag="--h2-max-concurrent-streams", ge=1, le=10_000,
                                             doc="gRPC: streams one connection may have open (advertised)")
    h2_max_header_list_size: int = setting(_H2.max_header_list_size, "BERTH_H2_MAX_HEADER_LIST_SIZE",
                                           flag="--h2-max-header-list-size", fmt=QUANTITY, ge=1024, le=16 << 20,
                                           doc="gRPC: largest decoded header list of a request (advertised)")
    h2_preface_timeout: float = setting(_H2.preface_timeout, "BERTH_H2_PREFACE_TIMEOUT",
                                        flag="--h2-preface-timeout", gt=0, le=3600,
                                        doc="gRPC: seconds for a new connection's HTTP/2 preface")
    h2_idle_timeout: float = setting(_H2.idle_timeout, "BERTH_H2_IDLE_TIMEOUT", flag="--h2-idle-timeout",
                                     gt=0, le=86_400, doc="gRPC: seconds a connection with no open stream is kept")
    usage_interval: float = setting(2.0, "BERTH_USAGE_INTERVAL", flag="--usage-interval", gt=0, le=3600,
                                    doc="Seconds between usage reports to the control plane (each model's "
                                        "traffic, latency and last use: autoscaling and eviction follow them)")
    log_level: str = setting("INFO", "BERTH_LOG_LEVEL", flag="--log-level", choices=LOG_LEVELS, doc="Log level")

    def limits(self) -> tuple[RestLimits, Limits]:
        """The REST and HTTP/2 limits these settings change (every other bound keeps its default)."""
        rest = RestLimits(header_timeout=self.rest_header_timeout, body_timeout=self.rest_body_timeout)
        h2 = Limits(max_concurrent_streams=self.h2_max_concurrent_streams,
                    max_header_list_size=self.h2_max_header_list_size,
                    preface_timeout=self.h2_preface_timeout, idle_timeout=self.h2_idle_timeout)
        return rest, h2
