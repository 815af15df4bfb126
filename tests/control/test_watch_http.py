"""The watch over HTTP: 410 for a compacted revision, order from a list's revision, ERROR events, and
`berth get -w` that survives a dropped stream (re-watches, or lists again after a 410)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web

from berth.adapters.mlserver_proc import free_port
from berth.client.http import BerthClient
from berth.control.api import ControlAPI
from berth.control.hub import AgentHub
from berth.control.routes import RoutesPublisher
from berth.control.tokens import TokenRegistry
from berth.errors import Expired
from berth.store import MemoryStore
from tests.support.servers import ControlPlane, LoopThread, auth_headers

Events = list[dict[str, Any]]
AUTH = auth_headers()  # the session's admin token


def model(name: str, uri: str = "file:///tmp/none", **labels: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "default", **({"labels": labels} if labels else {})}
    return {"apiVersion": "mlops.seldon.io/v1alpha1", "kind": "Model", "metadata": meta,
            "spec": {"storageUri": uri, "requirements": ["sklearn"]}}


class SmallLogControl:
    """The control API alone (no reconciler) over a memory store that keeps only the last few events."""

    def __init__(self, max_events: int) -> None:
        self.store = MemoryStore(max_events=max_events)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._up = threading.Event()

        async def main(stop: asyncio.Event) -> None:
            tokens = TokenRegistry(None)
            tokens.ensure("admin", os.environ["BERTH_TOKEN"], grants={"*": "admin"})
            api = ControlAPI(self.store, AgentHub(lambda ns: None), RoutesPublisher(), tokens=tokens)
            runner = web.AppRunner(api.app(), access_log=None, handle_signals=False)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", self.port).start()
            self._up.set()
            try:
                await stop.wait()
            finally:
                api.close()
                await runner.cleanup()

        self._thread = LoopThread(main)

    def __enter__(self) -> SmallLogControl:
        self._thread.start()
        assert self._up.wait(10), f"control API did not start: {self._thread.error!r}"
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.stop()


def read_ndjson(url: str, params: dict[str, str], done: Callable[[Events], bool], timeout: float = 20.0
                ) -> tuple[Events, bool]:
    """Events until ``done(events)`` (True) or the server ends the stream (False)."""
    events: Events = []
    with httpx.stream("GET", url + "/api/v1/watch", params=params, timeout=timeout, headers=AUTH) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.strip():
                events.append(json.loads(line))
                if done(events):
                    return events, True
    return events, False


def test_a_compacted_revision_answers_410_gone() -> None:
    with SmallLogControl(max_events=3) as cp:
        client = BerthClient(cp.url)
        client.apply([model(f"m{i}") for i in range(8)])  # revisions 1..8; events up to 5 dropped
        for params in ({"since": "1"}, {"since": "4", "kinds": "Model", "namespace": "default"}):
            r = httpx.get(cp.url + "/api/v1/watch", params=params, timeout=5, headers=AUTH)
            assert r.status_code == 410, r.text
            assert r.headers["Content-Type"].startswith("application/json")
            body = r.json()
            assert set(body) == {"code", "message", "details"} and body["code"] == "Expired"
            assert "list again" in body["message"] and body["details"]["compacted"] == 5
        with pytest.raises(Expired):
            next(client.watch(("Model",), since=2))

        async def ws_status() -> int:
            async with aiohttp.ClientSession(headers=AUTH) as s:
                try:
                    async with s.ws_connect(cp.url + "/api/v1/watch?since=1"):
                        return 101
                except aiohttp.WSServerHandshakeError as exc:
                    return exc.status
        assert asyncio.run(ws_status()) == 410
        # the oldest revision still kept is fine: it delivers what follows it
        events, _ = read_ndjson(cp.url, {"since": "5"}, lambda evs: len(evs) == 3)
        assert [e["revision"] for e in events] == [6, 7, 8]


def test_watch_from_a_list_revision_delivers_modified_then_deleted(control: ControlPlane) -> None:
    client = BerthClient(control.url)
    client.apply([model("keep"), model("target")])
    deadline = time.monotonic() + 15  # let the reconciler write its first statuses, so the list is settled
    while time.monotonic() < deadline and not all(d.get("status") for d in client.list("Model", "default")):
        time.sleep(0.05)
    items, rev = client.list_at("Model", "default")
    assert {d["metadata"]["name"] for d in items} == {"keep", "target"}
    client.apply([model("target", uri="file:///tmp/changed")])
    client.delete("Model", "default", "target")

    def deleted(evs: Events) -> bool:
        return any(e["type"] == "DELETED" and e["object"]["metadata"]["name"] == "target" for e in evs)

    events, _ = read_ndjson(control.url, {"kinds": "Model", "namespace": "default", "since": str(rev)}, deleted)
    assert all(e["revision"] > rev for e in events), "an event from before the list's revision came back"
    assert [e["revision"] for e in events] == sorted({e["revision"] for e in events})
    assert not any(e["type"] == "ADDED" for e in events), events
    mine = [e for e in events if e["object"]["metadata"]["name"] == "target"]
    assert mine[0]["type"] == "MODIFIED" and mine[0]["object"]["spec"]["storageUri"] == "file:///tmp/changed"
    assert mine[-1]["type"] == "DELETED" and {e["type"] for e in mine[1:-1]} <= {"MODIFIED"}


def test_compaction_mid_stream_sends_an_error_event_then_ends() -> None:
    with SmallLogControl(max_events=5) as cp:
        client = BerthClient(cp.url)
        client.apply([model("first")])  # revision 1
        got: Events = []
        with httpx.stream("GET", cp.url + "/api/v1/watch", params={"since": "1"}, timeout=20, headers=AUTH) as r:
            assert r.status_code == 200  # the answer has begun: the error can only come in the stream
            client.apply([model(f"burst{i}") for i in range(10)])  # one write of 10 events: 1..6 dropped
            ended, deadline = False, time.monotonic() + 10
            for line in r.iter_lines():  # keep-alives come every 15 s, so this loop sees its deadline
                if line.strip():
                    got.append(json.loads(line))
                if time.monotonic() > deadline:
                    break
            else:
                ended = True
        assert ended, f"the stream went on after {got}"
        assert len(got) == 1, got
        assert got[0]["type"] == "ERROR"
        err = got[0]["object"]
        assert err["code"] == "Expired" and err["details"]["revision"] == 1 and "list again" in err["message"]

        async def ws_frames() -> tuple[Events, Any]:
            frames: Events = []
            async with aiohttp.ClientSession(headers=AUTH) as s, s.ws_connect(cp.url + "/api/v1/watch?since=11") as ws:
                client.apply([model(f"again{i}") for i in range(10)])
                while True:
                    msg = await asyncio.wait_for(ws.receive(), 10)
                    if msg.type != aiohttp.WSMsgType.TEXT:
                        return frames, msg.type
                    frames.append(json.loads(msg.data))

        frames, end = asyncio.run(ws_frames())
        assert [f["type"] for f in frames] == ["ERROR"] and frames[0]["object"]["code"] == "Expired"
        assert end in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)


class Watcher:
    """`berth get models -w` as a subprocess; its output lines are collected by threads."""

    def __init__(self, url: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "berth.main", "--server", url, "get", "models", "-w"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200"})
        self.out: list[str] = []
        self.err: list[str] = []
        for stream, sink in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=lambda s=stream, k=sink: k.extend(iter(s.readline, "")), daemon=True).start()

    def wait_for(self, what: Callable[[], bool], timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if what():
                return True
            time.sleep(0.1)
        return what()

    def printed(self, name: str) -> bool:
        return any(line.split()[:1] == [name] for line in self.out)

    def __str__(self) -> str:
        return f"exit={self.proc.poll()} stdout={''.join(self.out)!r} stderr={''.join(self.err)!r}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def watcher_factory() -> Iterator[Callable[[str], Watcher]]:
    started: list[Watcher] = []

    def make(url: str) -> Watcher:
        started.append(Watcher(url))
        return started[-1]

    yield make
    for w in started:
        w.stop()


def test_get_w_resumes_after_the_control_plane_restarts(tmp_path: Path, watcher_factory) -> None:
    db = str(tmp_path / "berth.db")
    first = ControlPlane(tmp_path, store=db)
    port = first.port
    with first:
        BerthClient(first.url).apply([model("before")])
        w = watcher_factory(first.url)
        assert w.wait_for(lambda: w.printed("before")), str(w)
    # the stream has dropped; a new control plane comes up on the same port over the same data
    second = ControlPlane(tmp_path, store=db)
    second.port, second.url, second.opts.port = port, first.url, port
    with second:
        BerthClient(second.url).apply([model("after-drop")])
        assert w.wait_for(lambda: w.printed("after-drop")), str(w)
        assert w.proc.poll() is None, str(w)
        assert any("watch" in line and "revision" in line for line in w.err), str(w)  # the note on stderr


def test_get_w_lists_again_after_falling_behind_compaction(watcher_factory) -> None:
    with SmallLogControl(max_events=5) as cp:
        client = BerthClient(cp.url)
        client.apply([model("seed")])
        w = watcher_factory(cp.url)
        assert w.wait_for(lambda: w.printed("seed")), str(w)
        client.apply([model(f"burst{i}") for i in range(10)])  # the watch's revision is compacted: ERROR
        assert w.wait_for(lambda: w.printed("burst0") and w.printed("burst9")), str(w)  # re-listed
        client.apply([model("late")])  # and watched from the new list's revision
        assert w.wait_for(lambda: w.printed("late")), str(w)
        assert w.proc.poll() is None, str(w)
        assert any("list" in line for line in w.err), str(w)
