"""`berth doctor`'s gateway rows: the CLI reaches the gateway (REST and gRPC), the gateway reaches every replica.

The gateway's probe answers operators only (an admin of every namespace) once its table carries auth: the CLI
sends BERTH_TOKEN or the token `berth up` registered for the gateway; refused, it probes the replicas itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from berth.cli.doctor_rows import QUICK, Row, key, parallel
from berth.client.credentials import find_token
from berth.client.gateway import grpc_server_ready
from berth.client.http import connect_reason

PROBE = "/berth/v1/probe"


def _probe_replica(a: dict[str, Any]) -> Row:
    inf = a.get("inference") or {}
    addr = f"{inf.get('host')}:{inf.get('http_port')}"
    url = f"http://{addr}/v2/health/ready"
    started = time.perf_counter()
    try:
        r = httpx.get(url, timeout=QUICK)
        error = None if r.status_code == 200 else f"HTTP {r.status_code} from {url}"
    except httpx.HTTPError as exc:
        error = f"{url}: {connect_reason(exc)}"
    ms = (time.perf_counter() - started) * 1000
    if error is None:
        return Row("gateway → replica", f"{key(a)} ({addr})", True, f"ready in {ms:.1f} ms (probed from the CLI)")
    return Row("gateway → replica", f"{key(a)} ({addr})", False,
               f"{error} (probed from the CLI); check the replica's inference server is running and reachable "
               "from the gateway's host")


def _gateway_head(url: str, how: str) -> Row:
    """The gateway is reachable: is it also ready (holding a routing table)?"""
    r = httpx.get(f"{url}/v2/health/ready", timeout=QUICK)
    if r.status_code == 200:
        return Row("cli → gateway", url, True, f"live and ready; {how}")
    try:
        body = r.json()
    except ValueError:
        body = None
    why = str(body.get("message")) if isinstance(body, dict) and body.get("message") else r.text[:120]
    return Row("cli → gateway", url, False,
               f"reachable but not ready (HTTP {r.status_code}): {why}; check the gateway reaches the control plane "
               "(`berth gateway --control URL`); a control plane that just started publishes routes once its "
               f"replicas reconnect (10 s at most); {how}")


def gateway_rows(url: str, agents: list[dict[str, Any]], in_scope: Callable[[str], bool]) -> list[Row]:
    """The gateway's own probe of its upstreams, or (older gateways) liveness plus probes from here."""
    unreachable = ("; start it with `berth up` (or `berth gateway`), or point --gateway / BERTH_GATEWAY at it")
    token = find_token(url, gateway=True)
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.get(f"{url}{PROBE}", timeout=httpx.Timeout(15.0, connect=2.0), headers=auth)
        if r.status_code in (401, 403):
            why = ("no token was found (BERTH_TOKEN, or the one `berth up` registered for this gateway)"
                   if not token else "the token found is not an admin of every namespace")
            head = _gateway_head(url, f"its {PROBE} answers operators only and {why}, so the replicas were "
                                      "probed from the CLI")
            return [head, *parallel(_probe_replica, [a for a in agents if a["connected"]])]
        if r.status_code == 404:
            live = httpx.get(f"{url}/v2/health/live", timeout=QUICK)
            if live.status_code != 200:
                return [Row("cli → gateway", url, False, f"{url}/v2/health/live answered HTTP {live.status_code}; "
                                                         "is --gateway pointing at a Berth gateway?")]
            head = _gateway_head(url, f"it has no {PROBE}, so the replicas were probed from the CLI")
            return [head, *parallel(_probe_replica, [a for a in agents if a["connected"]])]
        endpoints = _endpoints(r)
        if endpoints is None:
            return [Row("cli → gateway", url, False, f"{url}{PROBE} answered HTTP {r.status_code}: "
                                                     f"{r.text[:120]!r}; is --gateway pointing at a Berth gateway?")]
        rows = [_gateway_head(url, f"{len(endpoints)} upstream(s) probed by the gateway ({PROBE})")]
    except httpx.HTTPError as exc:
        return [Row("cli → gateway", url, False, f"cannot reach the gateway at {url}: {connect_reason(exc)}"
                                                 + unreachable)]
    for e in sorted(endpoints, key=lambda e: str(e.get("address"))):
        models = [str(m) for m in e.get("models") or []]
        if models and not any(in_scope(m.partition("/")[0]) for m in models):
            continue
        serves = f"serves {', '.join(models)}" if models else "serves no model"
        for probe, label in ((e, "REST"), (e.get("grpc"), "gRPC")):
            if not isinstance(probe, dict):
                continue
            target = str(probe.get("address")) + (" (gRPC)" if label == "gRPC" else "")
            if probe.get("ok"):
                rows.append(Row("gateway → replica", target, True,
                                f"ready in {float(probe.get('latency_ms') or 0):.1f} ms; {serves}"))
            else:
                rows.append(Row("gateway → replica", target, False,
                                f"{probe.get('error') or 'not ready'} ({serves}); check the replica's inference "
                                f"server is running and its {label} port is reachable from the gateway's host"))
    grpc_address = _grpc_address(url, r)
    if grpc_address is not None:
        problem = grpc_server_ready(grpc_address, 2.0)
        rows.insert(1, Row("cli → gateway", f"{grpc_address} (gRPC)", problem is None,
                           "ServerReady answered ready" if problem is None else
                           f"{problem}; the gateway says it serves gRPC there: check nothing blocks the port"))
    return rows


def _grpc_address(url: str, r: httpx.Response) -> str | None:
    """Where the gateway says it serves gRPC (its REST host when it listens on every address)."""
    try:
        address = r.json().get("grpc")
    except (ValueError, AttributeError):
        return None
    if not isinstance(address, str) or ":" not in address:
        return None
    host, _, port = address.rpartition(":")
    if host in ("0.0.0.0", "::", "[::]", ""):
        host = httpx.URL(url).host
    return f"{host}:{port}"


def _endpoints(r: httpx.Response) -> list[dict[str, Any]] | None:
    try:
        return [dict(e) for e in r.json()["endpoints"]] if r.status_code == 200 else None
    except (ValueError, KeyError, TypeError):
        return None
