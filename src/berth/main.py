"""The `berth` command: user commands (cli) and process commands (daemons) under one program.

Errors print as one line and a non-zero exit; ``--debug`` anywhere shows the traceback.
"""

from __future__ import annotations

import sys
import traceback

import typer

try:  # recent typer carries its own copy of click and raises that copy's exceptions
    from typer._click.exceptions import ClickException
except ImportError:  # older typer runs on click itself (where typer.Abort and typer.Exit are click's)
    from click.exceptions import ClickException  # type: ignore[assignment]

from berth.cli.app import build as build_cli
from berth.cli.context import hoist_globals
from berth.daemons.app import register as register_daemons
from berth.errors import BerthError


def build() -> typer.Typer:
    app = build_cli()
    register_daemons(app)
    return app


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    app = build()
    try:
        args = hoist_globals(typer.main.get_command(app), args)  # kubectl-style: global options after the command
        app(args=args, prog_name="berth", standalone_mode=False)
        return 0
    except BerthError as err:
        if debug:
            traceback.print_exc()
        lines = err.message.splitlines() or [err.code]
        sys.stderr.write(f"error: {lines[0]}\n")
        for line in lines[1:]:
            sys.stderr.write(f"{line}\n")
        return 1
    except typer.Abort:
        sys.stderr.write("aborted\n")
        return 130
    except ClickException as exc:
        exc.show()
        return exc.exit_code
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # anything unexpected: one line unless --debug
        if debug:
            traceback.print_exc()
        else:
            sys.stderr.write(f"error: internal error: {type(exc).__name__}: {exc} (run with --debug for "
                             "the traceback)\n")
        return 70


if __name__ == "__main__":
    sys.exit(main())
