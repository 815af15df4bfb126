"""describe: one resource in full — spec, conditions, placement reasons per replica, history."""

from __future__ import annotations

import time
from typing import Any

import typer
from rich.table import Table

from berth.cli import doctor_agents_view as agents_view
from berth.cli import output as out
from berth.cli import render
from berth.cli.context import settings
from berth.cli.rollout_cmd import versions_table
from berth.errors import InvalidInput
from berth.resources.kinds import kind_from_alias
from berth.resources.quantity import humanize_bytes
from berth.resources.statuses import condition_of, conditions_of, model_status_of, server_status_of


def _kv(rows: list[tuple[str, Any]]) -> Table:
    t = Table(box=None, show_header=False, pad_edge=False)
    t.add_column(style="bold")
    t.add_column(overflow="fold")
    for k, v in rows:
        t.add_row(f"{k}:", "" if v is None else str(v))
    return t


def _conditions(doc: dict[str, Any]) -> Table:
    t = Table(box=None, pad_edge=False, header_style="bold", title="Conditions", title_justify="left")
    for column in ("TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"):
        t.add_column(column, overflow="fold")
    for c in conditions_of(doc):
        t.add_row(c.get("type", ""), render.ready_text({"status": {"conditions": [{**c, "type": "Ready"}]}}),
                  c.get("reason", ""), c.get("lastTransitionTime", ""), c.get("message", ""))
    return t


def describe_model(doc: dict[str, Any]) -> None:
    spec, st = doc.get("spec") or {}, doc.get("status") or {}
    meta = doc["metadata"]
    render.console.print(_kv([
        ("Name", meta["name"]), ("Namespace", meta["namespace"]), ("Created", meta.get("creationTimestamp")),
        ("Generation", f"{meta.get('generation')} (observed {st.get('observedGeneration', '-')})"),
        ("Storage URI", spec.get("storageUri")), ("Requirements", ", ".join(spec.get("requirements", []))),
        ("Memory", _memory(spec, st)), ("Secret", spec.get("secretName", "(none)")),
        ("Server", spec.get("server", "(any in namespace)")),
        ("Replicas", f"{st.get('availableReplicas', 0)} available of {st.get('replicas', '?')} desired"
                     + (f" (min {spec['minReplicas']})" if spec.get("minReplicas") is not None else "")),
        ("State", st.get("state", "(no status yet)")), ("Message", st.get("message", "")),
    ]))
    render.console.print(_conditions(doc))
    typed = model_status_of(doc)  # None before the control plane's first pass over it
    placement = (typed.get("placement") or None) if typed is not None else None
    t = Table(box=None, pad_edge=False, header_style="bold", title="Placement", title_justify="left")
    for c in ("SERVER", "REPLICA", "RESULT", "DETAIL"):
        t.add_column(c, overflow="fold")
    for key, rs in sorted(((typed.get("replicaStatus") or {}) if typed is not None else {}).items()):
        server, _, index = key.rpartition("/")
        colour = {"Loaded": "green", "LoadFailed": "red", "Unavailable": "red",
                  "Evicted": "magenta"}.get(rs.get("state"), "yellow")
        t.add_row(server, index, f"[{colour}]{rs.get('state')}[/{colour}]", rs.get("message", ""))
    for r in (placement.get("reasons") or []) if placement is not None else []:
        replica = "" if r.get("replica") is None else str(r["replica"])
        t.add_row(r.get("server") or "-", replica or "-", f"[red]{r.get('code')}[/red]", r.get("message", ""))
    render.console.print(t)
    render.console.print(versions_table(st))  # docs/rollouts.md
    _autoscaling(st)
    _history(st)


def _memory(spec: dict[str, Any], st: dict[str, Any]) -> str:
    """Declared, measured at load (RSS delta) and what residency counts (docs/overcommit.md)."""
    mem = st.get("memory")
    declared = spec.get("memory", "(not declared)")
    if not mem:
        return str(declared)
    measured = humanize_bytes(mem["measured"]) if mem.get("measured") else "not measured"
    return f"{declared} declared, {measured} measured at load; counts {humanize_bytes(mem.get('effective', 0))}"


def _autoscaling(st: dict[str, Any]) -> None:
    """The replicas autoscaling decided and its last decisions with their reasons (docs/autoscaling.md)."""
    auto = st.get("autoscaling")
    if not auto:
        return
    t = Table(box=None, pad_edge=False, header_style="bold", title_justify="left",
              title=f"Autoscaling: {auto.get('replicas')} replicas (min {auto.get('minReplicas')}, "
                    f"max {auto.get('maxReplicas')})")
    for c in ("TIME", "DIRECTION", "REPLICAS", "REASON"):
        t.add_column(c, overflow="fold")
    for e in auto.get("events") or []:
        t.add_row(e.get("time", ""), e.get("direction", ""), f"{e.get('previous')} -> {e.get('replicas')}",
                  e.get("reason", ""))
    for p in auto.get("problems") or []:
        t.add_row("", "[red]problem[/red]", "", p)
    render.console.print(t)


