"""A two-step pipeline through the gateway vs the same two model calls made back to back by a client.

One MLServer holds two adders (a small custom runtime, :mod:`tests.support.runtimes`); a gateway (in this
process, on its own event-loop thread, static routing table) serves them and the pipeline ``chain``
(``add1`` then ``add10`` reading ``add1.outputs.SUM``).  One client with a keep-alive connection sends,
interleaved in rounds: the pipeline through the gateway; the two model calls through the gateway, the second
carrying the first's answer; and the same two calls straight to MLServer.  Prints the medians and the ratio
pipeline ÷ two client calls (goal: <= 1.0: the gateway's DAG costs no more than a client doing it itself).

    .venv/bin/python bench/pipeline.py [--requests 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
from tests.support.gateway import Gateway, LoopThread, route  # noqa: E402
from tests.support.runtimes import load_custom  # noqa: E402

from berth.adapters.mlserver_proc import MLServerProcess  # noqa: E402
from berth.wire.routes import PipelineRoute, RoutingTable  # noqa: E402

BODY = {"inputs": [{"name": "X", "shape": [4], "datatype": "FP64", "data": [1.0, 2.0, 3.0, 4.0]}]}


def timed(fn: Callable[[], None], n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per phase per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc = MLServerProcess(Path(tmp) / "mlserver")
        proc.start()
        lt = LoopThread()
        gateway = None
        try:
            proc.wait_ready(90)
            load_custom(proc, "add1", "Adder", add=1)
            load_custom(proc, "add10", "Adder", add=10)
            grpc_address = f"127.0.0.1:{proc.grpc_port}"
            table = RoutingTable(
                models=[route(n, proc.http_address, grpc=(grpc_address,)) for n in ("add1", "add10")],
                pipelines=[PipelineRoute(namespace="default", name="chain", ready=True, spec={
                    "steps": [{"name": "add1"}, {"name": "add10", "inputs": ["add1.outputs.SUM"]}]})])
            gateway = Gateway(lt, routes=table)
            results: dict[str, list[float]] = {"pipeline": [], "two calls via gateway": [], "two calls direct": []}
            with httpx.Client(timeout=10) as client:
                def two(base: str) -> Callable[[], None]:
                    def go() -> None:
                        first: Any = client.post(f"{base}/v2/models/add1/infer", json=BODY).json()
                        out = first["outputs"][0]
                        second = {"inputs": [{k: out[k] for k in ("name", "shape", "datatype", "data")}]}
                        assert client.post(f"{base}/v2/models/add10/infer", json=second).status_code == 200
                    return go

                def pipeline() -> None:
                    r = client.post(f"{gateway.url}/v2/models/chain.pipeline/infer", json=BODY)
                    assert r.status_code == 200, r.text

                phases = {"pipeline": pipeline, "two calls via gateway": two(gateway.url),
                          "two calls direct": two(f"http://{proc.http_address}")}
                for fn in phases.values():
                    timed(fn, 20)  # warm up connections and MLServer
                for _ in range(args.rounds):
                    for name, fn in phases.items():
                        results[name] += timed(fn, args.requests)
            medians = {name: statistics.median(v) * 1000 for name, v in results.items()}
            for name, ms in medians.items():
                print(f"{name:>24}: median {ms:7.3f} ms over {len(results[name])} requests")
            ratio = medians["pipeline"] / medians["two calls via gateway"]
            print(f"{'pipeline / two calls':>24}: {ratio:.3f} (via gateway; goal <= 1.0)")
            print(f"{'pipeline / direct two':>24}: {medians['pipeline'] / medians['two calls direct']:.3f}")
        finally:
            if gateway is not None:
                gateway.stop()
            lt.close()
            proc.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
