"""Density: many tiny sklearn models applied at once, time until every one is Ready, and what it costs.

Starts a real control plane with the local provisioner (agents and MLServer processes, as ``berth up``
does) and a gateway on loopback; applies one Server with R replicas, waits for them, then applies N
Models (one tiny LogisticRegression artifact, N names) in one request (1,000 documents is the apply
limit) and follows the Models' statuses through a watch until all are ModelAvailable.  Prints models/s,
time to the first and to all Ready, the Ready count over time, the RSS and CPU seconds of every process
(this one: control plane, gateway and the watch; each agent; each MLServer and its workers), and where the
time went: per replica when its agent received the loads and sent its outcomes (agent.log), how long after an
agent's LOADED the status said ModelAvailable, every reconcile pass (duration, statuses written), and how many
WebSocket frames carried the loads and the outcomes.
See docs/loading.md.

Goals (issue 12): 1,000 models Ready on one replica in <= 60 s, on four in <= 20 s.

    .venv/bin/python bench/density.py [--models 1000] [--replicas 1,4] [--policy spread] [--memory 1Mi]
                                      [--timeout 600] [--probe 100,300,1000] [--keep DIR]
"""

from __future__ import annotations

import argparse
import re
import signal
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.models import train_sklearn  # noqa: E402
from tests.support.platform import SELDON, Platform, model_doc, server_doc  # noqa: E402

from berth.client.http import BerthClient  # noqa: E402
from berth.errors import BerthError  # noqa: E402

MiB = 2**20


class ReadyWatch(threading.Thread):
    """Follows the Models' statuses through the control plane's watch (as ``kubectl get -w`` would) and
    notes when each first said ModelAvailable.  Listing 1,000 models every half second instead cost this
    process (which also runs the control plane) about a third of its CPU and skewed what it measured."""

    def __init__(self, url: str, token: str | None, namespace: str) -> None:
        super().__init__(daemon=True, name="ready-watch")
        self.client = BerthClient(url, token=token)
        self.namespace = namespace
        self.states: dict[str, str] = {}
        self.ready_at: dict[str, float] = {}

    def run(self) -> None:
        try:
            for ev in self.client.watch(("Model",), self.namespace):
                doc = ev.get("object") or {}
                name = (doc.get("metadata") or {}).get("name")
                if not name:
                    continue
                if ev.get("type") == "DELETED":
                    self.states.pop(name, None)
                    continue
                state = str((doc.get("status") or {}).get("state") or "none")
                self.states[name] = state
                if state == "ModelAvailable":
                    self.ready_at.setdefault(name, time.time())
        except BerthError:
            pass  # the platform stopped

    def counts(self) -> tuple[int, dict[str, int]]:
        states: dict[str, int] = {}
        for state in list(self.states.values()):
            states[state] = states.get(state, 0) + 1
        return states.get("ModelAvailable", 0), states


def cpu_seconds() -> dict[int, float]:
    """CPU time (user + system) used so far by this process and each of its descendants."""
    me = psutil.Process()
    out = {}
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        out[proc.pid] = t.user + t.system
    return out


def rss_lines(cpu_before: dict[int, float]) -> list[str]:
    """RSS of every process, and the CPU seconds each used since ``cpu_before`` (taken at the apply)."""
    me = psutil.Process()
    lines = []
    total = cpu_total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            rss = proc.memory_info().rss
            t = proc.cpu_times()
            cmd = " ".join(proc.cmdline()[:6])
        except psutil.Error:
            continue
        cpu = t.user + t.system - cpu_before.get(proc.pid, 0.0)
        total += rss
        cpu_total += cpu
        role = "this process (control plane, gateway, this poller)" if proc.pid == me.pid else cmd[:100]
        lines.append(f"    pid {proc.pid:>7} {rss / MiB:8.1f} MiB {cpu:6.1f} s CPU  {role}")
    lines.append(f"    total      {total / MiB:8.1f} MiB {cpu_total:6.1f} s CPU (since the apply)")
    return lines


_EVENT = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) INFO berth\.agent: model (\S+) generation \d+: "
                    r"(LOADING|LOADED)\b")


