"""audit: read the control plane's audit log (admins; a namespace admin sees only their namespaces)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from berth.cli import output as out
from berth.cli import render
from berth.cli.context import settings
from berth.errors import InvalidInput
from berth.resources.identity import parse_duration

COLUMNS = ("TIME", "PRINCIPAL", "SOURCE", "VERB", "KIND", "NAMESPACE", "NAME", "OUTCOME", "REASON")


def audit(
    namespace: str | None = typer.Option(None, "-n", "--namespace", help="Only this namespace's records"),
    all_namespaces: bool = typer.Option(False, "-A", "--all-namespaces",
                                        help="Every namespace you administer (the default)"),
    since: str | None = typer.Option(None, "--since", help="Only records newer than this, e.g. 1h, 30m, 7d"),
    limit: int = typer.Option(1000, "--limit", help="At most this many (the newest)"),
    output: str | None = typer.Option(None, "-o", "--output", help="json|yaml|jsonpath=TEMPLATE"),
) -> None:
    """Who did what, when, from where, and whether it was allowed: every write and every refused call."""
    fmt = out.parse(output, out.DOCUMENT)
    if namespace is not None and all_namespaces:
        raise InvalidInput("-n and -A: choose one namespace or all of them")
    if since is not None:
        try:
            parse_duration(since)
        except ValueError as exc:
            raise InvalidInput(f"--since {exc}") from None
    if limit < 1:
        raise InvalidInput(f"--limit {limit}: expected a positive number")
    with settings.client() as client:
        items = client.audit(namespace=namespace, since=since, limit=limit)
    if fmt is not None:
        fmt.write(out.as_list(items))
        return
    if not items:
        render.err_console.print("No audit records found.")
        return
    render.console.print(audit_table(items))


def audit_table(items: list[dict[str, Any]]) -> Table:
    t = Table(box=None, pad_edge=False, header_style="bold")
    for column in COLUMNS:
        t.add_column(column, overflow="fold")
    for rec in items:
        when = datetime.fromtimestamp(float(rec["time"])).strftime("%Y-%m-%d %H:%M:%S")
        cells = [when, *(str(rec.get(k) or "-") for k in ("principal", "source", "verb", "kind", "namespace",
                                                          "name", "outcome", "reason"))]
        t.add_row(*(escape(c) for c in cells))
    return t
