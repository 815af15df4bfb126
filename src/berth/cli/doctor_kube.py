"""`berth doctor` against a cluster (``--kubeconfig``/``--context``/``KUBECONFIG``, no ``--server``): the rows it can
compute from outside the cluster, and one line for each check it cannot, saying why.

- the Kubernetes API answers (the CLI's only way in);
- the agents and their inference servers, as the control plane reports them in each Server's status
  (``replicaStatus``: connected, ready, the last error), and the runtimes their MLServers can import;
- the control plane's Service as each agent sees it (``replicaStatus[i].controlPlane``: resolved to which
  addresses, its failed connects, since when and through which address it is connected);
- the namespace's gateway, probed through the API server's service proxy (``/v2/health/ready``; its operators'
  ``/berth/v1/probe`` of the replicas when it answers without a Berth token);
- requirements no Server offers and models stuck short of ModelAvailable, from the resources;
- every flow Berth needs against the NetworkPolicies (as ``--kube``).

Not checked from outside: the model storage (the control plane checks it with the model's Secret, on its own
API), which says so with the way to run it (``kubectl port-forward`` to the control plane and ``--server``).
"""

from __future__ import annotations

import time
from typing import Any

from berth.cli.doctor_agents_view import agents_view_rows
from berth.cli.doctor_cmd import requirement_rows, stuck_rows
from berth.cli.doctor_gateway import PROBE
from berth.cli.doctor_network import kube_network_rows
from berth.cli.doctor_rows import RUNTIMES, Row
from berth.client.kube import KubeClient, KubeGateway
from berth.errors import BerthError

PORT_FORWARD = ("kubectl port-forward -n {cns} svc/berth-control 9004, then berth doctor --server "
                "http://127.0.0.1:9004 with an admin's BERTH_TOKEN")


def _condition(doc: dict[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in (doc.get("status") or {}).get("conditions") or [] if c.get("type") == kind), None)


def server_rows(servers: list[dict[str, Any]], control_namespace: str) -> list[Row]:
    """Agents, inference servers and runtimes as the control plane wrote them in each Server's status."""
    rows: list[Row] = []
    for doc in servers:
        ns, name = doc["metadata"]["namespace"], doc["metadata"]["name"]
        status = doc.get("status") or {}
        if not status.get("replicaStatus") and not status.get("conditions"):
            rows.append(Row("control plane → agent", f"{ns}/{name}", False,
                            "the Server has no status: Berth's control plane has not seen it; check it runs "
                            f"(kubectl get deploy -n {control_namespace} berth-control) and its log"))
            continue
        for r in status.get("replicaStatus") or []:
            target = f"{ns}/{name}/{r.get('index')}"
            message = str(r.get("message") or "")
            if not r.get("connected"):
                rows.append(Row("control plane → agent", target, False,
                                f"{message or 'not connected'} (reported by the control plane); check the pod "
                                f"{name}-{r.get('index')}: kubectl describe pod -n {ns} {name}-{r.get('index')}"))
                rows.append(Row("agent → inference server", target, None, "agent not connected"))
                continue
            rows.append(Row("control plane → agent", target, True, "connected (reported by the control plane)"))
            address = r.get("address") or "?"
            rows.append(Row("agent → inference server", f"{target} ({address})", bool(r.get("ready")),
                            f"{'ready' if r.get('ready') else message} (reported by the agent)" +
                            ("" if r.get("ready") else f"; kubectl logs -n {ns} {name}-{r.get('index')} "
                                                       "-c mlserver says why")))
        caps = _condition(doc, "CapabilitiesAvailable")
        if caps is not None:
            ok = caps.get("status") == "True"
            rows.append(Row(RUNTIMES, f"{ns}/{name}", ok, str(caps.get("message") or "") + (
                "" if ok else "; install the runtimes into the image, or remove those capabilities")))
    return rows