def agent_events(data: Path) -> dict[str, dict[str, dict[str, float]]]:
    """Per replica (its agent.log), per state, per model: when the agent logged the model's LOADING (the
    load arrived and its work began) and LOADED (the outcome sent), as wall-clock times."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for log_path in sorted(data.rglob("agent.log")):
        events: dict[str, dict[str, float]] = {"LOADING": {}, "LOADED": {}}
        for line in log_path.read_text(errors="replace").splitlines():
            m = _EVENT.match(line)
            if m:
                at = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                events[m.group(3)].setdefault(m.group(2), at)
        out[str(log_path.parent.relative_to(data))] = events
    return out


class PassLog:
    """Every reconcile pass of the in-process control plane: when it began and ended, and how many Model
    statuses it wrote (of which ModelAvailable), recorded by wrapping two Reconciler methods (bench only)."""

    def __init__(self) -> None:
        self.passes: list[tuple[float, float, int, int]] = []

    def install(self) -> None:
        from berth.control.reconcile import Reconciler

        original, write = Reconciler.reconcile, Reconciler._write_statuses
        counts: dict[str, tuple[int, int]] = {}
        book = self.passes

        async def reconcile(rec: Reconciler, ns: str) -> None:
            began = time.time()
            counts[ns] = (0, 0)
            try:
                await original(rec, ns)
            finally:
                book.append((began, time.time(), *counts.get(ns, (0, 0))))

        def write_statuses(rec: Reconciler, ns: str, docs: Any, statuses: Any) -> Any:
            models = [st for kind, _, st in statuses if kind == "Model"]
            counts[ns] = (len(models), sum(1 for st in models if st.get("state") == "ModelAvailable"))
            return write(rec, ns, docs, statuses)

        Reconciler.reconcile = reconcile  # type: ignore[method-assign,assignment]
        Reconciler._write_statuses = write_statuses  # type: ignore[method-assign,assignment]

    def report(self, applied_at: float, until: float) -> None:
        runs = [(b - applied_at, e - applied_at, n, a) for b, e, n, a in self.passes if applied_at <= e <= until]
        if not runs:
            return
        took = [e - b for b, e, _, _ in runs]
        print(f"  reconcile passes after the apply: {len(runs)}, each p50 {pct(took, 0.5):.2f} s, "
              f"max {max(took):.2f} s (end s: Model statuses written/of which Available):")
        print("    " + " ".join(f"{e:.1f}:{n}/{a}" for _, e, n, a in runs if n)[:1500])


class FrameLog:
    """Frames on the agents' WebSockets of the in-process control plane: how many carried the loads, and how
    many the agents' outcomes (protocol 2 batches them: docs/loading.md).  Counted by wrapping aiohttp's
    ``send_str`` and the hub's ``_apply`` (bench only)."""

    def __init__(self) -> None:
        self.load_frames = self.loads = self.event_frames = self.events = 0

    def reset(self) -> None:
        self.load_frames = self.loads = self.event_frames = self.events = 0

    def install(self) -> None:
        from aiohttp import web

        from berth.control.hub import AgentHub
        from berth.wire import agent as wire

        send, apply = web.WebSocketResponse.send_str, AgentHub._apply
        book = self

        async def send_str(ws: web.WebSocketResponse, data: str, *args: Any, **kwargs: Any) -> None:
            if data.startswith('{"type":"load'):
                book.load_frames += 1
                book.loads += data.count('"type":"load"')
            await send(ws, data, *args, **kwargs)

        def apply_frame(hub: AgentHub, rec: Any, msg: object) -> None:
            batch = getattr(wire, "ModelEvents", None)  # absent before protocol 2
            if isinstance(msg, wire.ModelEvent) or (batch is not None and isinstance(msg, batch)):
                book.event_frames += 1
                book.events += len(getattr(msg, "events", [msg]))
            apply(hub, rec, msg)

        web.WebSocketResponse.send_str = send_str  # type: ignore[method-assign,assignment]
        AgentHub._apply = apply_frame  # type: ignore[method-assign,assignment]

    def report(self) -> None:
        print(f"  agent frames: {self.loads} loads in {self.load_frames} frames; {self.events} outcomes in "
              f"{self.event_frames} frames")
        self.reset()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timeline(data: Path, applied_at: float, ready_at: dict[str, float]) -> None:
    """Where the wall time went: per replica, when its agent received the first and last load and sent the
    first and last outcome (from agent.log), and how long after an agent's LOADED the model's status
    said ModelAvailable (seen by this poller: includes up to its 0.5 s poll interval)."""
    lags: list[float] = []
    print("  timeline per replica (seconds after the apply request was sent; from agent.log):")
    for replica, ev in agent_events(data).items():
        loading, loaded = list(ev["LOADING"].values()), list(ev["LOADED"].values())
        if not loaded:
            print(f"    {replica}: no LOADED in its log")
            continue
        rel = [t - applied_at for t in loaded]
        print(f"    {replica}: {len(loaded)} loaded; first load received {min(loading) - applied_at:5.1f}, "
              f"last received {max(loading) - applied_at:5.1f}; LOADED first {min(rel):5.1f}, "
              f"p50 {pct(rel, 0.5):5.1f}, last {max(rel):5.1f} -> {len(rel) / max(1e-9, max(rel) - min(rel)):.0f} "
              "loads/s")
        lags += [ready_at[name] - t for name, t in ev["LOADED"].items() if name in ready_at]
    if lags:
        print(f"  agent LOADED -> status ModelAvailable seen: p50 {pct(lags, 0.5):.1f} s, p90 {pct(lags, 0.9):.1f} s, "
              f"max {max(lags):.1f} s")


