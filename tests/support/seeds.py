"""Where the example manifests are.

``examples/`` in the repository is what every test and the demo use: a clone with nothing beside it has
all it needs.  The shared seed manifests (``../shared/seed-manifests`` beside the checkout, or the folder
``BERTH_SEED_MANIFESTS`` names) are optional: one extra test applies them when they are there.
"""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def shared_seeds() -> Path | None:
    """The shared seed manifests folder, or None when this checkout has none beside it."""
    named = os.environ.get("BERTH_SEED_MANIFESTS")
    candidate = Path(named) if named else ROOT.parent / "shared" / "seed-manifests"
    return candidate if candidate.is_dir() else None
