"""Helpers for gateway tests: a loop thread, a gateway on it, a stand-in routes stream, routes and a
real MLServer with iris models loaded through its repository API."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import httpx
from aiohttp import web

from berth.adapters.mlserver_proc import MLServerProcess
from berth.gateway.app import run_gateway
from berth.wire.routes import ROUTES_WATCH_PATH, Endpoint, ModelRoute, RoutingTable
from tests.support.models import train_sklearn

T = TypeVar("T")


class LoopThread:
    """An asyncio loop on a daemon thread; ``call`` runs a coroutine there and waits for it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.errors: list[str] = []  # exceptions nobody awaited (a crashed task): close() fails on them
        self.loop.set_exception_handler(self._unhandled)
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def _unhandled(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        loop.default_exception_handler(context)
        if not isinstance(exc, OSError | asyncio.CancelledError | asyncio.IncompleteReadError):
            self.errors.append(f"{context.get('message')}: {exc!r}")

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 15.0) -> T:
        return self.submit(coro).result(timeout)

    def close(self) -> None:
        async def cancel_the_rest() -> None:  # e.g. a stand-in server's handler still sleeping
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self.call(cancel_the_rest())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        assert not self.errors, f"unhandled exceptions on the test's event loop: {self.errors}"


class Gateway:
    """run_gateway on the loop thread, on a free port (and a free gRPC port with ``grpc=True``), until stopped."""

    def __init__(self, lt: LoopThread, *, grpc: bool = False, **kwargs: Any) -> None:
        self.lt = lt
        started: Future[int] = Future()
        grpc_started: Future[int] = Future()
        self._stop: asyncio.Event | None = None

        async def main() -> None:
            self._stop = asyncio.Event()
            await run_gateway("127.0.0.1", 0, kwargs.pop("control_url", None), self._stop,
                              on_started=started.set_result, grpc_port=0 if grpc else None,
                              on_grpc_started=grpc_started.set_result, **kwargs)

        self.done = lt.submit(main())
        self.url = f"http://127.0.0.1:{started.result(15)}"
        self.grpc = f"127.0.0.1:{grpc_started.result(5)}" if grpc else ""

    def stop(self) -> None:
        stop = self._stop
        assert stop is not None
        self.lt.loop.call_soon_threadsafe(stop.set)
        self.done.result(15)


class RoutesStandIn:
    """A stand-in control plane serving only the routes watch stream (NDJSON, whole table per line)."""

    def __init__(self, lt: LoopThread, table: RoutingTable, port: int) -> None:
        self.lt, self.table, self.port = lt, table, port
        self.url = f"http://127.0.0.1:{port}"
        self._queues: list[asyncio.Queue[RoutingTable | None]] = []
        self._runner: web.AppRunner | None = None

    async def _watch(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        queue: asyncio.Queue[RoutingTable | None] = asyncio.Queue()
        self._queues.append(queue)
        try:
            table: RoutingTable | None = self.table
            while table is not None:
                await resp.write(table.model_dump_json().encode() + b"\n")
                table = await queue.get()
        finally:
            self._queues.remove(queue)
        return resp

    def start(self) -> None:
        async def go() -> None:
            app = web.Application()
            app.router.add_get(ROUTES_WATCH_PATH, self._watch)
            self._runner = web.AppRunner(app, shutdown_timeout=1.0)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self.lt.call(go())

    def publish(self, table: RoutingTable) -> None:
        async def go() -> None:
            self.table = table
            for q in self._queues:
                q.put_nowait(table)
        self.lt.call(go())

    def stop(self) -> None:
        async def go() -> None:
            for q in self._queues:
                q.put_nowait(None)
            assert self._runner is not None
            await self._runner.cleanup()
        self.lt.call(go())


def route(name: str, *addresses: str, namespace: str = "default", state: str = "ModelAvailable",
          reason: str = "", grpc: tuple[str, ...] = ()) -> ModelRoute:
    """A model route on ``addresses`` (REST), with the gRPC addresses ``grpc`` of the same replicas."""
    return ModelRoute(namespace=namespace, name=name, state=state, reason=reason,
                      endpoints=[Endpoint(server="mlserver", replica=i, http=a,
                                          grpc=grpc[i] if grpc else "127.0.0.1:1")
                                 for i, a in enumerate(addresses)])


def eventually(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def start_mlserver(workdir: Path, *names: str) -> MLServerProcess:
    """A real MLServer with the iris model loaded under each of ``names`` (through its repository API)."""
    proc = MLServerProcess(workdir)
    proc.start()
    try:
        proc.wait_ready(90)
        for seed, name in enumerate(names):
            folder = train_sklearn(proc.repository / name, seed=seed)
            (folder / "model-settings.json").write_text(json.dumps({
                "name": name, "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"uri": "./model.joblib"}}))
            r = httpx.post(f"http://{proc.http_address}/v2/repository/models/{name}/load", timeout=60)
            assert r.status_code == 200, r.text
    except BaseException:
        proc.stop()
        raise
    return proc
