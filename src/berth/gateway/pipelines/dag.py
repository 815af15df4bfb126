"""A Pipeline executed as a DAG on the request path; transport-neutral (the caller says how a model is called).

:func:`execute` starts one task per step (and per other pipeline the DAG reads); each waits for what it needs,
then calls its model with a V2 request and keeps the V2 answer's tensors.  Steps whose inputs are ready run
concurrently.  Joins follow Seldon Core v2:

- ``inner`` (default): every input must arrive; a missing one (its step did not run, or did not emit that
  tensor) means the step does not run.
- ``outer``: waits for every producer to finish, runs with the inputs that arrived (none: does not run).
- ``any``: runs with the first input that arrives, in completion order.

``triggers`` gate a step without feeding it: with ``triggersJoinType`` inner all of them, else at least one,
must be present, otherwise the step does not run (conditional routing).  ``tensorMap`` renames tensors on
the way in (keys ``step.outputs.T``, ``step.inputs.T``, ``NAME.inputs.T``).  The answer is what ``output``
describes (``steps`` joined by ``stepsJoin``, renamed by its ``tensorMap``; default: the last step's outputs).
A failing step fails the request with an error naming the step; each step's model call has a timeout.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from berth.errors import BerthError, Timeout
from berth.resources.pipelines import OWN, STEP, Dag, Ref, Step

Tensor = dict[str, Any]
CallModel = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]  # (model, V2 request) → V2 response


class PipelineError(BerthError):
    """A pipeline could not answer: a step failed, its definition clashes at run time, or no output formed."""

    code = "PipelineFailed"
    http_status = 502

    def __init__(self, message: str, *, details: Any = None, code: str | None = None,
                 status: int | None = None) -> None:
        super().__init__(message, details=details, code=code)
        if status is not None:
            self.http_status = status


@dataclass(slots=True)
class Produced:
    """What one node of the DAG holds once done: the tensors it received and those it answered."""

    inputs: dict[str, Tensor]
    outputs: dict[str, Tensor]


@dataclass
class Result:
    response: dict[str, Any]
    route: list[str] = field(default_factory=list)  # steps that ran, in completion order (nested pipelines too)


RunOther = Callable[[str, dict[str, Any]], Awaitable[Result]]  # (pipeline name, V2 request) → its result


def tensors_of(request: Mapping[str, Any], key: str) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for t in request.get(key) or []:
        if isinstance(t, dict) and isinstance(t.get("name"), str):
            out.setdefault(t["name"], t)
    return out


def _pick(ref: Ref, got: Produced | None) -> list[Tensor] | None:
    """The tensors ``ref`` names in ``got``; None when the producer did not run or lacks the tensor."""
    if got is None:
        return None
    part = got.inputs if ref.part == "inputs" else got.outputs
    if ref.tensor is None:
        return list(part.values()) or None
    t = part.get(ref.tensor)
    return [t] if t is not None else None


def _renamed(ref: Ref, tensors: list[Tensor], tensor_map: Mapping[str, str]) -> list[Tensor]:
    if not tensor_map:
        return tensors
    out = []
    for t in tensors:
        name = t["name"]
        new = tensor_map.get(ref.text) if ref.tensor is not None else None
        new = new or tensor_map.get(f"{ref.text}.{name}") or tensor_map.get(f"{ref.source}.{ref.part}.{name}")
        out.append({**t, "name": new} if new and new != name else t)
    return out


class _Run:
    def __init__(self, dag: Dag, request: dict[str, Any], call: CallModel, run_other: RunOther,
                 default_timeout_s: float) -> None:
        self.dag = dag
        self.request = request
        self.call = call
        self.run_other = run_other
        self.default_timeout_s = default_timeout_s
        self.nodes: dict[str, asyncio.Future[Produced | None]] = {}
        self.route: list[str] = []
        self.ran: list[str] = []  # steps in completion order (for `any` output joins)
        loop = asyncio.get_running_loop()
        request_node: asyncio.Future[Produced | None] = loop.create_future()
        request_node.set_result(Produced(tensors_of(request, "inputs"), {}))
        self.nodes[""] = request_node
        self.own = Ref(f"{dag.name}.inputs", dag.name, OWN, "inputs", None)

    async def run(self) -> Result:
        tasks: list[asyncio.Task[Any]] = []
        for other in sorted(self.dag.uses):
            tasks.append(self._start(other + ".pipeline", self._other(other)))
        for step in self.dag.steps:
            tasks.append(self._start(step.name, self._step(step)))
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            for task in tasks:
                task.cancel()
        return Result(self._output(), self.route)

    def _start(self, node: str, work: Awaitable[Produced | None]) -> asyncio.Task[Any]:
        fut: asyncio.Future[Produced | None] = asyncio.get_running_loop().create_future()
        self.nodes[node] = fut

        async def body() -> None:
            try:
                fut.set_result(await work)
            except BaseException as exc:
                if not fut.done():
                    fut.set_result(None)  # waiters see "did not run"; the run itself fails with exc
                raise exc

        return asyncio.ensure_future(body())

    async def _other(self, name: str) -> Produced:
        result = await self.run_other(name, self.request)
        self.route.append(f"{name}.pipeline")
        self.route.extend(result.route)
        return Produced(tensors_of(self.request, "inputs"), tensors_of(result.response, "outputs"))

    async def _gather(self, refs: tuple[Ref, ...], join: str) -> list[tuple[Ref, list[Tensor]]] | None:
        """The refs with their tensors as ``join`` decides; None when the join is not met."""
        if join == "any":
            pending = {self.nodes[r.node] for r in refs}
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for r in refs:
                    fut = self.nodes[r.node]
                    if fut in done:
                        got = _pick(r, fut.result())
                        if got:
                            return [(r, got)]
            return None
        results = [(r, _pick(r, await self.nodes[r.node])) for r in refs]
        present = [(r, got) for r, got in results if got]
        if join == "inner" and len(present) < len(results):
            return None
        return present or None

    async def _step(self, step: Step) -> Produced | None:
        # every node's future exists before any step runs (run() starts them all first)
        if step.triggers and await self._gather(step.triggers, "inner" if step.triggers_join == "inner"
                                                else "any") is None:
            return None
        refs = step.inputs or (self.own,)
        got = await self._gather(refs, step.join)
        if got is None:
            return None
        inputs: dict[str, Tensor] = {}
        for ref, tensors in got:
            for t in _renamed(ref, tensors, step.tensor_map):
                if t["name"] in inputs and inputs[t["name"]] is not t:
                    raise PipelineError(
                        f"pipeline {self.dag.name}: step {step.name} would receive two tensors named {t['name']} "
                        f"(one from {ref.text}); rename one with the step's tensorMap",
                        code="PipelineTensorClash", status=422,
                        details={"pipeline": self.dag.name, "step": step.name, "tensor": t["name"]})
                inputs[t["name"]] = t
        timeout = step.timeout_s or self.default_timeout_s
        try:
            answer = await asyncio.wait_for(self.call(step.name, {"inputs": list(inputs.values())}), timeout)
        except BerthError as err:
            status = err.http_status if 400 <= err.http_status < 500 else 502
            raise PipelineError(f"pipeline {self.dag.name}: step {step.name} failed: {err.message}",
                                code="PipelineStepFailed", status=status,
                                details={"pipeline": self.dag.name, "step": step.name,
                                         "error": err.to_dict()}) from None
        except TimeoutError:
            raise Timeout(f"pipeline {self.dag.name}: step {step.name} did not answer within {timeout:g}s; raise "
                          f"its timeout (annotation berth.io/step-timeout.{step.name}) or check model {step.name}",
                          details={"pipeline": self.dag.name, "step": step.name, "timeout_s": timeout}) from None
        self.ran.append(step.name)
        self.route.append(step.name)
        return Produced(inputs, tensors_of(answer, "outputs"))

    def _output(self) -> dict[str, Any]:
        out = self.dag.output
        order = {name: i for i, name in enumerate(self.ran)}
        refs = out.refs
        if out.join == "any":
            refs = tuple(sorted(refs, key=lambda r: order.get(r.source, -1) if r.kind == STEP else -1))
        picked: list[tuple[Ref, list[Tensor] | None]] = []
        for r in refs:
            fut = self.nodes.get(r.node)
            picked.append((r, _pick(r, fut.result() if fut is not None else None)))
        present = [(r, got) for r, got in picked if got]
        if out.join == "any":
            present = present[:1]
        missing = [r.text for r, got in picked if not got]
        if not present or (out.join == "inner" and missing):
            skipped = [s.name for s in self.dag.steps if s.name not in order]
            raise PipelineError(
                f"pipeline {self.dag.name} produced no output for this request: output ({out.join} join) lacks "
                f"{', '.join(missing)}; steps that did not run: {', '.join(skipped) or 'none'} (their inputs or "
                "triggers were absent)", code="PipelineNoOutput", status=422,
                details={"pipeline": self.dag.name, "missing": missing, "skipped": skipped})
        outputs: list[Tensor] = []
        names: set[str] = set()
        for r, got in present:
            for t in _renamed(r, got or [], out.tensor_map):
                if t["name"] in names:
                    raise PipelineError(
                        f"pipeline {self.dag.name}: its output would carry two tensors named {t['name']} (one "
                        f"from {r.text}); rename one with output.tensorMap", code="PipelineTensorClash", status=422,
                        details={"pipeline": self.dag.name, "tensor": t["name"]})
                names.add(t["name"])
                outputs.append(t)
        response: dict[str, Any] = {"model_name": self.dag.name, "outputs": outputs}
        if self.request.get("id") is not None:
            response["id"] = self.request["id"]
        return response


async def execute(dag: Dag, request: dict[str, Any], call: CallModel, run_other: RunOther | None = None, *,
                  default_timeout_s: float = 60.0) -> Result:
    """Run ``dag`` on a V2 ``request``; ``call`` calls one model, ``run_other`` another pipeline of the namespace."""
    if dag.problems:
        raise PipelineError(f"pipeline {dag.name} in namespace {dag.namespace} cannot run: "
                            + "; ".join(dag.problems), code="PipelineNotReady", status=503,
                            details={"pipeline": dag.name, "namespace": dag.namespace, "problems": list(dag.problems)})

    async def refuse(name: str, _: dict[str, Any]) -> Result:
        raise PipelineError(f"pipeline {dag.name} reads pipeline {name}, and nothing here runs other pipelines",
                            code="PipelineNotReady", status=503)

    return await _Run(dag, request, call, run_other or refuse, default_timeout_s).run()


__all__ = ["CallModel", "PipelineError", "Produced", "Result", "RunOther", "execute", "tensors_of"]
