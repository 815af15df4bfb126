"""The emulated API server's service proxy (``/api/v1/namespaces/NS/services/[SCHEME:]NAME[:PORT]/proxy/PATH``),
as kube-apiserver's: the Service's port (by name or number) and its selector give the Ready pods that back it
(the Endpoints a real cluster keeps), the pod's ``targetPort`` (by name or number) the port, and the request is
forwarded there with the caller's own ``Authorization`` removed (the API server consumed it authenticating
the caller; it never reaches the backend).  No Service: 404; no Ready pod: 503 ``no endpoints available``; a pod
that does not answer: 503 ``error trying to reach service``, as a real server answers.

The harness kubelet (tests/kube/kubelet.py) gives each pod an IP of its own: in a network namespace of its own
the container ports are the pod's own; in the loopback fallback (``127.0.0.N``, one shared loopback) they are
mapped to free host ports.  ``ApiServer.pod_ports`` (pod IP -> container port -> port to dial) says which.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

if TYPE_CHECKING:
    from tests.kube.apiserver import ApiServer

PROXY = re.compile(r"/api/v1/namespaces/([^/]+)/services/([^/]+)/proxy(/.*)?")
HOP = {"authorization", "host", "connection", "keep-alive", "transfer-encoding", "te", "upgrade",
       "proxy-authorization", "content-length"}


def _status(code: int, reason: str, message: str) -> web.Response:
    return web.json_response({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure",
                              "code": code, "reason": reason, "message": message}, status=code)


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _container_port(pod: dict[str, Any], target: Any) -> int | None:
    if isinstance(target, int) or str(target).isdigit():
        return int(target)
    for c in (pod.get("spec") or {}).get("containers") or []:
        for p in c.get("ports") or []:
            if p.get("name") == target:
                return int(p["containerPort"])
    return None


def backends(api: ApiServer, ns: str, service: dict[str, Any], port_ref: str) -> list[str] | web.Response:
    """host:port of every Ready pod behind ``service``'s port ``port_ref`` (name, number, or '': the only one)."""
    name = service["metadata"]["name"]
    ports = (service.get("spec") or {}).get("ports") or []
    port = next((p for p in ports if port_ref in (str(p.get("name") or ""), str(p.get("port")))), None)
    if port is None and not port_ref and len(ports) == 1:
        port = ports[0]
    if port is None:
        return _status(503, "ServiceUnavailable", f'no endpoints available for service "{name}"')
    selector = (service.get("spec") or {}).get("selector") or {}
    found = []
    for (plural, pod_ns, _), pod in sorted(api.objects.items()):
        labels = pod["metadata"].get("labels") or {}
        if plural != "pods" or pod_ns != ns or not selector or any(labels.get(k) != v for k, v in selector.items()):
            continue
        ip = (pod.get("status") or {}).get("podIP")
        target = _container_port(pod, port.get("targetPort", port.get("port")))
        if ip and target is not None and _ready(pod):
            found.append(f"{ip}:{api.pod_ports.get(ip, {}).get(target, target)}")
    return found


async def proxy(api: ApiServer, request: web.Request, ns: str, ref: str, path: str | None) -> web.Response:
    parts = ref.split(":")
    if len(parts) == 3:
        parts = parts[1:]  # scheme:name:port
    name, port_ref = parts[0], (parts[1] if len(parts) > 1 else "")
    service = api.objects.get(("services", ns, name))
    if service is None:
        return _status(404, "NotFound", f'services "{name}" not found')
    found = backends(api, ns, service, port_ref)
    if isinstance(found, web.Response):
        return found
    if not found:
        return _status(503, "ServiceUnavailable", f'no endpoints available for service "{name}"')
    url = f"http://{found[0]}{path or '/'}" + (f"?{request.query_string}" if request.query_string else "")
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
    body = await request.read()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session, \
                session.request(request.method, url, data=body or None, headers=headers) as answer:
            payload = await answer.read()
            kept = {k: v for k, v in answer.headers.items() if k.lower() not in HOP}
            return web.Response(status=answer.status, body=payload, headers=kept)
    except (aiohttp.ClientError, TimeoutError) as exc:
        return _status(503, "ServiceUnavailable", f"error trying to reach service: dial tcp {found[0]}: {exc}")
