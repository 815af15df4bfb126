"""plan: a dry run on manifests alone, with no control plane: where each model would run, and every problem the
live status would report for each Pipeline and Experiment (one line each)."""

from __future__ import annotations

from typing import Any

import typer
from rich.markup import escape

from berth.cli import output as out
from berth.cli import render
from berth.errors import BerthError, InvalidInput
from berth.resources.manifest import load_paths, unacted_warnings
from berth.resources.pipelines import check_namespace
from berth.resources.podspec import ReplicaShape, replica_shape, server_config_for
from berth.resources.quantity import humanize_bytes, parse_quantity
from berth.scheduler import plan as plan_models
from berth.scheduler.build import dry_run_replicas, server_info, snapshot_for
from berth.scheduler.references import experiment_problems

_PLACED = ("Scheduled", "PartiallyScheduled")


def plan(
    filename: list[str] = typer.Option(..., "-f", "--filename", help="Manifests: file, folder or -"),
    replica_memory: str = typer.Option("1Gi", "--replica-memory", help="Memory of each server replica"),
    overcommit: int = typer.Option(10, "--overcommit", help="Overcommit percent of each replica"),
    output: str | None = typer.Option(None, "-o", "--output", help="json|yaml|jsonpath=TEMPLATE"),
) -> None:
    """Where would each model run? Server replicas come from the manifests' `replicas`, sized by Seldon's
    knobs as local replicas are: memory from the berth.io/replica-memory annotation, else the agent's
    MEMORY_REQUEST, else the mlserver container's memory request (Server's podSpec, then its ServerConfig's),
    else --replica-memory; overcommit from the agent's SELDON_OVERCOMMIT_PERCENTAGE, else --overcommit.
    Servers of an inference server Berth does not run (Triton) get no replicas."""
    import sys

    fmt = out.parse(output, out.DOCUMENT)
    stdin = sys.stdin.read() if "-" in filename else None
    result = load_paths(filename, stdin_text=stdin)
    docs = [d.body for d in result.documents]
    for w in result.warnings + [w for d in docs for w in unacted_warnings(d)]:
        render.err_console.print(f"[yellow]warning:[/yellow] {escape(w)}", soft_wrap=True)
    memory = parse_quantity(replica_memory, field="--replica-memory")
    if not 0 <= overcommit <= 1000:
        raise InvalidInput(f"--overcommit: expected a whole number of percent from 0 to 1000, got {overcommit}")
    server_docs = [d for d in docs if d["kind"] == "Server"]
    configs = [d for d in docs if d["kind"] == "ServerConfig"]
    shapes: dict[tuple[str, str], ReplicaShape] = {}
    servers = []
    for d in server_docs:
        config = server_config_for(d, configs)
        shapes[(d["metadata"]["namespace"], d["metadata"]["name"])] = replica_shape(
            d, config, memory=(memory, "--replica-memory"), overcommit_percent=(overcommit, "--overcommit"))
        servers.append(server_info(d, config))
    replicas = dry_run_replicas(servers, memory, overcommit, {k: v.memory for k, v in shapes.items()},
                                {k: v.overcommit for k, v in shapes.items()})
    namespaces = sorted({d["metadata"]["namespace"] for d in docs if d["kind"] == "Model"})
    rows = []
    failed = 0
    for ns in namespaces:
        snap = snapshot_for(ns, docs, [r for r in replicas if r.namespace == ns])
        for name, mp in sorted(plan_models(snap).models.items()):
            rows.append({"namespace": ns, "model": name, "state": mp.state,
                         "server": mp.server, "replicas": [r.index for r in mp.replicas],
                         "message": mp.message, "reasons": [r.as_dict() for r in mp.reasons]})
            failed += mp.state == "ScheduleFailed"
    desired = {(s.namespace, s.name): s.desired_replicas for s in servers}
    checks = reference_checks(docs, rows)
    if fmt is not None:
        fmt.write({
            "replicaMemory": memory, "overcommit": overcommit,
            "serverMemory": {f"{ns}/{name}": {"memory": s.memory, "from": s.memory_from}
                             for (ns, name), s in sorted(shapes.items()) if s.memory_from != "--replica-memory"},
            "servers": {f"{ns}/{name}": _server_row(s, desired[(ns, name)])
                        for (ns, name), s in sorted(shapes.items())},
            "models": rows,
            "pipelines": [c for c in checks if c["kind"] == "Pipeline"],
            "experiments": [c for c in checks if c["kind"] == "Experiment"]})
    else:
        render.err_console.print(f"dry run: each server replica offers {humanize_bytes(memory)} "
                                 f"+ {overcommit}% overcommit unless its manifests say otherwise", soft_wrap=True)
        for (ns, name), s in sorted(shapes.items()):
            render.err_console.print(f"server {ns}/{name}: {_server_line(s, desired[(ns, name)])}", soft_wrap=True,
                                     markup=False)
        if not rows:
            render.err_console.print("no Model in these manifests: nothing to place")
        for r in rows:
            name = f"{r['namespace']}/{r['model']}"
            where = f"{r['server']} replica(s) {', '.join(map(str, r['replicas']))}" if r["replicas"] else ""
            if r["state"] == "Scheduled":
                render.console.print(f"[green]✓[/green] {name}: Scheduled on {where}", soft_wrap=True)
            else:
                colour = "yellow" if r["state"] == "PartiallyScheduled" else "red"
                lead = f"{r['state']} on {where}: " if where else f"{r['state']}: "
                render.console.print(f"[{colour}]✗[/{colour}] {name}: {escape(lead + r['message'])}", soft_wrap=True)
        for c in checks:
            what = f"{c['kind'].lower()} {c['namespace']}/{c['name']}"
            if not c["problems"]:
                render.console.print(f"[green]✓[/green] {what}: ready once its models are", soft_wrap=True)
            for problem in c["problems"]:
                render.console.print(f"[red]✗[/red] {what}: {escape(problem)}", soft_wrap=True)
    wrong = sum(len(c["problems"]) for c in checks)
    if failed or wrong:
        parts = [f"{failed} model(s) cannot be placed"] if failed else []
        parts += [f"{wrong} problem(s) in pipelines and experiments"] if wrong else []
        raise BerthError("; ".join(parts), code="ScheduleFailed" if failed else "PlanFailed")


