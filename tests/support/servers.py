"""Run Berth's real servers inside the test process (a background thread with its own event loop)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from berth.adapters.mlserver_proc import free_port
from berth.control.server import ControlOptions, run_control
from berth.resources.identity import new_token


class LoopThread:
    """Run ``main(stop)`` in a thread; ``stop()`` sets the event and joins."""

    def __init__(self, main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
        self._main = main
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        async def wrapper() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            self._ready.set()
            await self._main(self._stop)

        try:
            asyncio.run(wrapper())
        except BaseException as exc:  # surfaced to the test by check() and stop()
            self.error = exc
            self._ready.set()

    def start(self) -> LoopThread:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the server thread did not start its event loop within 10 s")
        self.check()
        return self

    def check(self) -> None:
        """Raise what the server's main raised, if it ended by an exception (a crash mid-test)."""
        if self.error is not None:
            raise RuntimeError(f"the server thread crashed: {self.error!r}") from self.error

    def stop(self, timeout: float = 20.0) -> None:
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:
                pass
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise RuntimeError(f"the server thread did not stop within {timeout:.0f} s")
        self.check()


_FROM_ENV: Any = object()


class ControlPlane:
    """A real control plane on a free loopback port (memory or SQLite store).

    ``admin_token`` (default: ``$BERTH_TOKEN``, which tests/conftest.py sets for the session; a fresh one
    outside pytest, e.g. in bench/) is made valid as the admin of every namespace; ``None`` starts it with no
    admin token at all."""

    def __init__(self, data_dir: Path, *, store: str | None = ":memory:", provision: bool = False,
                 replica_memory: int = 1 << 30, max_body: int = 8 << 20,
                 admin_token: str | None = _FROM_ENV) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        token = (os.environ.get("BERTH_TOKEN") or new_token()) if admin_token is _FROM_ENV else admin_token
        self.admin_token: str | None = token
        self.opts = ControlOptions(host="127.0.0.1", port=self.port, data_dir=data_dir,
                                   store_path=Path(store) if store else None, provision=provision,
                                   replica_memory=replica_memory, max_body=max_body, admin_token=token)
        self._started = threading.Event()

        async def main(stop: asyncio.Event) -> None:
            started = asyncio.Event()
            task = asyncio.create_task(run_control(self.opts, stop, started))
            await started.wait()
            self._started.set()
            await task

        self._thread = LoopThread(main)

    def __enter__(self) -> ControlPlane:
        self._thread.start()
        if not self._started.wait(20):
            raise RuntimeError(f"control plane did not start: {self._thread.error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.stop()  # raises if the control plane crashed during the test


def wait_http(url: str, timeout: float) -> bool:
    """Poll ``url`` until it answers 200 (True) or ``timeout`` seconds pass (False)."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            time.sleep(0.1)
    return False


def auth_headers(token: str | None = None) -> dict[str, str]:
    """``Authorization: Bearer`` with ``token`` (default: the session's admin token, ``$BERTH_TOKEN``)."""
    return {"Authorization": f"Bearer {token or os.environ['BERTH_TOKEN']}"}
