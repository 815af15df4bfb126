"""The SQLite store's shared documents (berth.store.shared): parsed once per revision, never changed in place."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from berth.errors import Conflict, NotFound
from berth.store import SQLiteStore
from berth.store.base import StatusUpdate
from berth.store.shared import SharedDocs, SharedDocumentChanged

SELDON = "mlops.seldon.io/v1alpha1"
NS = "financial-ml"


def model(name: str, uri: str = "s3://bucket/m") -> dict[str, Any]:
    return {"apiVersion": SELDON, "kind": "Model", "metadata": {"name": name, "namespace": NS},
            "spec": {"storageUri": uri, "requirements": ["sklearn"]}}


def open_store(tmp_path: Path, *, check: bool = True) -> SQLiteStore:
    store = SQLiteStore(tmp_path / "berth.db")
    store._docs = SharedDocs(check=check)
    return store


def by_name(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs}


def test_a_list_parses_only_what_was_written_since(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.apply_many([model(f"m{i}") for i in range(5)])  # committed: kept as their events hold them
    parses = store._docs.parses
    first = by_name(store.list("Model", NS))
    assert store._docs.parses == parses  # nothing parsed: the writes' own documents
    again = by_name(store.list("Model", NS))
    assert all(again[name] is first[name] for name in first)
    store.update_statuses([StatusUpdate("Model", NS, "m2", {"state": "ModelAvailable"})])
    after = by_name(store.list("Model", NS))
    assert after["m2"]["status"] == {"state": "ModelAvailable"} and after["m2"] is not first["m2"]
    assert "status" not in first["m2"]  # the document a reader holds did not change under it
    assert all(after[name] is first[name] for name in ("m0", "m1", "m3", "m4"))
    assert store._docs.parses == parses
    store.close()


def test_a_fresh_store_parses_each_document_once(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.apply_many([model(f"m{i}") for i in range(3)])
    store.close()
    reopened = open_store(tmp_path)
    reopened.list("Model", NS)
    reopened.list("Model", NS)
    assert reopened._docs.parses == 3
    reopened.close()


def test_get_answers_a_copy_of_its_own(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.apply(model("m"))
    [shared] = store.list("Model", NS)
    got = store.get("Model", NS, "m")
    assert got == shared and got is not shared
    got["spec"]["storageUri"] = "changed by the caller"  # its own copy: allowed
    assert store.list("Model", NS)[0]["spec"]["storageUri"] == "s3://bucket/m"
    store.close()


def test_a_reader_changing_a_shared_document_is_caught(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.apply(model("m"))
    store.list("Model", NS)[0]["spec"]["storageUri"] = "file:///etc/shadow"
    with pytest.raises(SharedDocumentChanged, match=r"Model financial-ml/m \(revision 1\) was changed in place"):
        store.list("Model", NS)
    store.close()


def test_unchecked_the_check_costs_nothing_and_the_change_shows(tmp_path: Path) -> None:
    """Without the check (production) nothing compares: the rule is the readers' to keep, which the test
    suite's check enforces."""
    store = open_store(tmp_path, check=False)
    store.apply(model("m"))
    store.list("Model", NS)[0]["spec"]["storageUri"] = "changed"
    assert store.list("Model", NS)[0]["spec"]["storageUri"] == "changed"
    store.close()


def test_a_rolled_back_write_leaves_nothing_kept(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    [(m, _)] = store.apply_many([model("m")])
    stale = dict(model("n"), metadata={"name": "n", "namespace": NS, "resourceVersion": "99"})
    with pytest.raises(NotFound):  # all or nothing: m's update is rolled back with n's conflict
        store.apply_many([model("m", uri="s3://bucket/new"), stale])
    [kept] = store.list("Model", NS)
    assert kept["spec"]["storageUri"] == "s3://bucket/m" and kept["metadata"]["resourceVersion"] == "1"
    store.apply(model("m", uri="s3://bucket/other"))  # takes revision 2 again: a different document
    [now] = store.list("Model", NS)
    assert now["spec"]["storageUri"] == "s3://bucket/other"
    assert now == store.get("Model", NS, "m")
    store.close()


def test_a_status_write_conflicting_keeps_the_shared_document(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.apply(model("m"))
    [before] = store.list("Model", NS)
    [answer] = store.update_statuses([StatusUpdate("Model", NS, "m", {"state": "x"}, expect_version="7")])
    assert isinstance(answer, Conflict)
    [after] = store.list("Model", NS)
    assert after is before and "status" not in after
    store.close()


def test_deleted_documents_are_not_kept(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.apply_many([model("m"), model("n")])
    store.list("Model", NS)
    store.delete("Model", NS, "m")
    assert len(store._docs) == 1
    assert [d["metadata"]["name"] for d in store.list("Model", NS)] == ["n"]
    store.close()


def test_another_writer_of_the_same_file_is_seen(tmp_path: Path) -> None:
    """Documents are kept by revision: a write by another process (another connection) is read, not hidden."""
    one, two = open_store(tmp_path), open_store(tmp_path)
    one.apply(model("m"))
    assert two.list("Model", NS)[0]["spec"]["storageUri"] == "s3://bucket/m"
    one.apply(model("m", uri="s3://bucket/v2"))
    assert two.list("Model", NS)[0]["spec"]["storageUri"] == "s3://bucket/v2"
    one.close()
    two.close()
