"""plan: a dry run of placement on manifests alone, with no control plane."""

from __future__ import annotations

import typer

from berth.cli import render
from berth.errors import BerthError
from berth.resources.manifest import load_paths
from berth.resources.podspec import server_config_for, server_memory
from berth.resources.quantity import humanize_bytes, parse_quantity
from berth.scheduler import plan as plan_models
from berth.scheduler.build import dry_run_replicas, server_info, snapshot_for


def plan(
    filename: list[str] = typer.Option(..., "-f", "--filename", help="Manifests: file, folder or -"),
    replica_memory: str = typer.Option("1Gi", "--replica-memory", help="Memory of each server replica"),
    overcommit: int = typer.Option(10, "--overcommit", help="Overcommit percent of each replica"),
    output: str | None = typer.Option(None, "-o", "--output", help="yaml|json"),
) -> None:
    """Where would each model run? Server replicas come from the manifests' `replicas`; their memory from
    the berth.io/replica-memory annotation, else the mlserver container's memory request in the Server's or
    its ServerConfig's podSpec, else --replica-memory."""
    import sys

    stdin = sys.stdin.read() if "-" in filename else None
    result = load_paths(filename, stdin_text=stdin)
    for w in result.warnings:
        render.err_console.print(f"[yellow]warning:[/yellow] {w}")
    docs = [d.body for d in result.documents]
    memory = parse_quantity(replica_memory, field="--replica-memory")
    server_docs = [d for d in docs if d["kind"] == "Server"]
    configs = [d for d in docs if d["kind"] == "ServerConfig"]
    sizes: dict[tuple[str, str], tuple[int, str]] = {}
    for d in server_docs:
        size = server_memory(d, server_config_for(d, configs), memory)
        if size[1] != "default":
            sizes[(d["metadata"]["namespace"], d["metadata"]["name"])] = size
    servers = [server_info(d) for d in server_docs]
    replicas = dry_run_replicas(servers, memory, overcommit, {k: v[0] for k, v in sizes.items()})
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
    if output in ("yaml", "json"):
        render.console.print(render.dump({"replicaMemory": memory, "serverMemory": {
            f"{ns}/{name}": {"memory": size, "from": source} for (ns, name), (size, source) in sorted(sizes.items())},
            "models": rows}, output), markup=False)
    else:
        render.err_console.print(f"dry run: each server replica offers {humanize_bytes(memory)} "
                                 f"+ {overcommit}% overcommit" + "".join(
                                     f"; {ns}/{name} {humanize_bytes(size)} ({source})"
                                     for (ns, name), (size, source) in sorted(sizes.items())))
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
                render.console.print(f"[{colour}]✗[/{colour}] {name}: {lead}{r['message']}", soft_wrap=True)
    if failed:
        raise BerthError(f"{failed} model(s) cannot be placed", code="ScheduleFailed")
