"""Nothing blocks the loop (issue 18): batched status writes in one transaction, store calls in the store
thread, listeners handing events to the loop, the API answering /healthz during a long write, and process
stops that do not hold the loop up."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from berth.control.localproc import Handle
from berth.control.provisioner import LocalProvisioner, LocalReplica
from berth.control.reconcile import Reconciler
from berth.control.routes import RoutesPublisher
from berth.control.sealing import Keyring, SealingStore
from berth.errors import Conflict, NotFound
from berth.store import MemoryStore, SQLiteStore, StatusUpdate, Store
from berth.store.common import BaseStore
from berth.store.offloop import THREAD_NAME, off_loop
from tests.support.servers import ControlPlane
from tests.unit.test_reconcile import NS, RecordingHub, agents_finish, connect, model, server


def commits(store: SQLiteStore) -> list[str]:
    """Every COMMIT the store's connection runs from now on."""
    seen: list[str] = []
    store._conn.set_trace_callback(lambda sql: seen.append(sql) if sql.strip().upper() == "COMMIT" else None)
    return seen


@pytest.fixture(params=["memory", "sqlite", "sealing"])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    store: Store
    if request.param == "memory":
        store = MemoryStore()
    elif request.param == "sqlite":
        store = SQLiteStore(tmp_path / "berth.db")
    else:
        store = SealingStore(MemoryStore(), Keyring.ephemeral())
    yield store
    store.close()


def test_update_statuses_keeps_compare_and_swap_per_item(any_store: Store) -> None:
    a, _ = any_store.apply(model("a"))
    b, _ = any_store.apply(model("b"))
    c, _ = any_store.apply(model("c"))
    stale = b["metadata"]["resourceVersion"]
    any_store.apply(model("b", uri="gs://bucket/b-v2"))  # b changes after the caller read it
    events: list[int] = []
    any_store.add_listener(lambda ev: events.append(ev.revision))
    before = any_store.revision()
    results = any_store.update_statuses([
        StatusUpdate("Model", NS, "a", {"state": "A"}, a["metadata"]["resourceVersion"]),
        StatusUpdate("Model", NS, "b", {"state": "B"}, stale),
        StatusUpdate("Model", NS, "gone", {"state": "G"}, "1"),
        StatusUpdate("Model", NS, "c", {"state": "C"}),
    ])
    assert isinstance(results[0], dict) and results[0]["status"] == {"state": "A"}
    assert isinstance(results[1], Conflict) and isinstance(results[2], NotFound)
    assert isinstance(results[3], dict) and results[3]["status"] == {"state": "C"}
    assert any_store.get("Model", NS, "a")["status"] == {"state": "A"}
    assert "status" not in any_store.get("Model", NS, "b")  # the conflicting item changed nothing
    assert any_store.get("Model", NS, "c")["status"] == {"state": "C"}
    assert any_store.revision() == before + 2 and events == [before + 1, before + 2]
    # a status already stored is a no-op, as with update_status; an empty batch writes nothing
    assert any_store.update_statuses([StatusUpdate("Model", NS, "a", {"state": "A"})])[0]["status"] == {"state": "A"}
    assert any_store.update_statuses([]) == [] and any_store.revision() == before + 2


def test_update_statuses_is_one_commit(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "berth.db")
    for i in range(20):
        store.apply(model(f"m{i}"))
    seen = commits(store)
    store.update_statuses([StatusUpdate("Model", NS, f"m{i}", {"state": str(i)}) for i in range(20)])
    assert len(seen) == 1
    assert [d["status"]["state"] for d in store.list("Model")] == sorted(str(i) for i in range(20))
    store.close()


def test_a_reconcile_pass_writes_its_statuses_in_one_transaction(tmp_path: Path) -> None:
    async def body() -> None:
        store = SQLiteStore(tmp_path / "berth.db")
        hub = RecordingHub()
        rc = Reconciler(store, hub, RoutesPublisher())
        store.apply(server(1))
        for i in range(30):
            store.apply(model(f"m{i}"))
        connect(hub, 0)
        seen = commits(store)
        await rc.reconcile(NS)
        assert len(seen) == 1, "every status of a pass goes in one commit"
        assert all(d.get("status") for d in store.list("Model"))
        agents_finish(hub)
        seen.clear()
        await rc.reconcile(NS)
        assert len(seen) == 1 and all(d["status"]["state"] == "ModelAvailable" for d in store.list("Model"))
        store.close()

    asyncio.run(body())


def test_the_reconcile_pass_reads_and_writes_in_the_store_thread() -> None:
    async def body() -> None:
        store = MemoryStore()
        threads: set[str] = set()
        real_list, real_statuses = store.list, store.update_statuses

        def list_(*args: Any, **kw: Any) -> list[dict[str, Any]]:
            threads.add(threading.current_thread().name)
            return real_list(*args, **kw)

        def statuses(updates: list[StatusUpdate]) -> list[Any]:
            threads.add(threading.current_thread().name)
            return real_statuses(updates)

        store.list = list_  # type: ignore[method-assign]
        store.update_statuses = statuses  # type: ignore[method-assign]
        hub = RecordingHub()
        rc = Reconciler(store, hub, RoutesPublisher())
        store.apply(server(1))
        store.apply(model("iris"))
        connect(hub, 0)
        threads.clear()  # (the applies above were the test's own, on this thread)
        await rc.reconcile(NS)
        assert threads and all(t.startswith(THREAD_NAME) for t in threads), threads

    asyncio.run(body())


