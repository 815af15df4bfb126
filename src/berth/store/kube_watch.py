"""List + watch of one kind, feeding the Kubernetes store's event log (an informer, in client-go's words).

:class:`Watcher` lists its kind once (:meth:`Watcher.prime`), then watches from the list's
resourceVersion in a guarded task: a stream that ends or breaks is reopened from the last resourceVersion
seen (bookmarks included) with backoff; ``410 Expired`` re-lists and logs the differences.
:class:`EventLog` keeps the events in revision order, drops an event already logged for the same object
and resourceVersion (a resumed watch may replay one), bounds its length (older revisions then answer
:class:`~berth.errors.Expired`), and calls listeners.
"""

from __future__ import annotations

import asyncio
import bisect
import builtins
import contextlib
import json
import logging
import threading
from typing import Any

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException

from berth.errors import Expired
from berth.kubeapi import Api, KindApi
from berth.store.base import Event, EventType, Listener
from berth.store.common import Key, event_matches

log = logging.getLogger("berth.store.kubernetes")
BACKOFF = (0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def _key(obj: dict[str, Any]) -> Key:
    meta = obj["metadata"]
    return str(obj["kind"]), str(meta.get("namespace") or ""), str(meta["name"])


class EventLog:
    """Events in revision order, bounded; thread-safe; listeners called with each new event."""

    def __init__(self, max_events: int) -> None:
        self.max_events = max_events
        self._events: list[Event] = []
        self._seen: dict[Key, str] = {}  # the last resourceVersion logged per object
        self._floor = 0  # events_since(r) with r below this answers Expired
        self.revision = 0
        self._listeners: list[Listener] = []
        self._cond = threading.Condition()

    def start_at(self, revision: int) -> None:
        with self._cond:
            self._floor = max(self._floor, revision) if not self._events else self._floor
            self.revision = max(self.revision, revision)

    def known(self, obj: dict[str, Any]) -> None:
        """Mark ``obj`` as listed (no event: it was there before the log began)."""
        with self._cond:
            self._seen[_key(obj)] = str(obj["metadata"]["resourceVersion"])

    def seen(self, obj: dict[str, Any]) -> dict[str, Any]:
        """A write of ours: the revision it reached (events follow through the watch)."""
        with self._cond:
            self.revision = max(self.revision, int(obj["metadata"]["resourceVersion"]))
        return obj

    def last_version(self, key: Key) -> str | None:
        with self._cond:
            return self._seen.get(key)

    def record(self, event_type: EventType, obj: dict[str, Any], revision: int | None = None) -> bool:
        """Log one event (False when already logged); listeners are called outside the lock."""
        key = _key(obj)
        rv = str(obj["metadata"]["resourceVersion"])
        with self._cond:
            if event_type != "DELETED" and self._seen.get(key) == rv:
                return False
            if event_type == "DELETED":
                if key not in self._seen:
                    return False
                del self._seen[key]
            else:
                self._seen[key] = rv
            event = Event(event_type, revision if revision is not None else int(rv), obj)
            bisect.insort(self._events, event, key=lambda e: e.revision)
            while len(self._events) > self.max_events:
                self._floor = self._events.pop(0).revision
            self.revision = max(self.revision, event.revision)
            listeners = builtins.list(self._listeners)
            self._cond.notify_all()
        for listener in listeners:
            try:
                listener(event)
            except Exception:  # a listener's bug must not stop the watch
                log.exception("store listener failed on %s %s", event.type, key)
        return True

    def since(self, revision: int, *, kinds: tuple[str, ...] | None, namespace: str | None,
              limit: int) -> builtins.list[Event]:
        with self._cond:
            if revision < self._floor:
                raise Expired(f"revision {revision} is older than the oldest event kept ({self._floor}); "
                              "list again and watch from the list's revision")
            start = bisect.bisect_right(self._events, revision, key=lambda e: e.revision)
            found = [e for e in self._events[start:] if event_matches(e.kind, e.namespace, kinds, namespace)]
            return found[:limit]

    def wait_for(self, revision: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: bool(self._events) and self._events[-1].revision >= revision,
                                       timeout)

    def add_listener(self, listener: Listener) -> None:
        with self._cond:
            self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        with self._cond:
            if listener in self._listeners:
                self._listeners.remove(listener)


class Watcher:
    def __init__(self, api: Api, kind: KindApi, namespace: str | None, events: EventLog, timeout_s: int) -> None:
        self.api, self.kind, self.namespace, self.events, self.timeout_s = api, kind, namespace, events, timeout_s
        self.version = "0"
        self.relists = 0
        self.resumes = 0  # watches reopened from a resourceVersion (after an end, a break or an error)
        self._opened = False
        self._task: asyncio.Task[None] | None = None
        self._objects: dict[Key, dict[str, Any]] = {}

    async def _list(self) -> tuple[dict[Key, dict[str, Any]], str]:
        found = await self.api.call("GET", self.kind.path(self.namespace))
        items = {}
        for item in found.get("items") or []:
            item.setdefault("kind", self.kind.kind)
            item.setdefault("apiVersion", self.kind.api_version)
            items[_key(item)] = item
        return items, str((found.get("metadata") or {}).get("resourceVersion") or "0")

    async def prime(self) -> None:
        self._objects, self.version = await self._list()
        for obj in self._objects.values():
            self.events.known(obj)
        self.events.start_at(int(self.version))

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._task = loop.create_task(self._run(), name=f"berth-kube-watch-{self.kind.plural}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def relist(self) -> None:
        """After 410: list again and log what changed while the watch could not say."""
        self.relists += 1
        items, version = await self._list()
        for key, obj in items.items():
            if self.events.last_version(key) != str(obj["metadata"]["resourceVersion"]):
                self.events.record("MODIFIED" if key in self._objects else "ADDED", obj)
        for key, obj in self._objects.items():
            if key not in items:
                self.events.record("DELETED", obj, revision=int(version))
        self._objects, self.version = items, version

    async def _run(self) -> None:
        failures = 0
        while True:
            try:
                await self._stream()
                failures = 0
            except asyncio.CancelledError:
                raise
            except ApiException as exc:
                if exc.status == 410:
                    log.info("watch of %s expired at resourceVersion %s; listing again", self.kind.plural,
                             self.version)
                    await self._guarded(self.relist())
                    continue
                failures += 1
                log.warning("watch of %s failed (%s %s); retrying", self.kind.plural, exc.status, exc.reason)
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
                failures += 1
                log.warning("watch of %s broke (%s: %s); resuming from resourceVersion %s", self.kind.plural,
                            type(exc).__name__, exc, self.version)
            except Exception:
                failures += 1
                log.exception("watch of %s failed; resuming from resourceVersion %s", self.kind.plural,
                              self.version)
            if failures:
                await asyncio.sleep(BACKOFF[min(failures, len(BACKOFF)) - 1])

    async def _guarded(self, coro: Any) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("listing %s failed (%s); retrying", self.kind.plural, exc)
            await asyncio.sleep(BACKOFF[2])  # the next watch from the same version answers 410 again

    async def _stream(self) -> None:
        if self._opened:
            self.resumes += 1
        self._opened = True
        response = await self.api.watch(self.kind.path(self.namespace), self.version, self.timeout_s)
        try:
            async for raw in response.content:
                line = raw.strip()
                if not line:
                    continue
                event = json.loads(line)
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    raise ApiException(status=int(obj.get("code") or 500), reason=str(obj.get("message")))
                version = str((obj.get("metadata") or {}).get("resourceVersion") or self.version)
                if event.get("type") == "BOOKMARK":
                    self.version = version
                    continue
                obj.setdefault("kind", self.kind.kind)
                obj.setdefault("apiVersion", self.kind.api_version)
                key = _key(obj)
                if event["type"] == "DELETED":
                    self._objects.pop(key, None)
                else:
                    self._objects[key] = obj
                self.events.record(event["type"], obj)
                self.version = version
        finally:
            response.release()
