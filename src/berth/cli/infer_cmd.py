"""infer: send a V2 inference request through the gateway."""

from __future__ import annotations

import json
import os
import statistics
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from berth.cli import output as out
from berth.cli import render
from berth.cli.context import settings
from berth.client.gateway import GatewayClient
from berth.errors import BerthError, InvalidInput

if TYPE_CHECKING:
    from berth.client.kube import KubeGateway


def _payload(data: str) -> dict[str, Any]:
    text = data
    if data.startswith("@"):
        path = Path(data[1:])
        try:
            text = path.read_text()
        except OSError as exc:
            raise InvalidInput(f"--data {data}: cannot read {path}: {exc.strerror}") from exc
    try:
        body = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"--data: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from exc
    if not isinstance(body, dict) or "inputs" not in body:
        raise InvalidInput('--data: expected a V2 request object like {"inputs": [{"name": ..., "shape": ..., '
                           '"datatype": ..., "data": ...}]}')
    return body


def infer(
    model: str = typer.Argument(..., help="Model name, NAME.experiment or NAME.pipeline"),
    data: str = typer.Option(..., "-d", "--data", help="V2 request JSON, or @file"),
    namespace: str = typer.Option("default", "-n", "--namespace"),
    iterations: int = typer.Option(1, "-i", "--iterations", min=1, help="Send N times and summarise"),
    header: list[str] = typer.Option([], "-H", "--header", help="Extra header NAME=VALUE (e.g. x-seldon-route=...)"),
    output: str | None = typer.Option(None, "-o", "--output", help="json|yaml|jsonpath=TEMPLATE: the answer "
                                      "(with -i N: the summary) as data; json is one line"),
    mode: str = typer.Option("rest", "--inference-mode", help="rest or grpc (the gateway's V2 gRPC port, "
                             "--gateway-grpc); the gRPC answer is shown in V2 JSON form"),
) -> None:
    """Send a V2 inference request to MODEL through the gateway; print the answer and who answered.  With a
    cluster named (--kubeconfig, --context or KUBECONFIG) and no --server or --gateway: the namespace's gateway
    Service, through the Kubernetes API server's service proxy."""
    if mode not in ("rest", "grpc"):
        raise InvalidInput(f"--inference-mode {mode!r}: expected rest or grpc")
    fmt = out.parse(output, out.DOCUMENT)
    body = _payload(data)
    headers = {}
    for h in header:
        k, sep, v = h.partition("=")
        if not sep:
            raise InvalidInput(f"--header {h!r}: expected NAME=VALUE")
        headers[k.strip()] = v.strip()
    client: GatewayClient | KubeGateway
    if settings.gateway is None and not os.environ.get("BERTH_GATEWAY") and settings.cluster():
        from berth.client.kube import KubeGateway  # the namespace's gateway through the API server's proxy

        client = KubeGateway(settings.kube_client(timeout=60.0))
    else:
        client = GatewayClient(settings.gateway, grpc_address=settings.gateway_grpc)
    send = client.infer_grpc if mode == "grpc" else client.infer
    try:
        if iterations == 1:
            res = send(model, body, namespace=namespace, headers=headers)
            if fmt is not None and fmt.format == "json":  # one line, as the inference server answered
                out.write(out.dumps(res.body, "json", compact=True))
                return
            if fmt is not None:
                fmt.write(res.body)
                return
            render.err_console.print(f"answered by {res.route or model} in {res.seconds * 1000:.1f} ms")
            render.console.print(json.dumps(res.body, indent=2), markup=False)
            return
        times: list[float] = []
        routes: Counter[str] = Counter()
        errors: Counter[str] = Counter()
        for _ in range(iterations):
            try:
                res = send(model, body, namespace=namespace, headers=headers)
                times.append(res.seconds * 1000)
                routes[res.route or model] += 1
            except BerthError as exc:
                errors[exc.code] += 1
        _summary(iterations, times, routes, errors, fmt)
    finally:
        client.close()


def _summary(n: int, times: list[float], routes: Counter[str], errors: Counter[str],
             fmt: out.Output | None) -> None:
    ok = len(times)
    times.sort()
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))] if times else None
    if fmt is not None:
        summary = {"requests": n, "ok": ok, "errors": n - ok,
                   "latencyMs": {"p50": round(statistics.median(times), 3), "p99": round(p99 or 0, 3),
                                 "max": round(times[-1], 3)} if times else None,
                   "routes": dict(routes.most_common()), "errorCodes": dict(errors.most_common())}
        fmt.write(summary)
    else:
        render.console.print(f"requests: {n}  ok: {ok}  errors: {n - ok}")
        if times:
            render.console.print(f"latency ms: p50 {statistics.median(times):.2f}  p99 {p99:.2f}  "
                                 f"max {times[-1]:.2f}")
        for route, count in routes.most_common():
            render.console.print(f"  {route}  {count} ({100 * count / n:.1f}%)", markup=False)
        for code, count in errors.most_common():
            render.console.print(f"  [red]{code}[/red]: {count}")
    if errors:
        raise BerthError(f"{n - ok} of {n} requests failed", code="InferenceFailed")
