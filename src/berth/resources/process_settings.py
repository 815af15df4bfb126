"""One typed settings object per process (pydantic-settings), as Prefect and MLServer declare theirs.

A process (the control plane, the gateway) declares each setting once with :func:`setting`: its default,
the environment variables it is read from (Berth's ``BERTH_*`` name first, then Seldon's where Seldon has
one: first set wins), its range or format, and its command-line flag.  From that one declaration come:

- :meth:`ProcessSettings.from_env`: the settings from an environment mapping and the flags given (a flag
  wins over the environment; ``None`` means "not given");
- ranges checked once: a wrong value is one ``ConfigError`` line naming the variable (or the flag) and
  what it accepts, e.g. ``BERTH_PORT='70000': a port must be between 1 and 65535``;
- the process's command-line options (``berth.daemons.options``: names, flags, help texts);
- :meth:`ProcessSettings.markdown`: its table in ``docs/settings.md`` (kept current by a test).

Nothing reads ``os.environ`` implicitly: constructing a settings object directly uses only its arguments,
and a wrong argument is a ``ConfigError`` naming the setting and its range there too.  A process whose
variables need more than a type and a range (the agent reads server and replica from Seldon's ``POD_NAME``)
overrides :meth:`ProcessSettings.parse_value`.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, ClassVar, Self, Union, cast, get_args, get_origin

import annotated_types
from pydantic import AliasChoices, Field, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from berth.errors import ConfigError, InvalidInput
from berth.resources.quantity import parse_quantity

QUANTITY = "quantity (bytes, 500M, 2Gi)"
_ENV: ContextVar[Mapping[str, str] | None] = ContextVar("berth_settings_env", default=None)
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def setting(default: Any, *env: str, doc: str, flag: str | None = None, ge: float | None = None,
            le: float | None = None, gt: float | None = None, fmt: str | None = None,
            choices: tuple[str, ...] | None = None, secret: bool = False) -> Any:
    """Declare one setting: default, variables (first set wins), flag, range (``ge``/``le``/``gt``), format,
    or the words it accepts (``choices``, matched without regard to case); ``secret``: left out of ``repr``."""
    extra: dict[str, Any] = {"env": list(env)}
    if choices is not None:
        extra["choices"] = list(choices)
        fmt = fmt or "one of " + ", ".join(choices)
    if flag is not None:
        extra["flag"] = flag
    if fmt is not None:
        extra["format"] = fmt
    return Field(default, validation_alias=AliasChoices(*env) if env else None, description=doc,
                 ge=ge, le=le, gt=gt, repr=not secret, json_schema_extra=extra)


def env_names(field: FieldInfo) -> tuple[str, ...]:
    alias = field.validation_alias
    return tuple(str(c) for c in alias.choices) if isinstance(alias, AliasChoices) else ()


def extra_of(field: FieldInfo) -> dict[str, Any]:
    return field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}


def flag_of(field: FieldInfo) -> str | None:
    flag = extra_of(field).get("flag")
    return str(flag) if flag else None


def base_type(field: FieldInfo) -> Any:
    """``int`` of ``int | None``."""
    tp = field.annotation
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        tp = args[0] if len(args) == 1 else str
    return tp


def bounds(field: FieldInfo) -> tuple[float | None, float | None, bool]:
    """(lowest, highest, lowest excluded) of a field's range."""
    low: float | None = None
    high: float | None = None
    strict = False
    for m in field.metadata:
        if isinstance(m, annotated_types.Ge):
            low = cast(float, m.ge)
        elif isinstance(m, annotated_types.Gt):
            low, strict = cast(float, m.gt), True
        elif isinstance(m, annotated_types.Le):
            high = cast(float, m.le)
    return low, high, strict


def accepts(field: FieldInfo) -> str:
    """What a setting accepts, in words (the docs' column and every range error)."""
    fmt = extra_of(field).get("format")
    word = str(fmt) if fmt else {int: "integer", float: "number", bool: "true or false", Path: "path"}.get(
        base_type(field), "text")
    low, high, strict = bounds(field)
    if low is None and high is None:
        return word
    show = _size if fmt == QUANTITY else _num
    if low is not None and high is not None and not strict and fmt != QUANTITY:
        return f"{word} {show(low)}{' to ' if low < 0 else '–'}{show(high)}"
    parts = ([f"{'>' if strict else '≥'} {show(low)}"] if low is not None else []) + (
        [f"≤ {show(high)}"] if high is not None else [])
    return f"{word}, {' and '.join(parts)}"