def _history(st: dict[str, Any]) -> None:
    hist = st.get("history") or []
    if not hist:
        return
    t = Table(box=None, pad_edge=False, header_style="bold", title="History", title_justify="left")
    for c in ("TIME", "STATE", "MESSAGE"):
        t.add_column(c, overflow="fold")
    for h in hist:
        t.add_row(h.get("time", ""), h.get("state", ""), h.get("message", ""))
    render.console.print(t)


def _runtimes(doc: dict[str, Any]) -> str:
    """The CapabilitiesAvailable condition in one line: which claimed capabilities MLServer cannot import."""
    cond = condition_of(doc, "CapabilitiesAvailable")
    if cond is None:
        return "(not checked yet)"
    message = str(cond.get("message", ""))
    return "ok: " + message if cond.get("status") == "True" else message


def describe_server(doc: dict[str, Any]) -> None:
    spec, st = doc.get("spec") or {}, doc.get("status") or {}
    meta = doc["metadata"]
    caps = spec.get("capabilities")
    render.console.print(_kv([
        ("Name", meta["name"]), ("Namespace", meta["namespace"]), ("Created", meta.get("creationTimestamp")),
        ("Server config", spec.get("serverConfig")),
        ("Capabilities", ", ".join(caps) if caps else "(defaults of the server config)"),
        ("Extra capabilities", ", ".join(spec.get("extraCapabilities") or []) or "-"),
        ("Replicas", f"{st.get('readyReplicas', 0)} ready of {st.get('replicas', '?')}"),
        ("Loaded models", st.get("loadedModels", 0)),
        ("Runtimes", _runtimes(doc)),
    ]))
    render.console.print(_conditions(doc))
    t = Table(box=None, pad_edge=False, header_style="bold", title="Replicas", title_justify="left")
    for c in ("INDEX", "CONNECTED", "READY", "ADDRESS", "MEMORY", "MODELS", "CANNOT IMPORT", "MESSAGE"):
        t.add_column(c, overflow="fold")
    typed = server_status_of(doc)  # a list of replicas in index order (a Model's is a dict: statuses.py)
    for r in (typed.get("replicaStatus") or []) if typed is not None else []:
        broken = ", ".join(f"{p['capability']} ({p['module']})" for p in r.get("unavailableCapabilities") or [])
        t.add_row(str(r.get("index")), str(r.get("connected")), str(r.get("ready")), r.get("address", "") or "",
                  str(r.get("memory", "")), ", ".join(r.get("models", [])), broken or "-", r.get("message", ""))
    render.console.print(t)
    _control_plane(st)
    _autoscaling(st)


def _control_plane(st: dict[str, Any]) -> None:
    """Each replica's agent's own view of the control plane (replicaStatus[i].controlPlane, docs/doctor.md)."""
    views = [(r.get("index"), r["controlPlane"]) for r in st.get("replicaStatus") or []
             if isinstance(r, dict) and isinstance(r.get("controlPlane"), dict)]
    if not views:
        return
    t = Table(box=None, pad_edge=False, header_style="bold", title="Control plane (as the agents see it)",
              title_justify="left")
    for c in ("INDEX", "CONNECTION", f"FAILED ATTEMPTS (last {agents_view.WINDOW / 60:g} min)", "LAST ATTEMPTS"):
        t.add_column(c, overflow="fold")
    now = time.time()
    for index, view in views:
        connection = agents_view.connection(view) if view.get("connectedSince") else "not connected"
        last = ", ".join(f"{a.get('outcome')} {a.get('address')}" for a in (view.get("attempts") or [])[-3:])
        t.add_row(str(index), connection, "; ".join(agents_view.failures(view, now)) or "none", last or "-")
    render.console.print(t)


def describe_experiment(doc: dict[str, Any]) -> None:
    spec = doc.get("spec") or {}
    meta = doc["metadata"]
    mirror = spec.get("mirror") or {}
    render.console.print(_kv([
        ("Name", meta["name"]), ("Namespace", meta["namespace"]), ("Default", spec.get("default") or "-"),
        ("Candidates", ", ".join(f"{c['name']} (weight {c['weight']})" for c in spec.get("candidates", []))),
        ("Mirror", f"{mirror['name']} ({mirror.get('percent', 0)}%)" if mirror else "-"),
        ("Resource type", spec.get("resourceType", "model")),
    ]))
    render.console.print(_conditions(doc))


def describe(
    kind: str = typer.Argument(..., help="model|server|experiment|pipeline"),
    name: str = typer.Argument(...),
    namespace: str = typer.Option("default", "-n", "--namespace"),
    output: str | None = typer.Option(None, "-o", "--output",
                                      help="json|yaml: the whole resource; name|jsonpath=...|custom-columns=..."),
) -> None:
    """Show one resource in full, with every reason it is not serving."""
    fmt = out.parse(output, out.OBJECT)
    k = kind_from_alias(kind)
    with settings.client() as client:
        doc = client.get(k, namespace, name)
    if fmt is not None:
        fmt.write(doc)
    elif k == "Model":
        describe_model(doc)
    elif k == "Server":
        describe_server(doc)
    elif k == "Experiment":
        describe_experiment(doc)
    elif k == "Pipeline":
        render.describe_pipeline(doc)
    elif k in ("SeldonRuntime", "ServerConfig"):
        out.write(out.dumps(doc, "yaml"))
    else:
        raise InvalidInput(f"describe {kind}: not supported; use get {kind} {name} -o yaml")
