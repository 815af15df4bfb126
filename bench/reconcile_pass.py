"""How long does one reconcile pass hold the control plane's event loop?  In-process, in CPU time.

``bench/responsiveness.py`` measures the answer a client sees (``/healthz`` latency), which on a busy
machine is dominated by the operating system's scheduling.  This bench measures the cause directly: a real
``Reconciler`` over a real SQLite store (in a temp folder) and a hub whose agents are simulated (every send
succeeds; outcomes are fed back through the hub's own handler), with a 1 ms ticker on the same loop.  For
each pass it prints the loop thread's CPU time spent between two ticks at worst ("stall": how long anything
else on the loop, such as ``/healthz``, would have waited) and in all, for

- ``before``: the pass as it was (no slicing, every status recomputed, planning on the loop), and
- ``after``:  the pass as it is (sliced every 2 ms, statuses recomputed only when their inputs changed,
  snapshot and plan in a worker thread, routes made and encoded in slices, unchanged routes not re-encoded),

side by side, with the ratio.  CPU time of the loop's own thread, so other load on the machine does not count.

With ``--routes-in-one-go`` the ``after`` pass publishes its routes as before they were sliced (every route
made and encoded again, in one go on the loop), to see what slicing route publication changes.

The garbage collector's full (generation 2) collections pause the loop too, tens of milliseconds over the
objects of 1,000 models, wherever they happen to fall; they are not the pass's own work.  ``--gc-off`` collects
before each pass and holds the collector off during it, so the stalls are the pass's alone; the last column
is the longest collector pause seen during the pass with it on.

    .venv/bin/python bench/reconcile_pass.py [--models 1000] [--routes-in-one-go] [--gc-off]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from berth.control import reconcile, slices  # noqa: E402
from berth.control.hub import AgentHub, ReplicaRecord  # noqa: E402
from berth.control.reconcile import Reconciler  # noqa: E402
from berth.control.routes import RoutesPublisher  # noqa: E402
from berth.scheduler.build import MLSERVER_CAPABILITIES  # noqa: E402
from berth.store.sqlite import SQLiteStore  # noqa: E402
from berth.wire import agent as wire  # noqa: E402

NS, SERVER = "bench", "mlserver"
SELDON = "mlops.seldon.io/v1alpha1"


class Hub(AgentHub):
    """Every send succeeds at once (no WebSocket)."""

    def __init__(self) -> None:
        super().__init__(lambda ns: None)

    async def send(self, rec: ReplicaRecord, msg: wire.Load | wire.Unload) -> bool:
        return True


def outcome(hub: AgentHub, state: str, only: str | None = None) -> None:
    """Agents report every model under way as ``state`` (LOADED or LOAD_FAILED)."""
    for rec in hub.replicas.values():
        for name, m in list(rec.models.items()):
            if m.state == "LOADING" and (only is None or name == only):
                hub._model_event(rec, wire.ModelEvent(name=name, generation=m.generation, state=state,
                                                      message="" if state == "LOADED" else "no such file"))


class _Forgetful(dict[str, Any]):
    def __setitem__(self, key: str, value: Any) -> None:
        pass

    def get(self, key: str, default: Any = None) -> Any:
        return default


async def _inline(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


async def _routes_in_one_go(self: RoutesPublisher, ns: str, models: list[dict[str, Any]],
                            records: dict[str, ReplicaRecord], experiments: list[dict[str, Any]],
                            runtime: dict[str, Any] | None = None, *, pipelines: list[dict[str, Any]] | None = None,
                            slicer: slices.Slicer | None = None) -> None:
    self._route_memo = _Forgetful()  # type: ignore[assignment]
    self.publish_namespace(ns, models, records, experiments, runtime, pipelines=pipelines)


GC_OFF = False  # --gc-off
_gc_pauses: list[float] = []
_gc_started = [0.0]


def _gc_watch(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _gc_started[0] = time.thread_time()
    elif threading.current_thread() is threading.main_thread():
        _gc_pauses.append(time.thread_time() - _gc_started[0])


async def measure(models: int, before: bool) -> list[tuple[str, float, float, float]]:
    """(pass, worst stall, loop CPU, longest collector pause) per pass, in seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "berth.db")
        hub = Hub()
        rc = Reconciler(store, hub, RoutesPublisher())
        if before:
            rc._memo = _Forgetful()  # type: ignore[assignment]
            rc.routes._route_memo = _Forgetful()  # type: ignore[assignment]
        store.apply({"apiVersion": SELDON, "kind": "Server", "metadata": {"name": SERVER, "namespace": NS},
                     "spec": {"serverConfig": "mlserver", "replicas": 1}})
        for start in range(0, models, 500):
            store.apply_many([{"apiVersion": SELDON, "kind": "Model",
                               "metadata": {"name": f"m{i:05d}", "namespace": NS},
                               "spec": {"storageUri": "gs://bucket/m", "requirements": ["sklearn"], "memory": "1Mi"}}
                              for i in range(start, min(models, start + 500))])
        hub._register(wire.Hello(namespace=NS, server=SERVER, replica=0, capabilities=list(MLSERVER_CAPABILITIES),
                                 memory=64 << 30, inference=wire.InferenceAddress(http_port=9000),
                                 readiness=wire.Readiness(ready=True)), None)  # type: ignore[arg-type]
        stalls: list[float] = []
        done = asyncio.Event()

        async def ticker() -> None:
            last = time.thread_time()
            while not done.is_set():
                await asyncio.sleep(0.001)
                now = time.thread_time()
                stalls.append(now - last)
                last = now

        task = asyncio.create_task(ticker())
        rows: list[tuple[str, float, float, float]] = []

        async def one(label: str) -> None:
            if GC_OFF:
                gc.collect()
                gc.disable()
            await asyncio.sleep(0.005)
            stalls.clear()
            _gc_pauses.clear()
            cpu = time.thread_time()
            await rc.reconcile(NS)
            cpu = time.thread_time() - cpu
            await asyncio.sleep(0.003)  # the ticker records the stall of the pass's last stretch (routes) too
            rows.append((label, max(stalls, default=0.0), cpu, max(_gc_pauses, default=0.0)))
            gc.enable()

        await one("first (all new)")
        outcome(hub, "LOADED")
        await one("all loaded")
        await one("nothing new")
        outcome(hub, "LOADED")
        rec = next(iter(hub.replicas.values()))
        rec.models["m00000"] = reconcile.ReplicaModel("LOADING", 1)
        outcome(hub, "LOAD_FAILED", only="m00000")
        await one("one model failed")
        done.set()
        await task
        store.close()
        return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--routes-in-one-go", action="store_true",
                        help="publish routes unsliced and re-encoded in the 'after' pass too")
    parser.add_argument("--gc-off", action="store_true", help="collect before each pass, not during it")
    args = parser.parse_args()
    global GC_OFF
    GC_OFF = args.gc_off
    gc.callbacks.append(_gc_watch)
    logging.getLogger("berth").setLevel(logging.ERROR)  # the simulated load failures' warnings
    budget, to_thread = slices.SLICE_SECONDS, reconcile.asyncio.to_thread
    sliced = RoutesPublisher.publish_sliced
    try:
        slices.Slicer.__init__.__defaults__ = (1e9,)  # type: ignore[attr-defined]
        reconcile.asyncio.to_thread = _inline  # type: ignore[assignment]
        RoutesPublisher.publish_sliced = _routes_in_one_go  # type: ignore[method-assign]
        old = asyncio.run(measure(args.models, before=True))
    finally:
        slices.Slicer.__init__.__defaults__ = (budget,)  # type: ignore[attr-defined]
        reconcile.asyncio.to_thread = to_thread  # type: ignore[assignment]
        RoutesPublisher.publish_sliced = sliced  # type: ignore[method-assign]
    if args.routes_in_one_go:
        RoutesPublisher.publish_sliced = _routes_in_one_go  # type: ignore[method-assign]
    new = asyncio.run(measure(args.models, before=False))
    print(f"one reconcile pass over {args.models} models: loop thread CPU, ms (worst stall between 1 ms ticks / "
          "whole pass)")
    print(f"{'pass':<20}{'before stall':>14}{'after stall':>13}{'ratio':>8}{'before CPU':>12}{'after CPU':>11}"
          f"{'after GC':>10}")
    for (label, s0, c0, _), (_, s1, c1, g1) in zip(old, new, strict=True):
        print(f"{label:<20}{s0 * 1000:>14.1f}{s1 * 1000:>13.1f}{s0 / max(s1, 1e-6):>8.1f}"
              f"{c0 * 1000:>12.1f}{c1 * 1000:>11.1f}{g1 * 1000:>10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