def breakdown(p: Platform, namespace: str, wall: float) -> None:
    """Where the time went, from what the agents measured (each model's replicaStatus)."""
    agent: list[float] = []
    mlserver: list[float] = []
    for doc in p.client.list("Model", namespace):
        for rs in ((doc.get("status") or {}).get("replicaStatus") or {}).values():
            if rs.get("loadSeconds") is not None:
                agent.append(float(rs["loadSeconds"]))
            if rs.get("inferenceLoadSeconds") is not None:
                mlserver.append(float(rs["inferenceLoadSeconds"]))
    if not mlserver:
        print("  no load durations in the statuses")
        return
    print(f"  agent load (fetch, place, MLServer load, metadata) p50 {statistics.median(agent):.2f} s, "
          f"max {max(agent):.2f} s; MLServer load call p50 {statistics.median(mlserver):.3f} s, "
          f"sum over all replicas {sum(mlserver):.1f} s = {sum(mlserver) / wall:.2f}x the wall time "
          "(each agent makes up to 4 at once for models that declare memory, one at a time for the others, "
          "to measure their RSS)")


def probe_repository(counts: list[int], root: Path) -> None:
    """How long MLServer's repository lookup takes with N models in its repository folder: its ``load``
    endpoint calls ``find(name)``; MLServer's default globs the whole folder and parses every
    model-settings.json, Berth's (which local replicas use) reads the one model's file."""
    import asyncio
    import json

    from mlserver.repository.repository import SchemalessModelRepository

    from berth.adapters.mlserver_repo import BerthModelRepository

    print("\nMLServer repository lookup (SchemalessModelRepository.find, run by every load call):")
    for n in counts:
        repo = root / f"repo-{n}"
        for i in range(n):
            folder = repo / f"d{i:04d}"
            folder.mkdir(parents=True)
            (folder / "model.joblib").write_bytes(b"")
            (folder / "model-settings.json").write_text(json.dumps(
                {"name": f"d{i:04d}", "implementation": "mlserver_sklearn.SKLearnModel",
                 "parameters": {"uri": "./model.joblib", "version": "1"}}))
        finder = SchemalessModelRepository(str(repo))
        times = []
        for _ in range(3):
            started = time.process_time()
            asyncio.run(finder.find(f"d{n - 1:04d}"))
            times.append(time.process_time() - started)
        per = statistics.median(times)
        berth = BerthModelRepository(str(repo))
        direct = []
        for _ in range(3):  # Berth's repository: reads <root>/<name>/model-settings.json alone
            started = time.process_time()
            asyncio.run(berth.find(f"d{n - 1:04d}"))
            direct.append(time.process_time() - started)
        print(f"  {n:>5} models in the repository: MLServer's default, one lookup {per * 1000:7.1f} ms CPU "
              f"(~{per * n / 2:6.1f} s CPU to load all {n} one after another); Berth's "
              f"(BerthModelRepository): {statistics.median(direct) * 1000:5.1f} ms")


