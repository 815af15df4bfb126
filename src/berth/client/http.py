"""Typed HTTP client of the control API (used by the CLI, tests and, later, the operator).

Every call carries ``Authorization: Bearer <token>``: the token given, else ``BERTH_TOKEN``, else the one
`berth up` registered for this address (:mod:`berth.client.credentials`).
"""

from __future__ import annotations

import builtins
import json
import os
import time
from collections.abc import Callable, Generator, Iterator
from typing import Any

import httpx

from berth import errors
from berth.client.credentials import find_token
from berth.errors import BerthError, Unavailable
from berth.resources.kinds import ALL_KINDS

DEFAULT_ADDRESS = "http://127.0.0.1:9004"
DEFAULT_GATEWAY = "http://127.0.0.1:9000"


def address_from_env(explicit: str | None = None) -> str:
    addr = explicit or os.environ.get("BERTH_ADDRESS") or DEFAULT_ADDRESS
    return addr if "://" in addr else f"http://{addr}"


def _plural(kind: str) -> str:
    return kind.lower() + "s"


class BerthClient:
    def __init__(self, address: str | None = None, *, timeout: float = 30.0, token: str | None = None) -> None:
        self.address = address_from_env(address).rstrip("/")
        self.token = token or find_token(self.address)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._http = httpx.Client(base_url=self.address, timeout=timeout, headers=headers)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> BerthClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self._http.request(method, path, **kw)
        except httpx.ConnectError as exc:
            raise Unavailable(f"cannot reach the control plane at {self.address}: {connect_reason(exc)}; start it with "
                              "`berth up` (or `berth control`), or point --server / BERTH_ADDRESS at it") from exc
        except httpx.TimeoutException as exc:
            raise errors.Timeout(f"the control plane at {self.address} did not answer {method} {path} "
                                 f"in time") from exc
        return self._decode(r)

    def _decode(self, r: httpx.Response) -> Any:
        try:
            return _decode(r)
        except errors.Unauthenticated as exc:
            raise errors.Unauthenticated(unauthenticated_text(self.address, self.token is not None),
                                         details=exc.details) from exc

    def version(self) -> dict[str, Any]:
        return dict(self._request("GET", "/api/v1/version"))

    def apply(self, documents: list[dict[str, Any]], *, dry_run: bool = False) -> dict[str, Any]:
        return dict(self._request("POST", "/api/v1/apply",
                                  json={"documents": documents, "dryRun": dry_run}))

    def list(self, kind: str, namespace: str | None = None,
             selector: str | None = None) -> builtins.list[dict[str, Any]]:
        return self.list_at(kind, namespace, selector)[0]

    def list_at(self, kind: str, namespace: str | None = None,
                selector: str | None = None) -> tuple[builtins.list[dict[str, Any]], int]:
        """Items and the store revision they were read at (to watch from)."""
        params = {k: v for k, v in (("namespace", namespace), ("selector", selector)) if v}
        path = "/api/v1/all" if kind == "all" else f"/api/v1/{_plural(kind)}"
        body = self._request("GET", path, params=params)
        return list(body["items"]), int(body.get("revision", 0))

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        return dict(self._request("GET", f"/api/v1/namespaces/{namespace}/{_plural(kind)}/{name}"))

    def delete(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        return dict(self._request("DELETE", f"/api/v1/namespaces/{namespace}/{_plural(kind)}/{name}"))

    def agents(self, namespace: str | None = None) -> builtins.list[dict[str, Any]]:
        params = {"namespace": namespace} if namespace else {}
        return list(self._request("GET", "/api/v1/agents", params=params)["items"])

    def storage_check(self, namespace: str, name: str) -> dict[str, Any]:
        """The control plane's check of a model's storage: {ok, uri, checks: [{name, ok, detail}], message}."""
        return dict(self._request("GET", f"/api/v1/namespaces/{namespace}/models/{name}/storage"))

    def routes(self) -> dict[str, Any]:
        return dict(self._request("GET", "/api/v1/routes"))

    # --- tokens and audit (admins) ----------------------------------------------------------------------

    def create_token(self, name: str, *, grants: dict[str, str] | None = None, kind: str = "user",
                     agent: str | None = None, expires_in: str | float | None = None) -> dict[str, Any]:
        """A new token: the answer's ``token`` is the only time it is seen."""
        body: dict[str, Any] = {"name": name, "kind": kind, "grants": grants or {}}
        if agent:
            body["agent"] = agent
        if expires_in is not None:
            body["expiresIn"] = expires_in
        return dict(self._request("POST", "/api/v1/tokens", json=body))

    def whoami(self) -> dict[str, Any]:
        """Who the control plane takes this client's token for: {name, kind, grants, agent}."""
        return dict(self._request("GET", "/api/v1/whoami"))

    def tokens(self) -> builtins.list[dict[str, Any]]:
        return list(self._request("GET", "/api/v1/tokens")["items"])

    def revoke_token(self, name: str) -> dict[str, Any]:
        return dict(self._request("DELETE", f"/api/v1/tokens/{name}"))

    def audit(self, namespace: str | None = None, since: str | float | None = None,
              limit: int | None = None) -> builtins.list[dict[str, Any]]:
        params = {k: str(v) for k, v in (("namespace", namespace), ("since", since), ("limit", limit)) if v}
        return list(self._request("GET", "/api/v1/audit", params=params)["items"])

    def watch(self, kinds: tuple[str, ...] = (), namespace: str | None = None,
              since: int | None = None, *,
              idle: float | None = None) -> Generator[dict[str, Any], None, None]:
        """Events as dicts ({type, revision, object}); the first ones list what exists (since=None).

        ``idle``: raise :class:`berth.errors.Timeout` when nothing (not even a keep-alive) arrives for
        this many seconds (default: wait for ever); watch again from the last revision seen to go on."""
        params: dict[str, str] = {}
        if kinds:
            params["kinds"] = ",".join(kinds)
        if namespace:
            params["namespace"] = namespace
        if since is not None:
            params["since"] = str(since)
        try:
            with self._http.stream("GET", "/api/v1/watch", params=params,
                                   timeout=httpx.Timeout(30.0, read=idle)) as r:
                if r.status_code >= 400:
                    r.read()
                    self._decode(r)
                for line in r.iter_lines():
                    if line.strip():
                        yield json.loads(line)
        except httpx.ConnectError as exc:
            raise Unavailable(f"cannot reach the control plane at {self.address}: {connect_reason(exc)}") from exc
        except httpx.ReadTimeout as exc:  # only with ``idle``: nothing came for that long
            raise errors.Timeout(f"the watch stream from {self.address} was idle for {idle or 0:g}s") from exc
        except httpx.TransportError as exc:  # the stream broke after it began
            raise Unavailable(f"the watch stream from {self.address} broke: {connect_reason(exc)}") from exc

    def watch_resuming(self, kinds: tuple[str, ...] = (), namespace: str | None = None, since: int = 0, *,
                       note: Callable[[str], None] | None = None,
                       backoff: tuple[float, float] = (0.5, 5.0)) -> Iterator[dict[str, Any]]:
        """Events from ``since`` on, for ever, as a client-go reflector follows them.

        When the stream ends or breaks (or the control plane cannot be reached) it watches again from the
        last revision seen, waiting ``backoff[0]`` seconds, doubling up to ``backoff[1]``.  When that
        revision was compacted (410, or an ERROR event saying Expired) it lists again, yields every listed
        object as ADDED and watches from the list's revision.  Any other ERROR event is raised.
        ``note`` receives one line each time it reconnects or lists again.
        """
        delay, relist = backoff[0], False
        while True:
            try:
                if relist:
                    listed: builtins.list[dict[str, Any]] = []
                    revisions: builtins.list[int] = []
                    for kind in kinds or ALL_KINDS:
                        items, rev = self.list_at(kind, namespace)
                        listed.extend(items)
                        revisions.append(rev)
                    since, relist = min(revisions), False  # the earliest list: nothing after it is missed
                    for obj in listed:
                        yield {"type": "ADDED", "revision": since, "object": obj}
                for ev in self.watch(kinds, namespace, since=since):
                    if ev.get("type") == "ERROR":
                        raise errors.from_dict(ev.get("object") or {})
                    since = max(since, int(ev.get("revision") or 0))
                    delay = backoff[0]
                    yield ev
                why = "the stream ended"
            except errors.Expired:
                if note is not None:
                    note(f"watch: revision {since} is no longer kept by the control plane; listing again")
                relist = True
                continue
            except (Unavailable, errors.Timeout) as exc:
                why = exc.message.split(";")[0]
            if note is not None:
                note(f"watch: {why}; watching again from revision {since} in {delay:g}s")
            time.sleep(delay)
            delay = min(delay * 2, backoff[1])


def unauthenticated_text(address: str, sent: bool) -> str:
    """One line: why the control plane refused us and how to get a token."""
    how = ("set BERTH_TOKEN to a token, run `berth up` as this user (the CLI then finds its token with no "
           "flags), or ask an admin for one (`berth token create NAME -n NAMESPACE --role ROLE`)")
    if sent:
        return f"the control plane at {address} refused the token (unknown, expired or revoked): {how}"
    return f"no token for the control plane at {address}: {how}"


def connect_reason(exc: Exception) -> str:
    text = str(exc)
    if "Connection refused" in text or "ECONNREFUSED" in text or "[Errno 111]" in text:
        return "connection refused"
    return text or type(exc).__name__


def _decode(r: httpx.Response) -> Any:
    try:
        body = r.json()
    except ValueError:
        body = None
    if r.status_code >= 400:
        if isinstance(body, dict) and "code" in body:
            raise errors.from_dict(body, status=r.status_code)
        raise BerthError(f"HTTP {r.status_code} from {r.request.url}: {r.text[:200]}")
    return body
