"""Messages between an agent and the control plane, over one WebSocket (JSON text frames).

Every frame is an object with a ``type`` field.  Agent → control: ``hello`` (first frame, always),
``status`` (inference-server readiness changed), ``model`` (a load/unload outcome), ``models`` (several, protocol
2), ``heartbeat``.  Control → agent: ``welcome`` (answer to hello), ``load``, ``loads`` (several, protocol 2),
``unload``, ``error`` (then close), and ``check`` (``berth doctor``'s storage check), which the agent answers with
``check_result``.  Batches are bounded (``MAX_BATCH_ITEMS``, ``MAX_BATCH_CHARS``) and built by wire/batch.py.

The WebSocket endpoint is ``GET /api/v1/agents/connect`` on the control plane.  The upgrade request carries
``Authorization: Bearer <token>``: an agent token minted for exactly the (namespace, server, replica) the
``hello`` then claims.  Nothing is accepted before that check; a refusal is an ``error`` frame
(``Unauthenticated``, ``Forbidden``, ``Conflict`` or ``InvalidInput``) and then the close.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator

from berth.resources.names import name_problem
from berth.wire.control_view import ControlView

AGENT_PATH = "/api/v1/agents/connect"
# 2: batches (docs/loading.md): ``loads`` (control -> agent) when the hello says 2, ``models`` (agent -> control)
# when the welcome says 2; a peer that says 1 (or nothing) gets one ``load``/``model`` frame per item, as before
PROTOCOL_VERSION = 2
BATCH_PROTOCOL = 2
MAX_BATCH_ITEMS = 256  # loads or model events in one batch frame
MAX_BATCH_CHARS = 1 << 20  # JSON text of one batch frame, as its sender builds it (wire/batch.py)


class _Msg(BaseModel):
    model_config = ConfigDict(extra="ignore")


class LoadedModel(_Msg):
    name: str
    generation: int = 0
    memory: int = 0  # bytes the load took (RSS delta), 0 when unknown


class InferenceAddress(_Msg):
    host: str = "127.0.0.1"
    http_port: int = 8080
    grpc_port: int = 8081

    @property
    def http(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc(self) -> str:
        return f"{self.host}:{self.grpc_port}"


class CapabilityProblem(_Msg):
    """A capability the server claims whose runtime its inference server's Python cannot import."""

    capability: str  # as claimed, e.g. "torch"
    module: str  # the module that is missing, e.g. "torch" or "mlserver_xgboost"
    error: str = ""  # "not installed", or the error finding it raised


class Readiness(_Msg):
    """Whether the inference server answered readiness, and if not, exactly what went wrong."""

    ready: bool = False
    address: str = ""  # the URL tried, e.g. http://127.0.0.1:9500/v2/health/ready
    error: str | None = None  # "connection refused", "timeout after 2.0s", "HTTP 503: ..."
    since: float | None = None  # unix time the current error (or readiness) started


class Hello(_Msg):
    type: Literal["hello"] = "hello"
    protocol: int = PROTOCOL_VERSION
    namespace: str = "default"
    server: str
    replica: int = Field(ge=0)
    capabilities: list[str] = Field(default_factory=list)
    memory: int = 0  # bytes offered
    overcommit_percent: int = 10
    inference: InferenceAddress = Field(default_factory=InferenceAddress)
    readiness: Readiness = Field(default_factory=Readiness)
    loaded: list[LoadedModel] = Field(default_factory=list)
    # evicted models whose artifact the agent keeps on disk (docs/overcommit.md); the control plane unloads
    # (which removes the files of) those it no longer wants there
    kept: list[LoadedModel] = Field(default_factory=list)
    pid: int | None = None  # of the inference server, when the agent knows it
    unavailable: list[CapabilityProblem] = Field(default_factory=list)  # claimed, runtime not importable
    probed_with: str | None = None  # the interpreter the capability probe asked (None: not probed, or it failed)
    control: ControlView | None = None  # the agent's view of the control plane (wire/control_view.py)

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        problem = name_problem(value, what="namespace", label=True)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("server")
    @classmethod
    def _server(cls, value: str) -> str:
        problem = name_problem(value, what="server")
        if problem:
            raise ValueError(problem)
        return value


class Status(_Msg):
    type: Literal["status"] = "status"
    readiness: Readiness


