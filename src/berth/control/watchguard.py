"""Open watches end when their token stops being valid.

A watch (NDJSON or WebSocket, resources or routes) holds a :class:`WatchGuard` for its caller's token.
The guard trips at once when the registry revokes the token (``TokenRegistry.on_revoke``) and, through a
ticker that asks ``TokenRegistry.valid`` every half second, when it expires (or is revoked by anything
that bypassed the hook).  The watch then sends ``{"type": "ERROR", "object": {"code": "Unauthenticated",
"message": "token revoked"}}`` (or "token expired") and ends.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import Any

from berth.control.tokens import TokenRegistry
from berth.errors import NotFound, Unauthenticated

TICK = 0.5  # seconds between validity checks of the tokens open watches hold


class WatchGuard:
    def __init__(self, guards: Guards, name: str, wake: asyncio.Event | None) -> None:
        self._guards = guards
        self.name = name
        self.reason: str | None = None  # "revoked" | "expired" once tripped
        self.tripped = asyncio.Event()
        self._wake = wake

    def trip(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
            self.tripped.set()
            if self._wake is not None:
                self._wake.set()

    def error(self) -> Unauthenticated:
        return Unauthenticated(f"token {self.reason or 'revoked'}", details={"token": self.name})

    def event(self) -> dict[str, Any]:
        """The last event of a watch whose token no longer holds."""
        return {"type": "ERROR", "object": self.error().to_dict()}

    async def race(self, awaitable: Awaitable[Any], timeout: float) -> bool:
        """Wait for ``awaitable``, the guard tripping or ``timeout``: True when ``awaitable`` finished."""
        waited = asyncio.ensure_future(awaitable)
        tripped = asyncio.ensure_future(self.tripped.wait())
        try:
            done, _ = await asyncio.wait({waited, tripped}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (waited, tripped):
                if not task.done():
                    task.cancel()
            # a Condition.wait re-acquires its lock when cancelled: let it, before the caller releases it
            await asyncio.gather(waited, tripped, return_exceptions=True)
        return waited in done

    def __enter__(self) -> WatchGuard:
        return self

    def __exit__(self, *exc: object) -> None:
        self._guards.discard(self)


class Guards:
    """Every open watch's guard, by token name."""

    def __init__(self, tokens: TokenRegistry) -> None:
        self.tokens = tokens
        self._open: dict[str, set[WatchGuard]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ticker: asyncio.Task[None] | None = None
        tokens.on_revoke.append(self._revoked)

    def open(self, name: str, wake: asyncio.Event | None = None) -> WatchGuard:
        guard = WatchGuard(self, name, wake)
        self._open.setdefault(name, set()).add(guard)
        self._loop = asyncio.get_running_loop()
        if self._ticker is None or self._ticker.done():
            self._ticker = self._loop.create_task(self._tick(), name="watch-token-ticker")
        if not self.tokens.valid(name):  # revoked between the request's check and now
            guard.trip(self._why(name))
        return guard

    def discard(self, guard: WatchGuard) -> None:
        guards = self._open.get(guard.name)
        if guards is not None:
            guards.discard(guard)
            if not guards:
                del self._open[guard.name]

    def close(self) -> None:
        with contextlib.suppress(ValueError):
            self.tokens.on_revoke.remove(self._revoked)
        if self._ticker is not None:
            self._ticker.cancel()

    def _trip(self, name: str, reason: str) -> None:
        for guard in list(self._open.get(name, ())):
            guard.trip(reason)

    def _revoked(self, name: str) -> None:  # may be called from any thread
        loop = self._loop
        if loop is not None and not loop.is_closed() and name in self._open:
            loop.call_soon_threadsafe(self._trip, name, "revoked")

    def _why(self, name: str) -> str:
        try:
            return "revoked" if self.tokens.get(name).revoked is not None else "expired"
        except NotFound:
            return "revoked"

    async def _tick(self) -> None:
        while self._open:
            await asyncio.sleep(TICK)
            for name in list(self._open):
                if not await asyncio.to_thread(self.tokens.valid, name):
                    self._trip(name, self._why(name))
