"""ui: open the web dashboard already signed in.

The CLI asks the control plane for a one-time sign-in code (valid 60 s, usable once) with its own token and
opens ``<control plane>/ui/#code=CODE``.  The code sits in the URL's fragment, which browsers never send to a
server; the page exchanges it for the token at once and removes it from the address bar and history.  The
token itself never appears in a URL.
"""

from __future__ import annotations

import sys
import webbrowser

import typer

from berth.cli import render
from berth.cli.context import settings


def ui(
    no_open: bool = typer.Option(False, "--no-open", help="Print the sign-in link instead of opening a browser"),
) -> None:
    """Open the dashboard (/ui on the control plane) in a browser, signed in with the CLI's token."""
    with settings.client() as client:
        answer = client._request("POST", "/api/v1/ui/codes")
        url = f"{client.address}{answer.get('path', '/ui/')}#code={answer['code']}"
    if no_open or not webbrowser.open(url):
        render.err_console.print(f"open this link within {answer.get('expiresIn', 60)} s (it works once):")
        sys.stdout.write(url + "\n")
        return
    render.err_console.print(f"opened the dashboard at {client.address}/ui/ in your browser")
