"""What the CLI reads straight from a Kubernetes cluster, as kubectl would (``--kubeconfig``/``KUBECONFIG``,
``--context``): the objects `berth doctor` evaluates the namespace's network with, and Berth's resources
for ``berth get``, ``describe`` and ``wait`` (:class:`KubeClient`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException

from berth.client.http import BerthClient
from berth.errors import InvalidInput, Timeout, Unavailable
from berth.kube.crds import GROUP, VERSION
from berth.kubeapi import KIND_APIS, Api, as_error, connect


@dataclass(frozen=True)
class NetworkView:
    policies: list[dict[str, Any]]  # NetworkPolicies of the namespace and of the control plane's
    namespaces: dict[str, dict[str, str]]  # every namespace's labels
    servers: list[str]  # the namespace's Servers
    host: str


async def _read(kubeconfig: str | None, context: str | None, namespace: str, control_namespace: str,
                timeout: float) -> NetworkView:
    api = Api(await connect(kubeconfig, context), timeout)
    try:
        policies: list[dict[str, Any]] = []
        for ns in dict.fromkeys((namespace, control_namespace)):
            found = await api.call("GET", f"/apis/networking.k8s.io/v1/namespaces/{ns}/networkpolicies")
            policies += found.get("items") or []
        listed = await api.call("GET", "/api/v1/namespaces")
        labels = {n["metadata"]["name"]: dict(n["metadata"].get("labels") or {}) for n in listed.get("items") or []}
        servers = await api.call("GET", f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/servers")
        return NetworkView(policies, labels, sorted(s["metadata"]["name"] for s in servers.get("items") or []),
                           api.host)
    except Exception as exc:
        raise as_error(exc, f"read the network of namespace {namespace}", api.host) from exc
    finally:
        await api.close()


def read_network(kubeconfig: str | None, context: str | None, namespace: str, *,
                 control_namespace: str = "berth-system", timeout: float = 15.0) -> NetworkView:
    """NetworkPolicies, namespace labels and Servers, read from the cluster (needs list on each)."""
    return asyncio.run(_read(kubeconfig, context, namespace, control_namespace, timeout))


REDACTED = "<redacted>"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def _redacted(doc: dict[str, Any]) -> dict[str, Any]:
    """A Secret as Berth shows one: its keys, never a value (nor the annotation kubectl copies them into)."""
    if doc.get("kind") != "Secret":
        return doc
    out = {k: v for k, v in doc.items() if k not in ("data", "stringData")}
    out["data"] = {key: REDACTED for key in {**(doc.get("data") or {}), **(doc.get("stringData") or {})}}
    meta = dict(out.get("metadata") or {})
    meta["annotations"] = {k: v for k, v in (meta.get("annotations") or {}).items() if k != LAST_APPLIED}
    out["metadata"] = meta
    return out


class KubeClient(BerthClient):
    """The read side of :class:`~berth.client.http.BerthClient` (get, list, watch) answered by a cluster's API
    server, as kubectl reads it: what ``berth get``, ``describe`` and ``wait`` need.  Berth's control plane in
    the cluster writes every status there, so they show what they show locally.  Anything else (apply,
    delete, tokens, agents) is the control plane's own API: it says so and names ``--server`` and kubectl."""

    def __init__(self, kubeconfig: str | None = None, context: str | None = None, *, timeout: float = 30.0) -> None:
        self._loop = asyncio.new_event_loop()
        self.timeout = timeout
        try:
            self._api = self._loop.run_until_complete(self._connect(kubeconfig, context, timeout))
        except BaseException:
            self._loop.close()
            raise
        self.address = f"{self._api.host} (Kubernetes API)"
        self.token = None

    @staticmethod
    async def _connect(kubeconfig: str | None, context: str | None, timeout: float) -> Api:
        return Api(await connect(kubeconfig, context), timeout)

    def close(self) -> None:
        if not self._loop.is_closed():
            self._loop.run_until_complete(self._api.close())
            self._loop.close()

    def __enter__(self) -> KubeClient:
        return self

    def _call(self, what: str, method: str, path: str, query: list[tuple[str, str]] | None = None) -> dict[str, Any]:
        try:
            return self._loop.run_until_complete(self._api.call(method, path, query=query))
        except Exception as exc:
            raise as_error(exc, what, self._api.host) from exc

    def _request(self, method: str, path: str, **kw: Any) -> Any:
        raise InvalidInput(f"{method} {path} is the Berth control plane's own API, which the Kubernetes API at "
                           f"{self._api.host} does not serve: use kubectl for writes (kubectl apply -f, kubectl "
                           "delete), or pass --server (or BERTH_ADDRESS) with the control plane's address, e.g. "
                           "through kubectl port-forward -n berth-system svc/berth-control 9004")

    def version(self) -> dict[str, Any]:
        return {"version": self._call("read the version", "GET", "/version").get("gitVersion", "?") + " (Kubernetes)"}

    def list_at(self, kind: str, namespace: str | None = None,
                selector: str | None = None) -> tuple[list[dict[str, Any]], int]:
        api = KIND_APIS.get(kind)
        if api is None:
            raise InvalidInput(f"kind {kind!r} is not read from Kubernetes by Berth; known: {', '.join(KIND_APIS)}")
        query = [("labelSelector", selector)] if selector else []
        found = self._call(f"list {kind}s{f' in {namespace}' if namespace else ''}", "GET", api.path(namespace),
                           query)
        items = [_redacted({"kind": kind, "apiVersion": api.api_version, **i}) for i in found.get("items") or []]
        return items, _revision(found)

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any]:
        api = KIND_APIS.get(kind)
        if api is None:
            raise InvalidInput(f"kind {kind!r} is not read from Kubernetes by Berth; known: {', '.join(KIND_APIS)}")
        doc = self._call(f"get {kind} {namespace}/{name}", "GET", api.path(namespace, name))
        return _redacted({"kind": kind, "apiVersion": api.api_version, **doc})

    def watch(self, kinds: tuple[str, ...] = (), namespace: str | None = None,
              since: int | None = None, *, idle: float | None = None) -> Generator[dict[str, Any], None, None]:
        """The API server's watch of one kind as the control API's events ({type, revision, object}); with
        ``since`` None, what exists first (listed, as ADDED).  A 410 raises Expired (list and watch again)."""
        if len(kinds) != 1:
            raise InvalidInput("against a Kubernetes cluster, watch one kind at a time (e.g. berth get models -w)")
        kind = kinds[0]
        if since is None:
            items, since = self.list_at(kind, namespace)
            for item in items:
                yield {"type": "ADDED", "revision": since, "object": item}
        api = KIND_APIS[kind]
        what = f"watch {kind}s{f' in {namespace}' if namespace else ''}"
        try:
            response = self._loop.run_until_complete(self._api.watch(api.path(namespace), str(since), 300))
        except Exception as exc:
            raise as_error(exc, what, self._api.host) from exc
        try:
            while True:
                try:
                    line = self._loop.run_until_complete(asyncio.wait_for(response.content.readline(), idle))
                except TimeoutError as exc:
                    raise Timeout(f"the watch stream from {self._api.host} was idle for {idle or 0:g}s") from exc
                except aiohttp.ClientError as exc:
                    raise Unavailable(f"{what}: the stream from {self._api.host} broke ({exc})") from exc
                if not line:
                    return
                if not line.strip():
                    continue
                event = json.loads(line)
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":
                    raise as_error(ApiException(status=int(obj.get("code") or 500), reason=str(obj.get("message"))),
                                   what, self._api.host)
                revision = int((obj.get("metadata") or {}).get("resourceVersion") or since)
                if event.get("type") == "BOOKMARK":
                    continue
                yield {"type": event.get("type"), "revision": revision,
                       "object": _redacted({"kind": kind, "apiVersion": api.api_version, **obj})}
        finally:
            response.release()


def _revision(listed: dict[str, Any]) -> int:
    text = str((listed.get("metadata") or {}).get("resourceVersion") or "0")
    return int(text) if text.isdigit() else 0
