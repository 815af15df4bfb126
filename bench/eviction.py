"""Eviction and lazy reload: what a request pays when its model is loaded, evicted, or never loaded yet.

Starts a real control plane with the local provisioner (an agent and an MLServer process, as ``berth up``
does) and a gateway on loopback; applies one Server whose replica offers 250Mi with 300% overcommit and N
models of 100Mi (N > 2: two fit, the scheduler places up to 10), so at most two are loaded at once.  Then,
through the gateway:

1. *first load*: one request for each model never loaded yet (held while the control plane loads it: fetch,
   placement, MLServer's load call, and the eviction of the least recently used model to make room);
2. *warm*: ``--warm`` requests for a loaded model;
3. *wake-up*: one request for each model in turn, for ``--rounds`` rounds: each finds its model evicted, its
   artifact kept on the replica's disk, and waits for the reload (MLServer's load call only).

Prints the median (and max) latency of each side by side, their ratios, and the evictions and reloads the
control plane's /metrics counted during the run.  Bounded: about a minute on an idle machine.

    .venv/bin/python bench/eviction.py [--models 6] [--rounds 2] [--warm 200] [--artifact-mib 0]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.models import IRIS_INPUT, train_sklearn  # noqa: E402
from tests.support.platform import Platform, model_doc, server_doc  # noqa: E402


def counter(p: Platform, name: str) -> float:
    text = httpx.get(f"{p.control.url}/metrics", headers={"Authorization": f"Bearer {p.control.admin_token}"},
                     timeout=10).text
    found = re.search(rf'^{name}\{{namespace="default"\}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def replica_state(p: Platform, name: str) -> str:
    rows: dict[str, dict[str, str]] = (p.client.get("Model", "default", name).get("status") or {}).get(
        "replicaStatus") or {}
    return next(iter(rows.values()), {}).get("state", "none")


def timed(p: Platform, name: str) -> float:
    started = time.perf_counter()
    answer = p.gateway.infer(name, IRIS_INPUT)
    took = time.perf_counter() - started
    if answer.body["outputs"][0]["data"] != [0, 2]:
        raise SystemExit(f"{name} answered {answer.body}")
    return took


def row(label: str, samples: list[float], base: float) -> str:
    med = statistics.median(samples)
    return (f"  {label:<34} {len(samples):>5} {med * 1000:>10.1f} {max(samples) * 1000:>10.1f} "
            f"{med / base:>10.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=int, default=6, help="models of 100Mi on one replica (3 to 10; 2 fit)")
    ap.add_argument("--rounds", type=int, default=2, help="rounds of wake-ups over every model")
    ap.add_argument("--warm", type=int, default=200, help="requests for a loaded model")
    ap.add_argument("--artifact-mib", type=int, default=0,
                    help="pad each artifact with a file of this many MiB (what a first load fetches, a reload not)")
    args = ap.parse_args()
    if not 3 <= args.models <= 10:
        raise SystemExit("--models: 3 to 10 (two fit the replica's memory, ten its overcommit)")
    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    names = [f"m{i}" for i in range(args.models)]
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="berth-bench-eviction-") as tmp:
        iris = train_sklearn(Path(tmp) / "iris")
        if args.artifact_mib:
            (iris / "padding.bin").write_bytes(os.urandom(args.artifact_mib << 20))
        with Platform(Path(tmp) / "data") as p:
            server = server_doc("mlserver", capabilities=["sklearn"])
            server["metadata"]["annotations"] = {"berth.io/replica-memory": "250Mi", "berth.io/overcommit": "300"}
            p.client.apply([server] + [model_doc(n, str(iris), memory="100Mi") for n in names])
            p.wait_server("mlserver", ready_replicas=1, timeout=120)
            for n in names:
                p.wait_model(n, timeout=120)
            ready_s = time.monotonic() - began
            evictions0, reloads0 = counter(p, "berth_model_evictions_total"), counter(p, "berth_model_reloads_total")
            loaded = [n for n in names if replica_state(p, n) == "Loaded"]
            never = [n for n in names if n not in loaded]
            print(f"artifact: {sum(f.stat().st_size for f in iris.rglob('*') if f.is_file()) / 2**20:.1f} MiB")
            print(f"{len(names)} models of 100Mi on a replica of 250Mi (300% overcommit), all Ready in "
                  f"{ready_s:.1f}s; loaded at apply: {', '.join(loaded)}; never loaded: {', '.join(never)}")
            first = [timed(p, n) for n in never]  # each a first load, evicting the LRU
            warm_name = never[-1]  # just loaded: stays (the thrash guard keeps it, nothing wakes meanwhile)
            timed(p, warm_name)
            warm = [timed(p, warm_name) for _ in range(args.warm)]
            wake: list[float] = []
            for _ in range(args.rounds):
                for n in names:
                    if replica_state(p, n) != "Evicted":
                        continue  # loaded: not a wake-up
                    wake.append(timed(p, n))
            evictions = counter(p, "berth_model_evictions_total") - evictions0
            reloads = counter(p, "berth_model_reloads_total") - reloads0
    base = statistics.median(warm)
    print(f"\n  {'request':<34} {'n':>5} {'median ms':>10} {'max ms':>10} {'vs warm':>11}")
    print(row("warm (model loaded)", warm, base))
    print(row("wake-up (reload of a kept artifact)", wake, base))
    print(row("first load (fetch, place, load)", first, base))
    print(f"\n  wake-up / first load: {statistics.median(wake) / statistics.median(first):.2f}")
    print(f"  control plane metrics during the requests: evictions {evictions:.0f}, reloads {reloads:.0f} "
          f"({len(first)} first loads, {len(wake)} wake-ups)")
    print(f"  total {time.monotonic() - began:.1f}s; load average now {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
