"""Time helpers of the control plane (the scheduler gets times as values from here)."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime

_last: tuple[int, str] = (-1, "")  # the last second formatted: statuses stamp thousands of times a second


def rfc3339(ts: float | None = None) -> str:
    """``ts`` (now by default) as ``2026-12-01T05:20:00Z``, to the second (``strftime`` once per second)."""
    second = math.floor(time.time() if ts is None else ts)
    global _last
    last = _last
    if last[0] == second:
        return last[1]
    text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    _last = (second, text)
    return text


def clock(ts: float) -> str:
    """A short local wall-clock form for messages: ``14:00:00``."""
    return datetime.fromtimestamp(ts).strftime("%H:%M:%S")
