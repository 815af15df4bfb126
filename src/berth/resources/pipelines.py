"""Pipelines, checked and compiled: pure functions, no I/O (used by the control plane, `berth plan` and the gateway).

:func:`compile_pipeline` turns one Pipeline's spec into a :class:`Dag` the gateway executes, and lists every
structural problem (an input naming a step or pipeline that does not exist, another namespace, a tensor the
named step is known not to receive, a cycle inside the pipeline).  :func:`check_namespace` adds what depends
on the rest of the namespace: step models missing or not ready, pipelines it uses missing, not ready or
forming a cycle through each other.  Each problem is one line naming the step and what to do.

Input references follow Seldon Core v2: ``step`` and ``step.outputs`` (every output tensor of the step),
``step.outputs.T``, ``step.inputs[.T]`` (what the step received), ``NAME.inputs[.T]`` or ``pipeline.inputs[.T]``
(the request the pipeline received), and ``other.outputs[.T]`` / ``other.inputs[.T]`` for another pipeline of
the namespace (run on this request's inputs).  A step without ``inputs`` receives the pipeline's inputs.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

JOINS = ("inner", "outer", "any")
AVAILABLE = "ModelAvailable"
PIPELINE_WORD = "pipeline"  # ``pipeline.inputs.T`` names this pipeline's own inputs
STEP, OWN, OTHER = "step", "own", "other"  # what a reference's source is


@dataclass(frozen=True, slots=True)
class Ref:
    """One input, trigger or output reference, parsed and resolved."""

    text: str
    source: str  # step name, this pipeline's name, or another pipeline's name
    kind: str  # STEP, OWN (this pipeline's inputs) or OTHER (another pipeline)
    part: Literal["inputs", "outputs"]
    tensor: str | None  # None: every tensor of that part

    @property
    def node(self) -> str:
        """The node of the DAG that provides it: a step name, "" for the request, or ``other.pipeline``."""
        return self.source if self.kind == STEP else "" if self.kind == OWN else self.source + ".pipeline"


@dataclass(frozen=True, slots=True)
class Step:
    name: str  # also the model it calls
    inputs: tuple[Ref, ...]  # empty: the pipeline's inputs
    tensor_map: Mapping[str, str]
    triggers: tuple[Ref, ...]
    join: str
    triggers_join: str
    timeout_s: float | None = None


@dataclass(frozen=True, slots=True)
class Output:
    refs: tuple[Ref, ...]
    join: str
    tensor_map: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Dag:
    namespace: str
    name: str
    steps: tuple[Step, ...]
    output: Output
    uses: frozenset[str] = frozenset()  # other pipelines it runs
    problems: tuple[str, ...] = ()  # structural problems; a Dag with problems is never served

    @property
    def step_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.steps)


@dataclass
class _Ctx:
    namespace: str
    name: str
    steps: list[str]
    pipelines: frozenset[str]
    problems: list[str] = field(default_factory=list)


def parse_ref(text: str) -> tuple[str, str, str | None]:
    """``a.outputs.T`` → (a, outputs, T); ``a`` → (a, outputs, None); names may contain dots."""
    parts = text.split(".")
    for i in range(1, len(parts)):
        if parts[i] in ("inputs", "outputs"):
            return ".".join(parts[:i]), parts[i], ".".join(parts[i + 1:]) or None
    return text, "outputs", None


def _resolve(text: str, where: str, ctx: _Ctx) -> Ref | None:
    source, part, tensor = parse_ref(text.strip())
    p: Literal["inputs", "outputs"] = "inputs" if part == "inputs" else "outputs"
    if "/" in source:
        ctx.problems.append(f"{where} {text!r} names {source}, in another namespace; a pipeline uses models and "
                            f"pipelines of {ctx.namespace} only")
        return None
    if source in ctx.steps:
        return Ref(text, source, STEP, p, tensor)
    if source in (ctx.name, PIPELINE_WORD):
        if p == "outputs":
            ctx.problems.append(f"{where} {text!r} reads this pipeline's own outputs, a cycle; use "
                                f"{ctx.name}.inputs or a step's outputs")
            return None
        return Ref(text, ctx.name, OWN, p, tensor)
    if source in ctx.pipelines:
        return Ref(text, source, OTHER, p, tensor)
    known = ctx.steps + [f"{ctx.name}.inputs"] + sorted(ctx.pipelines)
    guess = difflib.get_close_matches(source, known, n=1, cutoff=0.75)
    hint = f" (did you mean {guess[0]}?)" if guess else ""
    ctx.problems.append(f"{where} {text!r} names {source}, which is no step of pipeline {ctx.name} and no "
                        f"pipeline of namespace {ctx.namespace}{hint}")
    return None


def _join(value: Any, where: str, ctx: _Ctx) -> str:
    text = str(value or "inner").strip().lower()
    if text not in JOINS:
        ctx.problems.append(f"{where} is {value!r}; expected one of {', '.join(JOINS)}")
        return "inner"
    return text


def _refs(values: Iterable[str] | None, where: str, ctx: _Ctx) -> tuple[Ref, ...]:
    found = (_resolve(v, where, ctx) for v in values or [])
    return tuple(r for r in found if r is not None)


def step_timeouts(annotations: Mapping[str, Any] | None) -> tuple[float | None, dict[str, float], list[str]]:
    """``berth.io/step-timeout`` (every step) and ``berth.io/step-timeout.STEP`` (one step), in seconds."""
    default: float | None = None
    per: dict[str, float] = {}
    problems: list[str] = []
    for key, value in (annotations or {}).items():
        if key != TIMEOUT_ANNOTATION and not key.startswith(TIMEOUT_ANNOTATION + "."):
            continue
        seconds = _seconds(str(value))
        if seconds is None:
            problems.append(f"annotation {key}: {value!r} is not a duration (e.g. 500ms, 2s, 1m)")
        elif key == TIMEOUT_ANNOTATION:
            default = seconds
        else:
            per[key[len(TIMEOUT_ANNOTATION) + 1:]] = seconds
    return default, per, problems


TIMEOUT_ANNOTATION = "berth.io/step-timeout"
_UNITS = (("ms", 0.001), ("s", 1.0), ("m", 60.0))


def _seconds(text: str) -> float | None:
    text = text.strip()
    for unit, factor in _UNITS:
        if text.endswith(unit):
            try:
                value = float(text[: -len(unit)]) * factor
            except ValueError:
                return None
            return value if 0 < value <= 3600 else None
    return None


def compile_pipeline(namespace: str, name: str, spec: Mapping[str, Any], pipelines: Iterable[str] = (),
                     annotations: Mapping[str, Any] | None = None) -> Dag:
    """The DAG of one Pipeline; ``pipelines``: the names of the namespace's pipelines."""
    raw_steps = list(spec.get("steps") or [])
    names = [str(s.get("name", "")) for s in raw_steps]
    ctx = _Ctx(namespace, name, names, frozenset(pipelines) - {name})
    seen: set[str] = set()
    for n in names:
        if n in seen:
            ctx.problems.append(f"step {n} appears twice; a step calls the model of its name once per request")
        seen.add(n)
    default_timeout, timeouts, bad = step_timeouts(annotations)
    ctx.problems += bad
    steps: list[Step] = []
    for raw in raw_steps:
        sname = str(raw.get("name", ""))
        where = f"step {sname}"
        inputs = _refs(raw.get("inputs"), f"{where}: input", ctx)
        triggers = _refs(raw.get("triggers"), f"{where}: trigger", ctx)
        tmap = {str(k): str(v) for k, v in (raw.get("tensorMap") or {}).items()}
        known = {r.text for r in inputs} | {f"{r.source}.{r.part}.{r.tensor}" for r in inputs if r.tensor}
        for key in tmap:
            if key not in known and not any(key.startswith((f"{r.text}.", f"{r.source}.{r.part}."))
                                            for r in inputs if r.tensor is None):
                ctx.problems.append(f"{where}: tensorMap key {key!r} names no tensor among the step's inputs "
                                    f"({', '.join(r.text for r in inputs) or f'{name}.inputs'})")
        steps.append(Step(sname, inputs, tmap, triggers, _join(raw.get("inputsJoinType") or raw.get("joinType"),
                                                                f"{where}: joinType", ctx),
                          _join(raw.get("triggersJoinType"), f"{where}: triggersJoinType", ctx),
                          timeouts.pop(sname, default_timeout)))
    for orphan in timeouts:
        ctx.problems.append(f"annotation {TIMEOUT_ANNOTATION}.{orphan} names no step of pipeline {name}")
    raw_out = spec.get("output") or {}
    out_refs = _refs(raw_out.get("steps") or names[-1:], "output: step", ctx)
    output = Output(out_refs, _join(raw_out.get("stepsJoin") or raw_out.get("joinType"), "output: stepsJoin", ctx),
                    {str(k): str(v) for k, v in (raw_out.get("tensorMap") or {}).items()})
    by_name = {s.name: s for s in steps}
    every = [r for s in steps for r in s.inputs + s.triggers] + list(out_refs)
    for r in every:  # a step's inputs are known when every one of them names its tensor
        if r.kind != STEP or r.part != "inputs" or r.tensor is None:
            continue
        src = by_name[r.source]
        if src.inputs and all(i.tensor is not None for i in src.inputs):
            received = {src.tensor_map.get(i.text, i.tensor) for i in src.inputs}
            if r.tensor not in received:
                ctx.problems.append(f"{r.text!r} names tensor {r.tensor}, which step {r.source} never "
                                    f"receives (it receives {', '.join(sorted(str(t) for t in received))})")
    cycle = _cycle({s.name: [r.source for r in s.inputs + s.triggers if r.kind == STEP] for s in steps})
    if cycle:
        ctx.problems.append(f"steps form a cycle: {' → '.join(cycle)}; a step cannot wait for its own outputs")
    uses = frozenset(r.source for s in steps for r in s.inputs + s.triggers if r.kind == OTHER) | frozenset(
        r.source for r in out_refs if r.kind == OTHER)
    if (spec.get("input") or {}):
        ctx.problems.append("spec.input (Kafka-triggered chaining of pipelines) is not served on the request "
                            "path; read another pipeline's outputs in a step's inputs instead (OTHER.outputs)")
    return Dag(namespace, name, tuple(steps), output, uses, tuple(ctx.problems))


