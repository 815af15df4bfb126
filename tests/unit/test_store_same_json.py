"""Whether a status (or a document) written changed is decided as Python values first and encoded only when
Python finds them equal (``store.common.same_json``): the store thread encodes one JSON text per status it
writes instead of three.  JSON's own distinctions still hold: ``1`` is not ``true`` nor ``1.0``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from berth.store.base import StatusUpdate
from berth.store.common import same_json
from berth.store.sqlite import SQLiteStore


def test_same_json_is_jsons_equality() -> None:
    assert same_json({"a": 1, "b": [1, {"c": None}]}, {"b": [1, {"c": None}], "a": 1})
    assert not same_json({"a": 1}, {"a": True})
    assert not same_json({"a": 1}, {"a": 1.0})
    assert not same_json({"a": [1, 2]}, {"a": [2, 1]})
    assert not same_json({"a": 1}, {"a": 1, "b": None})
    assert same_json(None, None) and not same_json(None, {})


def test_it_encodes_only_values_python_finds_equal(monkeypatch: pytest.MonkeyPatch) -> None:
    encoded: list[Any] = []
    real = json.dumps

    def counting(value: Any, **kw: Any) -> str:
        encoded.append(value)
        return real(value, **kw)

    monkeypatch.setattr(json, "dumps", counting)
    assert not same_json({"state": "ModelProgressing"}, {"state": "ModelAvailable"})
    assert encoded == []
    assert same_json({"state": "ModelAvailable"}, {"state": "ModelAvailable"})
    assert len(encoded) == 2


def _model(name: str) -> dict[str, Any]:
    return {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Model", "metadata": {"name": name, "namespace": "n"},
            "spec": {"storageUri": "gs://b/m"}}


def test_the_store_writes_a_changed_status_and_skips_an_unchanged_one(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "berth.db")
    try:
        store.apply_many([_model("a"), _model("b")])
        store.update_statuses([StatusUpdate("Model", "n", n, {"state": "x", "n": 1}, None) for n in "ab"])
        revision = store.revision()
        # the same status, keys in another order: nothing written
        out = store.update_statuses([StatusUpdate("Model", "n", n, {"n": 1, "state": "x"}, None) for n in "ab"])
        assert store.revision() == revision and all(isinstance(o, dict) for o in out)
        # 1 -> true is a change in JSON though Python finds them equal; "x" -> "y" is one in both
        store.update_statuses([StatusUpdate("Model", "n", "a", {"state": "x", "n": True}, None),
                               StatusUpdate("Model", "n", "b", {"state": "y", "n": 1}, None)])
        assert store.revision() == revision + 2
        assert store.get("Model", "n", "a")["status"]["n"] is True
        assert store.get("Model", "n", "b")["status"]["state"] == "y"
        # applying the same document again changes nothing; a new spec does
        store.apply(_model("a"))
        assert store.revision() == revision + 2
        store.apply({**_model("a"), "spec": {"storageUri": "gs://b/m2"}})
        assert store.revision() == revision + 3 and store.get("Model", "n", "a")["metadata"]["generation"] == 2
    finally:
        store.close()
