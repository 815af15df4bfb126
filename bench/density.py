"""Density: many tiny sklearn models applied at once, time until every one is Ready, and what it costs.

Starts a real control plane with the local provisioner (agents and MLServer processes, as ``berth up``
does) and a gateway on loopback; applies one Server with R replicas, waits for them, then applies N
Models (one tiny LogisticRegression artifact, N names) in one request (1,000 documents is the apply
limit) and polls the control plane until all are ModelAvailable.  Prints models/s, time to the first
and to all Ready, the Ready count over time, and the RSS of every process (this one: control plane and
gateway threads; each agent; each MLServer and its workers).

Goals (issue 12): 1,000 models Ready on one replica in <= 60 s, on four in <= 20 s.

    .venv/bin/python bench/density.py [--models 1000] [--replicas 1,4] [--policy spread] [--memory 1Mi]
                                      [--timeout 600] [--probe 100,300,1000]
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.models import train_sklearn  # noqa: E402
from tests.support.platform import SELDON, Platform, model_doc, server_doc  # noqa: E402

MiB = 2**20


def ready_count(p: Platform, namespace: str) -> tuple[int, dict[str, int]]:
    docs = p.client.list("Model", namespace)
    states: dict[str, int] = {}
    for doc in docs:
        state = str((doc.get("status") or {}).get("state") or "none")
        states[state] = states.get(state, 0) + 1
    return states.get("ModelAvailable", 0), states


def rss_lines() -> list[str]:
    me = psutil.Process()
    lines = []
    total = 0
    for proc in [me, *me.children(recursive=True)]:
        try:
            rss = proc.memory_info().rss
            cmd = " ".join(proc.cmdline()[:6])
        except psutil.Error:
            continue
        total += rss
        role = "this process (control plane + gateway)" if proc.pid == me.pid else cmd[:110]
        lines.append(f"    pid {proc.pid:>7} {rss / MiB:8.1f} MiB  {role}")
    lines.append(f"    total      {total / MiB:8.1f} MiB")
    return lines


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


def run(models: int, replicas: int, timeout: float, artifact: Path, data: Path, policy: str, memory: str) -> bool:
    namespace = "default"
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
        started = time.perf_counter()
        p.client.apply(docs)
        applied = time.perf_counter() - started
        first: float | None = None
        marks: list[str] = []
        next_mark = 5.0
        ready, states = 0, dict[str, int]()
        while True:
            ready, states = ready_count(p, namespace)
            elapsed = time.perf_counter() - started
            if ready and first is None:
                first = elapsed
            if elapsed >= next_mark:
                marks.append(f"{elapsed:5.0f}s:{ready}")
                next_mark += 5.0
            if ready >= models or elapsed > timeout:
                break
            time.sleep(0.5)
        total = time.perf_counter() - started
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
        print("  RSS of every process:")
        for line in rss_lines():
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
    ap.add_argument("--probe", default="100,300,1000",
                    help="also time MLServer's repository lookup with these many models ('' to skip)")
    args = ap.parse_args()
    # a TERM (e.g. from `timeout`) unwinds like Ctrl-C: the platform stops its agents and MLServer processes
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        artifact = train_sklearn(root / "iris")
        if args.probe:
            probe_repository([int(x) for x in args.probe.split(",")], root)
        for n in (int(x) for x in args.replicas.split(",") if x):
            ok = run(args.models, n, args.timeout, artifact, root / f"berth-{n}", args.policy, args.memory) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
