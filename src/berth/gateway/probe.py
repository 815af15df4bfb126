"""``GET /berth/v1/probe``: the gateway's own view of every replica in its routing table.

Probes each inference server's ``/v2/health/ready`` from the gateway (what `berth doctor` shows as
"gateway → replica"), concurrently, with a short timeout.  Not on the request path.  It names every
replica and model of every namespace, so it answers only operators once the table carries auth
(:meth:`Router.admit_operator`).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from berth.errors import BerthError
from berth.gateway.forwarding.rest import error_response
from berth.gateway.routing.router import Router
from berth.gateway.transports.grpcserver import GrpcGateway

PROBE_PATH = "/berth/v1/probe"


@dataclass
class GrpcSide:
    """The gateway's gRPC endpoint, once it listens: its address, and what probes the replicas' gRPC ports."""

    gateway: GrpcGateway | None = None
    address: str | None = None


async def _probe(session: aiohttp.ClientSession, address: str, timeout: float) -> dict[str, Any]:
    started = time.perf_counter()
    error: str | None = None
    try:
        async with session.get(f"http://{address}/v2/health/ready",
                               timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            if r.status != 200:
                error = f"HTTP {r.status}: {(await r.text())[:200]}"
    except TimeoutError:
        error = f"timeout after {timeout:.1f}s"
    except aiohttp.ClientConnectorError as exc:
        refused = isinstance(exc.os_error, ConnectionRefusedError)
        error = "connection refused" if refused else str(exc.os_error or exc)
    except aiohttp.ClientError as exc:
        error = f"{type(exc).__name__}: {exc}"
    return {"address": address, "ok": error is None, "error": error,
            "latency_ms": round((time.perf_counter() - started) * 1000, 2)}


def probe_handler(router: Router, grpc: GrpcSide | None = None, *, timeout: float = 2.0) -> Any:
    """Each replica's REST ``/v2/health/ready`` and, when the gateway serves gRPC, its gRPC ``ServerReady``."""
    side = grpc or GrpcSide()

    async def handle(request: web.Request) -> web.Response:
        try:
            router.admit_operator(request.headers.get("Authorization"))
        except BerthError as err:
            return error_response(err)
        namespace = request.query.get("namespace") or None
        models: dict[str, list[str]] = {}
        grpc_of: dict[str, str] = {}
        for route in router.table.models if router.table is not None else []:
            if namespace is None or route.namespace == namespace:
                for ep in route.endpoints:
                    models.setdefault(ep.http, []).append(f"{route.namespace}/{route.name}")
                    if ep.grpc:
                        grpc_of[ep.http] = ep.grpc
        addresses = sorted(models)
        gateway = side.gateway
        async with aiohttp.ClientSession() as session:
            rows = await asyncio.gather(*(_probe(session, a, timeout) for a in addresses))
            grpc_rows = await asyncio.gather(*(gateway.probe(grpc_of[a], timeout) for a in addresses
                                               if a in grpc_of)) if gateway is not None else []
        by_address = {r["address"]: r for r in grpc_rows}
        for row in rows:
            row["models"] = sorted(models[row["address"]])
            found = by_address.get(grpc_of.get(row["address"], ""))
            if found is not None:
                row["grpc"] = found
        return web.json_response({"revision": router.revision, "grpc": side.address, "endpoints": rows})

    return handle
