"""The reconciler's residency decision handed back to the loop (``Evictor.decide_sliced``): the same decisions
as the one-go ``decide``, with the loop served between models and the overcommitted rule in a worker thread."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from berth.control import residency
from berth.control.eviction import Evictor
from berth.control.hub import ReplicaModel, ReplicaRecord
from berth.control.slices import Slicer
from berth.scheduler.snapshot import ModelPlan, Plan, ReplicaRef
from berth.wire import agent as wire

MiB = 1 << 20
KEY = "mlserver/0"


def scene(n: int, memory: int) -> tuple[dict[str, dict[str, Any]], Plan, dict[str, ReplicaRecord]]:
    models = {f"m{i:04d}": {"kind": "Model", "metadata": {"name": f"m{i:04d}", "namespace": "default",
                                                          "annotations": {"berth.io/pinned": "true"} if i % 97 == 0
                                                          else {}},
                            "spec": {"storageUri": "file:///m", "memory": f"{1 + i % 5}Mi"}} for i in range(n)}
    ready = wire.Readiness(ready=True)
    rec = ReplicaRecord(key=("default", "mlserver", 0), readiness=ready,
                        hello=wire.Hello(server="mlserver", replica=0, memory=memory, readiness=ready))
    for i, name in enumerate(models):
        if i % 3:
            rec.models[name] = ReplicaModel("LOADED", 1, memory=(i % 7) * MiB)
    plan = Plan("default", {n: ModelPlan(n, 1, (ReplicaRef("mlserver", 0),), "Scheduled", "") for n in models})
    return models, plan, {KEY: rec}


def outcome(ev: Evictor) -> tuple[Any, ...]:
    book = ev.book
    return (ev.decisions, {k: (e.eviction, e.unloaded) for k, e in book.evicted.items()}, book.first_seen,
            book.loaded_at, ev._placed)


def test_sliced_decides_as_in_one_go_when_everything_fits_and_when_overcommitted() -> None:
    for memory in (1 << 40, 600 * MiB):  # fits; about a fifth of what is placed does not
        models, plan, records = scene(1000, memory)
        one, sliced = Evictor(clock=lambda: 5000.0), Evictor(clock=lambda: 5000.0)
        for ev in (one, sliced):
            ev.book.wake("default", "m0042", 4990.0)
        one.decide("default", models, plan, records)
        asyncio.run(sliced.decide_sliced("default", models, plan, records, None, Slicer(budget=0.0)))
        assert outcome(one) == outcome(sliced)
        if memory < 1 << 40:
            assert one.decisions["default"][KEY].evict, "the scene must evict something to compare evictions"
            assert "m0042" not in one.decisions["default"][KEY].evict  # woken: loaded


def test_sliced_hands_the_loop_back_and_runs_the_rule_off_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    models, plan, records = scene(1000, 600 * MiB)
    ev = Evictor(clock=lambda: 5000.0)
    threads: list[str] = []
    rule = residency.decide

    def spy(*args: Any) -> residency.Residency:
        threads.append(threading.current_thread().name)
        return rule(*args)

    async def go() -> int:
        slicer = Slicer(budget=0.0)  # hands the loop back at every step it offers
        await ev.decide_sliced("default", models, plan, records, None, slicer)
        return slicer.yields

    monkeypatch.setattr(residency, "decide", spy)
    yields = asyncio.run(go())
    assert threads and all(t != threading.main_thread().name for t in threads)
    assert ev.decisions["default"][KEY].evict
    assert yields >= 2 * len(models)  # between the models placed, and again between those decided
