"""Does the control plane stay responsive under load?  ``/healthz`` latency idle and while N models apply.

Starts ``berth up`` (control plane, gateway, one MLServer replica and its agent) on free loopback ports in a
temporary folder, probes ``GET /healthz`` every 20 ms for ``--seconds`` idle, then applies ``--models`` Models
(in batches of ``--batch``) while probing, and keeps probing until every model has a status (their storage does
not exist: loads fail fast, so the control plane stays busy with loads, failures, retries and statuses).
Prints p50/p99/max idle and under load side by side, and how long until all models had a status; beside
them, the control plane's own figures from its ``/metrics`` (garbage collections by generation, count and
time, wall and CPU; the loop's worst lag) and the stalls over 100 ms its loop watch logged, each with where
the loop's thread was and which other threads were busy.  The prober runs in a process of its own.  By
default it measures twice, the control plane's collector policy on and then off (``--gc-policy``, set through
BERTH_GC_POLICY, which ``berth up`` passes on), and prints the two side by side.  It also prints the CPU
seconds each process of ``berth up`` (control plane, gateway, agent, MLServer) used under load, which the
machine's load does not inflate as it inflates latencies.  ``--replica-nice 0,10`` measures once as started and
once with the replica's agent and MLServer reniced by 10 (an experiment: docs/responsiveness.md).  Each
configuration runs ``--rounds`` times, each on a fresh ``berth up``, and the percentiles are taken over the probes
of all its rounds: on a fast machine one round's load lasts under 2 s (~85 probes), whose p99 is its largest.
Goal (issue 18): under load p99 ≤ 20 ms and max ≤ 100 ms.  On a busy machine these client-side figures are
dominated by the operating system's scheduling; ``bench/reconcile_pass.py`` and ``bench/gc_pauses.py``
measure the control plane's own stalls and collections in CPU time (docs/responsiveness.md).

    .venv/bin/python bench/responsiveness.py [--models 1000] [--seconds 5] [--gc-policy both|on|off]
        [--replica-nice 0,10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psutil  # noqa: E402

from berth.adapters.mlserver_proc import free_ports  # noqa: E402

BERTH = [sys.executable, "-m", "berth.main"]
SELDON = "mlops.seldon.io/v1alpha1"
NAMESPACE = "bench"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


PROBE = """
import sys, time, urllib.request
url, interval = sys.argv[1], float(sys.argv[2])
next_at = time.monotonic()
while True:
    start = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            resp.read()
        print(f"{start:.6f} {time.monotonic() - start:.6f}", flush=True)
    except OSError:
        print(f"{start:.6f} fail", flush=True)
    next_at = max(next_at + interval, time.monotonic())
    time.sleep(max(0.0, next_at - time.monotonic()))
