"""The control plane's loop watch and collector policy (issue 18): stalls are measured and traced to where the
loop's thread was, collections are timed by generation, full collections stay short, and frozen cyclic
garbage is reclaimed by a sweep."""

from __future__ import annotations

import asyncio
import gc
import logging
import time
import weakref

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from berth.control.gcpolicy import OLD_THRESHOLD, GcPolicy
from berth.control.loopwatch import LoopWatch, LoopWatchCollector
from berth.control.server import PerServer
from berth.store.memory import MemoryStore


def _hold_the_loop(cpu_seconds: float) -> None:
    """Work on the loop's thread for ``cpu_seconds`` of its CPU time (longer on a busy machine)."""
    end = time.thread_time() + cpu_seconds
    while time.thread_time() < end:
        pass


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


def cycle() -> weakref.ref[Node]:
    """A pair of objects that refer to each other, unreachable once returned: only the collector frees them."""
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_a_stall_is_measured_and_traced_to_where_the_loop_was(caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> LoopWatch:
        watch = LoopWatch(interval=0.01, stall=0.02, report=0.1)
        watch.start()
        await asyncio.sleep(0.05)
        _hold_the_loop(0.2)
        await asyncio.sleep(0.1)
        await watch.stop()
        return watch

    with caplog.at_level(logging.WARNING, logger="berth.control.loopwatch"):
        watch = asyncio.run(run())
    stall = max(watch.stalls, key=lambda s: s.seconds)
    assert 0.2 <= stall.seconds < 10 and stall.cpu >= 0.1, stall  # the loop's thread was working, not waiting
    assert "_hold_the_loop" in stall.where, stall.where
    assert watch.lag_max >= 0.2
    assert any("event loop stalled" in r.message and "_hold_the_loop" in r.message for r in caplog.records)


def test_collections_are_timed_by_generation_and_exported() -> None:
    async def run() -> LoopWatch:
        watch = LoopWatch()
        watch.start()
        cycle()
        gc.collect()
        gc.collect(0)
        await asyncio.sleep(0.03)
        await watch.stop()
        return watch

    watch = asyncio.run(run())
    assert watch.gc.counts[2] >= 1 and watch.gc.counts[0] >= 1
    assert watch.gc.longest[2] > 0 and watch.gc.cpu[2] > 0
    registry = CollectorRegistry(auto_describe=False)
    registry.register(LoopWatchCollector(watch))
    text = generate_latest(registry).decode()
    assert 'berth_gc_collections_total{generation="2"}' in text
    assert "berth_gc_longest_cpu_seconds" in text and "berth_loop_lag_seconds_bucket" in text
    assert "berth_loop_lag_max_seconds" in text and "berth_gc_frozen_objects" in text


def test_the_policy_freezes_survivors_runs_its_own_full_collections_and_sweeps() -> None:
    before = gc.get_threshold()

    async def run() -> None:
        watch = LoopWatch()
        policy = GcPolicy(watch, sweep_every=3600)
        policy.start()
        watch.start()
        try:
            assert gc.get_threshold()[2] == OLD_THRESHOLD and gc.get_freeze_count() > 0
            kept = [[i] for i in range(2000)]  # survivors: promoted, then frozen by the next full collection
            frozen = gc.get_freeze_count()
            fulls = watch.gc.counts[2]
            gc.collect(1)
            gc.collect(1)  # FULL_EVERY collections of generation 1: a full one is asked of the loop
            await asyncio.sleep(0.01)
            assert watch.gc.counts[2] == fulls + 1 and policy.fulls == 1
            assert gc.get_freeze_count() >= frozen + len(kept)
            young = cycle()  # cyclic garbage not yet frozen: the next full collection frees it
            gc.collect(2)
            assert young() is None
            held = Node()
            held.other = Node()
            held.other.other = held
            gc.collect(2)  # survives (held), then frozen
            lost = weakref.ref(held)
            del held
            gc.collect(2)  # a full collection does not walk frozen objects: the dropped cycle waits
            assert lost() is not None
            took = policy.sweep()  # the sweep walks everything
            assert lost() is None and policy.sweeps == 1 and took > 0
            del kept
        finally:
            await policy.stop()
            await watch.stop()

    asyncio.run(run())
    assert gc.get_threshold() == before


def test_a_server_fact_is_read_once_and_forgotten_when_the_server_changes() -> None:
    store = MemoryStore()
    reads: list[tuple[str, str]] = []

    def allowed(s: MemoryStore, ns: str, name: str) -> bool:
        reads.append((ns, name))
        doc = s.get("Server", ns, name)
        return (doc["metadata"].get("annotations") or {}).get("berth.io/allow-custom-runtime") == "true"

    def server(flag: str) -> dict[str, object]:
        return {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Server",
                "metadata": {"name": "mlserver", "namespace": "team-a",
                             "annotations": {"berth.io/allow-custom-runtime": flag}},
                "spec": {"serverConfig": "mlserver"}}

    store.apply(server("true"))
    fact = PerServer(store, allowed)  # type: ignore[arg-type]
    assert fact("team-a", "mlserver") and fact("team-a", "mlserver") and len(reads) == 1
    store.apply(server("false"))  # a change is never answered from the old reading
    assert not fact("team-a", "mlserver") and len(reads) == 2

    def racing(s: MemoryStore, ns: str, name: str) -> bool:  # the Server changes while it is read
        value = allowed(s, ns, name)
        s.apply(server("true"))
        return value

    racy = PerServer(store, racing)  # type: ignore[arg-type]
    assert not racy("team-a", "mlserver")
    assert "team-a" not in {k[0] for k in racy.known}  # a reading older than a change is not kept
