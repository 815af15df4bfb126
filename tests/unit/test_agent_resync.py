"""ModelLoader.resync beside loads: a load that ends while the repository index is read is not undone by the
index's older answer (the agent runs resync every ``resync_interval`` seconds, so this race is a normal day)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from berth.agent.config import AgentConfig
from berth.agent.loader import ModelLoader
from berth.errors import LoadError, Unavailable
from berth.wire.agent import LoadedModel, ModelEvent


class SlowIndex:
    """An inference server whose repository index answers what it held when asked, once ``release`` is set."""

    base_url = "http://127.0.0.1:1"

    def __init__(self, held: dict[str, str]) -> None:
        self.held = held
        self.asked = asyncio.Event()
        self.release = asyncio.Event()

    async def index(self) -> dict[str, str]:
        answer = dict(self.held)
        self.asked.set()
        await self.release.wait()
        return answer


def _loader(tmp_path: Path, client: Any, events: list[ModelEvent]) -> ModelLoader:
    async def emit(ev: ModelEvent) -> None:
        events.append(ev)
    config = AgentConfig(data_dir=tmp_path / "agent", capabilities=("sklearn",))
    return ModelLoader(config, client, emit)


def test_a_load_ending_during_the_index_read_is_kept_and_a_lost_model_is_reported(tmp_path: Path) -> None:
    async def body() -> None:
        client = SlowIndex({"steady": "READY"})  # "fresh" is not loaded yet when the index is read
        events: list[ModelEvent] = []
        loader = _loader(tmp_path, client, events)
        loader.loaded["steady"] = LoadedModel(name="steady", generation=1)
        loader.loaded["lost"] = LoadedModel(name="lost", generation=3)  # the server no longer holds it
        loader.loaded["fresh"] = LoadedModel(name="fresh", generation=1)  # an older record, replaced below
        resync = asyncio.create_task(loader.resync())
        await client.asked.wait()
        loader.loaded["fresh"] = LoadedModel(name="fresh", generation=2)  # its new load ended meanwhile
        client.release.set()
        await resync
        assert set(loader.loaded) == {"steady", "fresh"} and loader.loaded["fresh"].generation == 2
        assert [(e.name, e.generation, e.state) for e in events] == [("lost", 3, "UNLOADED")]
        assert "no longer holds this model (state absent; restarted?)" in events[0].message

    asyncio.run(body())


def test_a_model_held_by_a_load_or_unload_is_left_alone(tmp_path: Path) -> None:
    async def body() -> None:
        client = SlowIndex({})
        client.release.set()
        events: list[ModelEvent] = []
        loader = _loader(tmp_path, client, events)
        loader.loaded["busy"] = LoadedModel(name="busy", generation=1)
        async with loader.lock("busy"):  # being unloaded (or loaded again) right now
            await loader.resync()
        assert "busy" in loader.loaded and events == []

    asyncio.run(body())


class Metadata:
    """An inference server that answers ``GET /v2/models/{name}`` for the models in ``held``."""

    base_url = "http://127.0.0.1:1"

    def __init__(self, held: set[str], down: bool = False) -> None:
        self.held, self.down, self.asked = held, down, []  # type: ignore[var-annotated]

    async def metadata(self, name: str) -> dict[str, object]:
        self.asked.append(name)
        if self.down:
            raise Unavailable("connection refused")
        if name not in self.held:
            raise LoadError(f"GET /v2/models/{name} answered 404")
        return {"name": name}


def test_still_held_asks_one_model_in_turn_and_says_when_one_is_gone(tmp_path: Path) -> None:
    async def body() -> None:
        client = Metadata({"a", "b", "c"})
        loader = _loader(tmp_path, client, [])
        assert await loader.still_held()  # nothing loaded: nothing to ask
        for name in ("a", "b", "c"):
            loader.loaded[name] = LoadedModel(name=name, generation=1)
        assert [await loader.still_held() for _ in range(4)] == [True] * 4
        assert client.asked == ["a", "b", "c", "a"]  # one each time, in turn
        client.held.discard("b")  # the server lost b (restarted)
        assert not await loader.still_held()
        client.down = True  # not answering at all: the readiness watcher's business, not a loss
        assert await loader.still_held()
        async with loader.lock("c"):  # a model being loaded or unloaded is not asked about
            client.asked.clear()
            client.down = False
            await loader.still_held()
            await loader.still_held()
            assert "c" not in client.asked

    asyncio.run(body())
