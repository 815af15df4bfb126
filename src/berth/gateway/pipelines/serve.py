"""Serving pipelines: the one decision layer under the REST and gRPC hooks.

:class:`PipelineServer` admits the caller (the namespace's token rule first, as for models), chooses the
pipeline (:meth:`Router.pipeline`), and runs its DAG (:func:`berth.gateway.pipelines.dag.execute`) with a model
call that goes through the same :class:`Proxy` as a direct request: the same replica choice, retry on a
refused connection, upstream timeout and error wording.  Steps exchange V2 JSON with their models.  The
answer carries ``x-seldon-route``: ``:NAME.pipeline:`` (or ``:EXP.experiment:NAME:NAME.pipeline:``) followed
by the steps that ran, in completion order (a pipeline whose outputs a step read appears as
``OTHER.pipeline`` followed by its own steps).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Mapping
from typing import Any

from aiohttp import web

from berth.errors import BerthError, InvalidInput, PayloadTooLarge, Timeout
from berth.gateway.forwarding.mirror import Mirrors
from berth.gateway.forwarding.rest import Proxy, error_response
from berth.gateway.metrics import Metrics, error_labels
from berth.gateway.pipelines.dag import Result, execute
from berth.gateway.pipelines.table import PipelineChoice, not_ready
from berth.gateway.routing.router import Router
from berth.gateway.routing.table import ModelEvicted
from berth.gateway.routing.wake import held
from berth.gateway.transports.checks import check_infer_body, is_plain_json

MAX_NESTING = 8  # pipelines reading pipelines' outputs, deepest (the control plane refuses cycles already)
_JSON = {"Content-Type": "application/json"}


class ModelAnswerError(BerthError):
    """A step's model answered an error (its status is kept: a 4xx from the model stays a 4xx)."""

    code = "ModelError"


