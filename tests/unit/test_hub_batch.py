"""The hub's batch frames (protocol 2): loads sent in a batch go in few bounded frames, in order, only to agents
that said protocol 2; a failed frame un-marks its loads; outcomes batched by an agent are applied one by one,
and a hostile agent's oversized or malformed batch costs only what is wrong in it."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from berth.control.hub import BATCH_WINDOW, AgentHub, ReplicaModel, ReplicaRecord
from berth.control.tokens import TokenRegistry
from berth.wire import agent as wire
from tests.unit.test_enrolment import A, agent, agent_token, hello, hub_server, run


class Socket:
    closed = False

    def __init__(self, fail_after: int | None = None) -> None:
        self.frames: list[dict[str, Any]] = []
        self.fail_after = fail_after

    async def send_str(self, data: str) -> None:
        if self.fail_after is not None and len(self.frames) >= self.fail_after:
            raise ConnectionResetError("connection reset by peer")
        self.frames.append(json.loads(data))

    async def close(self, **_: Any) -> None:
        self.closed = True


def _record(hub: AgentHub, protocol: int = wire.PROTOCOL_VERSION, ws: Socket | None = None) -> tuple[ReplicaRecord,
                                                                                                      Socket]:
    ws = ws or Socket()
    h = wire.Hello(namespace="default", server="mlserver", replica=len(hub.replicas), protocol=protocol,
                   readiness=wire.Readiness(ready=True))
    return hub._register(h, ws), ws  # type: ignore[arg-type]


def _load(i: int) -> wire.Load:
    return wire.Load(namespace="default", name=f"m{i:04d}", generation=1,
                     source=wire.ModelSource(storage_uri=f"file:///m/{i}", memory=1 << 20))


def _names(frames: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for f in frames:
        out += [m["name"] for m in f["loads"]] if f["type"] == "loads" else [f["name"]]
    return out


def test_loads_in_a_batch_go_in_few_bounded_frames_in_order() -> None:
    async def body() -> None:
        hub = AgentHub(lambda ns: None)
        rec, ws = _record(hub)
        async with hub.batch():
            for i in range(300):
                assert await hub.send(rec, _load(i))
            assert [len(f["loads"]) for f in ws.frames] == [256]  # a full frame goes at once
        await asyncio.sleep(0.01)  # the rest goes when the batch ends, without waiting for the window
        assert [f["type"] for f in ws.frames] == ["loads", "loads"] and len(ws.frames[1]["loads"]) == 44
        assert _names(ws.frames) == [f"m{i:04d}" for i in range(300)] and rec.frames_sent == 2
        # outside a batch a load goes at once, as its own frame
        assert await hub.send(rec, _load(300)) and ws.frames[-1]["type"] == "load"

    run(body)


def test_a_lone_load_in_a_batch_goes_within_the_window_as_a_plain_load() -> None:
    async def body() -> None:
        hub = AgentHub(lambda ns: None)
        rec, ws = _record(hub)
        async with hub.batch():
            assert await hub.send(rec, _load(1))
            assert ws.frames == []
            await asyncio.sleep(BATCH_WINDOW * 3)
            assert [f["type"] for f in ws.frames] == ["load"]  # a frame of one is the load's own frame

    run(body)


def test_an_agent_of_protocol_1_gets_one_frame_per_load() -> None:
    async def body() -> None:
        hub = AgentHub(lambda ns: None)
        rec, ws = _record(hub, protocol=1)
        async with hub.batch():
            for i in range(5):
                assert await hub.send(rec, _load(i))
            assert [f["type"] for f in ws.frames] == ["load"] * 5

    run(body)


def test_other_messages_flush_the_queued_loads_first() -> None:
    async def body() -> None:
        hub = AgentHub(lambda ns: None)
        rec, ws = _record(hub)
        async with hub.batch():
            assert await hub.send(rec, _load(1)) and await hub.send(rec, _load(2))
            assert await hub.send(rec, wire.Unload(name="m0001"))
            assert [f["type"] for f in ws.frames] == ["loads", "unload"] and _names(ws.frames[:1]) == ["m0001",
                                                                                                       "m0002"]

    run(body)


def test_a_failed_frame_unmarks_its_loads_so_a_later_pass_sends_them_again() -> None:
    async def body() -> None:
        changed: list[str] = []
        hub = AgentHub(changed.append)
        rec, ws = _record(hub, ws=Socket(fail_after=1))
        async with hub.batch():
            for i in range(260):  # 256 fit the first frame (sent), 4 the second (its send fails)
                assert await hub.send(rec, _load(i))
                rec.models[f"m{i:04d}"] = ReplicaModel("LOADING", 1)  # as the reconciler marks a load sent
        await asyncio.sleep(0.01)
        assert len(ws.frames) == 1
        assert sorted(rec.models) == [f"m{i:04d}" for i in range(256)] and changed == ["default"]

    run(body)


def test_a_secret_is_never_queued_for_an_agent_not_enrolled() -> None:
    async def body() -> None:
        hub = AgentHub(lambda ns: None)
        rec, ws = _record(hub)
        msg = _load(1).model_copy(update={"source": wire.ModelSource(storage_uri="s3://b/m", secret_name="s",
                                                                     secret={"s3": "wJalrXUtnFEMI"})})
        async with hub.batch():
            assert not await hub.send(rec, msg)
            assert rec.outbox == []
        await asyncio.sleep(0.01)
        assert all("wJalrXUtnFEMI" not in json.dumps(f) for f in ws.frames)

    run(body)


def test_batched_outcomes_apply_one_by_one_with_one_change() -> None:
    changed: list[str] = []
    hub = AgentHub(changed.append)
    rec, _ = _record(hub)
    run(lambda: hub._apply_events(rec, wire.ModelEvents(events=[
        wire.ModelEvent(name="a", generation=1, state="LOADED", memory=3),
        wire.ModelEvent(name="b", generation=1, state="LOAD_FAILED", message="MLServer: bad pickle")])))
    assert rec.models["a"].state == "LOADED" and rec.models["a"].memory == 3
    assert rec.models["b"].state == "LOAD_FAILED" and rec.models["b"].message == "MLServer: bad pickle"
    assert changed == ["default"]


def test_a_frame_of_outcomes_hands_the_loop_back_while_it_is_applied() -> None:
    """256 outcomes whose handling takes 0.2 ms each: other tasks run between slices of the frame."""

    async def body() -> None:
        hub = AgentHub(lambda ns: None)
        rec, _ = _record(hub)
        ran_during: list[int] = []

        def slow(ns: str, state: str) -> None:
            time.sleep(0.0002)
        hub.on_model_event = slow
        events = [wire.ModelEvent(name=f"m{i}", generation=1, state="LOADED") for i in range(wire.MAX_BATCH_ITEMS)]

        async def other() -> None:
            while len(ran_during) < 1000:
                ran_during.append(len(rec.models))
                await asyncio.sleep(0)
        task = asyncio.create_task(other())
        await asyncio.sleep(0)
        await hub._apply_events(rec, wire.ModelEvents(events=events))
        task.cancel()
        assert len(rec.models) == wire.MAX_BATCH_ITEMS
        assert any(0 < n < wire.MAX_BATCH_ITEMS for n in ran_during)  # the other task ran mid-frame

    run(body)


def test_a_hostile_agent_batch_costs_only_what_is_wrong_in_it() -> None:
    """Over a real WebSocket: the welcome says protocol 2; a batch over the item bound is dropped whole, a
    batch with one malformed outcome keeps the others, and the connection stays up."""

    async def body() -> None:
        tokens = TokenRegistry(None)
        token = agent_token(tokens)
        async with hub_server(tokens) as (hub, url), agent(url, token, hello()) as (ws, answer):
            assert answer["type"] == "welcome" and answer["protocol"] == wire.PROTOCOL_VERSION
            rec = hub.replicas[(A.namespace, A.server, A.replica)]
            event = {"type": "model", "generation": 1, "state": "LOADED"}
            too_many = [{**event, "name": f"x{i}"} for i in range(wire.MAX_BATCH_ITEMS + 1)]
            await ws.send_str(json.dumps({"type": "models", "events": too_many}))
            await ws.send_str(json.dumps({"type": "models", "events": [
                {**event, "name": "good1"}, {**event, "name": "bad", "state": "EXPLODED"},
                {**event, "name": "good2"}, 42]}))
            for _ in range(100):
                if "good2" in rec.models:
                    break
                await asyncio.sleep(0.02)
            assert sorted(rec.models) == ["good1", "good2"], sorted(rec.models)
            assert rec.connected and not ws.closed
            await ws.send_str(wire.dump(wire.Heartbeat()))
            await asyncio.sleep(0.05)
            assert rec.connected

    run(body)
