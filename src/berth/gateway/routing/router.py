"""The one routing core under REST and gRPC: which model answers a request, and what route it took.

:meth:`Router.decide` turns (namespace, the name asked for, the ``x-seldon-route`` sent back) into a
:class:`Decision`: the model that answers, the route to answer with, the mirror that gets a copy (if
any), and the experiment and candidate for metrics.  Decisions are built when a table arrives, one per
model and two per experiment candidate (with and without the mirror), so a request allocates nothing.

Experiments follow Seldon Core v2: ``<experiment>.experiment`` addresses the experiment; an experiment
with ``default: X`` takes over requests for model X while it is ready (while it is not, X answers
itself).  Candidates share traffic by weight ÷ sum of weights.  The route of an experiment's answer is
``:<experiment>.experiment:<candidate>:``; a request whose ``x-seldon-route`` names one of the
experiment's candidates (any ``:``-separated part equal to the candidate's name) goes to that candidate
(sticky sessions).  A direct model answers ``:<model>:``.  Pipelines (``<name>.pipeline``) and experiments
over pipelines are compiled by :mod:`berth.gateway.pipelines.table` and chosen by :meth:`Router.pipeline`.

Before any of that, :meth:`Router.admit` checks the caller's token when the namespace requires one (see
:mod:`berth.gateway.routing.auth`); a 404 in such a namespace names only what was asked for, never what exists.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from berth.errors import ExperimentNotReady, NotFound, Unavailable
from berth.gateway.pipelines.table import PipelineChoice, PipelineTable
from berth.gateway.routing.auth import (
    NOT_OPERATOR,
    OPERATORS_ONLY,
    Guard,
    TokenHashes,
    denied,
    no_table_yet,
    unauthenticated,
)
from berth.gateway.routing.table import Target, compile_route
from berth.wire.routes import ExperimentRoute, RoutingTable

EXPERIMENT_SUFFIX = ".experiment"
_LISTED = 20  # names quoted in a 404 before "and N more"


@dataclass(frozen=True, slots=True)
class Decision:
    """Where one request goes: ``target`` answers, ``mirror`` (if set) gets a copy whose answer is dropped."""

    target: Target
    route: str  # the x-seldon-route answer header
    mirror: Target | None = None
    experiment: str = ""
    candidate: str = ""
    labels: tuple[str, str, str, str] = ("", "", "", "")  # namespace, model, experiment, candidate
    mirror_labels: tuple[str, str, str, str] = ("", "", "", "")  # the same for the mirror's copy


def weighted_index(cumulative: Sequence[float], total: float, u: float) -> int:
    """The candidate a uniform draw ``u`` in [0, 1) falls on, given cumulative weights summing to ``total``."""
    return min(bisect_right(cumulative, u * total), len(cumulative) - 1)


@dataclass(slots=True)
class Split:
    """One experiment, compiled: candidates with cumulative weights and their decisions."""

    namespace: str
    name: str
    ready: bool
    reason: str
    names: tuple[str, ...] = ()
    cumulative: tuple[float, ...] = ()
    total: float = 0.0
    mirror_percent: float = 0.0
    plain: tuple[Decision, ...] = ()
    mirrored: tuple[Decision, ...] = ()
    index: dict[str, int] = field(default_factory=dict)

    def sticky(self, route_header: str) -> int:
        """The candidate named by a returned ``x-seldon-route``, or -1."""
        index = self.index
        for part in route_header.split(":"):
            at = index.get(part)
            if at is not None:
                return at
        return -1

    def choose(self, rng: random.Random, route_header: str | None) -> Decision:
        if not self.ready:
            raise ExperimentNotReady(
                f"experiment {self.name} in namespace {self.namespace} is not ready: {self.reason}; "
                f"`berth describe experiment {self.name} -n {self.namespace}` shows its candidates",
                details={"experiment": self.name, "namespace": self.namespace, "reason": self.reason})
        at = self.sticky(route_header) if route_header else -1
        if at < 0:
            at = weighted_index(self.cumulative, self.total, rng.random()) if self.total > 0 \
                else rng.randrange(len(self.names))
        if self.mirror_percent > 0 and rng.random() * 100.0 < self.mirror_percent:
            return self.mirrored[at]
        return self.plain[at]


def compile_split(exp: ExperimentRoute, targets: dict[tuple[str, str], Target]) -> Split:
    """The experiment ``exp`` over the compiled ``targets``; not ready when a model it names is absent."""
    ns = exp.namespace
    missing = [c.name for c in exp.candidates if (ns, c.name) not in targets]
    if exp.mirror and (ns, exp.mirror) not in targets:
        missing.append(exp.mirror)
    reason = exp.reason or "the control plane has not marked it ready"
    ready = exp.ready and bool(exp.candidates) and not missing
    if exp.ready and missing:
        reason = f"model(s) {', '.join(missing)} not in the gateway's routing table"
    elif exp.ready and not exp.candidates:
        reason = "it has no candidates"
    split = Split(namespace=ns, name=exp.name, ready=ready, reason=reason)
    if not ready:
        return split
    running = 0.0
    cumulative = []
    for c in exp.candidates:
        running += max(c.weight, 0)
        cumulative.append(running)
    mirror = targets[(ns, exp.mirror)] if exp.mirror else None
    route_head = f":{exp.name}{EXPERIMENT_SUFFIX}:"

    def decision(name: str, with_mirror: bool) -> Decision:
        return Decision(target=targets[(ns, name)], route=f"{route_head}{name}:",
                        mirror=mirror if with_mirror else None, experiment=exp.name, candidate=name,
                        labels=(ns, name, exp.name, name), mirror_labels=(ns, exp.mirror or "", exp.name, ""))

    split.names = tuple(c.name for c in exp.candidates)
    split.cumulative = tuple(cumulative)
    split.total = running
    split.mirror_percent = float(min(max(exp.mirror_percent, 0), 100)) if mirror is not None else 0.0
    split.plain = tuple(decision(n, False) for n in split.names)
    split.mirrored = tuple(decision(n, True) for n in split.names) if mirror is not None else split.plain
    split.index = {n: i for i, n in reversed(list(enumerate(split.names)))}
    return split


class Router:
    """The current routing table, compiled for :meth:`decide`; ready once a table has been received."""

    def __init__(self, table: RoutingTable | None = None, *, rng: random.Random | None = None) -> None:
        self.table: RoutingTable | None = None
        self.problem = "no routing table received yet"
        self.rng = rng or random.Random()
        self._entries: dict[str, dict[str, Decision | Split]] = {}
        self._models: dict[str, tuple[str, ...]] = {}
        self._experiments: dict[str, tuple[str, ...]] = {}
        self.grpc_addresses: frozenset[str] = frozenset()
        self.listeners: list[Callable[[], object]] = []  # called after each new table is in place
        self.hashes = TokenHashes()
        self._guarded: dict[str, frozenset[str]] = {}  # namespace requiring a token -> hashes allowed there
        self._operators: frozenset[str] | None = None  # None: the table carries no auth (metrics, probe open)
        self.pipelines = PipelineTable()
        self.waker: object | None = None  # a routing.wake.Waker: holds requests for evicted models
        if table is not None:
            self.set(table)

    @property
    def ready(self) -> bool:
        return self.table is not None

    @property
    def revision(self) -> int:
        return self.table.revision if self.table is not None else -1

    def set(self, table: RoutingTable) -> None:
        """Replace the table (compiled first, swapped in by assignments no request can see halfway)."""
        targets = {(r.namespace, r.name): compile_route(r) for r in table.models}
        entries: dict[str, dict[str, Decision | Split]] = {}
        for (ns, name), target in targets.items():
            entries.setdefault(ns, {})[name] = Decision(target=target, route=f":{name}:",
                                                        labels=(ns, name, "", ""))
        for exp in table.experiments:
            if exp.resource_type == "pipeline":
                continue  # compiled by PipelineTable
            split = compile_split(exp, targets)
            here = entries.setdefault(exp.namespace, {})
            here[exp.name + EXPERIMENT_SUFFIX] = split
            if split.ready and exp.default and exp.default in here:
                here[exp.default] = split
        self._entries = entries
        self._models = _names_by_namespace(targets)
        self._experiments = _names_by_namespace({(e.namespace, e.name): e for e in table.experiments})
        self.grpc_addresses = frozenset(a for t in targets.values() for a in t.grpc.values())
        guard = Guard(table.auth)
        self._guarded = guard.namespaces
        self._operators = guard.operators
        self.pipelines.set(table)
        self.table = table
        for listener in self.listeners:
            listener()

    def admit(self, namespace: str, authorization: str | bytes | None) -> None:
        """Nothing when ``namespace`` is open or the ``Authorization`` value carries a token allowed there;
        else Unauthenticated (no token, or not a bearer one) or Forbidden (a token without a role there)."""
        allowed = self._guarded.get(namespace)
        if allowed is None:
            return
        digest = self.hashes.of(authorization)
        if digest in allowed:
            return
        raise denied() if digest else unauthenticated()

    def guarded(self, namespace: str) -> bool:
        """Whether ``namespace`` requires an inference token."""
        return namespace in self._guarded

    def admit_operator(self, authorization: str | bytes | None) -> None:
        """For metrics and the probe: nothing when the table has no auth or the token is an operator's."""
        if self.table is None:
            raise no_table_yet(self.problem)
        operators = self._operators
        if operators is None:
            return
        digest = self.hashes.of(authorization)
        if digest in operators:
            return
        raise denied(NOT_OPERATOR) if digest else unauthenticated(OPERATORS_ONLY)

    def pipeline(self, namespace: str, name: str, route_header: str | None = None) -> PipelineChoice | None:
        """The pipeline a request for ``name`` runs (``P.pipeline``, or an experiment over pipelines), or None
        when ``name`` addresses a model; NotFound or Unavailable (PipelineNotReady, ExperimentNotReady)."""
        pipelines = self.pipelines
        if not pipelines.handles(namespace, name):
            return None
        if self.table is None:
            raise self._unknown(namespace, name)
        return pipelines.choose(namespace, name, self.rng, route_header, guarded=namespace in self._guarded)

    def decide(self, namespace: str, name: str, route_header: str | None = None) -> Decision:
        """Where a request for ``name`` in ``namespace`` goes; NotFound or Unavailable (and subclasses)."""
        here = self._entries.get(namespace)
        entry = here.get(name) if here is not None else None
        if type(entry) is Decision:
            decision = entry
        elif entry is not None:
            decision = entry.choose(self.rng, route_header)  # type: ignore[union-attr]
        else:
            raise self._unknown(namespace, name)
        if decision.target.addresses:
            return decision
        raise decision.target.not_ready()

    def _unknown(self, namespace: str, name: str) -> Unavailable | NotFound:
        if self.table is None:
            return Unavailable(f"the gateway has no routing table yet ({self.problem}); it cannot route "
                               f"model {name} until the control plane answers",
                               details={"model": name, "namespace": namespace})
        if namespace in self._guarded:  # name nothing but what was asked for
            what = "experiment" if name.endswith(EXPERIMENT_SUFFIX) else "model"
            asked = name[: -len(EXPERIMENT_SUFFIX)] if what == "experiment" else name
            return NotFound(f"{what} {asked} not found in namespace {namespace}",
                            details={what: asked, "namespace": namespace})
        if name.endswith(EXPERIMENT_SUFFIX):
            experiment = name[: -len(EXPERIMENT_SUFFIX)]
            listed = _listing(self._experiments.get(namespace, ()))
            return NotFound(f"experiment {experiment} not found in namespace {namespace}; experiments here: "
                            f"{listed}", details={"experiment": experiment, "namespace": namespace,
                                                  "experiments": list(self._experiments.get(namespace, ()))})
        here = self._models.get(namespace, ())
        return NotFound(f"model {name} not found in namespace {namespace}; models here: {_listing(here)}",
                        details={"model": name, "namespace": namespace, "models": list(here)})


def _names_by_namespace(keys: Iterable[tuple[str, str]]) -> dict[str, tuple[str, ...]]:
    names: dict[str, list[str]] = {}
    for namespace, name in keys:
        names.setdefault(namespace, []).append(name)
    return {ns: tuple(sorted(found)) for ns, found in names.items()}


def _listing(names: tuple[str, ...]) -> str:
    listed = ", ".join(names[:_LISTED]) or "none"
    if len(names) > _LISTED:
        listed += f" and {len(names) - _LISTED} more"
    return listed
