"""quota: per-namespace limits on Models, Servers and Server replicas (admins of every namespace).

    berth quota set -n team-a --models 20 --servers 2 --replicas 4   (other limits kept; --FIELD none lifts one)
    berth quota get -n team-a [-o json|yaml]
"""

from __future__ import annotations

from typing import Any

import typer

from berth.cli import output as out
from berth.cli.context import settings
from berth.client.quotas import get_quota, set_quota
from berth.errors import InvalidInput

app = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode=None,
                  help="Show and set a namespace's quota of Models, Servers and Server replicas (admins).")
FIELDS = ("models", "servers", "replicas")


def _limit(flag: str, text: str | None) -> int | None | str:
    """``text`` of ``--flag``: a whole number, ``none`` (no limit), or absent (keep: the string "keep")."""
    if text is None:
        return "keep"
    if text.strip().lower() in ("none", "unlimited", "-"):
        return None
    if not text.strip().isdigit():
        raise InvalidInput(f"--{flag} {text!r}: expected a whole number >= 0, or none (no limit)")
    return int(text)


@app.command("set")
def set_(
    namespace: str = typer.Option("default", "-n", "--namespace"),
    models: str | None = typer.Option(None, "--models", help="Most Models in the namespace (none: no limit)"),
    servers: str | None = typer.Option(None, "--servers", help="Most Servers in the namespace"),
    replicas: str | None = typer.Option(None, "--replicas",
                                        help="Most Server replicas (per Server: max of replicas, maxReplicas)"),
    output: str | None = typer.Option(None, "-o", "--output", help="json|yaml"),
) -> None:
    """Set a namespace's limits; a limit not given is kept."""
    fmt = out.parse(output, ("json", "yaml"))
    given = {"models": _limit("models", models), "servers": _limit("servers", servers),
             "replicas": _limit("replicas", replicas)}
    if all(v == "keep" for v in given.values()):
        raise InvalidInput("berth quota set: give at least one of --models, --servers, --replicas")
    with settings.client() as client:
        hard = dict(get_quota(client, namespace)["hard"])
        hard.update({k: v for k, v in given.items() if v != "keep"})
        answer = set_quota(client, namespace, hard)
    if fmt is not None:
        fmt.write(answer)
        return
    out.write(f"quota of namespace {namespace} set: {_text(answer)}\n")


@app.command()
def get(
    namespace: str = typer.Option("default", "-n", "--namespace"),
    output: str | None = typer.Option(None, "-o", "--output", help="json|yaml"),
) -> None:
    """Show a namespace's limits and what it uses."""
    fmt = out.parse(output, ("json", "yaml"))
    with settings.client() as client:
        answer = get_quota(client, namespace)
    if fmt is not None:
        fmt.write(answer)
        return
    rows = [["RESOURCE", "USED", "HARD"]]
    for field in FIELDS:
        limit = answer["hard"].get(field)
        rows.append([field, str(answer["used"].get(field, 0)), "<none>" if limit is None else str(limit)])
    out.write(out.tabulate(rows))


def _text(answer: dict[str, Any]) -> str:
    return ", ".join(f"{f}={'none' if answer['hard'].get(f) is None else answer['hard'][f]} "
                     f"(used {answer['used'].get(f, 0)})" for f in FIELDS)
