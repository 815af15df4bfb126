"""A request held for an evicted model (gateway/routing/wake.py) ends in each of its three outcomes as the
routing table changes, and each is counted: served once a copy is loaded, failed when the reload failed,
timeout when nothing changed in time.  No control plane: the Waker has no URL, the test changes the table."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import CollectorRegistry

from berth.errors import ModelNotReady
from berth.gateway.routing.router import Router
from berth.gateway.routing.table import ModelEvicted
from berth.gateway.routing.wake import Waker, held
from berth.wire.routes import Endpoint, ModelRoute, RoutingTable

ENDPOINT = Endpoint(server="s", replica=0, http="127.0.0.1:1", grpc="127.0.0.1:2")


def table(revision: int, route: ModelRoute) -> RoutingTable:
    return RoutingTable(revision=revision, models=[route])


EVICTED = ModelRoute(namespace="ns", name="m", state="ModelAvailable", reason="evicted for n", evicted=True)
LOADED = ModelRoute(namespace="ns", name="m", state="ModelAvailable", endpoints=[ENDPOINT])
FAILED = ModelRoute(namespace="ns", name="m", state="LoadFailed", reason="replica s/0: cannot fetch the artifact")


def held_count(registry: CollectorRegistry, outcome: str) -> float:
    return registry.get_sample_value("berth_gateway_held_requests_total", {"namespace": "ns", "outcome": outcome}) \
        or 0.0


async def hold_until(after: RoutingTable | None, timeout: float = 5.0) -> tuple[object, CollectorRegistry]:
    registry = CollectorRegistry()
    router = Router(table(1, EVICTED))
    Waker(router, None, timeout=timeout, registry=registry)
    with pytest.raises(ModelEvicted) as first:
        router.decide("ns", "m")
    task = asyncio.ensure_future(held(router, "ns", "m", None, first.value))
    await asyncio.sleep(0.05)
    assert not task.done()  # held, not answered
    if after is not None:
        router.set(after)
    try:
        return await asyncio.wait_for(task, 10), registry
    except ModelNotReady as exc:
        return exc, registry


def test_a_held_request_is_served_once_a_copy_is_loaded() -> None:
    decision, registry = asyncio.run(hold_until(table(2, LOADED)))
    assert not isinstance(decision, Exception)
    assert held_count(registry, "served") == 1 and held_count(registry, "failed") == 0


def test_a_held_request_ends_with_the_reload_failure() -> None:
    err, registry = asyncio.run(hold_until(table(2, FAILED)))
    assert isinstance(err, ModelNotReady) and "cannot fetch the artifact" in str(err)
    assert held_count(registry, "failed") == 1 and held_count(registry, "served") == 0


def test_a_held_request_times_out_with_the_reason() -> None:
    err, registry = asyncio.run(hold_until(None, timeout=0.3))
    assert isinstance(err, ModelNotReady) and "did not reload within 0.3s" in str(err) and "evicted for n" in str(err)
    assert held_count(registry, "timeout") == 1
