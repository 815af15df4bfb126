"""The routing table the control plane publishes and gateways watch.

``GET /api/v1/routes`` answers the whole table as JSON; ``GET /api/v1/routes/watch`` is a chunked
stream of newline-delimited JSON tables (the whole table each time it changes; the first line is the
current table).  Tables are small (one entry per model, experiment and pipeline), so whole-table pushes keep
gateways simple.

``auth`` says who may call what (None: the table comes from no identity-aware control plane, e.g. a static
``--routes`` file: every namespace is open and so are the gateway's metrics and probe).  It carries only
SHA-256 hashes of tokens (:func:`berth.resources.identity.hash_token`), never a token.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

ROUTES_PATH = "/api/v1/routes"
ROUTES_WATCH_PATH = "/api/v1/routes/watch"
WAKE_PATH = "/api/v1/namespaces/{ns}/models/{name}/wake"  # POST, a gateway token: reload an evicted model


class _Msg(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Endpoint(_Msg):
    server: str
    replica: int
    http: str  # host:port of the inference server's REST endpoint
    grpc: str  # host:port of its gRPC endpoint


class ModelRoute(_Msg):
    namespace: str
    name: str
    state: str  # ModelAvailable, ModelProgressing, ScheduleFailed, LoadFailed, ...
    reason: str = ""  # why not available, for 404/503 answers
    endpoints: list[Endpoint] = Field(default_factory=list)  # replicas holding the model, loaded
    # False (annotation berth.io/idempotent: "false"): a request that was sent is never sent again
    idempotent: bool = True
    # the inference server's name for the version that serves (``NAME_GEN`` after an update; "": ``name``)
    upstream: str = ""
    # no copy loaded, one evicted (docs/overcommit.md): a gateway holds a request and asks WAKE_PATH to reload it
    evicted: bool = False


class Candidate(_Msg):
    name: str
    weight: int


class ExperimentRoute(_Msg):
    namespace: str
    name: str
    default: str | None = None
    candidates: list[Candidate] = Field(default_factory=list)
    mirror: str | None = None
    mirror_percent: int = 0
    ready: bool = False
    reason: str = ""  # why not ready (a candidate missing, not Ready, another namespace, ...)
    resource_type: str = "model"  # "pipeline": candidates, mirror and default are pipelines


class PipelineRoute(_Msg):
    """A Pipeline as the gateway runs it: its spec as applied (compiled by the gateway with
    :func:`berth.resources.pipelines.compile_pipeline`) and whether the control plane found it ready."""

    namespace: str
    name: str
    spec: dict[str, Any] = Field(default_factory=dict)  # steps, output (Seldon's PipelineSpec)
    annotations: dict[str, str] = Field(default_factory=dict)  # berth.io/step-timeout[.STEP]
    ready: bool = False
    reason: str = ""  # the status message: every problem, or "pipeline ready"


class NamespaceAuth(_Msg):
    """A namespace whose SeldonRuntime says ``berth.io/inference-auth: "required"``."""

    namespace: str
    # hashes of the tokens with a role in this namespace itself (tokens with a role in "*" are in `everywhere`)
    tokens: list[str] = Field(default_factory=list)


class TableAuth(_Msg):
    namespaces: list[NamespaceAuth] = Field(default_factory=list)  # the namespaces requiring a token; others open
    everywhere: list[str] = Field(default_factory=list)  # hashes of tokens with a role in every namespace ("*")
    operators: list[str] = Field(default_factory=list)  # hashes of tokens that may read metrics and the probe


class RoutingTable(_Msg):
    revision: int = 0
    models: list[ModelRoute] = Field(default_factory=list)
    experiments: list[ExperimentRoute] = Field(default_factory=list)
    pipelines: list[PipelineRoute] = Field(default_factory=list)
    auth: TableAuth | None = None
