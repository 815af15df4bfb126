"""apply, get, delete, wait: kubectl-shaped commands over the control API."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import typer
from rich.markup import escape

from berth import errors
from berth.cli import output as out
from berth.cli import render
from berth.cli.context import settings
from berth.client.http import BerthClient
from berth.errors import Expired, InvalidInput, NotFound, Timeout, Unavailable
from berth.resources.kinds import kind_from_alias
from berth.resources.manifest import load_paths

LISTED = ("Model", "Server", "Experiment", "Pipeline")


def _warn(warnings: list[str], shown: set[str] | None = None) -> None:
    """Each warning once (the control plane repeats the manifest's own along with its own)."""
    shown = set() if shown is None else shown
    for w in warnings:
        where, _, rest = w.partition(" ")
        key = rest if "#" in where else w  # "models.yaml#2 Model/x: …" and "document#2 Model/x: …" say one thing
        if key not in shown:
            shown.add(key)
            render.err_console.print(f"[yellow]warning:[/yellow] {escape(w)}", soft_wrap=True)


def _read(paths: list[str], namespace: str | None, shown: set[str] | None = None) -> list[dict[str, Any]]:
    stdin = sys.stdin.read() if "-" in paths else None
    result = load_paths(paths, stdin_text=stdin, default_namespace=namespace or "default")
    _warn(result.warnings, shown)
    return [d.body for d in result.documents]


def apply(
    filename: list[str] = typer.Option(..., "-f", "--filename", help="File, folder or - for stdin"),
    namespace: str | None = typer.Option(None, "-n", "--namespace", help="Namespace for documents without one"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate on the server, change nothing"),
    output: str | None = typer.Option(None, "-o", "--output", help="json|yaml: the answer; name: what was applied"),
) -> None:
    """Create or update resources from Seldon Core v2 manifests (all documents or none)."""
    fmt = out.parse(output, out.APPLY)
    shown: set[str] = set()
    docs = _read(filename, namespace, shown)
    with settings.client() as client:
        answer = client.apply(docs, dry_run=dry_run)
    _warn(answer.get("warnings", []), shown)
    if fmt is not None:
        if fmt.format == "name":
            out.write("".join(out.resource_name(r["kind"], r["name"]) + "\n" for r in answer["results"]))
        else:
            fmt.write(answer)
        return
    suffix = " (dry run)" if dry_run else ""
    out.write("".join(f"{out.resource_name(r['kind'], r['name'])} {r['action']}{suffix}\n"
                      for r in answer["results"]))


def get(
    kind: str = typer.Argument(..., help="models|servers|experiments|pipelines|all|..."),
    name: str | None = typer.Argument(None),
    namespace: str = typer.Option("default", "-n", "--namespace"),
    all_namespaces: bool = typer.Option(False, "-A", "--all-namespaces"),
    output: str | None = typer.Option(None, "-o", "--output",
                                      help="wide|json|yaml|name|jsonpath=TEMPLATE|custom-columns=HEADER:EXPR,..."),
    watch: bool = typer.Option(False, "-w", "--watch", help="After listing, print changes as they happen"),
    selector: str | None = typer.Option(None, "-l", "--selector", help="label=value[,label=value]"),
    watch_events: bool = typer.Option(False, "--output-watch-events",
                                      help="With -w and -o json|yaml: print each change as {type, object}"),
) -> None:
    """List resources (or one) as kubectl shows Seldon's; -o json|yaml print a List unless a name is given."""
    fmt = out.parse(output, out.LISTING)
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
        if fmt is not None and fmt.machine:
            items = [d for k in docs for d in docs[k]]
            if watch:  # as kubectl: each object on its own, as the changes that follow will be
                for d in items:
                    fmt.write_event(d, "ADDED" if watch_events else None)
            elif name is not None:
                fmt.write(items[0])
            else:
                fmt.write_list(items, revision)
        else:
            _print(docs, fmt is not None, all_namespaces, kind == "all")
        if watch:
            _watch(client, kinds, ns, name, fmt, all_namespaces, revision, selector, watch_events)


def _print(docs: dict[str, list[dict[str, Any]]], wide: bool, all_ns: bool, several: bool) -> None:
    """Tables for people (rich); machine formats never come here."""
    printed = False
    for k, items in docs.items():
        if not items:
            continue
        if several:
            render.console.print(f"[bold]{k}s[/bold]")
        render.console.print(render.table(k, items, wide=wide, all_namespaces=all_ns))
        if several:
            render.console.print()
        printed = True
    if not printed:
        where = "any namespace" if all_ns else "this namespace"
        render.err_console.print(f"No resources found in {where}.")


def _watch(client: Any, kinds: tuple[str, ...], ns: str | None, name: str | None, fmt: out.Output | None,
           all_ns: bool, since: int, selector: str | None = None, watch_events: bool = False) -> None:
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
        if fmt is not None and fmt.machine:
            fmt.write_event(obj, ev["type"] if watch_events else None)
            continue
        t = render.table(obj["kind"], [obj], wide=fmt is not None, all_namespaces=all_ns)
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
    for_: str = typer.Option("condition=Ready", "--for",
                             help="condition=NAME[=True|False], jsonpath='{EXPR}'=VALUE, or delete"),
    namespace: str = typer.Option("default", "-n", "--namespace"),
    timeout: str = typer.Option("60s", "--timeout", help="e.g. 30s, 2m"),
) -> None:
    """Wait until a resource meets a condition (as `kubectl wait`), judged only on a status that has
    observed the resource's current generation; follows the control plane's watch."""
    if "/" not in target:
        raise InvalidInput(f"{target!r}: expected KIND/NAME, e.g. model/iris")
    kind_text, name = target.split("/", 1)
    kind = kind_from_alias(kind_text)
    limit = _duration(timeout)
    judge = _judge(for_)
    ref = f"{kind.lower()}/{name}"
    deadline = time.monotonic() + limit
    busy: AbstractContextManager[Any] = (render.err_console.status(f"waiting for {for_} on {ref}…")
                                         if sys.stderr.isatty() else nullcontext())
    with settings.client() as client, busy:
        seen = _follow(client, kind, namespace, name, judge, deadline)
    if not seen.met:
        raise Timeout(f"timed out after {timeout} waiting for {for_} on {ref} ({seen.why})")
    out.write(f"{out.resource_name(kind, name)} condition met\n")


@dataclass(frozen=True)
class Seen:
    met: bool
    why: str  # what the last state seen was, for the timeout message


def _judge(for_: str) -> Callable[[dict[str, Any] | None, str], Seen]:
    """What --for asks, as a function of the object (None: it does not exist) and its namespace."""
    if for_ == "delete":
        def deleted(doc: dict[str, Any] | None, ns: str) -> Seen:
            if doc is None:
                return Seen(True, "deleted")
            return Seen(False, f"still exists at generation {doc['metadata'].get('generation', '?')}")
        return deleted
    if for_.startswith("condition="):
        cond, _, want = for_[len("condition="):].partition("=")
        if not cond:
            raise InvalidInput(f"--for {for_!r}: expected condition=NAME[=True|False]")
        want = want or "True"

        def condition(doc: dict[str, Any] | None, ns: str) -> Seen:
            if doc is None:
                return Seen(False, f"not found in namespace {ns}")
            current, gens = _generations(doc)
            st = doc.get("status") or {}
            conds = st.get("conditions") or []
            c = next((c for c in conds if c.get("type") == cond), None)
            shown = c or next((c for c in conds if c.get("type") == "Ready"), None) or {}
            state = st.get("state") or shown.get("reason") or "no status yet"
            message = st.get("message") or shown.get("message") or ""
            why = gens if not st else f"{gens}: {state}" + (f": {message}" if message else "")
            if c is None and st:
                why += f" (no {cond} condition)"
            met = current and c is not None and str(c.get("status", "")).lower() == want.lower()
            return Seen(met, why)
        return condition
    if for_.startswith("jsonpath="):
        text, expr, want = _jsonpath_for(for_)

        def jsonpath(doc: dict[str, Any] | None, ns: str) -> Seen:
            if doc is None:
                return Seen(False, f"not found in namespace {ns}")
            current, gens = _generations(doc)
            value = out.render_template(expr, doc)
            return Seen(current and value == want, f"{gens}: {text} is {value!r}")
        return jsonpath
    raise InvalidInput(f"--for {for_!r}: expected condition=NAME[=True|False], jsonpath='{{EXPR}}'=VALUE or delete")


def _jsonpath_for(for_: str) -> tuple[str, list[Any], str]:
    """``jsonpath='{.status.state}'=ModelAvailable`` → (its text, template, value), as kubectl wait reads it."""
    text = for_[len("jsonpath="):]
    close = text.rfind("}")
    if not text.startswith("{") or close < 0 or text[close + 1:close + 2] != "=" or not text[close + 2:]:
        raise InvalidInput(f"--for {for_!r}: expected jsonpath='{{EXPR}}'=VALUE, e.g. "
                           "--for=jsonpath='{.status.state}'=ModelAvailable")
    try:
        return text[:close + 1], out.parse_template(text[:close + 1]), text[close + 2:]
    except InvalidInput as exc:
        raise InvalidInput(f"--for {for_!r}: {exc.message}") from None


def _generations(doc: dict[str, Any]) -> tuple[bool, str]:
    """Whether the status has observed the current generation, and the two, as the messages say them."""
    gen = doc["metadata"].get("generation")
    st = doc.get("status") or {}
    observed = st.get("observedGeneration")
    if gen is None:
        return True, "no generation"
    if not st:
        return False, f"generation {gen}; no status yet"
    if observed is None:
        return False, f"generation {gen}; status observed no generation"
    return int(observed) >= int(gen), f"generation {gen}; status observed generation {observed}"


def _follow(client: BerthClient, kind: str, ns: str, name: str,
            judge: Callable[[dict[str, Any] | None, str], Seen], deadline: float) -> Seen:
    """Read the object and judge it; then follow the watch from its revision, judging each change of it,
    until it is met or ``deadline`` (time.monotonic()) passes.  A stream that breaks or idles is watched
    again from the last revision seen; a revision the store no longer keeps is read again."""
    doc, since = _read_one(client, kind, ns, name)
    seen = judge(doc, ns)
    while not seen.met:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return seen
        events = client.watch((kind,), ns, since=since, idle=min(remaining, IDLE_RECHECK))
        try:
            for ev in events:
                if ev.get("type") == "ERROR":  # e.g. Expired while streaming
                    raise errors.from_dict(ev.get("object") or {})
                since = max(since, int(ev.get("revision") or 0))
                obj = ev.get("object") or {}
                if (obj.get("metadata") or {}).get("name") == name:
                    seen = judge(None if ev.get("type") == "DELETED" else obj, ns)
                    if seen.met:
                        return seen
                if time.monotonic() >= deadline:
                    return seen
        except Expired:  # its revision is no longer kept: read it again at the store's
            doc, since = _read_one(client, kind, ns, name, listed=True)
            seen = judge(doc, ns)
        except Timeout:
            pass  # idle for IDLE_RECHECK (or up to the deadline): check the deadline, watch again
        except Unavailable:
            time.sleep(max(0.0, min(0.5, deadline - time.monotonic())))
        finally:
            events.close()
    return seen


IDLE_RECHECK = 10.0  # an idle watch is opened again this often (the control plane's keep-alive is 15 s)


def _read_one(client: BerthClient, kind: str, ns: str, name: str,
              *, listed: bool = False) -> tuple[dict[str, Any] | None, int]:
    """The object (None when it does not exist) and a revision to watch its changes from: its own
    resourceVersion, or (``listed``, or when it does not exist) the revision of a list of its kind."""
    if not listed:
        try:
            doc = client.get(kind, ns, name)
            return doc, int(doc["metadata"].get("resourceVersion") or 0)
        except NotFound:
            pass
    items, revision = client.list_at(kind, ns)
    return next((d for d in items if d["metadata"]["name"] == name), None), revision


def _duration(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for suffix in ("ms", "s", "m", "h"):
        if text.endswith(suffix) and text[: -len(suffix)].replace(".", "", 1).isdigit():
            return float(text[: -len(suffix)]) * units[suffix]
    if text.replace(".", "", 1).isdigit():
        return float(text)
    raise InvalidInput(f"--timeout {text!r}: expected a duration like 30s, 2m, 1h")
