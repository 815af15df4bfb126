"""rollout: follow and undo a model's version updates, as `kubectl rollout` does for Deployments.

    berth rollout status model/NAME [-n NS] [--timeout 5m] [--no-watch]
    berth rollout undo model/NAME [-n NS]

``status`` waits until the model's current generation serves (exit 0) or failed to load (exit 1, with
MLServer's error; the previous version keeps serving).  ``undo`` re-applies the artifact of the previous
version (kept in ``status.rollout.previous``): a new generation, rolled out like any other update.  Both use
the ordinary get and apply endpoints, so they need the same roles (viewer, editor) and are audited as those.
"""

from __future__ import annotations

import time
from typing import Any

import typer
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from berth.cli import output as out
from berth.cli.context import settings
from berth.client.http import BerthClient
from berth.errors import InvalidInput, LoadError, NotFound, Timeout

app = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode=None,
                  help="Follow (status) and revert (undo) a model's version updates.")
ARTIFACT_FIELDS = ("storageUri", "artifactVersion", "requirements", "parameters", "secretName", "schemaUri")
POLL_S = 0.5


def _model(target: str) -> str:
    kind, sep, name = target.partition("/")
    if not sep or kind.lower() not in ("model", "models", "mlm") or not name:
        raise InvalidInput(f"{target!r}: expected model/NAME (rollouts are about Models), e.g. model/iris")
    return name


def _seconds(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600}
    try:
        return float(text[:-1]) * units[text[-1]] if text and text[-1] in units else float(text)
    except ValueError:
        raise InvalidInput(f"--timeout {text!r}: expected a duration such as 30s, 5m or 1h") from None


def progress(doc: dict[str, Any]) -> tuple[str, str]:
    """(Complete|Progressing|Failed|Waiting, a line) for a model as stored; Waiting: the status has not yet
    observed the current spec."""
    st = doc.get("status") or {}
    meta = doc["metadata"]
    if st.get("observedGeneration") != meta.get("generation"):
        return "Waiting", f"waiting for the control plane to observe generation {meta.get('generation')}"
    ro = st.get("rollout") or {}
    state = ro.get("state") or "Progressing"
    if state == "Complete":
        return state, (f'model "{meta["name"]}" successfully rolled out (generation '
                       f'{ro.get("servingGeneration")} serves on {st.get("availableReplicas", 0)} replica(s))')
    return state, ro.get("message") or st.get("message") or "waiting for the model's status"


def status(
    target: str = typer.Argument(..., help="model/NAME"),
    namespace: str = typer.Option("default", "-n", "--namespace"),
    timeout: str = typer.Option("5m", "--timeout", help="give up after this long, e.g. 30s, 5m"),
    watch: bool = typer.Option(True, "--watch/--no-watch", "-w", help="wait until the rollout ends"),
) -> None:
    """Wait until the model's current version serves; exit 1 if it failed to load (the old one keeps serving)."""
    name = _model(target)
    deadline = time.monotonic() + _seconds(timeout)
    last = ""
    with settings.client() as client:
        while True:
            state, line = progress(client.get("Model", namespace, name))
            if state == "Complete":
                out.write(line + "\n")
                return
            if state == "Failed":
                raise LoadError(f'model "{name}" in namespace {namespace}: rollout failed: {line}; the previous '
                                f"version keeps serving; fix the artifact and apply again, or run: berth "
                                f"rollout undo model/{name} -n {namespace}")
            if not watch:
                out.write(f"{line}\n")
                return
            if line != last:
                out.write(f'Waiting for model "{name}" rollout to finish: {line}\n')
                last = line
            if time.monotonic() >= deadline:
                raise Timeout(f'timed out after {timeout} waiting for model "{name}" rollout: {line}')
            time.sleep(POLL_S)


def undo_document(doc: dict[str, Any]) -> dict[str, Any]:
    """The model as it should be applied to go back to its previous version's artifact."""
    meta = doc["metadata"]
    previous = ((doc.get("status") or {}).get("rollout") or {}).get("previous")
    if not previous:
        raise NotFound(f'model "{meta["name"]}" in namespace {meta.get("namespace", "default")} has no previous '
                       "version to go back to (its artifact has not changed since it was created)")
    spec = {k: v for k, v in (doc.get("spec") or {}).items() if k not in ARTIFACT_FIELDS}
    spec.update(previous.get("artifact") or {})
    keep = {k: meta[k] for k in ("name", "namespace", "labels", "annotations") if meta.get(k)}
    return {"apiVersion": doc.get("apiVersion", "mlops.seldon.io/v1alpha1"), "kind": "Model",
            "metadata": keep, "spec": spec}


def undo(
    target: str = typer.Argument(..., help="model/NAME"),
    namespace: str = typer.Option("default", "-n", "--namespace"),
) -> None:
    """Re-apply the previous version's artifact (a new generation, rolled out like any update)."""
    name = _model(target)
    with settings.client() as client:
        doc = client.get("Model", namespace, name)
        generation = _undo(client, doc)
    out.write(f'model "{name}" rolled back to generation {generation}\'s artifact '
              f"(follow it with: berth rollout status model/{name} -n {namespace})\n")


def _undo(client: BerthClient, doc: dict[str, Any]) -> Any:
    previous = ((doc.get("status") or {}).get("rollout") or {}).get("previous") or {}
    client.apply([undo_document(doc)])
    return previous.get("generation")


def versions_table(st: dict[str, Any]) -> RenderableType:
    """``describe model``'s Versions: the serving, desired and previous generations and their artifacts."""
    ro = st.get("rollout") or {}
    t = Table(box=None, pad_edge=False, header_style="bold", title="Versions", title_justify="left")
    for c in ("GENERATION", "ROLE", "STATE", "STORAGE URI"):
        t.add_column(c, overflow="fold")
    if not ro:
        return t
    current, previous = ro.get("current") or {}, ro.get("previous") or {}
    serving, desired = ro.get("servingGeneration"), ro.get("desiredGeneration")
    uri = {current.get("generation"): (current.get("artifact") or {}).get("storageUri", "")}
    if previous:
        uri.setdefault(previous.get("generation"), (previous.get("artifact") or {}).get("storageUri", ""))
    state = ro.get("state", "")
    if serving != desired:
        t.add_row(str(serving), "[green]serving[/green]", "Loaded", uri.get(serving, "(previous artifact)"))
        colour = "red" if state == "Failed" else "yellow"
        t.add_row(str(desired), "desired", f"[{colour}]{state}[/{colour}]", uri.get(desired, ""))
    else:
        t.add_row(str(desired), "[green]serving[/green]" if state == "Complete" else "desired", state,
                  uri.get(desired, ""))
    if previous and previous.get("generation") not in (serving, desired):
        t.add_row(str(previous.get("generation")), "previous (rollout undo)", "Unloaded",
                  uri[previous.get("generation")])
    return Group(t, Text(f"Rollout: {ro.get('state', '')}: {ro.get('message', '')}"))


app.command("status")(status)
app.command("undo")(undo)