ModelState = Literal["LOADING", "LOADED", "LOAD_FAILED", "UNLOADED", "UNLOAD_FAILED"]


class ModelEvent(_Msg):
    type: Literal["model"] = "model"
    name: str
    generation: int = 0
    state: ModelState
    # bytes the load took for LOADED: the inference server's RSS delta across a load call that ran alone
    # (no other load call overlapped it); 0 when not measured (loads overlapped) or unknown
    memory: int = 0
    message: str = ""  # MLServer's own error text, storage error, ...
    duration: float = 0.0  # seconds the operation took (fetch, placement, load, verification)
    inference_seconds: float = 0.0  # of which the inference server's own load call took


class ModelEvents(_Msg):
    """Agent -> control (protocol 2): several ``model`` outcomes in one frame, each applied as if alone."""

    type: Literal["models"] = "models"
    events: list[ModelEvent] = Field(min_length=1, max_length=MAX_BATCH_ITEMS)


class Heartbeat(_Msg):
    type: Literal["heartbeat"] = "heartbeat"
    control: ControlView | None = None  # the agent's view of the control plane, when it changed


class StorageReport(_Msg):
    """Agent → control: the answer to a ``check`` (``berth doctor``'s storage check, run where the model loads)."""

    type: Literal["check_result"] = "check_result"
    id: str = Field(max_length=64)
    checks: list[dict[str, Any]] = Field(default_factory=list, max_length=8)  # {name, ok, detail}


AgentMessage = Annotated[Hello | Status | ModelEvent | ModelEvents | Heartbeat | StorageReport,
                         Field(discriminator="type")]
AGENT_MESSAGE: TypeAdapter[Hello | Status | ModelEvent | ModelEvents | Heartbeat | StorageReport] = \
    TypeAdapter(AgentMessage)


class Welcome(_Msg):
    type: Literal["welcome"] = "welcome"
    heartbeat_interval: float = 5.0
    protocol: int = 1  # the control plane's; one that does not say speaks 1 (no batches)


class ModelSource(_Msg):
    """All an agent needs to fetch and load a model; the secret travels resolved (never logged)."""

    storage_uri: str
    artifact_version: int | None = None
    requirements: list[str] = Field(default_factory=list)
    memory: int = 0
    parameters: dict[str, str] = Field(default_factory=dict)
    secret_name: str | None = None
    secret: dict[str, str] | None = None  # the Secret's decoded data; None when absent/not found
    secret_error: str | None = None  # why the secret could not be resolved, when secret_name is set
    allow_custom_runtime: bool = False  # its Server carries berth.io/allow-custom-runtime: "true" (set by the hub)


class Load(_Msg):
    type: Literal["load"] = "load"
    namespace: str | None = None  # the model's; a load carrying a secret goes only to an agent enrolled there
    name: str
    generation: int
    source: ModelSource


class LoadBatch(_Msg):
    """Control -> agent (protocol 2): several loads in one frame; the agent handles each as a lone ``load``."""

    type: Literal["loads"] = "loads"
    loads: list[Load] = Field(min_length=1, max_length=MAX_BATCH_ITEMS)


class Unload(_Msg):
    type: Literal["unload"] = "unload"
    name: str
    # an eviction (docs/overcommit.md): unload from the inference server, keep the artifact on disk so a
    # reload of the same generation neither downloads nor places it again
    keep_artifact: bool = False


class ErrorMsg(_Msg):
    type: Literal["error"] = "error"
    code: str
    message: str


class CheckStorage(_Msg):
    """Control → agent: can this host read the model's artifact?  (no download; answered by a ``check_result``)"""

    type: Literal["check"] = "check"
    id: str
    namespace: str | None = None  # the model's; carries a Secret only to an agent enrolled there
    name: str
    source: ModelSource


ControlMessage = Annotated[Welcome | Load | LoadBatch | Unload | ErrorMsg | CheckStorage, Field(discriminator="type")]
CONTROL_MESSAGE: TypeAdapter[Welcome | Load | LoadBatch | Unload | ErrorMsg | CheckStorage] = \
    TypeAdapter(ControlMessage)


def dump(msg: BaseModel) -> str:
    return msg.model_dump_json()


def parse_agent(text: str | bytes) -> Any:
    return AGENT_MESSAGE.validate_json(text)


def parse_control(text: str | bytes) -> Any:
    return CONTROL_MESSAGE.validate_json(text)