"""


class Prober:
    """``GET /healthz`` every ``interval`` seconds, on its own connection each time as a probe does, from a
    process of its own: the bench's own work (parsing lists of 1,000 models) must not delay the probes.
    CLOCK_MONOTONIC is the machine's, so its times compare with the bench's."""

    def __init__(self, url: str, interval: float = 0.02) -> None:
        self.samples: list[tuple[float, float]] = []  # (when, seconds)
        self.failures = 0
        self.proc = subprocess.Popen([sys.executable, "-c", PROBE, url, str(interval)], stdout=subprocess.PIPE,
                                     text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            when, took = line.split()
            if took == "fail":
                self.failures += 1
            else:
                self.samples.append((float(when), float(took)))

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.reader.join(10)

    def between(self, t0: float, t1: float) -> list[float]:
        return [d for t, d in self.samples if t0 <= t < t1]

    def slow(self, t0: float, t1: float, over: float = 0.010) -> list[tuple[float, float]]:
        """The probes over ``over`` seconds between t0 and t1: (seconds after t0 it started, how long it took)."""
        return [(t - t0, d) for t, d in self.samples if t0 <= t < t1 and d > over]


def loop_figures(base: str, token: str) -> dict[str, float]:
    """The control plane's own figures at /metrics: gc collections and time by generation, loop lag."""
    req = urllib.request.Request(f"{base}/metrics", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        text = resp.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(("berth_gc_", "berth_loop_lag_max", "berth_loop_lag_seconds_count")):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def gc_row(label: str, before: dict[str, float], after: dict[str, float]) -> str:
    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)
    cells = []
    for gen in range(3):
        n = delta(f'berth_gc_collections_total{{generation="{gen}"}}')
        total = delta(f'berth_gc_seconds_total{{generation="{gen}"}}') * 1000
        cpu = delta(f'berth_gc_cpu_seconds_total{{generation="{gen}"}}') * 1000
        cells.append(f"gen{gen} {n:.0f}× {total:.0f} ms ({cpu:.0f} CPU)")
    longest = max(after.get(f'berth_gc_longest_seconds{{generation="{g}"}}', 0.0) for g in range(3)) * 1000
    longest_cpu = max(after.get(f'berth_gc_longest_cpu_seconds{{generation="{g}"}}', 0.0) for g in range(3)) * 1000
    return f"{label:<12}{', '.join(cells)}; longest so far {longest:.1f} ms ({longest_cpu:.1f} CPU)"


