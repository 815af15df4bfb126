"""What the CLI reads straight from a Kubernetes cluster, as kubectl would (``--kubeconfig``/``KUBECONFIG``,
``--context``): the objects `berth doctor` evaluates the namespace's network with, and Berth's resources
for ``berth get``, ``describe`` and ``wait`` (:class:`KubeClient`); the namespace's gateway for ``berth infer``
and ``doctor``, reached through the API server's service proxy (:class:`KubeGateway`)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException

from berth.client.gateway import InferResult, answer
from berth.client.http import BerthClient
from berth.errors import BerthError, InvalidInput, NotFound, Timeout, Unavailable
from berth.kube.crds import GROUP, VERSION
from berth.kube.flows import COMPONENT, GATEWAY
from berth.kube.workloads import GATEWAY_NAME
from berth.kubeapi import JSON_HEADERS, KIND_APIS, Api, as_error, connect


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


@dataclass(frozen=True)
class Proxied:
    """What came back through the API server's service proxy: the backend's answer, or the API server's own."""
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return self.body.decode(errors="replace")

    def api_status(self) -> str | None:
        """The API server's own refusal (a v1 Status: no such Service, no ready pod, not allowed), else None."""
        doc = self.json()
        if isinstance(doc, dict) and doc.get("kind") == "Status" and doc.get("apiVersion") == "v1":
            return str(doc.get("message") or doc.get("reason") or self.status)
        return None


def proxy_path(namespace: str, service: str, port: str, path: str) -> str:
    """kube-apiserver's service proxy: ``/api/v1/namespaces/NS/services/NAME:PORT/proxy/PATH`` (PORT by name)."""
    return f"/api/v1/namespaces/{namespace}/services/{service}:{port}/proxy/{path.lstrip('/')}"


def _proxy(client: KubeClient, method: str, namespace: str, service: str, port: str, path: str,
           body: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
           timeout: float | None = None) -> Proxied:
    """One request to ``service``'s ``port`` through the API server, with the kubeconfig's credentials (which the
    API server consumes; nothing of Berth's own travels in the URL)."""
    api = client._api

    async def run() -> Proxied:
        response: aiohttp.ClientResponse = await api.client.call_api(
            proxy_path(namespace, service, port, path), method, header_params={**JSON_HEADERS, **(headers or {})},
            body=body, auth_settings=["BearerToken"], _preload_content=False,
            _request_timeout=timeout or client.timeout)
        try:
            return Proxied(response.status, {k.lower(): v for k, v in response.headers.items()},
                           await response.read())
        finally:
            response.release()

    try:
        return client._loop.run_until_complete(run())
    except Exception as exc:
        raise as_error(exc, f"{method} {path} of Service {namespace}/{service} through the API server's proxy",
                       api.host) from exc


GATEWAY_PORT = "http"  # the gateway Service's REST port, by name (berth.kube.workloads.runtime_objects)
_AUTH_THROUGH_PROXY = ("; through the API server's service proxy the gateway gets no Berth token (the API server "
                       "takes the Authorization header for itself): reach the gateway directly instead, e.g. "
                       "kubectl port-forward -n {ns} svc/{svc} 9000, then --gateway 127.0.0.1:9000 with BERTH_TOKEN")


class KubeGateway:
    """``berth infer`` against a cluster: REST V2 to the namespace's gateway Service (made for its SeldonRuntime)
    through the API server's service proxy, as ``kubectl proxy`` users reach it; the same answers and errors
    as :class:`~berth.client.gateway.GatewayClient`, and one line when the namespace has no gateway."""

    def __init__(self, kube: KubeClient, *, service: str = GATEWAY_NAME, port: str = GATEWAY_PORT) -> None:
        self.kube, self.service, self.port = kube, service, port

    def close(self) -> None:
        self.kube.close()

    def get(self, namespace: str, path: str) -> Proxied:
        return self.request("GET", namespace, path)

    def request(self, method: str, namespace: str, path: str, body: dict[str, Any] | None = None,
                headers: dict[str, str] | None = None) -> Proxied:
        """A request to the gateway; the API server's own refusals become Berth errors naming what to do."""
        got = _proxy(self.kube, method, namespace, self.service, self.port, path, body, headers)
        refusal = got.api_status()
        if refusal is None:
            return got
        host = self.kube._api.host
        where = f"Service {namespace}/{self.service} through the Kubernetes API at {host}"
        if got.status == 404:
            raise NotFound(f"namespace {namespace} has no SeldonRuntime gateway ({where}: {refusal}); apply a "
                           f"SeldonRuntime there (kubectl apply -n {namespace} -f runtime.yaml, as in "
                           "seed-manifests/financial-ml/00-runtime.yaml) and Berth's control plane creates it")
        if got.status == 503:
            raise Unavailable(f"the gateway of namespace {namespace} has no ready pod ({where}: {refusal}); check "
                              f"kubectl get pods -n {namespace} -l {COMPONENT}={GATEWAY} and its logs")
        raise as_error(ApiException(status=got.status, reason=refusal), f"{method} {path} of {where}", host)

    def infer(self, model: str, payload: dict[str, Any], *, namespace: str = "default",
              headers: dict[str, str] | None = None) -> InferResult:
        started = time.perf_counter()
        got = self.request("POST", namespace, f"/v2/models/{model}/infer", payload,
                           {"seldon-namespace": namespace, **(headers or {})})
        elapsed = time.perf_counter() - started
        try:
            return answer(model, got.status, got.json(), got.headers.get("x-seldon-route", ""), elapsed)
        except BerthError as exc:
            if exc.code in ("Unauthenticated", "Forbidden"):
                exc.message = exc.message.split("; the CLI sends")[0] + _AUTH_THROUGH_PROXY.format(
                    ns=namespace, svc=self.service)
                exc.args = (exc.message,)
            raise

    def infer_grpc(self, model: str, payload: dict[str, Any], *, namespace: str = "default",
                   headers: dict[str, str] | None = None) -> InferResult:
        raise InvalidInput("--inference-mode grpc cannot go through the Kubernetes API server's service proxy "
                           "(HTTP/1.1 only): kubectl port-forward -n NAMESPACE svc/berth-gateway 9001, then "
                           "--gateway-grpc 127.0.0.1:9001; or use --inference-mode rest")
