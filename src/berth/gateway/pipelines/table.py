"""Pipelines in the gateway's routing table: ``NAME.pipeline`` and experiments with ``resourceType: pipeline``.

Compiled once per table (each pipeline's DAG with :func:`berth.resources.pipelines.compile_pipeline`).  A
pipeline the control plane did not mark ready, or whose DAG has problems, answers 503 ``PipelineNotReady``
with the reasons its status gives.  An experiment over pipelines splits by weight as model experiments do
(sticky on ``x-seldon-route``); one whose ``default`` is P takes over requests for ``P.pipeline`` while ready;
its ``mirror`` pipeline gets a copy of ``percent`` % of the requests (answer dropped, as for models).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace

from berth.errors import ExperimentNotReady, NotFound, Unavailable
from berth.resources.pipelines import Dag, compile_pipeline
from berth.wire.routes import ExperimentRoute, RoutingTable

PIPELINE_SUFFIX = ".pipeline"
EXPERIMENT_SUFFIX = ".experiment"


@dataclass(frozen=True, slots=True)
class PipelineChoice:
    """The pipeline a request runs, and what its answer's ``x-seldon-route`` starts with."""

    dag: Dag
    route_head: str
    experiment: str = ""
    candidate: str = ""
    mirror: Dag | None = None  # an experiment's mirror pipeline, run on a copy whose answer is dropped


@dataclass(slots=True)
class Compiled:
    dag: Dag
    ready: bool
    reason: str

    def choice(self, route_head: str, experiment: str = "") -> PipelineChoice:
        if not self.ready:
            raise not_ready(self.dag, self.reason)
        return PipelineChoice(self.dag, route_head, experiment, self.dag.name if experiment else "")


def not_ready(dag: Dag, reason: str) -> Unavailable:
    return Unavailable(
        f"pipeline {dag.name} in namespace {dag.namespace} is not ready: {reason}; "
        f"`berth describe pipeline {dag.name} -n {dag.namespace}` shows each step",
        code="PipelineNotReady", details={"pipeline": dag.name, "namespace": dag.namespace, "reason": reason})


@dataclass(slots=True)
class PipelineSplit:
    exp: ExperimentRoute
    ready: bool
    reason: str
    cumulative: list[float] = field(default_factory=list)

    def choose(self, pipes: dict[str, Compiled], rng: random.Random, route_header: str | None) -> PipelineChoice:
        exp = self.exp
        if not self.ready:
            raise ExperimentNotReady(
                f"experiment {exp.name} in namespace {exp.namespace} is not ready: {self.reason}; "
                f"`berth describe experiment {exp.name} -n {exp.namespace}` shows its candidates",
                details={"experiment": exp.name, "namespace": exp.namespace, "reason": self.reason})
        names = [c.name for c in exp.candidates]
        at = -1
        for part in (route_header or "").split(":"):
            if part in names:
                at = names.index(part)
                break
        if at < 0:
            total = self.cumulative[-1] if self.cumulative else 0.0
            u = rng.random() * total
            at = next((i for i, c in enumerate(self.cumulative) if u < c), len(names) - 1) if total > 0 \
                else rng.randrange(len(names))
        name = names[at]
        choice = pipes[name].choice(f":{exp.name}{EXPERIMENT_SUFFIX}:{name}:{name}{PIPELINE_SUFFIX}:", exp.name)
        mirror = pipes.get(exp.mirror) if exp.mirror else None
        if mirror is not None and mirror.ready and rng.random() * 100.0 < min(max(exp.mirror_percent, 0), 100):
            return replace(choice, mirror=mirror.dag)
        return choice


class PipelineTable:
    """Every pipeline and pipeline experiment of one routing table, by namespace."""

    def __init__(self, table: RoutingTable | None = None) -> None:
        self.pipes: dict[str, dict[str, Compiled]] = {}
        self.splits: dict[str, dict[str, PipelineSplit]] = {}  # namespace -> address (E.experiment, P.pipeline)
        if table is not None:
            self.set(table)

    def set(self, table: RoutingTable) -> None:
        names: dict[str, list[str]] = {}
        for p in table.pipelines:
            names.setdefault(p.namespace, []).append(p.name)
        pipes: dict[str, dict[str, Compiled]] = {}
        for p in table.pipelines:
            dag = compile_pipeline(p.namespace, p.name, p.spec, names[p.namespace], p.annotations)
            ready = p.ready and not dag.problems
            reason = "; ".join(dag.problems) if dag.problems else (p.reason or "the control plane has not marked "
                                                                   "it ready")
            pipes.setdefault(p.namespace, {})[p.name] = Compiled(dag, ready, reason)
        splits: dict[str, dict[str, PipelineSplit]] = {}
        for exp in table.experiments:
            if exp.resource_type != "pipeline":
                continue
            here = pipes.get(exp.namespace, {})
            missing = [c.name for c in exp.candidates if c.name not in here]
            ready = exp.ready and bool(exp.candidates) and not missing
            reason = exp.reason or "the control plane has not marked it ready"
            if exp.ready and missing:
                reason = f"pipeline(s) {', '.join(missing)} not in the gateway's routing table"
            running, cumulative = 0.0, []
            for c in exp.candidates:
                running += max(c.weight, 0)
                cumulative.append(running)
            split = PipelineSplit(exp, ready, reason, cumulative)
            at = splits.setdefault(exp.namespace, {})
            at[exp.name + EXPERIMENT_SUFFIX] = split
            if ready and exp.default and exp.default + PIPELINE_SUFFIX not in at:
                at[exp.default + PIPELINE_SUFFIX] = split
        self.pipes, self.splits = pipes, splits

    def handles(self, namespace: str, name: str) -> bool:
        """Whether ``name`` addresses a pipeline (``P.pipeline``) or an experiment over pipelines."""
        return name.endswith(PIPELINE_SUFFIX) or name in self.splits.get(namespace, {})

    def choose(self, namespace: str, name: str, rng: random.Random, route_header: str | None, *,
               guarded: bool) -> PipelineChoice:
        """The pipeline a request for ``name`` runs; NotFound, or Unavailable when it is not ready."""
        split = self.splits.get(namespace, {}).get(name)
        pipes = self.pipes.get(namespace, {})
        if split is not None:
            return split.choose(pipes, rng, route_header)
        return self.get(namespace, name[: -len(PIPELINE_SUFFIX)], guarded=guarded).choice(f":{name}:")

    def get(self, namespace: str, pipeline: str, *, guarded: bool) -> Compiled:
        """The compiled pipeline, or NotFound (listing the namespace's pipelines unless ``guarded``)."""
        pipes = self.pipes.get(namespace, {})
        found = pipes.get(pipeline)
        if found is not None:
            return found
        listed = "" if guarded else f"; pipelines here: {', '.join(sorted(pipes)) or 'none'}"
        raise NotFound(f"pipeline {pipeline} not found in namespace {namespace}{listed}",
                       details={"pipeline": pipeline, "namespace": namespace})
