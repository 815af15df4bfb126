"""Kubernetes quantities (``100Ki``, ``2Gi``, ``1.5G``, ``500M``, ``1e3``) to bytes and back."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from berth.errors import InvalidInput

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"": 1, "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
            "E": 10**18}
_MILLI = {"m": Decimal("0.001")}
_RE = re.compile(r"^\s*([+]?[0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*(Ki|Mi|Gi|Ti|Pi|Ei|[kKMGTPEm]?)\s*$")


def parse_quantity(value: object, *, field: str = "quantity") -> int:
    """Return the number of bytes a quantity stands for (rounded up to a whole byte)."""
    if isinstance(value, bool):
        raise InvalidInput(f"{field}: expected a quantity like 2Gi, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise InvalidInput(f"{field}: quantity must not be negative, got {value}")
        return value
    if isinstance(value, float):
        value = repr(value)
    if not isinstance(value, str):
        raise InvalidInput(f"{field}: expected a quantity like 2Gi, got {type(value).__name__}")
    m = _RE.match(value)
    if not m:
        raise InvalidInput(f"{field}: {value!r} is not a quantity (examples: 100Ki, 2Gi, 1.5G, 500M)")
    try:
        number = Decimal(m.group(1))
    except InvalidOperation as exc:  # pragma: no cover - regex already guards this
        raise InvalidInput(f"{field}: {value!r} is not a number") from exc
    suffix = m.group(2)
    if suffix in _BINARY:
        scaled = number * _BINARY[suffix]
    elif suffix in _MILLI:
        scaled = number * _MILLI[suffix]
    else:
        scaled = number * _DECIMAL[suffix]
    whole = int(scaled.to_integral_value(rounding="ROUND_CEILING"))
    return whole


def format_quantity(n: int) -> str:
    """Exact Kubernetes form of a byte count: the largest binary suffix that divides it."""
    if n == 0:
        return "0"
    for suffix, factor in sorted(_BINARY.items(), key=lambda kv: -kv[1]):
        if n % factor == 0:
            return f"{n // factor}{suffix}"
    return str(n)


def humanize_bytes(n: int) -> str:
    """Short human form for messages: ``1.5 GiB``, ``200 MiB``, ``512 B``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(value) < 1024 or unit == "PiB":
            if unit == "B":
                return f"{int(value)} B"
            text = f"{value:.1f}".rstrip("0").rstrip(".")
            return f"{text} {unit}"
        value /= 1024
    return f"{n} B"  # pragma: no cover
