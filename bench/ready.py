"""apply → Ready latency for a small sklearn model from local storage, with MLServer's own load time.

Starts a real control plane (with the local provisioner: one MLServer replica and its agent) and
gateway on loopback, then RUNS times: apply a fresh Model, wait for ModelAvailable through the control
plane's watch stream, read the agent's measured durations from the status, delete the model.
Prints p50/p90 of each and the ratio apply→Ready ÷ MLServer load.  Goal: p50 ≤ 1 s.

    .venv/bin/python bench/ready.py [--runs 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.models import train_sklearn  # noqa: E402
from tests.support.platform import Platform, model_doc, server_doc  # noqa: E402


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = train_sklearn(root / "iris")
        with Platform(root / "berth") as p:
            p.client.apply([server_doc("mlserver", replicas=1)])
            p.wait_server("mlserver", ready_replicas=1)
            ready, agent, mlserver = [], [], []
            for i in range(args.runs):
                name = f"bench-{i}"
                _, rev = p.client.list_at("Model", "default")
                started = time.perf_counter()
                p.client.apply([model_doc(name, str(model))])
                for ev in p.client.watch(("Model",), "default", since=rev):
                    obj = ev["object"]
                    if obj["metadata"]["name"] == name and (obj.get("status") or {}).get("state") == "ModelAvailable":
                        break
                ready.append(time.perf_counter() - started)
                rs = obj["status"]["replicaStatus"]["mlserver/0"]
                agent.append(rs["loadSeconds"])
                mlserver.append(rs["inferenceLoadSeconds"])
                p.client.delete("Model", "default", name)
                time.sleep(0.2)
    print(f"runs: {args.runs} (sklearn LogisticRegression from a local folder, 1 MLServer replica)")
    print(f"{'':28}{'p50':>10}{'p90':>10}")
    for label, values in (("apply -> Ready (client)", ready), ("agent load (fetch..verify)", agent),
                          ("MLServer load call", mlserver)):
        print(f"{label:28}{statistics.median(values) * 1000:>8.0f}ms{pct(values, 0.9) * 1000:>8.0f}ms")
    ratio = statistics.median(ready) / max(statistics.median(mlserver), 1e-9)
    print(f"apply->Ready / MLServer load (p50 ratio): {ratio:.2f}x; "
          f"Berth overhead p50: {(statistics.median(ready) - statistics.median(mlserver)) * 1000:.0f} ms")
    goal = statistics.median(ready) <= 1.0
    print(f"goal p50 <= 1 s: {'met' if goal else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
