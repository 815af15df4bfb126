"""One contract for every Store implementation: the semantics documented in berth.store.base."""

from __future__ import annotations

import copy
import re
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from berth.errors import Conflict, Expired, InvalidInput, NotFound, Unavailable
from berth.store import Event, MemoryStore, SQLiteStore, open_store
from berth.store.common import BaseStore

SELDON = "mlops.seldon.io/v1alpha1"


def model(name: str, ns: str = "financial-ml", uri: str = "s3://bucket/m", **meta: Any) -> dict[str, Any]:
    return {"apiVersion": SELDON, "kind": "Model", "metadata": {"name": name, "namespace": ns, **meta},
            "spec": {"storageUri": uri, "requirements": ["sklearn"]}}


def secret(name: str, ns: str = "financial-ml", value: str = "a", **meta: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": ns, **meta},
            "type": "Opaque", "stringData": {"s3": value}}


def make_store(impl: str, path: Path, **kwargs: Any) -> BaseStore:
    return MemoryStore(**kwargs) if impl == "memory" else SQLiteStore(path / "state" / "berth.db", **kwargs)


@pytest.fixture(params=["memory", "sqlite"])
def impl(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(impl: str, tmp_path: Path) -> Iterator[BaseStore]:
    s = make_store(impl, tmp_path)
    yield s
    s.close()


def rv(obj: dict[str, Any]) -> int:
    return int(obj["metadata"]["resourceVersion"])


def test_create_stamps_metadata_and_ignores_status(store: BaseStore) -> None:
    body = model("baseline-predictor")
    body["status"] = {"state": "forged"}
    obj, action = store.apply(body)
    meta = obj["metadata"]
    assert action == "created"
    assert uuid.UUID(meta["uid"]).version == 4
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", meta["creationTimestamp"])
    assert meta["generation"] == 1 and meta["resourceVersion"] == "1"
    assert "status" not in obj and "status" in body  # the caller's document is not touched
    assert store.get("Model", "financial-ml", "baseline-predictor") == obj
    assert store.revision() == 1


def test_get_hands_out_copies(store: BaseStore) -> None:
    obj, _ = store.apply(model("m"))
    obj["spec"]["storageUri"] = "mutated"
    store.get("Model", "financial-ml", "m")["spec"]["storageUri"] = "mutated too"
    assert store.get("Model", "financial-ml", "m")["spec"]["storageUri"] == "s3://bucket/m"


def test_list_sorted_and_filtered(store: BaseStore) -> None:
    store.apply_many([model("zeta", labels={"team": "risk"}), model("alpha", labels={"team": "fraud"}),
                      model("beta", ns="default", labels={"team": "risk", "tier": "gold"}), secret("creds")])
    keys = [(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]) for o in store.list()]
    assert keys == [("Model", "default", "beta"), ("Model", "financial-ml", "alpha"),
                    ("Model", "financial-ml", "zeta"), ("Secret", "financial-ml", "creds")]
    assert [o["metadata"]["name"] for o in store.list("Model", "financial-ml")] == ["alpha", "zeta"]
    assert [o["metadata"]["name"] for o in store.list(namespace="financial-ml")] == ["alpha", "zeta", "creds"]
    assert [o["metadata"]["name"] for o in store.list(selector={"team": "risk"})] == ["beta", "zeta"]
    assert [o["metadata"]["name"] for o in store.list(selector={"team": "risk", "tier": "gold"})] == ["beta"]
    assert store.list("Server") == [] and store.list(selector={"team": "none"}) == []


def test_generation_bumps_only_on_spec_change(store: BaseStore) -> None:
    first, _ = store.apply(model("m"))
    labelled, action = store.apply(model("m", labels={"a": "b"}, annotations={"note": "x"}))
    assert action == "configured" and labelled["metadata"]["generation"] == 1
    assert rv(labelled) > rv(first)
    assert labelled["metadata"]["uid"] == first["metadata"]["uid"]
    assert labelled["metadata"]["creationTimestamp"] == first["metadata"]["creationTimestamp"]
    changed, action = store.apply(model("m", uri="s3://v2", labels={"a": "b"}, annotations={"note": "x"}))
    assert action == "configured" and changed["metadata"]["generation"] == 2
    typed = model("m", labels={"a": "b"}, annotations={"note": "x"})
    typed["spec"]["replicas"] = 1
    assert store.apply(typed)[0]["metadata"]["generation"] == 3
    typed["spec"]["replicas"] = True  # 1 and true are different values
    assert store.apply(typed)[0]["metadata"]["generation"] == 4


