"""Time helpers of the control plane (the scheduler gets times as values from here)."""

from __future__ import annotations

import time
from datetime import UTC, datetime


def rfc3339(ts: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if ts is None else ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def clock(ts: float) -> str:
    """A short local wall-clock form for messages: ``14:00:00``."""
    return datetime.fromtimestamp(ts).strftime("%H:%M:%S")
