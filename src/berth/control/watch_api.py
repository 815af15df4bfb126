"""``GET /api/v1/watch``: resource events as NDJSON lines, or WebSocket text frames on upgrade.

Without ``since`` the stream starts with what exists (ADDED events at the current revision), then every
change.  Only what the caller may read is sent: with a namespace the caller needs read there (else 403
before the stream starts); without one, other namespaces' events are skipped, and Secrets only reach admins
of their namespace.  The stream ends with an ERROR event when the revision asked for was compacted
(``Expired``) or the caller's token is revoked or expires (``Unauthenticated``, within a second).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from aiohttp import web

from berth.control.auth import Auth
from berth.control.secrets import redact
from berth.control.slices import Slicer
from berth.errors import BerthError, InvalidInput
from berth.resources.identity import SECRET_KINDS
from berth.resources.kinds import ALL_KINDS, kind_from_alias
from berth.resources.names import check_name
from berth.store.base import Event, Store
from berth.store.offloop import off_loop, on_loop

Visible = Callable[[dict[str, Any]], bool]


def shown(doc: dict[str, Any]) -> dict[str, Any]:
    """A document as the API answers it: Secrets redacted."""
    return redact(doc) if doc.get("kind") == "Secret" else doc


def visibility(auth: Auth, request: web.Request, ns: str | None, kinds: tuple[str, ...] | None,
               action: str) -> Visible:
    """What a list or watch shows.  With a namespace: 403 unless the caller may read there (each kind
    named; Secrets need admin).  Without one: only the namespaces it may read, never a 403."""
    if ns is not None:
        check_name(ns, what="namespace", label=True)
        for kind in kinds or ("",):
            auth.require(request, "read", ns, action=action, kind=kind)
    read, secrets = auth.readable(request), auth.readable(request, "Secret")

    def visible(doc: dict[str, Any]) -> bool:
        seen = secrets if doc.get("kind") in SECRET_KINDS else read
        return seen is None or (doc.get("metadata") or {}).get("namespace") in seen

    return visible


class Watches:
    """Every open resource watch of one control API (each has a wake-up the store's listener sets)."""

    def __init__(self, store: Store, auth: Auth) -> None:
        self.store = store
        self.auth = auth
        self._wakes: set[asyncio.Event] = set()
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop the watches run on
        self.closing = False
        store.add_listener(self._on_event)

    def close(self) -> None:
        """End every open watch (on shutdown)."""
        self.closing = True
        self._on_event(None)

    def _on_event(self, ev: Event | None) -> None:
        """The store's listener, called in the writer's thread: the wake-ups are set on the watches' loop."""
        on_loop(self._loop, self._wake_all)

    def _wake_all(self) -> None:
        for wake in list(self._wakes):
            wake.set()

    def _listed(self, kinds: tuple[str, ...] | None, ns: str | None) -> tuple[int, list[dict[str, Any]]]:
        """The revision and the documents a watch starts with (in the store thread)."""
        return self.store.revision(), [doc for k in kinds or ALL_KINDS for doc in self.store.list(k, ns)]

    def _events(self, since: int, kinds: tuple[str, ...] | None, ns: str | None) -> tuple[int, list[Event]]:
        """The revision now and the events after ``since`` (in the store thread)."""
        return self.store.revision(), self.store.events_since(since, kinds=kinds, namespace=ns)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        kinds = tuple(kind_from_alias(k) for k in request.query.get("kinds", "").split(",") if k) or None
        ns = request.query.get("namespace") or None
        since_q = request.query.get("since")
        if since_q is not None and not since_q.isdigit():
            raise InvalidInput(f"since: expected a resourceVersion (integer), got {since_q!r}")
        since = int(since_q) if since_q is not None else None
        visible = visibility(self.auth, request, ns, kinds, "watch")
        if since is not None:  # Expired → 410 now (read in the store thread, as every store call of a watch)
            await off_loop(self.store.events_since, since, kinds=kinds, namespace=ns, limit=1)
        ws = web.WebSocketResponse(heartbeat=20.0)
        use_ws = ws.can_prepare(request).ok
        if use_ws:
            await ws.prepare(request)
            resp: web.StreamResponse = ws
        else:
            resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
            await resp.prepare(request)

        async def send(payload: dict[str, Any]) -> None:
            line = json.dumps(payload)
            if use_ws:
                await ws.send_str(line)
            else:
                await resp.write(line.encode() + b"\n")

        wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._wakes.add(wake)
        reader: asyncio.Task[None] | None = None
        if use_ws:  # read the client's frames, so a close is answered at once and ends the watch
            async def drain() -> None:
                async for _ in ws:
                    pass
                wake.set()

            reader = asyncio.create_task(drain())
        guard = self.auth.guard(request, wake)  # trips (and wakes us) when the caller's token is revoked
        slicer = Slicer()  # a burst of events (1,000 statuses written) is sent in slices: the loop serves others
        try:
            if since is None:
                cursor, docs = await off_loop(self._listed, kinds, ns)
                for doc in docs:
                    await slicer.tick()
                    if visible(doc):
                        await send({"type": "ADDED", "revision": cursor, "object": shown(doc)})
            else:
                cursor = since
            while not self.closing and not (use_ws and ws.closed) and guard.reason is None:
                wake.clear()
                head, events = await off_loop(self._events, cursor, kinds, ns)
                for ev in events:
                    await slicer.tick()
                    cursor = ev.revision
                    if ev.object.get("kind") not in (kinds or ALL_KINDS):  # e.g. quotas: not a resource kind
                        continue
                    if visible(ev.object):  # other tenants' events are never sent
                        await send({"type": ev.type, "revision": ev.revision, "object": shown(ev.object)})
                if events:
                    continue
                cursor = max(cursor, head)  # nothing matched up to head: never fall behind compaction
                try:
                    await asyncio.wait_for(wake.wait(), timeout=15.0)
                except TimeoutError:
                    if not use_ws:
                        await resp.write(b"\n")  # keep-alive
            if guard.reason is not None:
                raise guard.error()
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        except BerthError as err:  # e.g. Expired while streaming, or the token revoked
            await send({"type": "ERROR", "object": err.to_dict()})
            if use_ws:
                await ws.close()
        finally:
            guard.__exit__()
            self._wakes.discard(wake)
            if reader is not None:
                reader.cancel()
        return resp