def test_secret_generation_follows_data(store: BaseStore) -> None:
    store.apply(secret("creds"))
    assert store.apply(secret("creds", labels={"x": "y"}))[0]["metadata"]["generation"] == 1
    obj, action = store.apply(secret("creds", value="b", labels={"x": "y"}))
    assert action == "configured" and obj["metadata"]["generation"] == 2


def test_resource_versions_strictly_increase(store: BaseStore) -> None:
    seen = [rv(store.apply(model(f"m{i}"))[0]) for i in range(3)]
    seen.append(rv(store.update_status("Model", "financial-ml", "m0", {"state": "ok"})))
    seen.append(rv(store.apply(model("m1", uri="s3://other"))[0]))
    seen.append(rv(store.delete("Model", "financial-ml", "m2")))
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    assert store.revision() == seen[-1] == 6


def test_unchanged_apply_writes_nothing(store: BaseStore) -> None:
    obj, _ = store.apply(model("m", labels={"a": "b"}))
    store.update_status("Model", "financial-ml", "m", {"state": "ok"})
    events = store.events_since(0)
    again = model("m", labels={"a": "b"})
    again["status"] = {"state": "other"}
    same, action = store.apply(again)
    assert action == "unchanged"
    assert same["status"] == {"state": "ok"} and rv(same) == store.revision() == 2
    assert store.events_since(0) == events


def test_cas_conflict_changes_nothing(store: BaseStore) -> None:
    obj, _ = store.apply(model("baseline-predictor"))
    store.apply(model("baseline-predictor", uri="s3://v2"))
    before = (store.list(), store.revision(), store.events_since(0))
    with pytest.raises(Conflict) as err:
        store.apply(model("baseline-predictor", uri="s3://v3"), expect_version=str(rv(obj)))
    assert str(err.value) == ("Model financial-ml/baseline-predictor was modified (resourceVersion 2, "
                              "you had 1); get it again and retry")
    carried = model("baseline-predictor", uri="s3://v3", resourceVersion="1")
    with pytest.raises(Conflict):
        store.apply(carried)
    with pytest.raises(Conflict):
        store.apply_many([carried])
    with pytest.raises(Conflict):
        store.update_status("Model", "financial-ml", "baseline-predictor", {"s": 1}, expect_version="1")
    with pytest.raises(Conflict):
        store.delete("Model", "financial-ml", "baseline-predictor", expect_version="1")
    assert (store.list(), store.revision(), store.events_since(0)) == before
    ok, action = store.apply(model("baseline-predictor", uri="s3://v3"), expect_version="2")
    assert action == "configured" and rv(ok) == 3


def test_expected_version_of_missing_object_is_not_found(store: BaseStore) -> None:
    with pytest.raises(NotFound, match="Model financial-ml/ghost"):
        store.apply(model("ghost"), expect_version="4")
    with pytest.raises(NotFound):
        store.apply(model("ghost", resourceVersion="4"))
    assert store.revision() == 0 and store.list() == []


def test_update_status(store: BaseStore) -> None:
    store.apply(model("m"))
    status = {"conditions": [{"type": "Ready", "status": "True"}], "observedGeneration": 1}
    obj = store.update_status("Model", "financial-ml", "m", status, expect_version="1")
    assert obj["status"] == status and obj["metadata"]["generation"] == 1 and rv(obj) == 2
    assert store.events_since(1)[0].type == "MODIFIED"
    assert rv(store.update_status("Model", "financial-ml", "m", copy.deepcopy(status))) == 2  # no-op
    updated, _ = store.apply(model("m", uri="s3://v2"))
    assert updated["status"] == status and updated["metadata"]["generation"] == 2
    with pytest.raises(NotFound, match="Model 'nope' not found in namespace 'financial-ml'"):
        store.update_status("Model", "financial-ml", "nope", status)
    with pytest.raises(InvalidInput):
        store.update_status("Model", "financial-ml", "m", ["not", "an", "object"])  # type: ignore[arg-type]


