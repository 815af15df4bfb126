"""How long do garbage collections hold the control plane, with CPython's default collector and with
``berth.control.gcpolicy.GcPolicy``?  In process, in CPU time, side by side.

Each variant runs in a fresh interpreter (the collector is the process's): a real ``Reconciler`` over a real
SQLite store (temp folder), a hub whose agents are simulated (every send succeeds; outcomes are fed back
through the hub's own handler), and the control plane's ``LoopWatch``.  The scenario is the one of
``bench/responsiveness.py`` without the processes around it: ``--models`` Models applied in batches of 100
with a reconcile pass after each, then every load failing, then ``--retries`` passes that retry them all,
and a list of every model encoded as the API does after each pass.  Printed per variant: collections by
generation (count, CPU), the longest one in CPU time, the loop's worst lag and the process's CPU time.

    .venv/bin/python bench/gc_pauses.py [--models 1000] [--retries 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from berth.control.gcpolicy import GcPolicy  # noqa: E402
from berth.control.hub import AgentHub, ReplicaRecord  # noqa: E402
from berth.control.loopwatch import LoopWatch  # noqa: E402
from berth.control.reconcile import Reconciler  # noqa: E402
from berth.control.routes import RoutesPublisher  # noqa: E402
from berth.scheduler.build import MLSERVER_CAPABILITIES  # noqa: E402
from berth.store.offloop import off_loop  # noqa: E402
from berth.store.sqlite import SQLiteStore  # noqa: E402
from berth.wire import agent as wire  # noqa: E402

NS, SERVER = "bench", "mlserver"
SELDON = "mlops.seldon.io/v1alpha1"
VARIANTS = ("default", "policy")


class Hub(AgentHub):
    """Every send succeeds at once (no WebSocket)."""

    def __init__(self) -> None:
        super().__init__(lambda ns: None)

    async def send(self, rec: ReplicaRecord, msg: wire.Load | wire.Unload | wire.CheckStorage) -> bool:
        return True


def fail_all(hub: AgentHub) -> None:
    """Agents report every load under way failed, and its retry due now."""
    for rec in hub.replicas.values():
        for name, m in list(rec.models.items()):
            if m.state == "LOADING":
                hub._model_event(rec, wire.ModelEvent(name=name, generation=m.generation, state="LOAD_FAILED",
                                                      message="no such file"))
            if name in rec.models and rec.models[name].state == "LOAD_FAILED":
                rec.models[name].retry_at = 0.0


async def scenario(variant: str, models: int, retries: int) -> dict[str, object]:
    watch = LoopWatch(report=10.0)
    policy = GcPolicy(watch) if variant == "policy" else None
    if policy is not None:
        policy.start()  # its start-up collection is not the scenario's
    watch.start()
    cpu = time.process_time()
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "berth.db")
        hub = Hub()
        rc = Reconciler(store, hub, RoutesPublisher())
        hub._register(wire.Hello(namespace=NS, server=SERVER, replica=0, capabilities=list(MLSERVER_CAPABILITIES),
                                 memory=64 << 30, inference=wire.InferenceAddress(http_port=9000),
                                 readiness=wire.Readiness(ready=True)), None)  # type: ignore[arg-type]
        await off_loop(store.apply, {"apiVersion": SELDON, "kind": "Server",
                                     "metadata": {"name": SERVER, "namespace": NS},
                                     "spec": {"serverConfig": "mlserver", "replicas": 1}})

        async def listed() -> None:  # as GET /api/v1/models does: read and encoded in the store thread
            await off_loop(lambda: ",".join(json.dumps(d) for d in store.list("Model", NS)))

        for start in range(0, models, 100):
            await off_loop(store.apply_many, [
                {"apiVersion": SELDON, "kind": "Model", "metadata": {"name": f"m{i:05d}", "namespace": NS},
                 "spec": {"storageUri": "gs://bucket/m", "requirements": ["sklearn"], "memory": "1Mi"}}
                for i in range(start, min(models, start + 100))])
            await rc.reconcile(NS)
            await listed()
        for _ in range(retries + 1):
            fail_all(hub)
            await rc.reconcile(NS)
            await listed()
        store.close()
    cpu = time.process_time() - cpu
    if policy is not None:
        await policy.stop()
    await watch.stop()
    return {"variant": variant, "gc": watch.summary()["gc"], "lag_max": watch.lag_max, "cpu": cpu,
            "longest_cpu": list(watch.gc.longest_cpu)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--retries", type=int, default=10)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # one variant, in this process
    args = parser.parse_args()
    logging.getLogger("berth").setLevel(logging.ERROR)  # the simulated load failures' warnings
    if args.variant:
        print(json.dumps(asyncio.run(scenario(args.variant, args.models, args.retries))))
        return 0
    rows = []
    for variant in VARIANTS:
        out = subprocess.run([sys.executable, __file__, "--variant", variant, "--models", str(args.models),
                              "--retries", str(args.retries)], capture_output=True, text=True, check=True)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"{args.models} models applied in batches of 100, loads failing, {args.retries} retry passes; "
          "collections: count / CPU ms")
    print(f"{'collector':<10}{'gen0':>14}{'gen1':>14}{'gen2':>14}{'longest CPU ms':>16}{'loop lag max ms':>17}"
          f"{'process CPU s':>15}")
    for r in rows:
        gc_ = r["gc"]
        cells = "".join(f"{gc_['counts'][g]:>6} / {gc_['cpu'][g] * 1000:>5.0f}" for g in range(3))
        print(f"{r['variant']:<10}{cells}{max(r['longest_cpu']) * 1000:>16.1f}{r['lag_max'] * 1000:>17.1f}"
              f"{r['cpu']:>15.2f}")
    default, policy = rows
    ratio = max(default["longest_cpu"]) / max(max(policy["longest_cpu"]), 1e-6)
    print(f"longest collection, default ÷ policy: {ratio:.1f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
