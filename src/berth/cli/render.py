"""Tables as the CLI prints them for people (kubectl-shaped, coloured with rich).

Documents for scripts (``-o json|yaml|name|jsonpath|custom-columns``) never come here: see
:mod:`berth.cli.output`."""

from __future__ import annotations

import calendar
import sys
import time
from typing import Any

from rich.console import Console
from rich.table import Table

from berth.cli import output as out
from berth.resources.statuses import condition_of, model_status_of, pipeline_status_of, server_status_of

# Piped output is not wrapped at 80 columns (kubectl does not wrap either); a terminal keeps its width.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 400)
err_console = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 400)


def age(ts: str | None, now: float | None = None) -> str:
    if not ts:
        return "<unknown>"
    try:
        then = calendar.timegm(time.strptime(ts, "%Y-%m-%dT%H:%M:%SZ"))
    except ValueError:
        return "<unknown>"
    return span((now or time.time()) - then)


def span(seconds: float) -> str:
    """A duration as kubectl's AGE column shows it: 45s, 12m, 5h, 3d."""
    secs = max(0, int(seconds))
    if secs < 120:
        return f"{secs}s"
    if secs < 7200:
        return f"{secs // 60}m"
    if secs < 172800:
        return f"{secs // 3600}h"
    return f"{secs // 86400}d"


def _message(doc: dict[str, Any], kind: str = "Ready") -> str:
    """The message of the condition of type ``kind`` ("" when there is none yet)."""
    cond = condition_of(doc, kind)
    return cond.get("message", "") if cond is not None else ""


def ready_text(doc: dict[str, Any]) -> str:
    cond = condition_of(doc, "Ready")
    status = cond.get("status", "Unknown") if cond is not None else "Unknown"
    colour = {"True": "green", "False": "red"}.get(status, "yellow")
    return f"[{colour}]{status}[/{colour}]"


def model_row(doc: dict[str, Any], wide: bool) -> list[str]:
    st = model_status_of(doc)  # None before the control plane's first pass over it
    spec = doc.get("spec") or {}
    declared = spec.get("replicas") or spec.get("minReplicas") or 1
    desired = st.get("replicas", declared) if st else declared
    row = [doc["metadata"]["name"], ready_text(doc), str(desired), str(st.get("availableReplicas", 0) if st else 0),
           age(doc["metadata"].get("creationTimestamp"))]
    if wide:
        row += [st.get("state", "ModelProgressing"), st.get("message", "")] if st else ["ModelProgressing", ""]
    return row


def server_row(doc: dict[str, Any], wide: bool) -> list[str]:
    st = server_status_of(doc)
    declared = (doc.get("spec") or {}).get("replicas") or 1
    desired = st.get("replicas", declared) if st else declared
    row = [doc["metadata"]["name"], ready_text(doc), f"{st.get('readyReplicas', 0) if st else 0}/{desired}",
           str(st.get("loadedModels", 0) if st else 0), age(doc["metadata"].get("creationTimestamp"))]
    if wide:
        row += [_message(doc)]
    return row


def experiment_row(doc: dict[str, Any], wide: bool) -> list[str]:
    spec = doc.get("spec") or {}
    cands = ", ".join(f"{c['name']}={c['weight']}" for c in spec.get("candidates", []))
    mirror = spec.get("mirror") or {}
    row = [doc["metadata"]["name"], ready_text(doc), spec.get("default") or "", cands,
           f"{mirror['name']} ({mirror.get('percent', 0)}%)" if mirror else "",
           age(doc["metadata"].get("creationTimestamp"))]
    if wide:
        row += [_message(doc)]
    return row


def pipeline_row(doc: dict[str, Any], wide: bool) -> list[str]:
    steps = ", ".join(s.get("name", "") for s in (doc.get("spec") or {}).get("steps", []))
    row = [doc["metadata"]["name"], ready_text(doc), steps, age(doc["metadata"].get("creationTimestamp"))]
    if wide:
        row += [_message(doc)]
    return row


