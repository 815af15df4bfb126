"""A stand-in control plane for end-to-end tests of the real agent: a small aiohttp WebSocket server on
127.0.0.1 that answers ``hello`` with ``welcome`` (protocol 1 unless told, so batches are opt-in), records
every frame the agent sends — as sent (``raw``) and as wire.agent parses it (``frames``: every frame must
parse as a whole) — and sends ``load``/``unload`` frames exactly as wire.agent describes them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web

from berth.wire import agent as wire

Frame = dict[str, Any]


class AgentPeer:
    def __init__(self, port: int, heartbeat_interval: float = 0.3, protocol: int | None = None) -> None:
        self.port = port
        self.heartbeat_interval = heartbeat_interval
        self.protocol = protocol  # what the welcome says; None: the field left out (protocol 1)
        self.frames: list[Frame] = []
        self.raw: list[Frame] = []
        self.changed = asyncio.Condition()
        self.hello = asyncio.Event()
        self.ws: web.WebSocketResponse | None = None
        self._runner: web.AppRunner | None = None

    async def start(self) -> AgentPeer:
        app = web.Application()
        app.router.add_get(wire.AGENT_PATH, self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            frame = wire.parse_agent(msg.data).model_dump()
            if frame["type"] == "hello":
                self.ws = ws
                welcome = (wire.Welcome(heartbeat_interval=self.heartbeat_interval) if self.protocol is None
                           else wire.Welcome(heartbeat_interval=self.heartbeat_interval, protocol=self.protocol))
                await ws.send_str(wire.dump(welcome))
                self.hello.set()
            async with self.changed:
                self.raw.append(json.loads(msg.data))
                self.frames.append(frame)
                self.changed.notify_all()
        return ws

    async def send(self, msg: wire.Load | wire.Unload | wire.LoadBatch) -> None:
        assert self.ws is not None, "no agent connected"
        await self.ws.send_str(wire.dump(msg))

    async def wait_for(self, match: Callable[[Frame], bool], timeout: float = 30.0) -> Frame:
        async def found() -> Frame:
            async with self.changed:
                while True:
                    for frame in self.frames:
                        if match(frame):
                            return frame
                    await self.changed.wait()

        try:
            return await asyncio.wait_for(found(), timeout)
        except TimeoutError:
            raise AssertionError(f"no matching frame within {timeout}s; frames: {self.frames}") from None

    def outcomes(self) -> dict[str, Frame]:
        """The last LOADED/LOAD_FAILED of each model, from single (``model``) and batch (``models``) frames alike."""
        out: dict[str, Frame] = {}
        for frame in self.raw:
            events = frame["events"] if frame["type"] == "models" else [frame] if frame["type"] == "model" else []
            for ev in events:
                if ev["state"] in ("LOADED", "LOAD_FAILED"):
                    out[ev["name"]] = ev
        return out