def test_listeners_hand_store_thread_events_to_the_loop() -> None:
    async def body() -> None:
        store = MemoryStore()
        rc = Reconciler(store, RecordingHub(), RoutesPublisher())
        stop = asyncio.Event()
        runner = asyncio.create_task(rc.run(stop))
        await asyncio.sleep(0.05)
        handled_in: list[str] = []
        real = rc._handle_event
        rc._handle_event = lambda ev: (handled_in.append(threading.current_thread().name), real(ev))[1]  # type: ignore[method-assign]
        await off_loop(store.apply, model("iris"))  # written in the store thread
        deadline = time.monotonic() + 5
        while not handled_in and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert handled_in == [threading.current_thread().name], "the event is handled on the loop's thread"
        deadline = time.monotonic() + 5
        while "status" not in store.get("Model", NS, "iris") and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert store.get("Model", NS, "iris")["status"], "the reconciler woke and wrote a status"
        passes = rc.passes
        await asyncio.sleep(0.3)
        assert rc.passes - passes <= 1, "its own status writes do not wake it again and again"
        stop.set()
        rc.wake()
        await asyncio.wait_for(runner, 5)

    asyncio.run(body())


def test_healthz_answers_while_a_long_store_write_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = BaseStore.apply_many
    started = threading.Event()

    def slow(self: BaseStore, bodies: list[dict[str, Any]]) -> Any:
        if any(b["kind"] == "Model" for b in bodies):
            started.set()
            with self._lock:  # the store is busy (its lock held) for half a second, in the store thread
                time.sleep(0.5)
                return real(self, bodies)
        return real(self, bodies)

    monkeypatch.setattr(BaseStore, "apply_many", slow)
    with ControlPlane(tmp_path, store=str(tmp_path / "berth.db")) as cp:
        headers = {"Authorization": f"Bearer {cp.admin_token}"}
        with httpx.Client(base_url=cp.url, timeout=10) as client:
            assert client.get("/healthz").status_code == 200
            done: list[int] = []
            applier = threading.Thread(target=lambda: done.append(client.post(
                "/api/v1/apply", headers=headers,
                json={"documents": [model("iris")]}).status_code))
            applier.start()
            assert started.wait(5)
            took = []
            while applier.is_alive():
                t0 = time.monotonic()
                assert client.get("/healthz").status_code == 200
                took.append(time.monotonic() - t0)
                time.sleep(0.02)
            applier.join()
            assert done == [200]
            assert len(took) >= 5 and max(took) < 0.1, took
            assert client.get("/healthz").json()["revision"] >= 1


def test_a_replica_stop_does_not_block_the_loop(tmp_path: Path) -> None:
    """A process that ignores SIGTERM for a second: the provisioner's stop waits for it in a worker thread."""
    script = ("import signal, time\n"
              "signal.signal(signal.SIGTERM, lambda *a: (time.sleep(1.0), exit(0)))\n"
              "print('ready', flush=True)\n"
              "time.sleep(60)\n")

    async def body() -> None:
        prov = LocalProvisioner(MemoryStore(), "127.0.0.1", 1, tmp_path, replica_memory=1 << 30)
        procs = [subprocess.Popen([sys.executable, "-c", script], start_new_session=True, stdout=subprocess.PIPE)
                 for _ in range(2)]
        for p in procs:
            assert p.stdout is not None and p.stdout.readline().strip() == b"ready"
        rep = LocalReplica(("default", "gone", 0), tmp_path / "rep", ("sklearn",), 1 << 30,
                           mlserver=Handle.of(procs[0]), agent=Handle.of(procs[1]))
        prov.replicas[rep.key] = rep  # its Server is gone: converging stops it
        stop = asyncio.Event()
        task = asyncio.create_task(prov.run(stop))
        gaps: list[float] = []
        last = time.monotonic()
        t0 = last
        while rep.key in prov.replicas or any(p.poll() is None for p in procs):
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now
            assert now - t0 < 10, "the replica was not stopped"
        assert now - t0 >= 0.9, "the stand-in ignored SIGTERM for a second"
        assert max(gaps) < 0.1, f"the loop stalled {max(gaps):.3f} s during the stop"
        stop.set()
        prov.changed()
        await asyncio.wait_for(task, 10)

    asyncio.run(body())


def test_a_batched_status_write_never_lands_on_a_newer_object() -> None:
    """test_reconcile's race, injected where the pass now writes: a user's apply lands before the batch."""
    async def body() -> None:
        store = MemoryStore()
        hub = RecordingHub()
        rc = Reconciler(store, hub, RoutesPublisher())
        store.apply(server(1))
        store.apply(model())
        connect(hub, 0)
        real = store.update_statuses
        answers: list[Any] = []

        def racing(updates: list[StatusUpdate]) -> list[Any]:
            if not answers:
                store.apply(model(uri="gs://bucket/iris-v2"))
            out = real(updates)
            answers.extend(out)
            return out

        store.update_statuses = racing  # type: ignore[method-assign]
        rc._dirty.clear()
        await rc.reconcile(NS)
        assert any(isinstance(a, Conflict) for a in answers), "the batch did not compare the resourceVersion"
        doc = store.get("Model", NS, "iris")
        assert doc["metadata"]["generation"] == 2 and "status" not in doc and NS in rc._dirty
        assert store.get("Server", NS, "mlserver").get("status"), "the other items of the batch were written"
        await rc.reconcile(NS)
        st = store.get("Model", NS, "iris")["status"]
        assert st["observedGeneration"] == 2 and st["artifactGeneration"] == 2

    asyncio.run(body())