def describe_pipeline(doc: dict[str, Any]) -> None:
    """`berth describe pipeline`: its readiness, every step (inputs, triggers, joins, readiness) and output."""
    from rich.markup import escape

    spec = doc.get("spec") or {}
    st = pipeline_status_of(doc)  # None before the control plane's first pass over it
    ready = {s.get("name"): s for s in (st.get("steps") or [] if st is not None else [])}
    message = _message(doc, "PipelineReady") if condition_of(doc, "PipelineReady") else _message(doc)
    output = spec.get("output") or {}
    steps = [s.get("name", "") for s in spec.get("steps") or []]
    head = Table(box=None, show_header=False, pad_edge=False)
    head.add_column(style="bold")
    head.add_column(overflow="fold")
    for key, value in (("Name", doc["metadata"]["name"]), ("Namespace", doc["metadata"]["namespace"]),
                       ("Ready", ready_text(doc)), ("Message", escape(message or "-")),
                       ("Address", f"{doc['metadata']['name']}.pipeline (path or seldon-model header)"),
                       ("Output", escape(", ".join(output.get("steps") or steps[-1:]))
                        + f" (join {output.get('stepsJoin') or output.get('joinType') or 'inner'})")):
        head.add_row(key, value)
    console.print(head)
    t = Table(box=None, pad_edge=False, header_style="bold", title="Steps", title_justify="left")
    for c in ("STEP", "INPUTS", "TRIGGERS", "JOIN", "READY", "MESSAGE"):
        t.add_column(c, overflow="fold")
    for raw in spec.get("steps") or []:
        name = raw.get("name", "")
        row = ready.get(name)
        join = raw.get("inputsJoinType") or raw.get("joinType") or "inner"
        if raw.get("triggers"):
            join += f" / triggers {raw.get('triggersJoinType') or 'inner'}"
        t.add_row(escape(name), escape(", ".join(raw.get("inputs") or ["(pipeline inputs)"])),
                  escape(", ".join(raw.get("triggers") or []) or "-"), join,
                  "Unknown" if row is None or "ready" not in row
                  else "[green]True[/green]" if row["ready"] else "[red]False[/red]",
                  escape(row.get("message", "") if row is not None else ""))
    console.print(t)


def generic_row(doc: dict[str, Any], wide: bool) -> list[str]:
    return [doc["metadata"]["name"], age(doc["metadata"].get("creationTimestamp"))]


COLUMNS: dict[str, tuple[list[str], list[str], Any]] = {
    "Model": (["NAME", "READY", "DESIRED REPLICAS", "AVAILABLE REPLICAS", "AGE"], ["STATE", "REASON"],
              model_row),
    "Server": (["NAME", "READY", "REPLICAS", "LOADED MODELS", "AGE"], ["MESSAGE"], server_row),
    "Experiment": (["NAME", "READY", "DEFAULT", "CANDIDATES", "MIRROR", "AGE"], ["MESSAGE"], experiment_row),
    "Pipeline": (["NAME", "READY", "STEPS", "AGE"], ["MESSAGE"], pipeline_row),
}


def table(kind: str, docs: list[dict[str, Any]], *, wide: bool = False, all_namespaces: bool = False) -> Table:
    head, extra, row = COLUMNS.get(kind, (["NAME", "AGE"], [], generic_row))
    cols = (["NAMESPACE"] if all_namespaces else []) + head + (extra if wide else [])
    t = Table(box=None, pad_edge=False, header_style="bold")
    for c in cols:
        t.add_column(c, overflow="fold")
    for doc in docs:
        cells = row(doc, wide)
        t.add_row(*(([doc["metadata"]["namespace"]] if all_namespaces else []) + cells))
    return t


def dump(obj: Any, output: str) -> str:
    """Deprecated: machine output goes through :mod:`berth.cli.output` (``output.parse(...).write(doc)``),
    never through rich's console.  Kept for callers not yet moved; the text is the same, less the newline."""
    return out.dumps(obj, "json" if output == "json" else "yaml").rstrip("\n")


def as_list(docs: list[dict[str, Any]], revision: int | str | None = None) -> dict[str, Any]:
    return out.as_list(docs, revision)
