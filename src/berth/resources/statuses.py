"""The declared shape of every kind's ``status``: one TypedDict per kind, as kopf types raw bodies.

Documents stay plain dicts at runtime (they go to the store, the API and the watch unchanged); these
declarations name their shape once, so the reconciler that writes a status and every reader of it (the
API, the CLI, the gateway's routes) are checked against the same fields by mypy.

Two shapes differ by kind on purpose and are kept for compatibility with what clients already read:
a Model's ``replicaStatus`` maps a replica key (``SERVER/INDEX``) to its row; a Server's is a list of
rows in index order.

A resource the reconciler has not reached yet has no status (``{}``): read statuses through
:func:`model_status_of` and its siblings, which answer ``None`` then, instead of casting an empty dict to
a full shape.

(No ``from __future__ import annotations`` here: ``NotRequired`` must be seen at run time for
``__required_keys__``, which tests and :func:`missing_fields` read, to be right.)
"""

from collections.abc import Mapping
from typing import Any, Literal, NotRequired, TypedDict, cast

ConditionStatus = Literal["True", "False", "Unknown"]
ModelState = Literal["ModelProgressing", "ModelAvailable", "ScheduleFailed", "LoadFailed", "ModelTerminating"]
MODEL_STATES: tuple[ModelState, ...] = (
    "ModelProgressing", "ModelAvailable", "ScheduleFailed", "LoadFailed", "ModelTerminating")
ReplicaState = Literal["Pending", "Loading", "Loaded", "LoadFailed", "Unavailable", "Evicted"]
PlacementState = Literal["Scheduled", "PartiallyScheduled", "ScheduleFailed", "Deleting"]


class Condition(TypedDict):
    """A Kubernetes condition; ``lastTransitionTime`` (RFC 3339) moves only when ``status`` flips."""
    type: str
    status: ConditionStatus
    reason: str
    message: str
    lastTransitionTime: str


class HistoryEntry(TypedDict):
    time: str
    state: str
    message: str


class PlacementReason(TypedDict):
    """Why the scheduler rejected a candidate (``berth.scheduler.snapshot.Reason.as_dict``)."""
    code: str
    message: str
    server: str | None
    replica: int | None
    data: dict[str, Any]


class ModelPlacement(TypedDict):
    server: str | None
    replicas: list[int]
    state: PlacementState
    reasons: list[PlacementReason]


class ReplicaEviction(TypedDict):
    """Why a model is not loaded on a replica it is placed on (docs/overcommit.md)."""
    reason: str
    neededBy: str  # the model the room went to ("" when none in particular)
    neededMemory: int
    memory: int  # bytes this model takes (effective)
    time: str
    unloaded: bool  # it was loaded and unloaded (False: never loaded here for lack of room)


class ModelMemory(TypedDict):
    """A model's memory: declared (spec.memory), measured (RSS delta of its load), effective (the larger)."""
    declared: int
    measured: int
    effective: int


class ModelReplicaStatus(TypedDict):
    """One planned replica of a model; key in ``ModelStatus.replicaStatus``: ``SERVER/INDEX``."""
    state: ReplicaState
    message: str
    memory: int
    loadSeconds: float
    inferenceLoadSeconds: float
    address: str  # the replica's inference server (host:port); "" when no agent ever connected
    eviction: NotRequired[ReplicaEviction]  # state Evicted (or Loading again after one)


class ScalingEvent(TypedDict):
    """One autoscaling decision, with its reason (docs/autoscaling.md)."""
    time: str  # RFC 3339
    direction: Literal["up", "down"]
    previous: int  # replicas before
    replicas: int  # replicas after
    reason: str


class AutoscalingStatus(TypedDict):
    """The replicas autoscaling decided (planned in place of spec.replicas) and its last decisions."""
    replicas: int
    minReplicas: int
    maxReplicas: int
    events: list[ScalingEvent]  # the last ones, oldest first
    problems: NotRequired[list[str]]  # annotations that could not be read (their defaults apply)


class ModelStatus(TypedDict):
    observedGeneration: int
    state: ModelState
    reason: str
    message: str
    replicas: int
    availableReplicas: int
    conditions: list[Condition]  # ModelReady, Ready, Scheduled
    placement: ModelPlacement
    replicaStatus: dict[str, ModelReplicaStatus]
    artifactGeneration: int
    artifactFingerprint: str
    history: list[HistoryEntry]
    servingGeneration: NotRequired[int]  # the version the routes point to (docs/rollouts.md)
    rollout: NotRequired["ModelRollout"]
    memory: NotRequired[ModelMemory]  # when declared or measured (docs/overcommit.md)
    autoscaling: NotRequired[AutoscalingStatus]  # when minReplicas < maxReplicas (docs/autoscaling.md)


class ModelVersion(TypedDict):
    generation: int
    artifact: dict[str, Any]  # storageUri, artifactVersion, requirements, parameters, secretName, schemaUri


class ModelRollout(TypedDict):
    """A model's last change of artifact: which generation is desired, which serves (docs/rollouts.md)."""
    desiredGeneration: int
    servingGeneration: int
    state: Literal["Complete", "Progressing", "Failed"]
    message: str
    current: ModelVersion
    previous: ModelVersion | None