def _cycle(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """One cycle of ``graph`` (node → nodes it depends on) as a path ending where it began, or []."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(n: str) -> list[str]:
        state[n] = 1
        path.append(n)
        for m in graph.get(n, ()):
            if state.get(m) == 1:
                return path[path.index(m):] + [m]
            if m in graph and m not in state:
                found = visit(m)
                if found:
                    return found
        state[n] = 2
        path.pop()
        return []

    for n in sorted(graph):
        if n not in state:
            found = visit(n)
            if found:
                return found
    return []


def check_namespace(namespace: str, pipelines: Mapping[str, Mapping[str, Any]],
                    models: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[Dag, list[str]]]:
    """Every pipeline of a namespace with its problems.  ``pipelines``: name → Pipeline document;
    ``models``: name → Model document (its ``status.state`` says whether it is ready)."""
    names = list(pipelines)
    dags = {n: compile_pipeline(namespace, n, doc.get("spec") or {}, names,
                                (doc.get("metadata") or {}).get("annotations")) for n, doc in pipelines.items()}
    own: dict[str, list[str]] = {}
    for n, dag in dags.items():
        problems = list(dag.problems)
        for s in dag.steps:
            model = models.get(s.name)
            if model is None:
                guess = difflib.get_close_matches(s.name, sorted(models), n=1, cutoff=0.75)
                hint = f" (did you mean {guess[0]}?)" if guess else ""
                problems.append(f"step {s.name}: model {s.name} not found in namespace {namespace}{hint}; "
                                "a step calls the model of its name")
                continue
            state = (model.get("status") or {}).get("state") or "Unknown"
            if state != AVAILABLE:
                why = (model.get("status") or {}).get("message") or ""
                problems.append(f"step {s.name}: model {s.name} is not ready: {state}" + (f" ({why})" if why else ""))
        own[n] = problems
    cycle = _cycle({n: sorted(d.uses) for n, d in dags.items()})
    in_cycle = set(cycle)
    result: dict[str, tuple[Dag, list[str]]] = {}

    def settle(n: str, trail: tuple[str, ...]) -> list[str]:
        if n in result:
            return result[n][1]
        problems = list(own[n])
        if n in in_cycle:
            problems.append(f"pipelines form a cycle: {' → '.join(cycle)}; a pipeline cannot run itself")
        else:
            for used in sorted(dags[n].uses):
                if used not in trail and settle(used, trail + (n,)):
                    problems.append(f"pipeline {used}, whose outputs it reads, is not ready")
        result[n] = (dags[n], problems)
        return problems

    for n in names:
        settle(n, ())
    return result
