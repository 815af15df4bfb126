"""The routing table a gateway serves from, and the watcher that follows the control plane's.

A table is compiled once when it arrives (one :class:`Target` per model, with its upstream URLs
built), so a request costs one dict lookup.  :class:`TableWatcher` streams the control plane's
``routes/watch`` NDJSON and swaps the table on every line; when the control plane is away it retries
with backoff and the gateway keeps serving from the last table it had.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from pydantic import ValidationError
from yarl import URL

from berth.errors import BerthError, InvalidInput, ModelNotReady, NotFound, Unavailable
from berth.wire.routes import ROUTES_WATCH_PATH, ModelRoute, RoutingTable

log = logging.getLogger("berth.gateway")

_LISTED = 20  # model names quoted in a 404 before "and N more"


@dataclass(frozen=True, slots=True)
class Target:
    """One model as routed: where it is loaded and the upstream URLs, built once per table."""

    key: tuple[str, str]  # (namespace, name)
    namespace: str
    name: str
    state: str
    reason: str
    addresses: tuple[str, ...]  # host:port of the replicas holding it, loaded
    route: str  # the x-seldon-route answer header
    urls: Mapping[str, Mapping[str, URL]]  # kind ("infer", "meta", "ready") -> address -> URL

    def url(self, address: str, kind: str, version: str | None = None) -> URL:
        if version is None:
            return self.urls[kind][address]
        tail = {"infer": "/infer", "meta": "", "ready": "/ready"}[kind]
        return URL.build(scheme="http", authority=address,
                         path=f"/v2/models/{self.name}/versions/{version}{tail}")


def compile_route(route: ModelRoute) -> Target:
    addresses = tuple(dict.fromkeys(e.http for e in route.endpoints))
    base = f"/v2/models/{route.name}"
    urls = {kind: {a: URL.build(scheme="http", authority=a, path=base + tail) for a in addresses}
            for kind, tail in (("infer", "/infer"), ("meta", ""), ("ready", "/ready"))}
    return Target(key=(route.namespace, route.name), namespace=route.namespace, name=route.name,
                  state=route.state, reason=route.reason, addresses=addresses, route=f":{route.name}:",
                  urls=urls)


class RoutingTableHolder:
    """The current routing table, compiled for lookups; ready once a table has been received."""

    def __init__(self, table: RoutingTable | None = None) -> None:
        self.table: RoutingTable | None = None
        self.problem = "no routing table received yet"
        self._targets: dict[tuple[str, str], Target] = {}
        self._names: dict[str, tuple[str, ...]] = {}
        if table is not None:
            self.set(table)

    @property
    def ready(self) -> bool:
        return self.table is not None

    @property
    def revision(self) -> int:
        return self.table.revision if self.table is not None else -1

    def set(self, table: RoutingTable) -> None:
        """Replace the table (compiled first, swapped in one assignment)."""
        targets = {(r.namespace, r.name): compile_route(r) for r in table.models}
        names: dict[str, list[str]] = {}
        for namespace, name in targets:
            names.setdefault(namespace, []).append(name)
        self._targets = targets
        self._names = {ns: tuple(sorted(found)) for ns, found in names.items()}
        self.table = table

    def resolve(self, namespace: str, name: str) -> Target:
        """The target serving ``name`` in ``namespace``; NotFound, ModelNotReady or Unavailable."""
        target = self._targets.get((namespace, name))
        if target is not None and target.addresses:
            return target
        if self.table is None:
            raise Unavailable(f"the gateway has no routing table yet ({self.problem}); it cannot route "
                              f"model {name} until the control plane answers",
                              details={"model": name, "namespace": namespace})
        if target is None:
            raise self._not_found(namespace, name)
        reason = target.reason or "no replica has it loaded"
        raise ModelNotReady(f"model {name} in namespace {namespace} is not ready: {target.state}: {reason}",
                            details={"model": name, "namespace": namespace, "state": target.state,
                                     "reason": target.reason})

    def _not_found(self, namespace: str, name: str) -> NotFound:
        here = self._names.get(namespace, ())
        listed = ", ".join(here[:_LISTED]) or "none"
        if len(here) > _LISTED:
            listed += f" and {len(here) - _LISTED} more"
        return NotFound(f"model {name} not found in namespace {namespace}; models here: {listed}",
                        details={"model": name, "namespace": namespace, "models": list(here)})


def load_routes(path: Path) -> RoutingTable:
    """A static routing table from a JSON or YAML file (``berth gateway --routes FILE``)."""
    try:
        data: Any = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise InvalidInput(f"cannot read routes file {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise InvalidInput(f"routes file {path} is not valid JSON or YAML: {exc}") from exc
    try:
        return RoutingTable.model_validate(data if data is not None else {})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise InvalidInput(f"routes file {path} is not a routing table: {problems}") from exc


def describe_connect_error(who: str, exc: BaseException) -> str:
    """``"<who> refused connection"`` and friends, for a connection that could not be opened."""
    cause = getattr(exc, "os_error", None) or exc.__cause__ or exc
    if isinstance(cause, ConnectionRefusedError):
        return f"{who} refused connection"
    if isinstance(exc, TimeoutError) or isinstance(cause, TimeoutError):
        return f"{who} did not accept a connection in time"
    return f"{who} could not be reached: {getattr(cause, 'strerror', None) or cause}"


class TableWatcher:
    """Follows ``control_url`` + ROUTES_WATCH_PATH into a holder; reconnects with backoff forever."""

    def __init__(self, control_url: str, holder: RoutingTableHolder | None = None, *,
                 backoff_initial: float = 0.2, backoff_max: float = 5.0,
                 connect_timeout: float = 5.0) -> None:
        self.control_url = control_url.rstrip("/")
        self.url = self.control_url + ROUTES_WATCH_PATH
        self.holder = holder if holder is not None else RoutingTableHolder()
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.connect_timeout = connect_timeout
        self.connected = False

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the stream until ``stop`` is set."""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            follow = asyncio.create_task(self._follow_forever(session))
            stopping = asyncio.create_task(stop.wait())
            try:
                await asyncio.wait({follow, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (follow, stopping):
                    task.cancel()
                await asyncio.gather(follow, stopping, return_exceptions=True)
        if follow.done() and not follow.cancelled() and follow.exception() is not None:
            raise follow.exception()  # type: ignore[misc]

    async def _follow_forever(self, session: aiohttp.ClientSession) -> None:
        delay = self.backoff_initial
        reported = ""
        while True:
            try:
                received = await self._follow(session)
                problem = f"control plane at {self.control_url} closed the routes stream"
                if received:
                    delay = self.backoff_initial
            except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
                problem = describe_connect_error(f"control plane at {self.control_url}", exc)
            except (aiohttp.ClientError, TimeoutError, BerthError) as exc:
                problem = f"routes stream from {self.url} failed: {exc or type(exc).__name__}"
            self.connected = False
            self.holder.problem = problem
            if problem != reported:
                kept = f"; serving table revision {self.holder.revision}" if self.holder.ready else ""
                log.warning("%s; retrying with backoff%s", problem, kept)
                reported = problem
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.backoff_max)

    async def _follow(self, session: aiohttp.ClientSession) -> int:
        """Read one stream to its end; returns how many tables it carried."""
        received = 0
        async with session.get(self.url, headers={"Accept": "application/x-ndjson"}) as resp:
            if resp.status != 200:
                text = (await resp.text(errors="replace"))[:300]
                raise Unavailable(f"control plane answered HTTP {resp.status}: {text}")
            self.connected = True
            log.info("following routes from %s", self.url)
            buf = bytearray()
            async for chunk in resp.content.iter_any():
                buf.extend(chunk)
                while (end := buf.find(b"\n")) >= 0:
                    line = bytes(buf[:end])
                    del buf[: end + 1]
                    if line.strip():
                        self._apply(line)
                        received += 1
        return received

    def _apply(self, line: bytes) -> None:
        try:
            table = RoutingTable.model_validate_json(line)
        except ValidationError as exc:
            raise InvalidInput(f"a line of the routes stream is not a routing table: "
                               f"{exc.errors()[0]['msg']} ({line[:120]!r})") from exc
        self.holder.set(table)
        self.holder.problem = ""