class UnavailableCapability(TypedDict):
    """A capability a replica's Server claims whose runtime its MLServer cannot import."""
    capability: str
    module: str
    error: str


class ResolutionStatus(TypedDict):
    """An agent's lookup of the control URL's host (docs/doctor.md)."""
    host: str
    addresses: list[str]
    seconds: float  # the lookup took
    at: str
    error: NotRequired[str]  # the resolver's: "NXDOMAIN (name not known)", ...


class AttemptStatus(TypedDict):
    at: str
    outcome: str  # ok, refused, timeout, tls, dns, rejected, error
    address: str
    error: NotRequired[str]


class ControlPlaneStatus(TypedDict):
    url: str
    attempts: list[AttemptStatus]  # the last few, oldest first
    failures: int  # failed attempts in a row before the current connection (or until now)
    resolution: NotRequired[ResolutionStatus]
    connectedSince: NotRequired[str]
    connectedTo: NotRequired[str]
    rttSeconds: NotRequired[float]  # the agent's last WebSocket ping, as of this status


class ServerReplicaStatus(TypedDict):
    """One replica of a server, by index; the agent's fields are there once an agent has said hello."""
    index: int
    connected: bool
    ready: bool
    message: str
    address: NotRequired[str]
    memory: NotRequired[int]
    capabilities: NotRequired[list[str]]
    models: NotRequired[list[str]]  # names of the models loaded there
    unavailableCapabilities: NotRequired[list[UnavailableCapability]]
    controlPlane: NotRequired[ControlPlaneStatus]  # the agent's own view of the control plane


class ServerStatus(TypedDict):
    observedGeneration: int
    replicas: int
    readyReplicas: int
    loadedModels: int
    conditions: list[Condition]  # Ready
    replicaStatus: list[ServerReplicaStatus]
    autoscaling: NotRequired[AutoscalingStatus]  # when minReplicas < maxReplicas (docs/autoscaling.md)


class ExperimentStatus(TypedDict):
    observedGeneration: int
    holdsDefault: bool  # this experiment receives the traffic of its default model's name
    conditions: list[Condition]  # ExperimentReady, Ready
    message: str


class PipelineStepStatus(TypedDict):
    """One step of a pipeline: whether it can run, and why not."""
    name: str
    ready: bool
    message: str


class PipelineStatus(TypedDict):
    observedGeneration: int
    conditions: list[Condition]  # PipelineReady, Ready
    message: str
    steps: NotRequired[list[PipelineStepStatus]]


class RuntimeStatus(TypedDict):
    """SeldonRuntime: the namespace is a tenant."""
    observedGeneration: int
    conditions: list[Condition]  # Ready
    message: str


class ServerConfigStatus(TypedDict):
    observedGeneration: int
    conditions: list[Condition]  # Ready
    message: str


AnyStatus = (ModelStatus | ServerStatus | ExperimentStatus | PipelineStatus | RuntimeStatus
             | ServerConfigStatus)
STATUS_SHAPES: dict[str, type[Any]] = {
    "Model": ModelStatus,
    "Server": ServerStatus,
    "Experiment": ExperimentStatus,
    "Pipeline": PipelineStatus,
    "SeldonRuntime": RuntimeStatus,
    "ServerConfig": ServerConfigStatus,
}


def _status(doc: Mapping[str, Any]) -> Any:
    st = doc.get("status")
    return st if isinstance(st, dict) and st else None


def model_status_of(doc: Mapping[str, Any]) -> ModelStatus | None:
    """The Model's status as the reconciler wrote it, or None before its first pass."""
    return cast("ModelStatus | None", _status(doc))


def server_status_of(doc: Mapping[str, Any]) -> ServerStatus | None:
    return cast("ServerStatus | None", _status(doc))


def experiment_status_of(doc: Mapping[str, Any]) -> ExperimentStatus | None:
    return cast("ExperimentStatus | None", _status(doc))


def pipeline_status_of(doc: Mapping[str, Any]) -> PipelineStatus | None:
    return cast("PipelineStatus | None", _status(doc))


def conditions_of(doc: Mapping[str, Any]) -> list[Condition]:
    """Any kind's conditions ([] before its first status)."""
    st = _status(doc)
    return cast("list[Condition]", st.get("conditions") or []) if st is not None else []


def condition_of(doc: Mapping[str, Any], kind: str) -> Condition | None:
    """The condition of type ``kind`` (e.g. ``Ready``), or None."""
    return next((c for c in conditions_of(doc) if c.get("type") == kind), None)


def missing_fields(kind: str, status: Mapping[str, Any]) -> list[str]:
    """The required top-level fields of ``kind``'s status absent from ``status`` (a test's and a reader's
    check that a stored status has the declared shape; [] when it has, or the kind declares none)."""
    shape = STATUS_SHAPES.get(kind)
    if shape is None:
        return []
    required: frozenset[str] = getattr(shape, "__required_keys__", frozenset())
    return sorted(k for k in required if k not in status)