def _num(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _size(value: float) -> str:
    n = int(value)
    for unit, size in (("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)):
        if n >= size and n % size == 0:
            return f"{n // size}{unit}"
    return str(n)


def _range_problem(field: FieldInfo, value: Any) -> str | None:
    choices = extra_of(field).get("choices")
    if choices is not None and isinstance(value, str):
        return None if value.upper() in {c.upper() for c in choices} else f"expected {accepts(field)}"
    if not isinstance(value, int | float) or isinstance(value, bool):
        return None
    low, high, strict = bounds(field)
    if (low is not None and (value <= low if strict else value < low)) or (high is not None and value > high):
        if base_type(field) is int and low == 1 and high == 65535:
            return "a port must be between 1 and 65535"
        return f"expected {accepts(field)}"
    return None


def parse_text(field: FieldInfo, where: str, raw: str) -> Any:
    """The value of ``field`` written as text (a variable's or a flag's); ConfigError names ``where``."""
    text = raw.strip()
    tp = base_type(field)
    if extra_of(field).get("format") == QUANTITY:
        try:
            value: Any = parse_quantity(text, field=where)
        except InvalidInput as exc:
            raise ConfigError(f"{where}={raw!r}: expected a {QUANTITY}") from exc
    elif tp is bool:
        if text.lower() not in _TRUE | _FALSE:
            raise ConfigError(f"{where}={raw!r}: expected true or false")
        value = text.lower() in _TRUE
    elif tp is int:
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(f"{where}={raw!r}: expected a whole number ({accepts(field)})") from None
    elif tp is float:
        try:
            value = float(text)
        except ValueError:
            raise ConfigError(f"{where}={raw!r}: expected a number ({accepts(field)})") from None
    elif tp is Path:
        value = Path(text)
    elif get_origin(tp) is tuple:  # a comma-separated list; empty items are dropped
        value = tuple(item.strip() for item in text.split(",") if item.strip())
    else:
        value = text
    problem = _range_problem(field, value)
    if problem:
        raise ConfigError(f"{where}={raw!r}: {problem}")
    return value


class _MappingSource(PydanticBaseSettingsSource):
    """Each field's declared variables (first set and non-empty wins), parsed and range-checked here so that
    an error names the variable."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        super().__init__(settings_cls)
        self.env = env

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        cls = cast(type[ProcessSettings], self.settings_cls)
        for variable in env_names(field):
            raw = self.env.get(variable, "")
            if raw.strip():
                return cls.parse_value(field_name, variable, raw), variable, False
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            value, _, _ = self.get_field_value(field, name)
            if value is not None:
                out[name] = value
        return out


class ProcessSettings(BaseSettings):
    """Base of a process's settings; subclasses declare fields with :func:`setting` and name the process."""

    model_config = SettingsConfigDict(frozen=True, extra="forbid", populate_by_name=True)
    PROCESS: ClassVar[str] = "process"
    TITLE: ClassVar[str] = "Settings"
    COMMAND: ClassVar[str] = ""

    def __init__(self, **values: Any) -> None:
        """Direct construction (no environment): a wrong value is a ConfigError naming the setting."""
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise ConfigError(type(self)._describe(exc, set(values))) from None

    @classmethod
    def parse_value(cls, name: str, where: str, raw: str) -> Any:
        """The value of setting ``name`` written as text in ``where`` (a variable or a flag); ConfigError
        names ``where``.  Override for variables that need more than a type and a range."""
        return parse_text(cls.model_fields[name], where, raw)

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   env_settings: PydanticBaseSettingsSource,
                                   dotenv_settings: PydanticBaseSettingsSource,
                                   file_secret_settings: PydanticBaseSettingsSource,
                                   ) -> tuple[PydanticBaseSettingsSource, ...]:
        env = _ENV.get()  # set by from_env only: direct construction reads no environment
        return (init_settings,) if env is None else (init_settings, _MappingSource(settings_cls, env))

    @classmethod
    def from_env(cls, env: Mapping[str, str], **flags: Any) -> Self:
        """Settings from ``env`` and the flags given (``None``: not given; text is parsed as the variable's
        would be).  ConfigError names the variable or flag and what it accepts."""
        unknown = sorted(set(flags) - set(cls.model_fields))
        if unknown:
            raise ConfigError(f"unknown {cls.PROCESS} setting(s): {', '.join(unknown)}")
        given: dict[str, Any] = {}
        for name, value in flags.items():
            if value is None:
                continue
            field = cls.model_fields[name]
            where = (flag_of(field) or name).split("/")[0].split(",")[0]  # --namespace of "--namespace,-n"
            if isinstance(value, str) and (base_type(field) is not str or extra_of(field).get("format")):
                value = cls.parse_value(name, where, value)
            problem = _range_problem(field, value)
            if problem:
                raise ConfigError(f"{where}={value!r}: {problem}")
            given[name] = value
        token = _ENV.set(env)
        try:
            return cls(**given)  # __init__ turns a ValidationError into a ConfigError
        finally:
            _ENV.reset(token)

    @classmethod
    def _describe(cls, exc: ValidationError, given: set[str]) -> str:
        """One line for the first error: the setting (its flag when it came from one) and what it accepts."""
        err = exc.errors()[0]
        name = str(err["loc"][0]) if err["loc"] else ""
        field = cls.model_fields.get(name)
        if field is None:
            return f"{cls.PROCESS} settings: {err['msg']}, got {err.get('input')!r}"
        flag = flag_of(field) if _ENV.get() is not None and name in given else None
        where = flag.split("/")[0].split(",")[0] if flag else name
        return f"{cls.PROCESS} {where}: expected {accepts(field)}, got {err.get('input')!r}"

    @classmethod
    def help(cls, name: str) -> str:
        field = cls.model_fields[name]
        env = env_names(field)
        text = str(field.description)
        return f"{text} (env {', '.join(env)})" if env else text

    @classmethod
    def markdown(cls) -> str:
        """This process's section of ``docs/settings.md``."""
        lines = [f"## {cls.TITLE}", "", f"`{cls.COMMAND}` reads:", "",
                 "| Setting | Environment variables | Flag | Default | Accepts | Meaning |",
                 "|---|---|---|---|---|---|"]
        for name, field in cls.model_fields.items():
            env = ", ".join(f"`{v}`" for v in env_names(field)) or "—"
            flag = flag_of(field)
            flag_text = ", ".join(f"`{f}`" for f in flag.split(",")) if flag else "—"
            default = "—" if field.default is None else f"`{default_text(field)}`"
            lines.append(f"| `{name}` | {env} | {flag_text} | {default} | {accepts(field)} | {field.description} |")
        return "\n".join(lines) + "\n"


def default_text(field: FieldInfo) -> str:
    default = field.default
    if extra_of(field).get("format") == QUANTITY and isinstance(default, int):
        return _size(default)
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, tuple):
        return ",".join(str(item) for item in default)
    return str(default)
