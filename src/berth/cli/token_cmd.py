"""token: create, list and revoke the bearer tokens of the control API (admins only).

``berth token create`` prints one line of information on stderr and the token alone on the last line of
stdout: it is shown this once (only its hash is kept), so ``TOKEN=$(berth token create ...)`` captures it.
"""

from __future__ import annotations

import time
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from berth.cli import output as out
from berth.cli import render
from berth.cli.context import settings
from berth.errors import InvalidInput
from berth.resources.identity import ROLES, AgentIdentity, parse_duration

app = typer.Typer(no_args_is_help=True, add_completion=False, rich_markup_mode=None,
                  help="Create, list and revoke control-API tokens (admins; a namespace admin manages its own).")


@app.command()
def create(
    name: str = typer.Argument(..., help="The token's name (shown in the audit log)"),
    namespace: str = typer.Option("default", "-n", "--namespace", help="Namespace of the role ('*': every one)"),
    role: str | None = typer.Option(None, "--role", help=f"Role in the namespace: {', '.join(ROLES)}"),
    grant: list[str] = typer.Option([], "--grant", help="More roles: NAMESPACE=ROLE (repeatable)"),
    expires: str | None = typer.Option(None, "--expires", help="Lifetime, e.g. 30d, 12h (default: no expiry)"),
    agent: str | None = typer.Option(None, "--agent", help="An agent token for one replica: NAMESPACE/SERVER/REPLICA"),
    gateway: bool = typer.Option(False, "--gateway", help="A gateway token (reads the routing table)"),
) -> None:
    """Create a token and print it (alone on the last line of stdout, shown only this once)."""
    kind, grants = _kind_and_grants(namespace, role, grant, agent, gateway)
    if expires is not None:
        try:
            parse_duration(expires)
        except ValueError as exc:
            raise InvalidInput(f"--expires {exc}") from None
    with settings.client() as client:
        made = client.create_token(name, grants=grants, kind=kind, agent=agent, expires_in=expires)
    what = (f"for replica {made.get('agent')}" if kind == "agent" else "gateway token" if kind == "gateway"
            else "roles " + ", ".join(f"{role_} in {ns}" for ns, role_ in sorted(made["grants"].items())))
    until = f"expires in {render.span(made['expires'] - time.time())}" if made.get("expires") else "no expiry"
    render.err_console.print(f"token {escape(name)} created ({what}; {until}); it is shown only this once: keep "
                             "it safe, pass it as BERTH_TOKEN", soft_wrap=True)
    out.write(made["token"] + "\n")


def _kind_and_grants(namespace: str, role: str | None, more: list[str], agent: str | None,
                     gateway: bool) -> tuple[str, dict[str, str]]:
    if agent is not None and gateway:
        raise InvalidInput("--agent and --gateway: a token is one or the other")
    if agent is not None or gateway:
        if role is not None or more:
            raise InvalidInput(f"--{'agent' if agent else 'gateway'} tokens carry no roles; drop --role/--grant")
        if agent is not None:
            try:
                AgentIdentity.parse(agent)
            except ValueError as exc:
                raise InvalidInput(f"--agent {exc}") from None
            return "agent", {}
        return "gateway", {}
    grants: dict[str, str] = {}
    if role is not None:
        grants[namespace] = role
    for text in more:
        ns, sep, value = text.partition("=")
        if not sep or not ns or not value:
            raise InvalidInput(f"--grant {text!r}: expected NAMESPACE=ROLE, e.g. --grant team-a=viewer")
        grants[ns.strip()] = value.strip()
    for ns, value in grants.items():
        if value not in ROLES:
            raise InvalidInput(f"role {value!r} for namespace {ns}: expected one of {', '.join(ROLES)}")
    if not grants:
        raise InvalidInput("a user token needs a role: --role ROLE (in -n NAMESPACE) or --grant NAMESPACE=ROLE; "
                           "or make an --agent or --gateway token")
    return "user", grants


@app.command("list")
def list_(
    output: str | None = typer.Option(None, "-o", "--output", help="json|yaml|jsonpath=TEMPLATE"),
) -> None:
    """The tokens you administer (never the tokens themselves)."""
    fmt = out.parse(output, out.DOCUMENT)
    with settings.client() as client:
        items = client.tokens()
    if fmt is not None:
        fmt.write(out.as_list(items))
        return
    if not items:
        render.err_console.print("No tokens found.")
        return
    render.console.print(token_table(items, time.time()))


def token_table(items: list[dict[str, Any]], now: float) -> Table:
    t = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("NAME", "KIND", "GRANTS", "AGENT", "EXPIRES", "REVOKED", "AGE"):
        t.add_column(column, overflow="fold")
    for tok in items:
        grants = ",".join(f"{ns}={role}" for ns, role in sorted((tok.get("grants") or {}).items())) or "<none>"
        expires = tok.get("expires")
        expiry = ("<never>" if not expires else f"in {render.span(expires - now)}" if expires > now
                  else f"expired {render.span(now - expires)} ago")
        revoked = f"{render.span(now - tok['revoked'])} ago" if tok.get("revoked") else "-"
        t.add_row(*(escape(str(c)) for c in (tok["name"], tok["kind"], grants, tok.get("agent") or "-", expiry,
                                            revoked, render.span(now - float(tok["created"])))))
    return t


@app.command()
def revoke(name: str = typer.Argument(..., help="The token's name")) -> None:
    """Revoke a token: refused at once, and open watches holding it end within a second."""
    with settings.client() as client:
        client.revoke_token(name)
    out.write(f"token/{name} revoked\n")
