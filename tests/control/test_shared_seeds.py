"""The shared seed manifests, when this checkout has them beside it (``../shared/seed-manifests``) or
``BERTH_SEED_MANIFESTS`` names a folder: every file parses unchanged, applies to a real control plane, and
every model gets a status whose reason goes beyond Seldon's one sentence.  Nothing else depends on them:
every other test uses the repository's own ``examples/``."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from berth.client.http import BerthClient
from berth.resources.manifest import load_paths
from tests.support.seeds import shared_seeds
from tests.support.servers import ControlPlane

SHARED = shared_seeds()
SELDON_SENTENCE = "Failed to schedule model as no matching servers are available"


@pytest.mark.skipif(SHARED is None, reason="not applicable: no ../shared/seed-manifests beside the checkout "
                                           "and BERTH_SEED_MANIFESTS unset")
def test_every_shared_seed_manifest_applies_and_explains_itself(tmp_path: Path) -> None:
    assert SHARED is not None
    files = sorted(SHARED.rglob("*.yaml"))
    assert files, f"{SHARED} holds no manifests"
    # each file on its own, then each folder whose files name every resource once (a tenant) as a whole
    sets: list[Path] = [*files]
    for folder in sorted({f.parent for f in files}):
        keys = [(d.kind, d.namespace, d.name) for f in files if f.parent == folder
                for d in load_paths([str(f)]).documents]
        if len(keys) == len(set(keys)):
            sets.append(folder)
    for i, path in enumerate(sets):
        loaded = load_paths([str(path)])
        assert loaded.documents and loaded.warnings == [], (path, loaded.warnings)
        with ControlPlane(tmp_path / f"data-{i}") as cp:
            client = BerthClient(cp.url)
            results = client.apply([d.body for d in loaded.documents])["results"]
            assert [r["action"] for r in results] == ["created"] * len(loaded.documents), (path, results)
            for doc in (d for d in loaded.documents if d.kind == "Model"):
                st = _status(client, doc.namespace, doc.name)
                assert st.get("state") and st.get("message"), (path, doc.name, st)
                if st["state"] == "ScheduleFailed":
                    specific = st["message"].removeprefix(SELDON_SENTENCE).strip(" :;")
                    assert specific, f"{path.name}: {doc.name} got only Seldon's sentence"


def _status(client: BerthClient, ns: str, name: str) -> dict:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        st = client.get("Model", ns, name).get("status") or {}
        if st.get("conditions"):
            return st
        time.sleep(0.05)
    raise AssertionError(f"Model {ns}/{name} got no status in 15 s")