def test_delete(store: BaseStore) -> None:
    created, _ = store.apply(model("m"))
    store.update_status("Model", "financial-ml", "m", {"state": "ok"})
    gone = store.delete("Model", "financial-ml", "m", expect_version="2")
    assert rv(gone) == 3 and gone["status"] == {"state": "ok"}
    assert gone["metadata"]["uid"] == created["metadata"]["uid"]
    last = store.events_since(2)
    assert [(e.type, e.revision, e.object) for e in last] == [("DELETED", 3, gone)]
    with pytest.raises(NotFound) as err:
        store.get("Model", "financial-ml", "m")
    assert all(word in str(err.value) for word in ("Model", "financial-ml", "'m'"))
    with pytest.raises(NotFound):
        store.delete("Model", "financial-ml", "m")
    again, action = store.apply(model("m"))
    assert action == "created" and again["metadata"]["uid"] != created["metadata"]["uid"]
    assert again["metadata"]["generation"] == 1 and "status" not in again


def test_events_since_filters(store: BaseStore) -> None:
    store.apply_many([model("a"), model("b", ns="default"), secret("s")])
    store.update_status("Model", "default", "b", {"x": 1})
    store.delete("Secret", "financial-ml", "s")
    assert [(e.type, e.revision) for e in store.events_since(0)] == [
        ("ADDED", 1), ("ADDED", 2), ("ADDED", 3), ("MODIFIED", 4), ("DELETED", 5)]
    assert [e.revision for e in store.events_since(2)] == [3, 4, 5]
    assert [e.revision for e in store.events_since(0, kinds=("Model",))] == [1, 2, 4]
    assert [e.revision for e in store.events_since(0, namespace="financial-ml")] == [1, 3, 5]
    assert [e.name for e in store.events_since(0, kinds=("Model",), namespace="default")] == ["b", "b"]
    assert [e.revision for e in store.events_since(0, kinds=("Secret", "Model"), limit=2)] == [1, 2]
    assert store.events_since(0, kinds=()) == [] and store.events_since(5) == []
    assert store.events_since(99) == []
    assert store.events_since(-3)[0].as_dict()["object"]["metadata"]["name"] == "a"


def test_compaction_expires_old_revisions(impl: str, tmp_path: Path) -> None:
    store = make_store(impl, tmp_path, max_events=5)
    for i in range(8):
        store.apply(model(f"m{i}"))
    assert [e.revision for e in store.events_since(3)] == [4, 5, 6, 7, 8]
    for old in (0, 2):
        with pytest.raises(Expired, match=f"revision {old} is too old"):
            store.events_since(old)
    store.close()


def test_listeners_see_committed_writes(store: BaseStore) -> None:
    seen: list[tuple[str, int, int]] = []

    def listener(event: Event) -> None:  # reads the store from inside the writer's call
        seen.append((event.type, event.revision, store.revision()))

    def broken(event: Event) -> None:
        raise RuntimeError("listener bug")

    store.add_listener(broken)
    store.add_listener(listener)
    store.apply_many([model("a"), model("b")])
    store.apply(model("a"))  # unchanged: no event
    with pytest.raises(Conflict):
        store.apply(model("a", uri="x"), expect_version="9")
    store.update_status("Model", "financial-ml", "a", {"x": 1})
    store.remove_listener(listener)
    store.remove_listener(listener)
    store.delete("Model", "financial-ml", "a")
    assert seen == [("ADDED", 1, 2), ("ADDED", 2, 2), ("MODIFIED", 3, 3)]
    assert store.get("Model", "financial-ml", "b")["metadata"]["resourceVersion"] == "2"


def test_apply_many_is_atomic(store: BaseStore) -> None:
    store.apply(model("existing"))
    store.apply(model("existing", uri="s3://v2"))
    calls: list[Event] = []
    store.add_listener(calls.append)
    with pytest.raises(Conflict):
        store.apply_many([model("fresh"), model("existing", uri="s3://v3", resourceVersion="1")])
    with pytest.raises(InvalidInput, match="not plain JSON"):
        store.apply_many([model("fresh"), {**model("bad"), "spec": {"storageUri": object()}}])
    with pytest.raises(InvalidInput, match="metadata.name"):
        store.apply_many([model("fresh"), {"kind": "Model", "metadata": {}}])
    with pytest.raises(NotFound):
        store.get("Model", "financial-ml", "fresh")
    assert store.revision() == 2 and calls == []
    assert store.get("Model", "financial-ml", "existing")["spec"]["storageUri"] == "s3://v2"
    results = store.apply_many([model("fresh"), model("existing", uri="s3://v2"), model("fresh", uri="s3://f2")])
    assert [a for _, a in results] == ["created", "unchanged", "configured"]
    assert [rv(o) for o, _ in results] == [3, 2, 4] and results[2][0]["metadata"]["generation"] == 2
    assert [e.revision for e in calls] == [3, 4]
    assert store.apply(model("next"))[0]["metadata"]["resourceVersion"] == "5"


