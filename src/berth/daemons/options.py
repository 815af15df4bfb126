"""Command-line options generated from a process's settings declaration (``berth.resources.process_settings``).

``with_settings_options(Settings)`` gives a command function the typer options of every setting that has a
flag: default None (so the environment, else the declared default, applies), the help text and variables
from the declaration.  The command receives them as keyword arguments and hands them to
``Settings.from_env(os.environ, **flags)``, which checks them as it checks the environment.

Lists (``tuple[str, ...]``) and quantities are taken as text (``sklearn,xgboost``, ``2Gi``) and parsed there.
A flag that several settings declare (the agent's ``--control HOST:PORT`` gives its host and port) is one
text option, named after the flag, whose help the command words (``joined``): the command splits it into
the settings' values before ``from_env``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, get_origin

import typer

from berth.resources.process_settings import (
    QUANTITY,
    ProcessSettings,
    base_type,
    default_text,
    env_names,
    extra_of,
    flag_of,
)

F = TypeVar("F", bound=Callable[..., Any])


def option_name(flag: str) -> str:
    """The keyword a joined flag reaches the command under: ``--control`` -> ``control``."""
    return flag.split(",")[0].split("/")[0].lstrip("-").replace("-", "_")


def settings_parameters(cls: type[ProcessSettings], joined: Mapping[str, str] | None = None
                        ) -> list[inspect.Parameter]:
    """A typer option per flag: one setting's, or (``joined``: flag -> help) several settings' at once."""
    by_flag: dict[str, list[str]] = {}
    for name, field in cls.model_fields.items():
        flag = flag_of(field)
        if flag is not None:
            by_flag.setdefault(flag, []).append(name)
    params: list[inspect.Parameter] = []
    for flag, names in by_flag.items():
        if len(names) > 1 or flag in (joined or {}):
            if flag not in (joined or {}):
                raise TypeError(f"{cls.__name__}: flag {flag} is declared by {', '.join(names)}; "
                                "say what it takes with joined={flag: help}")
            variables = "; ".join(", ".join(env_names(cls.model_fields[n])) for n in names)
            option = typer.Option(None, *flag.split(","), help=f"{(joined or {})[flag]} (env {variables})",
                                  show_default=False)
            params.append(inspect.Parameter(option_name(flag), inspect.Parameter.KEYWORD_ONLY, default=option,
                                            annotation=str | None))
            continue
        name = names[0]
        field = cls.model_fields[name]
        text = extra_of(field).get("format") == QUANTITY or get_origin(base_type(field)) is tuple
        tp = str if text else base_type(field)
        shown = f" [default: {default_text(field)}]" if field.default is not None else ""
        option = typer.Option(None, *flag.split(","), help=cls.help(name) + shown, show_default=False)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option,
                                        annotation=tp | None))
    return params


def with_settings_options(cls: type[ProcessSettings], *extra: inspect.Parameter,
                          joined: Mapping[str, str] | None = None) -> Callable[[F], F]:
    """Give the decorated command the options of ``cls`` (then ``extra``, options that are not settings)."""
    def decorate(fn: F) -> F:
        fn.__signature__ = inspect.Signature([*settings_parameters(cls, joined), *extra])  # type: ignore[attr-defined]
        return fn
    return decorate