class PipelineServer:
    def __init__(self, router: Router, proxy: Proxy, metrics: Metrics, *, step_timeout_s: float = 60.0,
                 mirrors: Mirrors | None = None) -> None:
        self.router = router
        self.proxy = proxy
        self.metrics = metrics
        self.step_timeout_s = step_timeout_s
        self.mirrors = mirrors or Mirrors(metrics)

    def handles(self, namespace: str, name: str) -> bool:
        return self.router.pipelines.handles(namespace, name)

    def choose(self, namespace: str, name: str, authorization: str | bytes | None,
               route_header: str | None) -> PipelineChoice:
        self.router.admit(namespace, authorization)  # first: a refused caller learns nothing
        choice = self.router.pipeline(namespace, name, route_header)
        if choice is None:  # handles() said yes, but the table changed in between
            raise self.router._unknown(namespace, name)
        return choice

    async def run(self, namespace: str, choice: PipelineChoice, request: dict[str, Any],
                  request_id: str | None = None, protocol: str = "rest") -> tuple[Result, str]:
        """Run the chosen pipeline on a V2 request; (result, x-seldon-route).  An experiment's mirror pipeline
        (if the draw chose one) then runs on the same request in the background, its answer dropped."""
        headers = dict(_JSON)
        if request_id:
            headers["x-request-id"] = request_id
        router, proxy = self.router, self.proxy

        async def call(model: str, body: dict[str, Any]) -> dict[str, Any]:
            try:
                decision = router.decide(namespace, model)  # NotFound / ModelNotReady name the model
            except ModelEvicted as evicted:  # held while it reloads (routing/wake.py)
                decision = await held(router, namespace, model, None, evicted)
            resp = await proxy.forward(decision, "infer", None, "POST", json.dumps(body).encode(), headers)
            raw = resp.body if isinstance(resp.body, bytes) else b""
            if resp.status >= 400:
                raise _step_error(model, raw, resp.status)
            try:
                answer = json.loads(raw)
            except ValueError as exc:
                raise ModelAnswerError(f"model {model} answered a body that is not JSON: {exc}") from exc
            if not isinstance(answer, dict):
                raise ModelAnswerError(f"model {model} answered JSON that is not a V2 response object")
            return answer

        async def other(name: str, body: dict[str, Any], depth: int = 1) -> Result:
            if depth > MAX_NESTING:
                raise InvalidInput(f"pipelines nest deeper than {MAX_NESTING} levels at pipeline {name}")
            compiled = router.pipelines.get(namespace, name, guarded=router.guarded(namespace))
            if not compiled.ready:
                raise not_ready(compiled.dag, compiled.reason)
            return await execute(compiled.dag, body, call, lambda n, b: other(n, b, depth + 1),
                                 default_timeout_s=self.step_timeout_s)

        try:
            result = await execute(choice.dag, request, call, other, default_timeout_s=self.step_timeout_s)
        finally:
            mirror = choice.mirror
            if mirror is not None:
                labels = (namespace, mirror.name + ".pipeline", choice.experiment, "")
                self.mirrors.send(labels, protocol, _copy(execute(mirror, request, call, other,
                                                                  default_timeout_s=self.step_timeout_s)))
        route = choice.route_head + "".join(f"{step}:" for step in result.route)
        return result, route

    def observe(self, namespace: str, name: str, choice: PipelineChoice | None, protocol: str, status: str,
                error: bool, started: float, err: BerthError | None = None) -> None:
        if choice is not None:
            labels = (namespace, choice.dag.name + ".pipeline", choice.experiment, choice.candidate)
        else:
            labels = error_labels(err) if err is not None else (namespace, name, "", "")
        self.metrics.observe(labels, protocol, status, error, time.perf_counter() - started)

    async def rest(self, request: web.Request, max_request_bytes: int, body_timeout: float = 30.0) -> web.Response:
        """``POST /v2/models/NAME.pipeline/infer`` (or with ``seldon-model: NAME.pipeline``); the body must
        arrive within ``body_timeout`` seconds (408 otherwise, the connection closed) and fit the size limit."""
        started = time.perf_counter()
        headers = request.headers
        namespace = headers.get("seldon-namespace") or "default"
        name = headers.get("seldon-model") or request.match_info["name"]
        choice: PipelineChoice | None = None
        try:
            choice = self.choose(namespace, name, headers.get("Authorization"), headers.get("x-seldon-route"))
            try:
                if request.content.is_eof():  # the whole body came with the head: no clock needed
                    body = await request.read()
                else:
                    async with asyncio.timeout(body_timeout):
                        body = await request.read()
            except TimeoutError:
                slow = Timeout(f"the body of the request for pipeline {name} did not arrive within {body_timeout:g}s; "
                               "send it faster or in smaller requests",
                               details={"pipeline": name, "timeout_s": body_timeout})
                slow.http_status = 408
                resp = error_response(slow)
                resp.force_close()  # the rest of the body is never read
                self.observe(namespace, name, choice, "rest", "408", True, started, slow)
                return resp
            except web.HTTPRequestEntityTooLarge:
                raise PayloadTooLarge(f"request for pipeline {name} is larger than the gateway accepts "
                                      f"({max_request_bytes} bytes); send a smaller batch",
                                      details={"pipeline": name, "limit_bytes": max_request_bytes}) from None
            if not is_plain_json(headers):
                raise InvalidInput(f"pipeline {name}: send the request as plain JSON (V2 REST); pipelines do not "
                                   "take compressed or binary-tensor bodies", details={"pipeline": name})
            check_infer_body(body, name)
            doc = json.loads(body)
            result, route = await self.run(namespace, choice, doc, headers.get("x-request-id"))
        except BerthError as err:
            resp = error_response(err)
            self.observe(namespace, name, choice, "rest", str(resp.status), True, started, err)
            return resp
        self.observe(namespace, name, choice, "rest", "200", False, started)
        return web.Response(body=json.dumps(result.response).encode(), content_type="application/json",
                            headers={"x-seldon-route": route})


async def _copy(run: Awaitable[Result]) -> str:
    """A mirror pipeline's run, as the outcome :class:`Mirrors` counts."""
    try:
        await run
    except Timeout:
        return "timeout"
    except BerthError:
        return "error"
    return "ok"


def _step_error(model: str, raw: bytes, status: int) -> BerthError:
    """The error a step's call ended with: the gateway's own (no replica, refused connection, timeout: JSON
    ``{code, message}``), else the model server's (MLServer answers ``{"error": ...}``), status kept."""
    try:
        doc: Any = json.loads(raw)
    except ValueError:
        doc = raw[:300].decode("utf-8", "replace")
    if isinstance(doc, Mapping) and "code" in doc and "message" in doc:
        err = BerthError(str(doc["message"]), code=str(doc["code"]), details=doc.get("details"))
    else:
        text = str(doc.get("error") or doc.get("message") or doc) if isinstance(doc, Mapping) else str(doc)
        err = ModelAnswerError(f"model {model} answered {status}: {text[:500]}",
                               details={"model": model, "status": status})
    err.http_status = status
    return err