def test_concurrent_writers_get_distinct_revisions(store: BaseStore) -> None:
    def writer(n: int) -> None:
        for i in range(15):
            store.apply(model(f"w{n}-{i}"))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    revisions = sorted(rv(o) for o in store.list())
    assert revisions == list(range(1, 61)) and store.revision() == 60
    assert [e.revision for e in store.events_since(0, limit=100)] == revisions


def test_closed_store_refuses_calls(impl: str, tmp_path: Path) -> None:
    store = make_store(impl, tmp_path)
    store.close()
    store.close()
    with pytest.raises(Unavailable, match="closed"):
        store.list()


def test_open_store_picks_implementation(tmp_path: Path) -> None:
    assert isinstance(open_store(None), MemoryStore)
    durable = open_store(tmp_path / "deep" / "dir" / "berth.db")
    assert isinstance(durable, SQLiteStore) and (tmp_path / "deep" / "dir" / "berth.db").exists()
    durable.close()
    with pytest.raises(InvalidInput, match="max_events"):
        open_store(None, max_events=0)


# -- both implementations agree on any sequence of operations ------------------------------------------


_keys = st.tuples(st.sampled_from(["Model", "Secret"]), st.sampled_from(["a", "b"]),
                  st.sampled_from(["x", "y"]))
_versions = st.integers(-20, 12).map(lambda n: str(n) if n > 0 else None)  # mostly no CAS
_doc = st.builds(lambda key, value, labels, version: (key, value, labels, version), _keys,
                 st.sampled_from(["v1", "v2"]), st.sampled_from([None, {"t": "1"}, {"t": "2"}]), _versions)
_ops = st.lists(st.one_of(
    st.tuples(st.just("apply"), _doc),
    st.tuples(st.just("apply"), _doc),
    st.tuples(st.just("many"), st.lists(_doc, min_size=1, max_size=3)),
    st.tuples(st.just("status"), st.tuples(_keys, st.sampled_from([{"s": 1}, {"s": 2}]), _versions)),
    st.tuples(st.just("delete"), st.tuples(_keys, _versions)),
), min_size=4, max_size=30)


def _body(doc: tuple[Any, ...]) -> dict[str, Any]:
    (kind, ns, name), value, labels, version = doc
    body = secret(name, ns, value) if kind == "Secret" else model(name, ns, uri=value)
    if labels:
        body["metadata"]["labels"] = labels
    if version:
        body["metadata"]["resourceVersion"] = version
    return body


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in ("uid", "creationTimestamp")}
    if isinstance(value, list | tuple):
        return [_strip(v) for v in value]
    if isinstance(value, Event):
        return (value.type, value.revision, _strip(value.object))
    return value


def _run(store: BaseStore, op: str, arg: Any) -> Any:
    try:
        if op == "apply":
            return _strip(store.apply(_body(arg)))
        if op == "many":
            return _strip(store.apply_many([_body(d) for d in arg]))
        if op == "status":
            (kind, ns, name), status, version = arg
            return _strip(store.update_status(kind, ns, name, status, expect_version=version))
        (kind, ns, name), version = arg
        return _strip(store.delete(kind, ns, name, expect_version=version))
    except (Conflict, NotFound) as exc:
        return (type(exc).__name__, str(exc))


def _events(store: BaseStore, since: int) -> Any:
    try:
        return _strip(store.events_since(since))
    except Expired as exc:
        return ("Expired", str(exc))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=_ops)
def test_implementations_agree(ops: list[tuple[str, Any]], tmp_path_factory: pytest.TempPathFactory) -> None:
    memory = MemoryStore(max_events=4)
    durable = SQLiteStore(tmp_path_factory.mktemp("agree") / "berth.db", max_events=4)
    try:
        for op, arg in ops:
            assert _run(memory, op, arg) == _run(durable, op, arg), (op, arg)
        assert _strip(memory.list()) == _strip(durable.list())
        assert memory.revision() == durable.revision()
        for since in range(0, memory.revision() + 1):
            assert _events(memory, since) == _events(durable, since)
    finally:
        durable.close()
