"""What the scheduler sees (a snapshot) and what it answers (a plan).  Plain frozen data, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

Policy = Literal["binpack", "spread"]


class ReplicaRef(NamedTuple):
    """One replica of one server: the unit a model is placed on.  A NamedTuple: compared, hashed and
    ordered in C (a re-plan compares 100,000 placements), and equal to its ``(server, index)`` key."""

    server: str
    index: int  # type: ignore[assignment]  # shadows tuple.index, as the field has always been named

    def __str__(self) -> str:
        return f"{self.server}/{self.index}"


@dataclass(frozen=True, slots=True)
class ModelWant:
    """A Model resource as the scheduler needs it."""

    name: str
    namespace: str
    requirements: tuple[str, ...] = ()
    memory: int = 0  # bytes the model declares it needs (0 when undeclared)
    server: str | None = None  # spec.server as written (may be "other-ns/x")
    replicas: int = 1  # desired replicas
    min_replicas: int | None = None  # accept partial placement down to this many
    deleting: bool = False  # being deleted: plan no replicas


@dataclass(frozen=True, slots=True)
class ServerInfo:
    """A Server resource: what the user declared."""

    name: str
    namespace: str
    capabilities: tuple[str, ...] = ()  # capabilities + extraCapabilities, effective
    desired_replicas: int = 1
    deleting: bool = False
    server_config: str | None = None  # spec.serverConfig as written
    inference_server: str = "mlserver"  # what its replicas run; Berth runs only MLServer, never places on others


@dataclass(frozen=True, slots=True)
class ReplicaInfo:
    """A replica as its agent last reported it."""

    server: str
    namespace: str
    index: int
    capabilities: tuple[str, ...] = ()
    memory: int = 0  # bytes the replica offers (before overcommit)
    overcommit_percent: int = 0
    connected: bool = True  # an agent is subscribed for this replica
    ready: bool = False  # the inference server answered readiness
    draining: bool = False
    address: str | None = None  # inference server address the agent uses (host:port)
    last_error: str | None = None  # e.g. "connection refused"
    error_since: str | None = None  # when last_error started, preformatted by the caller (no clock here)
    loaded: tuple[str, ...] = ()  # model names the agent reports as loaded
    # (capability, module) for each claimed capability whose runtime the agent found its MLServer cannot import
    unimportable: tuple[tuple[str, str], ...] = ()

    @property
    def ref(self) -> ReplicaRef:
        return ReplicaRef(self.server, self.index)

    @property
    def capacity(self) -> int:
        """Memory the scheduler may hand out on this replica, overcommit included."""
        return self.memory * (100 + self.overcommit_percent) // 100


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one namespace's placement depends on.  Time and seeds come in as values."""

    namespace: str
    models: tuple[ModelWant, ...] = ()
    servers: tuple[ServerInfo, ...] = ()
    replicas: tuple[ReplicaInfo, ...] = ()
    # where each model is now (by model name): kept first when still valid
    assignments: dict[str, tuple[ReplicaRef, ...]] = field(default_factory=dict)
    policy: Policy = "binpack"
    # servers of other namespaces, by namespace: used only to explain cross-namespace references
    foreign_servers: dict[str, tuple[str, ...]] = field(default_factory=dict)


# Stable rejection codes.  Never rename one once released; add new ones instead.
CROSS_NAMESPACE = "CrossNamespaceReference"
SERVER_NOT_FOUND = "ServerNotFound"
NO_SERVERS = "NoServers"
SERVER_DELETING = "ServerDeleting"
NO_REPLICAS = "NoConnectedReplicas"
REPLICA_NOT_READY = "ReplicaNotReady"
REPLICA_DRAINING = "ReplicaDraining"
MISSING_CAPABILITIES = "MissingCapabilities"
RUNTIME_NOT_IMPORTABLE = "RuntimeNotImportable"  # claimed, but the inference server cannot import its runtime
INSUFFICIENT_MEMORY = "InsufficientMemory"
NOT_ENOUGH_REPLICAS = "NotEnoughReplicas"
UNSUPPORTED_SERVER = "UnsupportedServer"  # the server runs an inference server Berth does not run (Triton)
REQUIRES_UNSUPPORTED_SERVER = "RequiresUnsupportedServer"  # only such a server offers the requirements


class Rejection(NamedTuple):
    """Why one candidate (a server, or one of its replicas) was not used for a model.  A NamedTuple (cheap
    to build: a plan that fails many models builds tens of thousands)."""

    code: str
    message: str  # one human line, complete on its own
    server: str | None = None
    replica: int | None = None
    data: tuple[tuple[str, Any], ...] = ()  # figures involved, e.g. (("need", 123), ("free", 45))

    def as_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "server": self.server,
                "replica": self.replica, "data": dict(self.data)}


PlacementState = Literal["Scheduled", "PartiallyScheduled", "ScheduleFailed", "Deleting"]


class ModelPlan(NamedTuple):
    """Where one model should be.  A NamedTuple, not a frozen dataclass: a plan builds one per model and
    a frozen dataclass costs several times more to construct (100,000 of them were a quarter of a plan)."""

    name: str
    desired: int
    replicas: tuple[ReplicaRef, ...]  # where the model should be, in preference order
    state: PlacementState
    message: str  # condition message: Seldon's sentence first, then the specific reasons
    reasons: tuple[Rejection, ...] = ()  # every candidate rejected (empty when fully placed)

    @property
    def server(self) -> str | None:
        return self.replicas[0].server if self.replicas else None


@dataclass(frozen=True, slots=True)
class Plan:
    namespace: str
    models: dict[str, ModelPlan]
    # Opaque memo of the inputs this plan was made from, so that ``plan(snapshot, previous=this)`` can
    # re-plan only what changed.  Not part of the plan's meaning: ignored by ``==`` and ``repr``.
    basis: Any = field(default=None, compare=False, repr=False)

    def replicas_of(self, model: str) -> tuple[ReplicaRef, ...]:
        plan = self.models.get(model)
        return plan.replicas if plan else ()