def gateway_rows(gateway: KubeGateway, namespace: str) -> list[Row]:
    """The namespace's gateway through the API server's service proxy: ready, and its probe of the replicas."""
    target = f"{namespace}/{gateway.service} (API server's service proxy)"
    try:
        ready = gateway.get(namespace, "/v2/health/ready")
    except BerthError as exc:
        return [Row("cli → gateway", target, False, exc.message)]
    if ready.status != 200:
        body = ready.json()
        why = body.get("message") if isinstance(body, dict) else str(body)[:120]
        return [Row("cli → gateway", target, False,
                    f"reachable but not ready (HTTP {ready.status}): {why}; check the gateway reaches the control "
                    f"plane (kubectl logs -n {namespace} deploy/{gateway.service})")]
    rows = [Row("cli → gateway", target, True, "live and ready")]
    try:
        probe = gateway.get(namespace, PROBE)
    except BerthError as exc:
        return [*rows, Row("gateway → replica", target, None, f"not checked: {exc.message}")]
    if probe.status in (401, 403):
        return [*rows, Row("gateway → replica", target, None,
                           f"not checked from outside the cluster: the gateway's {PROBE} answers Berth operators only, "
                           "and the API server's proxy carries the kubeconfig's credentials, not a Berth token; the "
                           "agents' own reports are the rows above (kubectl port-forward -n "
                           f"{namespace} svc/{gateway.service} 9000, then --gateway 127.0.0.1:9000 checks it)")]
    body = probe.json()
    endpoints = body.get("endpoints") if isinstance(body, dict) and probe.status == 200 else None
    if not isinstance(endpoints, list):
        return [*rows, Row("gateway → replica", target, None, f"not checked: {PROBE} answered HTTP {probe.status}")]
    for e in endpoints:
        models = ", ".join(str(m) for m in e.get("models") or []) or "no model"
        rows.append(Row("gateway → replica", str(e.get("address")), bool(e.get("ok")),
                        f"ready in {float(e.get('latency_ms') or 0):.1f} ms; serves {models}" if e.get("ok") else
                        f"{e.get('error') or 'not ready'} (serves {models}); check the replica's pod and the "
                        "NetworkPolicy rows"))
    return rows


def kube_diagnose(kubeconfig: str | None, context: str | None, namespace: str | None, stuck_after: float,
                  control_namespace: str, client: KubeClient) -> list[Row]:
    """Every row computable from the cluster's API, and one 'not checked' line (why) for each other check."""
    try:
        version = client.version()["version"]
    except BerthError as exc:
        return [Row("cli → Kubernetes API", client.address, False, exc.message),
                *(Row(c, "-", None, "skipped: needs the Kubernetes API") for c in
                  ("control plane → agent", "cli → gateway", "requirements", "model progress", "network policy"))]
    rows = [Row("cli → Kubernetes API", client.address, True, f"answers ({version}); Berth's statuses read from it")]
    models = client.list("Model", namespace)
    servers = client.list("Server", namespace)
    rows += server_rows(servers, control_namespace)
    rows += agents_view_rows(servers, time.time())
    if namespace is None:
        rows.append(Row("cli → gateway", "-", None, "each namespace has its own gateway: give -n NAMESPACE"))
    else:
        rows += gateway_rows(KubeGateway(client), namespace)
    rows.append(Row("model storage", namespace or "-", None,
                    "not checked from outside the cluster: the control plane checks storage with the model's "
                    "Secret on its own API; " + PORT_FORWARD.format(cns=control_namespace)))
    reported = [{"namespace": s["metadata"]["namespace"], "server": s["metadata"]["name"],
                 "capabilities": r.get("capabilities") or []}
                for s in servers for r in (s.get("status") or {}).get("replicaStatus") or [] if r.get("connected")]
    rows += requirement_rows(models, servers, reported)
    rows += stuck_rows(models, stuck_after, time.time())
    if namespace is not None:
        rows += kube_network_rows(kubeconfig, context, namespace, control_namespace)
    return rows
