"""Where the shared seed manifests are: ``../shared`` beside the checkout, or beside the repository a clone
was made from (a clone in a temporary folder), or ``BERTH_SEED_MANIFESTS``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _candidates() -> list[Path]:
    found = [Path(os.environ["BERTH_SEED_MANIFESTS"])] if os.environ.get("BERTH_SEED_MANIFESTS") else []
    found.append(ROOT.parent / "shared" / "seed-manifests")
    try:
        origin = subprocess.run(["git", "-C", str(ROOT), "config", "--get", "remote.origin.url"],
                                capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        origin = ""
    if origin and "://" not in origin and Path(origin).is_dir():  # a clone of a local repository
        found.append(Path(origin).resolve().parent / "shared" / "seed-manifests")
    return found


def find_seeds() -> Path:
    """The seed manifests folder (the first candidate that exists; the usual place when none does)."""
    candidates = _candidates()
    return next((c for c in candidates if c.is_dir()), candidates[0] if os.environ.get(
        "BERTH_SEED_MANIFESTS") else ROOT.parent / "shared" / "seed-manifests")


SEEDS = find_seeds()
