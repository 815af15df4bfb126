"""Scheduler benchmark: 10,000 models on 1,000 replicas (100 servers x 10), then one replica goes away.

Goals: the full plan in <= 1 s; the re-plan after losing one replica (with the previous plan's
placements as assignments, and the previous plan handed in) in <= 50 ms.  Prints medians of a few runs,
the incremental ÷ full ratio measured side by side, and checks the re-plan equals a full plan.

    python bench/scheduler.py [--runs 5] [--models 10000] [--servers 100] [--replicas 10]
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import statistics
import time
from collections.abc import Callable

from berth.scheduler import plan
from berth.scheduler.snapshot import ModelWant, Plan, ReplicaInfo, ServerInfo, Snapshot

NS = "bench"
GiB, MiB = 2**30, 2**20
FLAVOURS: dict[str, tuple[str, ...]] = {
    "sk": ("mlserver", "sklearn", "mlflow", "python", "xgboost", "lightgbm"),
    "torch": ("mlserver", "pytorch", "torch", "python", "mlflow", "numpy"),
    "hf": ("mlserver", "huggingface", "python", "mlflow"),
    "all": ("mlserver", "sklearn", "mlflow", "python", "xgboost", "lightgbm", "pytorch", "torch", "numpy",
            "huggingface", "alibi-detect"),
}
REQUIREMENTS: tuple[tuple[str, ...], ...] = (
    ("sklearn",), ("sklearn", "mlflow"), ("xgboost",), ("lightgbm", "python"), ("pytorch",),
    ("torch", "numpy"), ("huggingface",), ("mlflow",), ("python",), ("alibi-detect", "sklearn"),
)


def make_snapshot(n_models: int, n_servers: int, per_server: int, seed: int = 7) -> Snapshot:
    rng = random.Random(seed)
    servers: list[ServerInfo] = []
    replicas: list[ReplicaInfo] = []
    flavours = list(FLAVOURS)
    for i in range(n_servers):
        flavour = flavours[i % len(flavours)]
        name = f"srv-{i:03d}-{flavour}"
        servers.append(ServerInfo(name, NS, FLAVOURS[flavour], desired_replicas=per_server))
        memory = rng.choice((8, 16, 32)) * GiB
        replicas.extend(ReplicaInfo(name, NS, r, FLAVOURS[flavour], memory=memory, overcommit_percent=10,
                                    ready=True, address=f"127.0.0.1:{9000 + r}") for r in range(per_server))
    models: list[ModelWant] = []
    for i in range(n_models):
        reqs = rng.choice(REQUIREMENTS)
        if i % 100 == 1:
            reqs = ("scikit-learn", "torch")  # names no server offers: explained, never placed
        server = None
        if i % 20 == 0:  # some models pin a server (sometimes one that cannot take them)
            server = servers[rng.randrange(n_servers)].name
        replicas_wanted = rng.choices((1, 2, 3), weights=(70, 20, 10))[0]
        models.append(ModelWant(f"model-{i:05d}", NS, reqs, memory=rng.randrange(16, 512) * MiB,
                                server=server, replicas=replicas_wanted,
                                min_replicas=1 if i % 50 == 0 else None))
    return Snapshot(NS, tuple(models), tuple(servers), tuple(replicas))


def timed(fn: Callable[[], Plan], runs: int) -> tuple[float, Plan]:
    times: list[float] = []
    result = fn()
    for _ in range(runs):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--models", type=int, default=10_000)
    ap.add_argument("--servers", type=int, default=100)
    ap.add_argument("--replicas", type=int, default=10)
    args = ap.parse_args()

    snap = make_snapshot(args.models, args.servers, args.replicas)
    full_s, first = timed(lambda: plan(snap), args.runs)
    states: dict[str, int] = {}
    for mp in first.models.values():
        states[mp.state] = states.get(mp.state, 0) + 1

    # one replica that holds models disappears; the control plane re-plans from the placements it has
    busiest = max(snap.replicas, key=lambda r: sum(
        1 for mp in first.models.values() if r.ref in mp.replicas))
    gone = busiest.ref
    after = dataclasses.replace(
        snap, replicas=tuple(r for r in snap.replicas if r.ref != gone),
        assignments={name: mp.replicas for name, mp in first.models.items() if mp.replicas})
    moved = sum(1 for mp in first.models.values() if gone in mp.replicas)
    incr_s, incremental = timed(lambda: plan(after, previous=first), args.runs)
    refull_s, full_after = timed(lambda: plan(after), args.runs)
    same = incremental == full_after

    print(f"scheduler bench: {len(snap.models)} models on {len(snap.replicas)} replicas "
          f"({args.servers} servers x {args.replicas}); median of {args.runs} runs")
    print(f"  full plan:            {full_s * 1000:8.1f} ms  goal <= 1000 ms  "
          f"{'MET' if full_s <= 1.0 else 'MISSED'}   states: {dict(sorted(states.items()))}")
    print(f"  re-plan, replica {gone} gone ({moved} models on it):")
    print(f"    incremental:        {incr_s * 1000:8.1f} ms  goal <= 50 ms    "
          f"{'MET' if incr_s <= 0.05 else 'MISSED'}")
    print(f"    full, same input:   {refull_s * 1000:8.1f} ms  "
          f"(incremental / full = {incr_s / refull_s:.3f})")
    redone = sum(1 for name, mp in incremental.models.items() if mp is not first.models.get(name))
    unsettled = sum(1 for mp in first.models.values() if mp.state != "Scheduled")
    print(f"    incremental == full plan: {same}; ModelPlans rebuilt: {redone} "
          f"(the {moved} moved, and the {unsettled} not fully placed, whose reasons are re-checked)")
    if not same:
        raise SystemExit("incremental re-plan differs from the full plan")


if __name__ == "__main__":
    main()
