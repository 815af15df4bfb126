"""doctor: check every link from the CLI to each model's storage and print a ✓/✗ matrix.

CLI → control plane, control plane → agents, agent → inference server, gateway → replicas, model
storage, requirements no server offers, models stuck short of ModelAvailable.  Each ✗ names the address
or object, the error and the likely fix; any ✗ makes the command exit 1.
"""

from __future__ import annotations

import calendar
import time
from dataclasses import asdict
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import typer
from rich.markup import escape
from rich.table import Table

from berth.cli import output as out
from berth.cli import render
from berth.cli.context import kube_missing, settings
from berth.cli.doctor_agents_view import agents_view_rows
from berth.cli.doctor_gateway import gateway_rows
from berth.cli.doctor_rows import QUICK, RUNTIMES, Row, capability_rows, key, parallel
from berth.client.gateway import gateway_from_env
from berth.client.http import BerthClient, connect_reason
from berth.errors import BerthError, InvalidInput, InvalidManifest, NotFound
from berth.scheduler.build import model_want, server_info
from berth.scheduler.suggest import near_match

HEARTBEAT_LIMIT = 15.0  # 3 × the hub's heartbeat interval (5 s)


def _clock(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%H:%M:%S")


def _ago(secs: float) -> str:
    secs = max(0, int(secs))
    return f"{secs}s" if secs < 120 else f"{secs // 60}m" if secs < 7200 else f"{secs // 3600}h"


def _duration(text: str) -> float:
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    number, unit = text, "s"
    for suffix in ("ms", "s", "m", "h"):
        if text.endswith(suffix):
            number, unit = text[: -len(suffix)], suffix
            break
    try:
        return float(number) * units[unit]
    except ValueError:
        raise InvalidInput(f"--stuck-after {text!r}: expected a duration like 300s, 5m, 1h") from None


def control_row(client: BerthClient) -> tuple[Row, float]:
    """The control plane's /healthz; also the offset of its clock from ours (from its Date header)."""
    addr = client.address
    try:
        r = httpx.get(f"{addr}/healthz", timeout=QUICK)
    except httpx.HTTPError as exc:
        return Row("cli → control plane", addr, False,
                   f"cannot reach the control plane at {addr}: {connect_reason(exc)}; start it with `berth up` "
                   "(or `berth control`), or point --server / BERTH_ADDRESS at it"), 0.0
    if r.status_code != 200:
        return Row("cli → control plane", addr, False,
                   f"{addr}/healthz answered HTTP {r.status_code}: {r.text[:120]}; is --server pointing "
                   "at a Berth control plane?"), 0.0
    offset = 0.0
    if r.headers.get("date"):
        offset = parsedate_to_datetime(r.headers["date"]).timestamp() - time.time()
    revision = (r.json() if "json" in r.headers.get("content-type", "") else {}).get("revision", "?")
    try:
        me = client.whoami()
    except BerthError as exc:  # no token, or one it refuses: the message says how to get one
        return Row("cli → control plane", addr, False, f"healthy, but {exc.message}"), 0.0
    grants = ", ".join(f"{role} in {ns}" for ns, role in sorted((me.get("grants") or {}).items())) or me["kind"]
    return Row("cli → control plane", addr, True,
               f"healthy (store revision {revision}); token {me['name']} ({grants})"), \
        offset if abs(offset) > 2 else 0.0


def agent_rows(agents: list[dict[str, Any]], servers: list[dict[str, Any]], now: float) -> list[Row]:
    """One row per agent the hub knows, and one per declared replica no agent ever connected for."""
    rows: list[Row] = []
    known = {(a["namespace"], a["server"], a["replica"]) for a in agents}
    for doc in servers:
        ns, name = doc["metadata"]["namespace"], doc["metadata"]["name"]
        desired = (doc.get("status") or {}).get("replicas", server_info(doc).desired_replicas)
        rows += [Row("control plane → agent", f"{ns}/{name}/{i}", False,
                     f"no agent connected for replica {i} of server {name} (declares {desired}); `berth up` "
                     f"provisions replicas, or enrol one: `berth token create agent-{name}-{i} --agent "
                     f"{ns}/{name}/{i} > F` then `berth agent --server {name} --replica {i} --namespace {ns} "
                     f"--token-file F --control ...`") for i in range(desired) if (ns, name, i) not in known]
    for a in agents:
        if not a["connected"]:
            since = _clock(a["disconnectedAt"]) if a.get("disconnectedAt") else "?"
            rows.append(Row("control plane → agent", key(a), False,
                            f"disconnected since {since}: {a.get('disconnectReason') or 'unknown reason'}; "
                            "restart the agent (`berth up` restarts the replicas it provisions)"))
            continue
        age = now - float(a["lastHeartbeat"])
        head = f"connected since {_clock(a['connectedAt'])}, last heartbeat {_ago(age)} ago"
        rows.append(Row("control plane → agent", key(a), True, head) if age <= HEARTBEAT_LIMIT else
                    Row("control plane → agent", key(a), False,
                        f"{head} (limit {HEARTBEAT_LIMIT:.0f}s): the agent is hung or its connection stalls; "
                        "restart the agent"))
    rows.sort(key=lambda r: r.target)
    return rows


def inference_rows(agents: list[dict[str, Any]]) -> list[Row]:
    rows = []
    for a in agents:
        inf = a.get("inference") or {}
        addr = f"{inf.get('host')}:{inf.get('http_port')}"
        if not a["connected"]:
            rows.append(Row("agent → inference server", f"{key(a)} ({addr})", None, "agent not connected"))
        elif a["ready"]:
            rows.append(Row("agent → inference server", f"{key(a)} ({addr})", True,
                            f"ready at {a.get('address') or addr}"))
        else:
            since = f" since {_clock(a['since'])}" if a.get("since") else ""
            rows.append(Row("agent → inference server", f"{key(a)} ({addr})", False,
                            f"inference server {addr} not ready: {a.get('error') or 'not ready'} (tried "
                            f"{a.get('address') or addr}){since}; start MLServer there, or point the agent's "
                            "--inference-http-port at the port it listens on"))
    return rows


def storage_rows(client: BerthClient, models: list[dict[str, Any]]) -> list[Row]:
    def one(doc: dict[str, Any]) -> Row:
        ns, name = doc["metadata"]["namespace"], doc["metadata"]["name"]
        try:
            ans = client.storage_check(ns, name)
        except NotFound as exc:
            return Row("model storage", f"{ns}/{name}", None, f"not checked: {exc.message}")
        except BerthError as exc:
            return Row("model storage", f"{ns}/{name}", False, f"storage check failed: {exc.message}")
        if ans.get("ok"):
            done = " ".join(f"{c['name']} ✓" for c in ans.get("checks", []) if c.get("ok"))
            idle: dict[str, list[str]] = {}  # why a check was not run -> the checks it concerns
            for c in ans.get("checks", []):
                if c.get("ok") is None:
                    idle.setdefault(str(c.get("detail") or "not checked"), []).append(str(c.get("name")))
            why = " | ".join(f"{', '.join(names)}: {detail}" for detail, names in idle.items())
            return Row("model storage", f"{ns}/{name}", True,
                       f"{ans.get('uri')}: {done}" + (f" ({why})" if why else ""))
        failed = [c for c in ans.get("checks", []) if c.get("ok") is False]
        return Row("model storage", f"{ns}/{name}", False,
                   "; ".join(f"{c['name']}: {c['detail']}" for c in failed) or str(ans.get("message")))

    return parallel(one, models)


def requirement_rows(models: list[dict[str, Any]], servers: list[dict[str, Any]],
                     agents: list[dict[str, Any]]) -> list[Row]:
    """Requirements no server in the model's namespace (or its pinned server) offers, with near matches."""
    offered: dict[tuple[str, str], list[str]] = {}
    for doc in servers:
        key = (doc["metadata"]["namespace"], doc["metadata"]["name"])
        reported = [c for a in agents if (a["namespace"], a["server"]) == key for c in a.get("capabilities") or []]
        offered[key] = list(dict.fromkeys(reported)) if reported else list(server_info(doc).capabilities)
    rows = []
    for doc in models:
        try:
            want = model_want(doc)
        except InvalidManifest as exc:
            rows.append(Row("requirements", f"{doc['metadata']['namespace']}/{doc['metadata']['name']}",
                            False, exc.problems[0] if exc.problems else exc.message))
            continue
        target = f"{want.namespace}/{want.name}"
        here = sorted(name for ns, name in offered if ns == want.namespace)
        pool = [want.server] if want.server else here
        if want.server and want.server not in here:
            rows.append(Row("requirements", target, False,
                            f"spec.server names {want.server}, which does not exist in namespace {want.namespace} "
                            f"(servers here: {', '.join(here) or 'none'}); fix spec.server or apply that Server"))
            continue
        if not pool:
            rows.append(Row("requirements", target, False, f"no servers in namespace {want.namespace}; apply a "
                                                           "Server (or `berth up`, which creates `mlserver`)"))
            continue
        caps = list(dict.fromkeys(c for s in pool for c in offered[(want.namespace, s)]))
        missing = [r for r in want.requirements if r not in caps]
        if not missing:
            text = (f"{', '.join(want.requirements)} offered by {', '.join(pool)}" if want.requirements
                    else "no requirements")
            rows.append(Row("requirements", target, True, text))
            continue
        hints = " ".join(f"did you mean {m} for {r}?" for r in missing if (m := near_match(r, caps)))
        where = "; ".join(f"{s} offers {', '.join(offered[(want.namespace, s)]) or 'nothing'}" for s in pool)
        rows.append(Row("requirements", target, False,
                        f"{', '.join(missing)} offered by no server ({where}); add capability "
                        f"{', '.join(missing)} to the server (spec.extraCapabilities) or fix the model's "
                        "requirement" + (f" ({hints})" if hints else "")))
    return rows


def _rfc3339(text: str | None) -> float | None:
    try:
        return float(calendar.timegm(time.strptime(text or "", "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return None


def _not_available_since(doc: dict[str, Any]) -> float | None:
    """When the model last stopped being (or started not being) available: the Ready condition's
    lastTransitionTime, else the start of the trailing non-available run in history, else creation."""
    st = doc.get("status") or {}
    ready = next((c for c in st.get("conditions", []) if c.get("type") == "Ready"), None)
    if ready is not None and ready.get("status") != "True" and _rfc3339(ready.get("lastTransitionTime")):
        return _rfc3339(ready.get("lastTransitionTime"))
    since = None
    for h in reversed(st.get("history") or []):
        if h.get("state") == "ModelAvailable":
            break
        since = _rfc3339(h.get("time")) or since
    return since or _rfc3339(doc["metadata"].get("creationTimestamp"))


def stuck_rows(models: list[dict[str, Any]], threshold: float, now: float) -> list[Row]:
    rows = []
    for doc in models:
        ns, name = doc["metadata"]["namespace"], doc["metadata"]["name"]
        st = doc.get("status") or {}
        state = st.get("state") or "no status yet"
        if state == "ModelAvailable":
            rows.append(Row("model progress", f"{ns}/{name}", True, f"ModelAvailable: {st.get('message', '')}"))
            continue
        since = _not_available_since(doc)
        age = now - since if since is not None else 0.0
        text = f"{state} for {_ago(age)}" + (f" (since {_clock(since)})" if since is not None else "")
        message = f": {st['message']}" if st.get("message") else ""
        if age < threshold:
            rows.append(Row("model progress", f"{ns}/{name}", True,
                            f"{text}, under the {_ago(threshold)} threshold{message}"))
        else:
            rows.append(Row("model progress", f"{ns}/{name}", False,
                            f"{text}, over the {_ago(threshold)} threshold{message}; fix what it names "
                            f"(`berth describe model {name} -n {ns}` shows every reason)"))
    return rows


SKIPPED = ("control plane → agent", "agent → inference server", RUNTIMES, "cli → gateway", "gateway → replica",
           "model storage", "requirements", "model progress")


def diagnose(client: BerthClient, gateway: str, namespace: str | None, stuck_after: float) -> list[Row]:
    """Every check, in order; with the control plane unreachable the rest are skipped."""
    head, offset = control_row(client)
    if not head.ok:
        return [head, *(Row(c, "-", None, "skipped: needs the control plane") for c in SKIPPED)]
    models = client.list("Model", namespace)
    servers = client.list("Server", namespace)
    agents = client.agents(namespace)
    now = time.time() + offset

    def in_scope(ns: str) -> bool:
        return namespace is None or ns == namespace

    return [head, *agent_rows(agents, servers, now), *agents_view_rows(servers, now), *inference_rows(agents),
            *capability_rows(agents),
            *gateway_rows(gateway, agents, in_scope), *storage_rows(client, models),
            *requirement_rows(models, servers, agents), *stuck_rows(models, stuck_after, now)]


def matrix(rows: list[Row]) -> Table:
    t = Table(box=None, header_style="bold", pad_edge=False)
    for c in ("CHECK", "TARGET", "RESULT", "DETAIL"):
        t.add_column(c, overflow="fold")
    marks = {True: "[green]✓[/green]", False: "[red]✗[/red]", None: "[yellow]-[/yellow] skipped"}
    for r in rows:
        t.add_row(escape(r.check), escape(r.target), marks[r.ok], escape(r.detail))
    return t


def doctor(
    namespace: str = typer.Option("default", "-n", "--namespace"),
    all_namespaces: bool = typer.Option(False, "-A", "--all-namespaces"),
    stuck_after: str = typer.Option("300s", "--stuck-after", help="A model not available this long is stuck"),
    output: str | None = typer.Option(None, "-o", "--output", help="json|yaml|jsonpath=TEMPLATE"),
    kube: bool = typer.Option(False, "--kube", help="Also evaluate the namespace's NetworkPolicies, read from the "
                                                    "cluster, against every flow Berth needs"),
    kubeconfig: str | None = typer.Option(None, "--kubeconfig", help="The cluster to check (default KUBECONFIG)"),
    context: str | None = typer.Option(None, "--context", help="kubeconfig context"),
    control_namespace: str = typer.Option("berth-system", "--control-namespace",
                                          help="With --kube: the control plane's namespace"),
) -> None:
    """Check every link (CLI, control plane, agents, inference servers, gateway, storage) and say what to fix.
    With a cluster named (--kubeconfig, --context or KUBECONFIG) and no --server: what the cluster's API shows."""
    fmt = out.parse(output, out.DOCUMENT)
    threshold = _duration(stuck_after)
    if kube and all_namespaces:
        raise InvalidInput("--kube evaluates one namespace's network: give -n NAMESPACE instead of -A")
    if settings.cluster(kubeconfig, context):  # no --server: the cluster's API, as kubectl (doctor_kube.py)
        from berth.cli.doctor_kube import kube_diagnose

        with settings.kube_client(15.0, kubeconfig, context) as kclient:
            rows = kube_diagnose(kubeconfig, context, None if all_namespaces else namespace, threshold,
                                 control_namespace, kclient)
        kube = False  # its network rows are in already
    else:
        with settings.client(timeout=15.0) as client:
            rows = diagnose(client, gateway_from_env(settings.gateway), None if all_namespaces else namespace,
                            threshold)
    if kube:
        try:
            from berth.cli.doctor_network import kube_network_rows  # the Kubernetes client only for --kube
        except ModuleNotFoundError as exc:
            raise kube_missing("berth doctor --kube") from exc
        rows += kube_network_rows(kubeconfig, context, namespace, control_namespace)
    failed = sum(r.ok is False for r in rows)
    ran = sum(r.ok is not None for r in rows)
    skipped = len(rows) - ran
    summary = (f"{failed} of {ran} checks failed" if failed else f"all {ran} checks passed") + \
        (f" ({skipped} skipped)" if skipped else "")
    if fmt is not None:
        fmt.write({"ok": not failed, "summary": summary,
                   "checks": [{**asdict(r), "result": r.result} for r in rows]})
    else:
        render.console.print(matrix(rows))
        if not failed:
            render.console.print(f"[green]{summary}[/green]")
    if failed:
        raise BerthError(summary, code="DoctorFailed")