def request(url: str, token: str, body: dict | None = None, method: str = "GET") -> dict:  # type: ignore[type-arg]
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={
        "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def model(i: int) -> dict:  # type: ignore[type-arg]
    return {"apiVersion": SELDON, "kind": "Model", "metadata": {"name": f"m{i:05d}", "namespace": NAMESPACE},
            "spec": {"storageUri": "file:///nonexistent/berth-bench/model", "requirements": ["sklearn"],
                     "memory": "1Mi"}}


def server() -> dict:  # type: ignore[type-arg]
    return {"apiVersion": SELDON, "kind": "Server", "metadata": {"name": "mlserver", "namespace": NAMESPACE},
            "spec": {"serverConfig": "mlserver", "replicas": 1,
                     "capabilities": ["sklearn", "mlflow", "python", "numpy"]}}


def row(label: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return f"{label:<12}{len(ms):>8}{pct(ms, 0.5):>10.1f}{pct(ms, 0.99):>10.1f}{max(ms, default=float('nan')):>10.1f}"


STALL = re.compile(r"stalled (\d+) ms \(its thread's CPU (\d+) ms\)")


@dataclass
class Run:
    """One ``berth up`` measured: probes idle and under load, the control plane's figures, its stalls."""

    policy: str
    nice: int = 0  # added to the niceness of the replica's agent and MLServer (0: as berth up starts them)
    idle: list[float] = field(default_factory=list)
    load: list[float] = field(default_factory=list)
    slow: list[tuple[float, float]] = field(default_factory=list)  # probes over 10 ms under load: (s into it, s)
    applied: float = 0.0
    statused: float | None = None
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds each process of berth up used under load
    figures: tuple[dict[str, float], dict[str, float], dict[str, float]] = ({}, {}, {})
    stalls: list[str] = field(default_factory=list)  # the control plane's stall lines (over 100 ms)
    failures: int = 0

    def label(self) -> str:
        return f"policy {self.policy}" + (f", nice +{self.nice}" if self.nice else "")

    def stall_figures(self) -> tuple[int, float, float]:
        """(stalls logged, the longest in ms, the median CPU its loop thread used in them, ms)."""
        found = [(float(m[1]), float(m[2])) for ln in self.stalls if (m := STALL.search(ln))]
        cpu = sorted(c for _, c in found)
        return len(found), max((w for w, _ in found), default=0.0), cpu[len(cpu) // 2] if cpu else 0.0


def renice_replicas(up: subprocess.Popen[str], by: int) -> list[int]:
    """Lower the CPU priority of the replica's processes (agent, MLServer and its workers) under ``berth up``
    by ``by``: the control plane and the gateway then win the processors while loads churn.  Their pids."""
    done = []
    for proc in psutil.Process(up.pid).children(recursive=True):
        try:
            line = " ".join(proc.cmdline())
            if "berth.main agent" in line or "mlserver" in line:
                proc.nice(proc.nice() + by)
                done.append(proc.pid)
        except psutil.Error:
            continue
    return done


ROLES = (("control", "berth.main control"), ("gateway", "berth.main gateway"), ("agent", "berth.main agent"),
         ("mlserver", "mlserver"))


def cpu_times(up: subprocess.Popen[str]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each process under ``berth up``, by role; a role's children
    (MLServer's workers) count with it.  Machine load does not inflate them as it inflates latencies: under
    load they say how much of the processors each part of Berth took."""
    out: dict[str, float] = {}
    for proc in psutil.Process(up.pid).children(recursive=True):
        try:
            line = " ".join(proc.cmdline())
            role = next((r for r, word in ROLES if word in line), None)
            if role is not None:
                t = proc.cpu_times()
                out[role] = out.get(role, 0.0) + t.user + t.system
        except psutil.Error:
            continue
    return out


def measure(args: argparse.Namespace, policy: str, nice: int = 0) -> Run:
    """``berth up`` with the control plane's collector policy ``on`` or ``off`` (BERTH_GC_POLICY) and the
    replica's processes reniced by ``nice``, measured."""
    run = Run(policy, nice)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cport, gport, grpc = free_ports(3)
        base = f"http://127.0.0.1:{cport}"
        env = dict(os.environ, BERTH_CONFIG_DIR=str(root / "config"), BERTH_ADDRESS=base, BERTH_GC_POLICY=policy)
        env.pop("BERTH_TOKEN", None)
        up = subprocess.Popen(BERTH + ["up", "--data-dir", str(root / "data"), "--control-port", str(cport),
                                       "--gateway-port", str(gport), "--grpc-port", str(grpc),
                                       "--no-default-server", "--replica-memory", "4Gi"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            assert up.stderr is not None
            while "admin token" not in (line := up.stderr.readline()):
                if not line:
                    raise SystemExit("bench: berth up ended before it was up")
            threading.Thread(target=lambda: [None for _ in up.stderr or ()], daemon=True).start()  # drain
            token = (root / "data" / "admin.token").read_text().strip()
            request(f"{base}/api/v1/apply", token, {"documents": [server()]}, "POST")
            deadline = time.monotonic() + 120
            while True:  # the replica is up and its agent connected: the load is about models, not start-up
                agents = request(f"{base}/api/v1/agents?namespace={NAMESPACE}", token)["items"]
                if any(a.get("connected") for a in agents):
                    break
                if time.monotonic() > deadline:
                    raise SystemExit("bench: the replica's agent did not connect within 120 s")
                time.sleep(0.5)
            if nice and not renice_replicas(up, nice):
                raise SystemExit("bench: found no agent or MLServer process under berth up to renice")
            prober = Prober(f"{base}/healthz")
            time.sleep(0.5)  # the prober's interpreter has started
            t_idle = time.monotonic()
            figures_idle = loop_figures(base, token)
            time.sleep(args.seconds)
            t_load = time.monotonic()
            figures_load = loop_figures(base, token)
            cpu_load = cpu_times(up)
            for start in range(0, args.models, args.batch):
                docs = [model(i) for i in range(start, min(args.models, start + args.batch))]
                request(f"{base}/api/v1/apply", token, {"documents": docs}, "POST")
            run.applied = time.monotonic() - t_load
            while time.monotonic() - t_load < args.timeout:
                items = request(f"{base}/api/v1/models?namespace={NAMESPACE}", token)["items"]
                if len(items) == args.models and all((d.get("status") or {}).get("state") for d in items):
                    run.statused = time.monotonic() - t_load
                    break
                time.sleep(0.25)
            time.sleep(1.0)  # the tail of the work the statuses set off
            t_end = time.monotonic()
            run.figures = (figures_idle, figures_load, loop_figures(base, token))
            run.cpu = {role: t - cpu_load.get(role, 0.0) for role, t in cpu_times(up).items()}
            prober.stop()
            run.idle, run.load = prober.between(t_idle, t_load), prober.between(t_load, t_end)
            run.slow = prober.slow(t_load, t_end)
            run.failures = prober.failures
            run.stalls = [ln.split(": ", 1)[-1] for ln in
                          (root / "data" / "logs" / "control.log").read_text().splitlines()
                          if "event loop stalled" in ln]
            return run
        finally:
            up.send_signal(signal.SIGINT)
            try:
                up.wait(60)
            except subprocess.TimeoutExpired:
                up.kill()


def report(run: Run, args: argparse.Namespace) -> None:
    idle, load, end = run.figures
    print(f"-- {run.label()} (berth control --gc-policy {run.policy}; replica processes reniced by {run.nice})")
    print(f"{'':<12}{'probes':>8}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    print(row("idle", run.idle))
    print(row("under load", run.load))
    print("CPU seconds under load: " + ", ".join(f"{role} {t:.2f}" for role, t in sorted(run.cpu.items())))
    print(f"applied in {run.applied:.2f} s; every model had a status after "
          + (f"{run.statused:.2f} s" if run.statused is not None else f"more than {args.timeout:.0f} s (gave up)"))
    print("the control plane's garbage collections (count, time) and loop lag, from its /metrics:")
    print(gc_row("idle", idle, load))
    print(gc_row("under load", load, end))
    print(f"{'':<12}loop lag at most {end.get('berth_loop_lag_max_seconds', 0) * 1000:.1f} ms "
          f"(heartbeat every 10 ms)")
    for ln in run.stalls[:args.stalls]:
        print("  " + ln)
    if len(run.stalls) > args.stalls:
        print(f"  ... {len(run.stalls) - args.stalls} more stalls in the control plane's log")
    if run.failures:
        print(f"{run.failures} probes failed")


def longest_gc(run: Run) -> tuple[float, float]:
    """The longest collection under load (ms, wall and CPU): the figures at the end (runs start fresh)."""
    end = run.figures[2]
    return (max(end.get(f'berth_gc_longest_seconds{{generation="{g}"}}', 0.0) for g in range(3)) * 1000,
            max(end.get(f'berth_gc_longest_cpu_seconds{{generation="{g}"}}', 0.0) for g in range(3)) * 1000)


def side_by_side(runs: list[Run]) -> None:
    print("side by side (ms; /healthz under load; stalls the control plane logged over 100 ms):")
    print(f"{'':<34}" + "".join(f"{r.label():>22}" for r in runs))
    lines: list[tuple[str, list[str]]] = [
        ("idle p99", [f"{pct([v * 1000 for v in r.idle], 0.99):.1f}" for r in runs]),
        ("load p50", [f"{pct([v * 1000 for v in r.load], 0.5):.1f}" for r in runs]),
        ("load p99", [f"{pct([v * 1000 for v in r.load], 0.99):.1f}" for r in runs]),
        ("load max", [f"{max([v * 1000 for v in r.load], default=float('nan')):.1f}" for r in runs]),
        ("longest collection (CPU)", [f"{w:.0f} ({c:.0f})" for w, c in map(longest_gc, runs)]),
        ("stalls logged / longest", [f"{n} / {w:.0f}" for n, w, _ in (r.stall_figures() for r in runs)]),
        ("loop thread CPU in them, median", [f"{c:.0f}" for *_, c in (r.stall_figures() for r in runs)]),
        ("control plane CPU under load, s", [f"{r.cpu.get('control', 0.0):.2f}" for r in runs]),
        ("all statuses after, s", [f"{r.statused:.1f}" if r.statused is not None else "gave up" for r in runs]),
    ]
    for label, cells in lines:
        print(f"{label:<34}" + "".join(f"{c:>22}" for c in cells))


def pooled(runs: list[Run]) -> Run:
    """Rounds of one configuration as one: their probes together (a p99 of ~85 probes, one round on a fast
    machine, is its largest; five rounds make it the fifth largest of ~420), the median CPU of each process,
    the slowest time to every status, the figures of the round with the longest collection, every stall."""
    first = runs[0]
    both = Run(first.policy, first.nice)
    for run in runs:
        both.idle += run.idle
        both.load += run.load
        both.slow += run.slow
        both.stalls += run.stalls
        both.failures += run.failures
    both.applied = statistics.median_high(r.applied for r in runs)
    both.statused = None if any(r.statused is None for r in runs) else max(r.statused or 0.0 for r in runs)
    both.cpu = {role: statistics.median_high(r.cpu.get(role, 0.0) for r in runs) for role in first.cpu}
    both.figures = max(runs, key=lambda r: longest_gc(r)[0]).figures
    return both


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=5.0, help="idle probing before the load")
    parser.add_argument("--batch", type=int, default=100, help="models per apply request")
    parser.add_argument("--timeout", type=float, default=300.0, help="give up waiting for statuses after this")
    parser.add_argument("--stalls", type=int, default=10, help="print at most this many stalls the control "
                        "plane logged (over 100 ms, with where its loop thread was)")
    parser.add_argument("--gc-policy", choices=("both", "on", "off"), default="both",
                        help="the control plane's collector policy: both (on, then off, side by side) or one")
    parser.add_argument("--replica-nice", default="0",
                        help="comma-separated niceness increments for the replica's agent and MLServer, each "
                             "measured (e.g. 0,10: as started, then reniced by 10, side by side)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="fresh berth up runs per configuration, their probes pooled for the percentiles")
    args = parser.parse_args()
    print(f"berth up, {args.models} models applied in batches of {args.batch}; GET /healthz every 20 ms; "
          f"{args.rounds} round(s) per configuration")
    nices = [int(n) for n in args.replica_nice.split(",")]
    configs = [(policy, nice) for policy in (("on", "off") if args.gc_policy == "both" else (args.gc_policy,))
               for nice in nices]
    pools: list[Run] = []
    for policy, nice in configs:
        rounds = []
        for i in range(args.rounds):
            run = measure(args, policy, nice)
            print(f"round {i + 1}: ", end="")
            report(run, args)
            rounds.append(run)
        pools.append(pooled(rounds))
    for pool in pools:
        print(f"== {pool.label()}, {args.rounds} round(s) pooled")
        print(f"{'':<12}{'probes':>8}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
        print(row("idle", pool.idle))
        print(row("under load", pool.load))
        slowest = sorted(pool.slow, key=lambda s: -s[1])[:10]
        print("slowest probes under load (s into the load: ms): "
              + (", ".join(f"{at:.2f}: {took * 1000:.1f}" for at, took in slowest) or "none over 10 ms"))
    if len(pools) > 1:
        side_by_side(pools)
    met = True  # the exit status: the configuration berth up ships (policy on, nothing reniced) where measured
    shipped = [p for p in pools if p.policy == "on" and p.nice == 0] or pools
    for pool in pools:
        load = [d * 1000 for d in pool.load]
        ok = bool(load) and pct(load, 0.99) <= 20 and max(load) <= 100
        if pool in shipped:
            met = met and ok and pool.statused is not None
        print(f"{pool.label()}: goal p99 ≤ 20 ms and max ≤ 100 ms under load ({len(load)} probes in "
              f"{args.rounds} round(s)): " + ("met" if ok else "NOT met"))
    return 0 if met else 1

if __name__ == "__main__":
    sys.exit(main())