def run(models: int, replicas: int, timeout: float, artifact: Path, data: Path, policy: str, memory: str,
        passes: PassLog, frames: FrameLog) -> bool:
    namespace = "default"
    passes.passes.clear()
    with Platform(data) as p:
        started = time.perf_counter()
        runtime = {"apiVersion": SELDON, "kind": "SeldonRuntime",
                   "metadata": {"name": "seldon", "namespace": namespace,
                                "annotations": {"berth.io/placement-policy": policy}},
                   "spec": {"seldonConfig": "default"}}
        p.client.apply([runtime, server_doc("mlserver", replicas=replicas)])
        p.wait_server("mlserver", ready_replicas=replicas, timeout=180)
        print(f"\n{models} models (spec.memory {memory or 'none'}) on {replicas} replica(s), placement policy "
              f"{policy}: server ready in "
              f"{time.perf_counter() - started:.1f} s")
        docs = [model_doc(f"d{i:04d}", str(artifact)) for i in range(models)]
        for doc in docs if memory else ():
            doc["spec"]["memory"] = memory
        cpu_before = cpu_seconds()
        watch = ReadyWatch(p.control.url, p.control.admin_token, namespace)
        watch.start()
        started, applied_at = time.perf_counter(), time.time()
        p.client.apply(docs)
        applied = time.perf_counter() - started
        first: float | None = None
        marks: list[str] = []
        next_mark = 5.0
        ready, states = 0, dict[str, int]()
        ready_at = watch.ready_at
        while True:
            ready, states = watch.counts()
            elapsed = time.perf_counter() - started
            if ready and first is None:
                first = min(ready_at.values()) - applied_at
            if elapsed >= next_mark:
                marks.append(f"{elapsed:5.0f}s:{ready}")
                next_mark += 5.0
            if ready >= models or elapsed > timeout:
                break
            time.sleep(0.1)
        total = max(ready_at.values()) - applied_at if ready >= models else time.perf_counter() - started
        print(f"  apply request: {applied:.2f} s; first Ready {first if first is None else round(first, 1)} s; "
              f"all {ready}/{models} Ready in {total:.1f} s -> {ready / total:.1f} models/s")
        print(f"  Ready over time: {' '.join(marks) or '-'}")
        if ready < models:
            print(f"  NOT all Ready within {timeout:.0f} s; states: {states}")
        placed: dict[str, int] = {}
        for doc in p.client.list("Model", namespace):
            for key in ((doc.get("status") or {}).get("replicaStatus") or {}):
                placed[key] = placed.get(key, 0) + 1
        print(f"  models per replica: {dict(sorted(placed.items()))}")
        breakdown(p, namespace, total)
        timeline(data, applied_at, ready_at)
        passes.report(applied_at, time.time())
        frames.report()
        print("  RSS of every process, and its CPU time since the apply:")
        for line in rss_lines(cpu_before):
            print(line)
        return ready >= models


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=int, default=1000)
    ap.add_argument("--replicas", default="1,4", help="replica counts to try, one platform each")
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--policy", choices=("binpack", "spread"), default="spread",
                    help="the namespace's placement policy")
    ap.add_argument("--memory", default="1Mi",
                    help="each model's spec.memory ('' for none: models that declare no memory take none, so "
                         "every policy puts them all on the first replica)")
    ap.add_argument("--keep", default="", help="keep each platform's data dir (logs) under this folder")
    ap.add_argument("--probe", default="100,300,1000",
                    help="also time MLServer's repository lookup with these many models ('' to skip)")
    args = ap.parse_args()
    # a TERM (e.g. from `timeout`) unwinds like Ctrl-C: the platform stops its agents and MLServer processes
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ok = True
    passes = PassLog()
    passes.install()
    frames = FrameLog()
    frames.install()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        artifact = train_sklearn(root / "iris")
        if args.probe:
            probe_repository([int(x) for x in args.probe.split(",")], root)
        for i, n in enumerate(int(x) for x in args.replicas.split(",") if x):
            data = (Path(args.keep) if args.keep else root) / f"berth-{i}-{n}"
            ok = run(args.models, n, args.timeout, artifact, data, args.policy, args.memory, passes, frames) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
