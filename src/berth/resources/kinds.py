"""Pydantic schemas of the Seldon Core v2 kinds Berth accepts (and ``v1 Secret``).

Fields are strict (``replicas: "three"`` is an error, not a coercion).  Fields Berth does not know are
kept (``extra="allow"``) and reported as warnings by :mod:`berth.resources.manifest`, as are the known
fields Berth keeps but does not act on (``UNACTED_FIELDS`` and the tables beside it).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, field_validator

from berth.errors import InvalidInput
from berth.resources.quantity import parse_quantity

SELDON_API = "mlops.seldon.io/v1alpha1"
CORE_API = "v1"

# Manifest limits, all in one place (docs/limits.md lists them).  A manifest over any of them is refused whole
# with a line naming the field or document and the limit; change them here.
MAX_REPLICAS = 1000  # spec.replicas / minReplicas / maxReplicas of a Model, Server or SeldonRuntime override
MAX_DOCUMENT_BYTES = 1 << 20  # one YAML/JSON document (between two ---)
MAX_INPUT_BYTES = 10 << 20  # one file, stdin, or one apply request body
MAX_DOCUMENTS = 1000  # documents (List items counted one by one) in one load or one apply request


class _Spec(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, populate_by_name=True)


Quantity = StrictStr | StrictInt


def _check_quantity(value: Quantity | None, field: str) -> Quantity | None:
    if value is None:
        return None
    try:
        parse_quantity(value, field=field)
    except InvalidInput as exc:
        raise ValueError(str(exc).split(": ", 1)[-1]) from exc
    return value


class Parameter(_Spec):
    name: StrictStr
    value: StrictStr


class ModelSpec(_Spec):
    storageUri: StrictStr
    artifactVersion: StrictInt | None = None
    schemaUri: StrictStr | None = None
    requirements: list[StrictStr] = Field(default_factory=list)
    memory: Quantity | None = None
    secretName: StrictStr | None = None
    server: StrictStr | None = None
    replicas: StrictInt | None = Field(default=None, ge=0, le=MAX_REPLICAS)
    minReplicas: StrictInt | None = Field(default=None, ge=0, le=MAX_REPLICAS)
    maxReplicas: StrictInt | None = Field(default=None, ge=0, le=MAX_REPLICAS)
    parameters: list[Parameter] | None = None
    preloaded: StrictBool | None = None
    dedicated: StrictBool | None = None
    explainer: dict[str, Any] | None = None
    llm: dict[str, Any] | None = None
    dataflow: dict[str, Any] | None = None

    @field_validator("memory")
    @classmethod
    def _memory(cls, v: Quantity | None) -> Quantity | None:
        return _check_quantity(v, "memory")

    def memory_bytes(self) -> int:
        return parse_quantity(self.memory) if self.memory is not None else 0

    def desired_replicas(self) -> int:
        if self.replicas is not None:
            return self.replicas
        return self.minReplicas if self.minReplicas else 1


class ServerSpec(_Spec):
    serverConfig: StrictStr
    capabilities: list[StrictStr] | None = None
    extraCapabilities: list[StrictStr] | None = None
    replicas: StrictInt | None = Field(default=None, ge=0, le=MAX_REPLICAS)
    minReplicas: StrictInt | None = Field(default=None, ge=0, le=MAX_REPLICAS)
    maxReplicas: StrictInt | None = Field(default=None, ge=0, le=MAX_REPLICAS)
    podSpec: dict[str, Any] | None = None
    scaling: dict[str, Any] | None = None
    disableAutoUpdate: StrictBool | None = None
    statefulSetPersistentVolumeClaimRetentionPolicy: dict[str, Any] | None = None

    def desired_replicas(self) -> int:
        if self.replicas is not None:
            return self.replicas
        return self.minReplicas if self.minReplicas else 1


class ServerConfigSpec(_Spec):
    podSpec: dict[str, Any] | None = None
    volumeClaimTemplates: list[dict[str, Any]] | None = None


class Candidate(_Spec):
    name: StrictStr
    weight: StrictInt = Field(ge=0)


class Mirror(_Spec):
    name: StrictStr
    percent: StrictInt = Field(ge=0, le=100)


class ExperimentSpec(_Spec):
    default: StrictStr | None = None
    candidates: list[Candidate] = Field(min_length=1)
    mirror: Mirror | None = None
    resourceType: Literal["model", "pipeline"] = "model"


class PipelineStep(_Spec):
    name: StrictStr
    inputs: list[StrictStr] | None = None
    tensorMap: dict[str, StrictStr] | None = None
    triggers: list[StrictStr] | None = None
    joinType: StrictStr | None = None
    triggersJoinType: StrictStr | None = None
    batch: dict[str, Any] | None = None
    joinWindowMs: StrictInt | None = None


class PipelineOutput(_Spec):
    steps: list[StrictStr] | None = None
    tensorMap: dict[str, StrictStr] | None = None
    joinType: StrictStr | None = None
    stepsJoin: StrictStr | None = None


class PipelineSpec(_Spec):
    steps: list[PipelineStep] = Field(min_length=1)
    output: PipelineOutput | None = None
    input: dict[str, Any] | None = None


class RuntimeOverride(_Spec):
    name: StrictStr
    replicas: StrictInt | None = Field(default=None, ge=0, le=MAX_REPLICAS)
    disable: StrictBool | None = None
    serviceType: StrictStr | None = None
    podSpec: dict[str, Any] | None = None


class SeldonRuntimeSpec(_Spec):
    seldonConfig: StrictStr
    overrides: list[RuntimeOverride] | None = None
    config: dict[str, Any] | None = None
    disableAutoUpdate: StrictBool | None = None


SPEC_SCHEMAS: dict[str, type[_Spec]] = {
    "Model": ModelSpec,
    "Server": ServerSpec,
    "ServerConfig": ServerConfigSpec,
    "Experiment": ExperimentSpec,
    "Pipeline": PipelineSpec,
    "SeldonRuntime": SeldonRuntimeSpec,
}

# Spec fields Berth keeps but does not act on, by kind: field -> what Berth does instead.  Fields read only
# in part (podSpec, SeldonRuntime overrides and config) are walked by ``manifest.unacted_warnings``.
UNACTED_FIELDS: dict[str, dict[str, str]] = {
    "Model": {
        "schemaUri": "not read (Berth fetches no model schema; a change reloads the model as any artifact "
                     "change does)",
        "preloaded": "not acted on (Berth loads every model as soon as it is placed)",
        "dedicated": "not acted on (models share server replicas; give the model a Server of its own and pin "
                     "it with spec.server instead)",
        "explainer": "not acted on (Berth wires no Alibi explainer to its model; the artifact is served as a "
                     "plain model)",
        "llm": "not acted on (Berth serves MLServer's sklearn, xgboost, mlflow and lightgbm runtimes only)",
        "dataflow": "not used (Berth runs no Kafka dataflow)",
    },
    "Server": {
        "scaling": "not read (Berth scales a Server between minReplicas and maxReplicas by the room its models "
                   "need: docs/autoscaling.md)",
        "disableAutoUpdate": "not acted on (local replicas restart whenever their memory, overcommit or "
                             "capabilities change)",
        "statefulSetPersistentVolumeClaimRetentionPolicy": "not used by local replicas (no volumes: each "
                                                           "replica keeps its files under the data dir)",
    },
    "ServerConfig": {
        "volumeClaimTemplates": "not used by local replicas (no volumes: each replica keeps its files under "
                                "the data dir)",
    },
    "SeldonRuntime": {
        "disableAutoUpdate": "not acted on (Berth's control plane and gateway serve every namespace)",
    },
    "Pipeline": {
        "input": "not served (external inputs come from Kafka topics; Berth runs pipelines on the request path "
                 "and has no broker)",
    },
}
# SeldonRuntime overrides name components of Seldon's SeldonConfig; what Berth runs in their place.
RUNTIME_COMPONENTS: dict[str, str] = {
    "seldon-scheduler": "Berth's one control plane schedules every namespace",
    "seldon-envoy": "Berth's one gateway serves every namespace",
    "seldon-modelgateway": "Berth's one gateway serves every namespace",
    "seldon-pipelinegateway": "Berth's one gateway serves every namespace",
    "seldon-dataflow-engine": "Berth runs no Kafka dataflow engine",
    "hodometer": "Berth sends no usage metrics",
}
# Annotations Berth reads, and the kinds it reads each on.
ANNOTATIONS: dict[str, tuple[str, ...]] = {
    "berth.io/replica-memory": ("Server",),
    "berth.io/placement-policy": ("SeldonRuntime",),
    "berth.io/idempotent": ("Model",),
    "berth.io/overcommit": ("Server",),  # docs/overcommit.md
    "berth.io/pinned": ("Model",),
}

# Kinds as a user types them on the CLI (kubectl style: singular, plural, short).
KIND_ALIASES: dict[str, str] = {}
for _kind, _aliases in {
    "Model": ("model", "models", "mlm"),
    "Server": ("server", "servers", "mls"),
    "ServerConfig": ("serverconfig", "serverconfigs"),
    "Experiment": ("experiment", "experiments", "mlx"),
    "Pipeline": ("pipeline", "pipelines", "mlp"),
    "SeldonRuntime": ("seldonruntime", "seldonruntimes"),
    "Secret": ("secret", "secrets"),
}.items():
    for _alias in _aliases:
        KIND_ALIASES[_alias] = _kind
    KIND_ALIASES[_kind.lower()] = _kind

ALL_KINDS = ("Model", "Server", "ServerConfig", "Experiment", "Pipeline", "SeldonRuntime", "Secret")
# Order in which a manifest set is applied (dependencies first), as kubectl/Helm would.
APPLY_ORDER = {k: i for i, k in enumerate(
    ("SeldonRuntime", "Secret", "ServerConfig", "Server", "Model", "Pipeline", "Experiment"))}


def api_version_for(kind: str) -> str:
    return CORE_API if kind == "Secret" else SELDON_API


def kind_from_alias(text: str) -> str:
    kind = KIND_ALIASES.get(text.lower())
    if kind is None:
        raise InvalidInput(f"unknown resource type {text!r}; known: "
                           "models, servers, serverconfigs, experiments, pipelines, seldonruntimes, secrets")
    return kind


def model_spec(doc: dict[str, Any]) -> ModelSpec:
    return ModelSpec.model_validate(doc.get("spec") or {})


def server_spec(doc: dict[str, Any]) -> ServerSpec:
    return ServerSpec.model_validate(doc.get("spec") or {})


def experiment_spec(doc: dict[str, Any]) -> ExperimentSpec:
    return ExperimentSpec.model_validate(doc.get("spec") or {})
