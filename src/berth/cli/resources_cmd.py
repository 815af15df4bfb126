"""apply, get, delete, wait: kubectl-shaped commands over the control API."""

from __future__ import annotations

import sys
import time
from typing import Any

import typer

from berth.cli import render
from berth.cli.context import settings
from berth.errors import InvalidInput, NotFound, Timeout
from berth.resources.kinds import kind_from_alias
from berth.resources.manifest import load_paths

OUTPUTS = ("wide", "yaml", "json", "name")
LISTED = ("Model", "Server", "Experiment", "Pipeline")


def _check_output(output: str | None) -> None:
    if output is not None and output not in OUTPUTS:
        raise InvalidInput(f"--output {output!r}: expected one of {', '.join(OUTPUTS)}")


def _read(paths: list[str], namespace: str | None) -> list[dict[str, Any]]:
    stdin = sys.stdin.read() if "-" in paths else None
    result = load_paths(paths, stdin_text=stdin, default_namespace=namespace or "default")
    for w in result.warnings:
        render.err_console.print(f"[yellow]warning:[/yellow] {w}")
    return [d.body for d in result.documents]


def apply(
    filename: list[str] = typer.Option(..., "-f", "--filename", help="File, folder or - for stdin"),
    namespace: str | None = typer.Option(None, "-n", "--namespace", help="Namespace for documents without one"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate on the server, change nothing"),
    output: str | None = typer.Option(None, "-o", "--output", help="yaml|json"),
) -> None:
    """Create or update resources from Seldon Core v2 manifests (all documents or none)."""
    _check_output(output)
    docs = _read(filename, namespace)
    with settings.client() as client:
        answer = client.apply(docs, dry_run=dry_run)
    if output in ("yaml", "json"):
        render.console.print(render.dump(answer, output), markup=False)
        return
    for w in answer.get("warnings", []):
        render.err_console.print(f"[yellow]warning:[/yellow] {w}")
    for r in answer["results"]:
        suffix = " (dry run)" if dry_run else ""
        render.console.print(f"{r['kind'].lower()}.mlops.seldon.io/{r['name']} {r['action']}{suffix}"
                             if r["kind"] != "Secret" else f"secret/{r['name']} {r['action']}{suffix}")


def get(
    kind: str = typer.Argument(..., help="models|servers|experiments|pipelines|all|..."),
    name: str | None = typer.Argument(None),
    namespace: str = typer.Option("default", "-n", "--namespace"),
    all_namespaces: bool = typer.Option(False, "-A", "--all-namespaces"),
    output: str | None = typer.Option(None, "-o", "--output", help="wide|yaml|json|name"),
    watch: bool = typer.Option(False, "-w", "--watch", help="After listing, print changes as they happen"),
    selector: str | None = typer.Option(None, "-l", "--selector", help="label=value[,label=value]"),
) -> None:
    """List resources (or one) as kubectl shows Seldon's."""
    _check_output(output)
    kinds = LISTED if kind == "all" else (kind_from_alias(kind),)
    ns = None if all_namespaces else namespace
    with settings.client() as client:
        revision = 0
        if name is not None:
            if kind == "all":
                raise InvalidInput("get all takes no name")
            doc = client.get(kinds[0], namespace, name)
            revision = int(doc["metadata"].get("resourceVersion", 0))
            docs = {kinds[0]: [doc]}
        else:
            docs = {}
            for k in kinds:
                docs[k], rev = client.list_at(k, ns, selector)
                revision = max(revision, rev)
        _print(docs, output, all_namespaces, kind == "all")
        if watch:
            _watch(client, kinds, ns, name, output, all_namespaces, revision, selector)


def _print(docs: dict[str, list[dict[str, Any]]], output: str | None, all_ns: bool, several: bool) -> None:
    if output in ("yaml", "json"):
        items = [d for k in docs for d in docs[k]]
        single = len(items) == 1 and not several and len(docs) == 1
        render.console.print(render.dump(items[0] if single else render.as_list(items), output), markup=False)
        return
    if output == "name":
        for k, items in docs.items():
            for d in items:
                render.console.print(f"{k.lower()}/{d['metadata']['name']}", markup=False)
        return
    printed = False
    for k, items in docs.items():
        if not items:
            continue
        if several:
            render.console.print(f"[bold]{k}s[/bold]")
        render.console.print(render.table(k, items, wide=output == "wide", all_namespaces=all_ns))
        if several:
            render.console.print()
        printed = True
    if not printed:
        where = "any namespace" if all_ns else "this namespace"
        render.err_console.print(f"No resources found in {where}.")


def _watch(client: Any, kinds: tuple[str, ...], ns: str | None, name: str | None, output: str | None,
           all_ns: bool, since: int, selector: str | None = None) -> None:
    """Print changes until interrupted; a dropped stream is watched again (or listed again after a 410)."""
    want = {k.strip(): v.strip() for k, _, v in (p.partition("=") for p in (selector or "").split(",") if p)}

    def note(line: str) -> None:
        render.err_console.print(line, markup=False)

    for ev in client.watch_resuming(kinds, ns, since=since, note=note):
        obj = ev["object"]
        if name is not None and obj["metadata"]["name"] != name:
            continue
        labels = obj["metadata"].get("labels") or {}
        if any(labels.get(k) != v for k, v in want.items()):
            continue
        if output in ("yaml", "json"):
            render.console.print(render.dump({"type": ev["type"], "object": obj}, output), markup=False)
            continue
        t = render.table(obj["kind"], [obj], wide=output == "wide", all_namespaces=all_ns)
        t.show_header = False
        prefix = "[red]DELETED[/red] " if ev["type"] == "DELETED" else ""
        if prefix:
            render.console.print(prefix, end="")
        render.console.print(t)


def delete(
    kind: str | None = typer.Argument(None, help="Resource type, e.g. model"),
    name: str | None = typer.Argument(None),
    filename: list[str] = typer.Option([], "-f", "--filename", help="Delete what these manifests name"),
    namespace: str = typer.Option("default", "-n", "--namespace"),
    ignore_not_found: bool = typer.Option(False, "--ignore-not-found"),
) -> None:
    """Delete resources by type and name, or those a manifest names."""
    targets: list[tuple[str, str, str]] = []
    if filename:
        targets = [(d["kind"], d["metadata"]["namespace"], d["metadata"]["name"])
                   for d in _read(filename, namespace)]
    elif kind and name:
        if "/" in kind and not name:
            kind, name = kind.split("/", 1)
        targets = [(kind_from_alias(kind), namespace, name)]
    elif kind and "/" in kind:
        k, n = kind.split("/", 1)
        targets = [(kind_from_alias(k), namespace, n)]
    else:
        raise InvalidInput("delete needs KIND NAME (e.g. `berth delete model iris`) or -f FILE")
    with settings.client() as client:
        for k, ns, n in targets:
            try:
                client.delete(k, ns, n)
                render.console.print(f"{k.lower()}/{n} deleted")
            except NotFound:
                if not ignore_not_found:
                    raise


def wait(
    target: str = typer.Argument(..., help="KIND/NAME, e.g. model/iris"),
    for_: str = typer.Option("condition=Ready", "--for", help="condition=NAME[=True|False] or delete"),
    namespace: str = typer.Option("default", "-n", "--namespace"),
    timeout: str = typer.Option("60s", "--timeout", help="e.g. 30s, 2m"),
) -> None:
    """Wait until a resource meets a condition (as `kubectl wait`)."""
    if "/" not in target:
        raise InvalidInput(f"{target!r}: expected KIND/NAME, e.g. model/iris")
    kind_text, name = target.split("/", 1)
    kind = kind_from_alias(kind_text)
    limit = _duration(timeout)
    want_delete = for_ == "delete"
    cond, want = "", "True"
    if not want_delete:
        if not for_.startswith("condition="):
            raise InvalidInput(f"--for {for_!r}: expected condition=NAME or delete")
        cond, _, want = for_[len("condition="):].partition("=")
        want = want or "True"
    deadline = time.monotonic() + limit
    last = ""
    with settings.client() as client, render.console.status(f"waiting for {for_} on {kind.lower()}/{name}…") \
            as spinner:
        while True:
            try:
                doc = client.get(kind, namespace, name)
            except NotFound:
                if want_delete:
                    render.console.print(f"{kind.lower()}/{name} deleted")
                    return
                doc = None
                last = "not found"
            if doc is not None and not want_delete:
                c = next((c for c in (doc.get("status") or {}).get("conditions", [])
                          if c.get("type") == cond), None)
                if c is not None and c.get("status") == want:
                    render.console.print(f"{kind.lower()}/{name} condition met")
                    return
                st = doc.get("status") or {}
                last = f"{st.get('state') or (c or {}).get('reason', 'no status yet')}: " \
                       f"{st.get('message') or (c or {}).get('message', '')}"
                spinner.update(f"{kind.lower()}/{name}: {last}")
            if time.monotonic() >= deadline:
                raise Timeout(f"timed out after {timeout} waiting for {for_} on {kind.lower()}/{name} in "
                              f"namespace {namespace}; last seen: {last}")
            time.sleep(0.25)


def _duration(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for suffix in ("ms", "s", "m", "h"):
        if text.endswith(suffix) and text[: -len(suffix)].replace(".", "", 1).isdigit():
            return float(text[: -len(suffix)]) * units[suffix]
    if text.replace(".", "", 1).isdigit():
        return float(text)
    raise InvalidInput(f"--timeout {text!r}: expected a duration like 30s, 2m, 1h")
