"""The Kubernetes API as Berth calls it (store, provisioner, enrolment, CLI): one path per kind, JSON in and out.

Requests go through kubernetes_asyncio's ``ApiClient`` (its configuration loaders, auth plugins, TLS and
connection pool, all on aiohttp, which Berth already runs on); documents stay plain dicts, as the Store
protocol hands them out.  Every failure becomes a :mod:`berth.errors` error naming the object, the API
server and what to do.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from berth.errors import (
    BerthError,
    Conflict,
    Expired,
    Forbidden,
    InvalidManifest,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from berth.kube.crds import GROUP, VERSION, plural
from berth.resources.kinds import SPEC_SCHEMAS

JSON_HEADERS = {"Accept": "application/json", "Content-Type": "application/json"}


@dataclass(frozen=True)
class KindApi:
    kind: str
    api_version: str
    base: str  # /apis/group/version or /api/v1
    plural: str

    def path(self, namespace: str | None = None, name: str | None = None, status: bool = False) -> str:
        out = self.base + (f"/namespaces/{namespace}" if namespace else "") + f"/{self.plural}"
        if name:
            out += f"/{name}" + ("/status" if status else "")
        return out


KIND_APIS: dict[str, KindApi] = {k: KindApi(k, f"{GROUP}/{VERSION}", f"/apis/{GROUP}/{VERSION}", plural(k))
                                 for k in SPEC_SCHEMAS}
KIND_APIS["Secret"] = KindApi("Secret", "v1", "/api/v1", "secrets")


async def connect(kubeconfig: str | None, context: str | None) -> client.ApiClient:
    """An API client from in-cluster config (no kubeconfig named or found and running in a pod), else the
    kubeconfig (``--kubeconfig``, ``KUBECONFIG``, ``~/.kube/config``) and its ``--context``."""
    cfg = client.Configuration()
    named = kubeconfig or os.environ.get("KUBECONFIG")
    try:
        if named is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
        else:
            await config.load_kube_config(config_file=named, context=context, client_configuration=cfg)
    except (config.ConfigException, OSError, TypeError, KeyError) as exc:
        where = named or "~/.kube/config"
        raise Unavailable(f"cannot configure the Kubernetes client from {where}"
                          f"{f' (context {context})' if context else ''}: {exc}; pass --kubeconfig/--context, "
                          "set KUBECONFIG, or run in a pod with a ServiceAccount") from exc
    return client.ApiClient(configuration=cfg)


def _message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except (ValueError, AttributeError):
        return str(exc.reason)


def as_error(exc: BaseException, what: str, host: str) -> BerthError:
    """A Berth error for ``exc`` raised while doing ``what`` (e.g. ``"get Model ns/name"``)."""
    if isinstance(exc, BerthError):
        return exc
    if isinstance(exc, ApiException):
        msg = f"{what}: the Kubernetes API at {host} answered {exc.status}: {_message(exc)}"
        if exc.status == 404:
            return NotFound(msg + "; check the name and namespace (and that Berth's CRDs are installed: berth crds)")
        if exc.status == 409:
            return Conflict(msg + "; get it again and retry")
        if exc.status == 410:
            return Expired(msg + "; list again and watch from the list's resourceVersion")
        if exc.status == 401:
            return Unauthenticated(msg + "; check the kubeconfig's user or the pod's ServiceAccount token")
        if exc.status == 403:
            return Forbidden(msg + "; grant Berth's ServiceAccount the Role in docs/kubernetes.md")
        if exc.status in (400, 422):
            return InvalidManifest([msg], message="the Kubernetes API server refused the document")
        return Unavailable(msg)
    return Unavailable(f"{what}: the Kubernetes API at {host} is unreachable ({type(exc).__name__}: {exc}); "
                       "check the cluster, --kubeconfig and --context")


class Api:
    """JSON calls on one API client (all on the loop that made it)."""

    def __init__(self, api: client.ApiClient, timeout: float) -> None:
        self.client = api
        self.timeout = timeout
        self.host = str(api.configuration.host)

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None,
                   query: list[tuple[str, str]] | None = None) -> dict[str, Any]:
        result = await self.client.call_api(
            path, method, query_params=query or [], header_params=dict(JSON_HEADERS), body=body,
            response_types_map={200: "object", 201: "object", 202: "object"}, auth_settings=["BearerToken"],
            _return_http_data_only=True, _request_timeout=self.timeout)
        return dict(result or {})

    async def watch(self, path: str, since: str, timeout_s: int) -> aiohttp.ClientResponse:
        """The raw watch stream from ``since`` (the caller reads its lines and closes it)."""
        query = [("watch", "true"), ("resourceVersion", since), ("allowWatchBookmarks", "true"),
                 ("timeoutSeconds", str(timeout_s))]
        response: aiohttp.ClientResponse = await self.client.call_api(
            path, "GET", query_params=query, header_params=dict(JSON_HEADERS), auth_settings=["BearerToken"],
            _preload_content=False, _request_timeout=timeout_s + self.timeout)
        if response.status != 200:
            body = await response.text()
            response.release()
            raise ApiException(status=response.status, reason=body[:500])
        return response

    async def close(self) -> None:
        await self.client.close()
