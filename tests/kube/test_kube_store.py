"""The Kubernetes store against an API server: the emulated one (tests/kube/apiserver.py) by default, and a
real one when BERTH_TEST_KUBECONFIG names a kubeconfig (same tests; Berth's CRDs are applied, and each test
gets a fresh namespace)."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from berth.errors import Conflict, Expired, Forbidden, InvalidManifest, NotFound, Unauthenticated, Unavailable
from berth.kube.crds import all_crds
from berth.store.base import Event
from berth.store.kubernetes import KubernetesStore
from tests.kube.apiserver import ApiServer

SELDON = "mlops.seldon.io/v1alpha1"
REAL = os.environ.get("BERTH_TEST_KUBECONFIG")


@dataclass
class Cluster:
    kubeconfig: str
    namespace: str
    emulated: ApiServer | None  # None on a real cluster

    def store(self, **kwargs: Any) -> KubernetesStore:
        return KubernetesStore(kubeconfig=self.kubeconfig, **kwargs)


def _kubectl(kubeconfig: str, *args: str, stdin: str | None = None) -> None:
    subprocess.run(["kubectl", "--kubeconfig", kubeconfig, *args], input=stdin, text=True, check=True,
                   capture_output=True, timeout=120)


@pytest.fixture(params=["emulated", "real"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Cluster]:
    if request.param == "emulated":
        with ApiServer(tmp_path) as api:
            yield Cluster(str(api.kubeconfig), "financial-ml", api)
        return
    if not REAL or shutil.which("kubectl") is None:
        pytest.skip("BERTH_TEST_KUBECONFIG is not set (or kubectl is missing): no real API server to test against")
    ns = f"berth-test-{uuid.uuid4().hex[:8]}"
    _kubectl(REAL, "apply", "-f", "-", stdin="---\n".join(yaml.safe_dump(c) for c in all_crds()))
    _kubectl(REAL, "wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
    _kubectl(REAL, "create", "namespace", ns)
    try:
        yield Cluster(REAL, ns, None)
    finally:
        _kubectl(REAL, "delete", "namespace", ns, "--wait=false")


@pytest.fixture
def store(cluster: Cluster) -> Iterator[KubernetesStore]:
    s = cluster.store(watch_timeout=30)
    yield s
    s.close()


def model(name: str, ns: str, uri: str = "s3://bucket/m", **meta: Any) -> dict[str, Any]:
    return {"apiVersion": SELDON, "kind": "Model", "metadata": {"name": name, "namespace": ns, **meta},
            "spec": {"storageUri": uri, "requirements": ["sklearn"]}}


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self._cond = threading.Condition()

    def __call__(self, event: Event) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    def wait(self, predicate: Any, timeout: float = 15.0) -> list[Event]:
        with self._cond:
            assert self._cond.wait_for(lambda: predicate(self.events), timeout), [
                (e.type, e.revision, e.object["metadata"]["name"], e.object["metadata"]["resourceVersion"])
                for e in self.events]
            return list(self.events)

    def of(self, name: str) -> list[tuple[str, str]]:
        return [(e.type, e.object["metadata"]["resourceVersion"]) for e in self.events
                if e.object["metadata"]["name"] == name]


def test_apply_stamps_generation_and_keeps_status(cluster: Cluster, store: KubernetesStore) -> None:
    ns = cluster.namespace
    body = model("baseline", ns)
    body["status"] = {"state": "forged"}
    obj, action = store.apply(body)
    assert action == "created" and obj["metadata"]["generation"] == 1 and "status" not in obj
    assert store.apply(model("baseline", ns))[1] == "unchanged"
    labelled, action = store.apply(model("baseline", ns, labels={"team": "risk"}))
    assert action == "configured" and labelled["metadata"]["generation"] == 1
    store.update_status("Model", ns, "baseline", {"observedGeneration": 1, "state": "ModelAvailable"})
    changed, action = store.apply(model("baseline", ns, uri="s3://bucket/m2", labels={"team": "risk"}))
    assert action == "configured" and changed["metadata"]["generation"] == 2
    assert changed["status"]["state"] == "ModelAvailable"  # the main endpoint never touches status
    got = store.get("Model", ns, "baseline")
    assert got["spec"]["storageUri"] == "s3://bucket/m2" and got["kind"] == "Model"
    assert [o["metadata"]["name"] for o in store.list("Model", ns, selector={"team": "risk"})] == ["baseline"]
    assert store.list("Model", ns, selector={"team": "other"}) == []


def test_status_goes_through_the_subresource(cluster: Cluster, store: KubernetesStore) -> None:
    ns = cluster.namespace
    obj, _ = store.apply(model("m", ns))
    written = store.update_status("Model", ns, "m", {"observedGeneration": 1, "state": "ModelProgressing"})
    assert written["status"]["observedGeneration"] == 1
    assert written["metadata"]["generation"] == 1 and written["spec"] == obj["spec"]
    assert int(written["metadata"]["resourceVersion"]) > int(obj["metadata"]["resourceVersion"])
    if cluster.emulated is not None:
        assert ("PUT", f"/apis/mlops.seldon.io/v1alpha1/namespaces/{ns}/models/m/status") in cluster.emulated.requests
    with pytest.raises(NotFound):
        store.update_status("Model", ns, "missing", {})


def test_stale_versions_conflict(cluster: Cluster, store: KubernetesStore) -> None:
    ns = cluster.namespace
    obj, _ = store.apply(model("m", ns))
    stale = obj["metadata"]["resourceVersion"]
    store.apply(model("m", ns, uri="s3://bucket/other"))
    with pytest.raises(Conflict, match="was modified"):
        store.apply(model("m", ns, uri="s3://bucket/third"), expect_version=stale)
    with pytest.raises(Conflict):
        store.update_status("Model", ns, "m", {"state": "x"}, expect_version=stale)
    with pytest.raises(Conflict):
        store.delete("Model", ns, "m", expect_version=stale)
    assert store.get("Model", ns, "m")["spec"]["storageUri"] == "s3://bucket/other"
    results = store.update_statuses([])
    assert results == []


def test_a_lost_race_is_re_read_and_retried(cluster: Cluster, store: KubernetesStore) -> None:
    if cluster.emulated is None:
        pytest.skip("forcing a lost race needs the emulator's hook; the conflict paths above run on both")
    ns = cluster.namespace
    store.apply(model("m", ns))
    cluster.emulated.interfere_puts = 2  # two writers get in between our read and our write
    obj, action = store.apply(model("m", ns, uri="s3://bucket/new"))
    assert action == "configured" and obj["spec"]["storageUri"] == "s3://bucket/new"
    puts = [r for r in cluster.emulated.requests if r[0] == "PUT"]
    assert len(puts) == 3  # two answered 409, each followed by a fresh read; the third went through
    cluster.emulated.interfere_puts = 1
    assert store.update_status("Model", ns, "m", {"state": "ok"})["status"] == {"state": "ok"}
    cluster.emulated.interfere_puts = 10
    with pytest.raises(Conflict, match="kept changing"):
        store.apply(model("m", ns, uri="s3://bucket/newer"))


def test_watch_feeds_listeners_and_events_since(cluster: Cluster, store: KubernetesStore) -> None:
    ns = cluster.namespace
    seen = Recorder()
    store.add_listener(seen)
    start = store.revision()
    created, _ = store.apply(model("w", ns))
    updated = store.update_status("Model", ns, "w", {"state": "ok"})
    store.delete("Model", ns, "w")
    seen.wait(lambda evs: any(e.type == "DELETED" for e in evs))
    assert [t for t, _ in seen.of("w")] == ["ADDED", "MODIFIED", "DELETED"]
    assert seen.of("w")[0][1] == created["metadata"]["resourceVersion"]
    assert seen.of("w")[1][1] == updated["metadata"]["resourceVersion"]
    since = store.events_since(start, kinds=("Model",), namespace=ns)
    assert [e.type for e in since] == ["ADDED", "MODIFIED", "DELETED"]
    assert [e.revision for e in since] == sorted(e.revision for e in since)
    assert store.events_since(start, kinds=("Server",)) == []
    assert store.revision() >= since[-1].revision


def test_watch_resumes_after_a_dropped_connection(cluster: Cluster) -> None:
    ns = cluster.namespace
    # a real API server closes the watch itself after timeoutSeconds: the same resume path
    store = cluster.store(watch_timeout=1)
    try:
        seen = Recorder()
        store.add_listener(seen)
        for i in range(6):
            store.apply(model(f"r{i}", ns))
            if cluster.emulated is not None and i % 2:
                cluster.emulated.drop_watches()
            time.sleep(0.3)
        seen.wait(lambda evs: len({e.object["metadata"]["name"] for e in evs}) == 6)
        time.sleep(1.5)  # a resume or two more: nothing is replayed twice
        names = [e.object["metadata"]["name"] for e in seen.events if e.type == "ADDED"]
        assert sorted(names) == [f"r{i}" for i in range(6)]
        watcher = next(w for w in store._watchers if w.kind.kind == "Model")
        assert watcher.resumes >= 2 and watcher.relists == 0
    finally:
        store.close()


def test_gone_relists_and_reports_what_changed(cluster: Cluster, store: KubernetesStore) -> None:
    ns = cluster.namespace
    store.apply(model("keep", ns))
    dropped, _ = store.apply(model("drop", ns))
    assert store.wait_for(int(dropped["metadata"]["resourceVersion"]))  # the watch has seen both
    seen = Recorder()
    store.add_listener(seen)
    watcher = next(w for w in store._watchers if w.kind.kind == "Model")
    store._run(watcher.stop())  # the store stops hearing; meanwhile the world changes
    changed, _ = store.apply(model("keep", ns, uri="s3://bucket/v2"))
    store.delete("Model", ns, "drop")
    store.apply(model("new", ns))
    if cluster.emulated is not None:
        cluster.emulated.compact()
    watcher.version = "1"  # far older than any kept history: the API server answers 410
    store._loop.call_soon_threadsafe(watcher.start, store._loop)
    seen.wait(lambda evs: {(e.type, e.object["metadata"]["name"]) for e in evs} >= {
        ("MODIFIED", "keep"), ("DELETED", "drop"), ("ADDED", "new")})
    assert watcher.relists >= 1
    keep = [e for e in seen.events if e.object["metadata"]["name"] == "keep"]
    assert keep[-1].object["metadata"]["resourceVersion"] == changed["metadata"]["resourceVersion"]
    store.apply(model("after", ns))  # and the watch goes on from the new list
    seen.wait(lambda evs: any(e.object["metadata"]["name"] == "after" for e in evs))


def test_events_older_than_the_log_are_expired(cluster: Cluster) -> None:
    store = cluster.store(max_events=2)
    try:
        ns = cluster.namespace
        first = store.revision()
        for i in range(4):
            obj, _ = store.apply(model(f"e{i}", ns))
        assert store.wait_for(int(obj["metadata"]["resourceVersion"]))
        with pytest.raises(Expired, match="list again"):
            store.events_since(first)
    finally:
        store.close()


def test_secrets_come_from_the_api(cluster: Cluster, store: KubernetesStore) -> None:
    ns = cluster.namespace
    secret = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
              "metadata": {"name": "ml-platform", "namespace": ns}, "stringData": {"s3": "type: s3"}}
    store.apply(secret)
    got = store.get("Secret", ns, "ml-platform")
    assert got["data"] == {"s3": "dHlwZTogczM="} and got["kind"] == "Secret"
    assert [s["metadata"]["name"] for s in store.list("Secret", ns)] == ["ml-platform"]


def test_the_api_servers_validation_is_berths(cluster: Cluster, store: KubernetesStore) -> None:
    bad = model("bad", cluster.namespace)
    bad["spec"]["replicas"] = "three"
    with pytest.raises(InvalidManifest, match="replicas"):
        store.apply(bad)


def test_a_namespaced_store_never_reads_elsewhere(cluster: Cluster) -> None:
    store = cluster.store(namespace=cluster.namespace)
    try:
        with pytest.raises(Forbidden, match="installed for namespace"):
            store.list("Model", "other")
        with pytest.raises(Forbidden):
            store.get("Secret", "kube-system", "anything")
        assert store.list("Model") == []
    finally:
        store.close()


def test_bad_credentials_and_unreachable_servers_say_so(cluster: Cluster, tmp_path: Path) -> None:
    if cluster.emulated is None:
        pytest.skip("needs the emulator to hand out a wrong token and a dead address")
    config = yaml.safe_load(Path(cluster.kubeconfig).read_text())
    config["users"][0]["user"]["token"] = "wrong"
    wrong = tmp_path / "wrong-token"
    wrong.write_text(yaml.safe_dump(config))
    with pytest.raises(Unauthenticated, match="answered 401.*kubeconfig's user"):
        KubernetesStore(kubeconfig=str(wrong))
    config["users"][0]["user"]["token"] = cluster.emulated.token
    config["clusters"][0]["cluster"]["server"] = "http://127.0.0.1:9"
    dead = tmp_path / "dead"
    dead.write_text(yaml.safe_dump(config))
    with pytest.raises(Unavailable, match="127.0.0.1:9 is unreachable"):
        KubernetesStore(kubeconfig=str(dead), request_timeout=5)
    with pytest.raises(Unavailable, match="cannot configure"):
        KubernetesStore(kubeconfig=str(tmp_path / "missing"))
