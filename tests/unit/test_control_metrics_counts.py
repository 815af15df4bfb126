"""``berth_models`` counted as the store writes (control/metrics.py): a scrape reads a small table, not every
Model document, and follows applies, status writes and deletions; a late event of an older write is ignored."""

from __future__ import annotations

from typing import Any

from prometheus_client import generate_latest

from berth.control.hub import AgentHub
from berth.control.metrics import ControlMetrics
from berth.store.base import Event
from berth.store.memory import MemoryStore

SELDON = "mlops.seldon.io/v1alpha1"


def model(name: str, ns: str = "team-a") -> dict[str, Any]:
    return {"apiVersion": SELDON, "kind": "Model", "metadata": {"name": name, "namespace": ns},
            "spec": {"storageUri": "gs://b/m", "requirements": ["sklearn"]}}


class CountingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.lists = 0

    def list(self, kind: str | None = None, namespace: str | None = None,
             selector: dict[str, str] | None = None) -> list[dict[str, Any]]:
        self.lists += 1
        return super().list(kind, namespace, selector)


def scrape(metrics: ControlMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_counts_follow_writes_without_reading_the_store_when_scraped() -> None:
    store = CountingStore()
    store.apply(model("before"))  # there when the metrics start: counted from the store once
    metrics = ControlMetrics(store, AgentHub(lambda ns: None))
    store.apply_many([model(f"m{i}") for i in range(5)] + [model("x", "team-b")])
    store.update_status("Model", "team-a", "m0", {"state": "ModelAvailable"})
    store.update_status("Model", "team-a", "m1", {"state": "ModelFailed"})
    store.delete("Model", "team-a", "m2")
    lists = store.lists
    text = scrape(metrics)
    assert store.lists == lists  # the scrape read no document
    assert 'berth_models{namespace="team-a",state="ModelProgressing"} 3.0' in text  # before, m3, m4
    assert 'berth_models{namespace="team-a",state="ModelAvailable"} 1.0' in text
    assert 'berth_models{namespace="team-a",state="ModelFailed"} 1.0' in text
    assert 'berth_models{namespace="team-b",state="ModelProgressing"} 1.0' in text
    metrics.close()
    store.apply(model("after"))  # closed: no longer listening
    assert 'namespace="team-a",state="ModelProgressing"} 3.0' in scrape(metrics)


def test_a_late_event_of_an_older_write_does_not_undo_a_newer_one() -> None:
    store = MemoryStore()
    metrics = ControlMetrics(store, AgentHub(lambda ns: None))
    old, _ = store.apply(model("m"))
    newer = store.update_status("Model", "team-a", "m", {"state": "ModelAvailable"})
    metrics._on_event(Event("MODIFIED", int(old["metadata"]["resourceVersion"]), old))  # reported late
    assert metrics.model_states() == {("team-a", "ModelAvailable"): 1}
    store.delete("Model", "team-a", "m")
    metrics._on_event(Event("MODIFIED", int(newer["metadata"]["resourceVersion"]), newer))  # late, after deletion
    assert metrics.model_states() == {}
