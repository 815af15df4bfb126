"""Reading the end of a process's log file, for one-line error messages."""

from __future__ import annotations

from pathlib import Path


def tail(path: Path, lines: int = 5) -> str:
    """The last ``lines`` lines of ``path`` joined with `` | `` ("" when it cannot be read)."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])