def reference_checks(docs: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every problem the live status would report for each Pipeline and Experiment, were the models placed
    as planned (a model the plan places counts as available; one it cannot place is not ready)."""
    out: list[dict[str, Any]] = []
    for ns in sorted({d["metadata"]["namespace"] for d in docs if d["kind"] in ("Pipeline", "Experiment")}):
        models = {r["model"]: {"status": {"state": "ModelAvailable" if r["state"] in _PLACED else r["state"],
                                          "message": r["message"]}}
                  for r in rows if r["namespace"] == ns}
        here = [d for d in docs if d["metadata"]["namespace"] == ns]
        pipes = {d["metadata"]["name"]: d for d in here if d["kind"] == "Pipeline"}
        checked = check_namespace(ns, pipes, models)
        as_docs: dict[str, dict[str, Any]] = {}
        for name in sorted(pipes):
            problems = checked[name][1]
            out.append({"kind": "Pipeline", "namespace": ns, "name": name, "problems": problems})
            as_docs[name] = {"status": {"message": "; ".join(problems), "conditions": [
                {"type": "Ready", "status": "False" if problems else "True"}]}}
        claimed: dict[str, str] = {}
        experiments = sorted((d for d in here if d["kind"] == "Experiment"), key=lambda d: d["metadata"]["name"])
        for exp in experiments:
            default = (exp.get("spec") or {}).get("default")
            if default and default not in claimed and (exp.get("spec") or {}).get("resourceType") != "pipeline":
                claimed[default] = exp["metadata"]["name"]
        for exp in experiments:
            out.append({"kind": "Experiment", "namespace": ns, "name": exp["metadata"]["name"],
                        "problems": experiment_problems(exp, models, claimed, as_docs)})
    return out


def _server_row(s: ReplicaShape, replicas: int) -> dict[str, Any]:
    if s.unsupported is not None:
        return {"replicas": 0, "inferenceServer": s.inference_server, "notRun": s.unsupported}
    return {"replicas": replicas, "inferenceServer": s.inference_server, "memory": s.memory,
            "memoryFrom": s.memory_from, "overcommit": s.overcommit, "overcommitFrom": s.overcommit_from}


def _server_line(s: ReplicaShape, replicas: int) -> str:
    if s.unsupported is not None:
        return f"no replicas: {s.unsupported}"
    return (f"{replicas} replica(s) of {humanize_bytes(s.memory)} (from {s.memory_from}) "
            f"+ {s.overcommit}% overcommit (from {s.overcommit_from})")
