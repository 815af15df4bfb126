"""The parts of a reconcile pass that used to run in one go on the loop (2-5 ms each at 1,000 models, issue 18)
hand the loop back too: the documents sorted by kind, the assignments and replica infos before planning, the
documents "as they will be written" before the write.  Same results as before, sliced.  Real memory store,
real routes publisher, agents simulated in the hub (see test_reconcile.py)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

import pytest

from berth.control import reconcile
from berth.control.hub import ReplicaModel
from berth.control.reconcile import Reconciler
from berth.control.slices import Slicer
from berth.scheduler.snapshot import ReplicaRef
from tests.unit.test_reconcile import NS, agents_finish, connect, experiment, model, plane, run, server, settle, stored


class Counting(Slicer):
    """Yields at every tick (budget 0) and counts the ticks."""

    def __init__(self) -> None:
        super().__init__(budget=0.0)
        self.ticks = 0

    async def tick(self) -> None:
        self.ticks += 1
        await super().tick()


def test_documents_by_kind_keep_their_order_and_hand_the_loop_back() -> None:
    docs = [model("b"), server(1), model("a"), experiment({"a": 50, "b": 50})]

    async def body() -> None:
        s = Counting()
        out = await reconcile._by_kind(docs, s)
        assert [d["metadata"]["name"] for d in out["Model"]] == ["b", "a"]
        assert list(out) == ["Model", "Server", "Experiment"]
        assert s.ticks == len(docs) and s.yields == len(docs)

    run(body)


def test_assignments_name_every_replica_loading_or_holding_a_model() -> None:
    async def body() -> None:
        p = plane()
        r0, r1 = connect(p.hub, 0), connect(p.hub, 1)
        r0.models.update({"a": ReplicaModel("LOADED", 1), "b": ReplicaModel("LOAD_FAILED", 1)})
        r1.models.update({"a": ReplicaModel("LOADING", 1), "c": ReplicaModel("UNLOADING", 1)})
        records = {f"{r.server}/{r.index}": r for r in (r0, r1)}
        s = Counting()
        out = await reconcile._assignments(records, s)
        assert out == {"a": (ReplicaRef("mlserver", 0), ReplicaRef("mlserver", 1))}
        assert s.ticks == 4

    run(body)


def test_documents_with_their_new_statuses_are_copies() -> None:
    async def body() -> None:
        docs = [model("a"), model("b")]
        statuses = cast("list[reconcile.Written]", [("Model", "a", {"state": "ModelAvailable"}),
                                                    ("Pipeline", "b", {"state": "x"})])
        out = await reconcile._with_statuses(docs, statuses, "Model", Counting())
        assert out[0]["status"] == {"state": "ModelAvailable"} and "status" not in docs[0]
        assert out[1] is docs[1]  # no new status: the document itself
        assert await reconcile._with_statuses([], statuses, "Pipeline", Counting()) == []

    run(body)


def test_a_pass_hands_the_loop_back_before_planning(monkeypatch: pytest.MonkeyPatch) -> None:
    """Between the pass's read and its plan another task on the loop runs many times: the per-document and
    per-model loops there are sliced (with a budget of 0, at every item).  The pass still ends where it did:
    models available, the Experiment's status made from the models' new statuses."""
    async def body() -> None:
        p = plane()
        p.store.apply(server(1))
        p.store.apply_many([model(f"m{i:03d}") for i in range(200)])
        p.store.apply(experiment({"m000": 50, "m001": 50}))  # an Experiment reads the models' new statuses
        connect(p.hub, 0)
        laps = [0]
        stop = asyncio.Event()

        async def other() -> None:
            while not stop.is_set():
                laps[0] += 1
                await asyncio.sleep(0)

        marks: dict[str, int] = {}
        real_read, real_plan = p.rc._read, reconcile._plan

        def read(ns: str) -> Any:
            out = real_read(ns)
            marks.setdefault("read", laps[0])
            return out

        def planned(*args: Any) -> Any:
            marks.setdefault("plan", laps[0])
            return real_plan(*args)

        monkeypatch.setattr(p.rc, "_read", read)
        monkeypatch.setattr(reconcile, "_plan", planned)
        monkeypatch.setattr(reconcile, "Slicer", Counting)
        task = asyncio.create_task(other())
        await p.pass_()
        stop.set()
        await task
        # sorted by kind, assignments, replica infos: a lap of the other task per document at least
        assert marks["plan"] - marks["read"] >= 200, marks
        agents_finish(p.hub)
        await settle(p)
        assert stored(p.store, "m123")["status"]["state"] == "ModelAvailable"
        assert stored(p.store, "m000")["status"]["state"] == "ModelAvailable"
        exp = p.store.get("Experiment", NS, "ab")["status"]
        assert exp["conditions"] and all(c["status"] == "True" for c in exp["conditions"] if c["type"] == "Ready"), exp

    run(body)


def test_after_long_passes_the_reconciler_rests_a_part_of_their_time() -> None:
    """A pass that kept the loop busy is followed by a rest (bounded), a short one by none; a stop ends it."""
    async def timed(busy: float, stop: asyncio.Event) -> float:
        start = time.monotonic()
        await Reconciler._rest(stop, busy)
        return time.monotonic() - start

    async def body() -> None:
        stop = asyncio.Event()
        assert await timed(reconcile.BUSY_ENOUGH / 2, stop) < 0.01
        rested = await timed(0.1, stop)
        assert 0.1 * reconcile.REST_RATIO * 0.9 <= rested < 0.1 * reconcile.REST_RATIO + 0.5, rested
        assert reconcile.MAX_REST * 0.9 <= await timed(100.0, stop) < reconcile.MAX_REST + 0.5
        asyncio.get_running_loop().call_later(0.01, stop.set)
        assert await timed(100.0, stop) < reconcile.MAX_REST * 0.9

    run(body)
