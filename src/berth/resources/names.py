"""Kubernetes DNS-1123 names, so no name can ever reach a file path."""

from __future__ import annotations

import re

from berth.errors import InvalidName

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def name_problem(name: object, *, what: str = "name", label: bool = False) -> str | None:
    """Return why ``name`` is not a valid DNS-1123 name, or None when it is."""
    if not isinstance(name, str) or not name:
        return f"{what}: required, must be a non-empty string"
    limit = 63 if label else 253
    if len(name) > limit:
        return f"{what}: {name!r} is longer than {limit} characters"
    pattern = _LABEL if label else _SUBDOMAIN
    if not pattern.match(name):
        kind = "DNS-1123 label" if label else "DNS-1123 subdomain"
        return (f"{what}: {name!r} is not a valid {kind} (lower-case letters, digits, '-'"
                f"{'' if label else ' and .'}; must start and end with a letter or digit)")
    return None


def check_name(name: object, *, what: str = "name", label: bool = False) -> str:
    problem = name_problem(name, what=what, label=label)
    if problem:
        raise InvalidName(problem)
    assert isinstance(name, str)
    return name
