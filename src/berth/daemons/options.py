"""Command-line options generated from a process's settings declaration (``berth.resources.process_settings``).

``with_settings_options(Settings)`` gives a command function the typer options of every setting that has a
flag: default None (so the environment, else the declared default, applies), the help text and variables
from the declaration.  The command receives them as keyword arguments and hands them to
``Settings.from_env(os.environ, **flags)``, which checks them as it checks the environment.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from berth.resources.process_settings import QUANTITY, ProcessSettings, base_type, default_text, extra_of, flag_of

F = TypeVar("F", bound=Callable[..., Any])


def settings_parameters(cls: type[ProcessSettings]) -> list[inspect.Parameter]:
    """A typer option per setting with a flag; quantities are taken as text (``2Gi``)."""
    params: list[inspect.Parameter] = []
    for name, field in cls.model_fields.items():
        flag = flag_of(field)
        if flag is None:
            continue
        tp = str if extra_of(field).get("format") == QUANTITY else base_type(field)
        shown = f" [default: {default_text(field)}]" if field.default is not None else ""
        option = typer.Option(None, *flag.split(","), help=cls.help(name) + shown, show_default=False)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                        annotation=tp | None))
    return params


def with_settings_options(cls: type[ProcessSettings], *extra: inspect.Parameter) -> Callable[[F], F]:
    """Give the decorated command the options of ``cls`` (then ``extra``, options that are not settings)."""
    def decorate(fn: F) -> F:
        fn.__signature__ = inspect.Signature([*settings_parameters(cls), *extra])  # type: ignore[attr-defined]
        return fn
    return decorate
