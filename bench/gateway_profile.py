"""Where the gateway's CPU per call goes: one gateway under cProfile, driven by bench/gateway_cpu.py's stand-in load.

The stand-in inference server (bench/gateway_cpu.py's, answering every V2 infer at once) is the only upstream, so
the profile holds the gateway's own work and nothing else (``--mlserver``: a real MLServer instead, whose answers
come as its own HTTP/2 writes them and at its pace); the load generators are bench/gateway.py's (wrk for
REST, grpc.aio for gRPC).  The gateway runs ``berth gateway`` under ``cProfile`` (``--source SRC`` runs another
tree, e.g. a copy of ``src/`` before a change) and writes its profile when stopped; the top functions by own time
and by cumulative time are printed, per call (cProfile inflates small functions: compare the two trees, not the
figures with bench/gateway_cpu.py's).

    .venv/bin/python bench/gateway_profile.py [--protocol grpc] [--duration 10] [--concurrency 8] [--top 40]
                                              [--source /tmp/src_before] [--save gateway.prof] [--mlserver]
"""

from __future__ import annotations

import argparse
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import gateway as bench  # noqa: E402  (bench/gateway.py: load generators)


def _child(out: str, argv: list[str]) -> int:
    """The gateway, profiled by the CPU time of its thread (wall time would charge it for being descheduled, as
    it is whenever a write wakes the peer on a busy machine); the profile is written when it stops."""
    import cProfile
    import time

    from berth.main import main as berth_main

    sys.argv = ["berth", *argv]
    profiler = cProfile.Profile(time.thread_time)
    profiler.enable()
    try:
        berth_main()
    except SystemExit:
        pass
    finally:
        profiler.disable()
        profiler.dump_stats(out)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--protocol", choices=("rest", "grpc"), default="grpc")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--source", help="a source tree (a copy of src/) to run the gateway from")
    parser.add_argument("--save", help="keep the profile in this file (pstats format)")
    parser.add_argument("--tool", choices=("cprofile", "perf", "strace"), default="cprofile",
                        help="cprofile: functions by CPU time of the gateway's thread; perf: where the process's CPU "
                             "goes by library and C symbol (kernel, interpreter, uvloop, the collector); strace: "
                             "system calls per call")
    parser.add_argument("--mlserver", action="store_true",
                        help="a real MLServer (iris, as bench/gateway.py runs it) upstream instead of the stand-in")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.child:
        return _child(args.child, rest)
    from berth.adapters.mlserver_proc import free_ports
    from berth.wire.routes import Endpoint, ModelRoute, RoutingTable

    args.client = "wrk" if shutil.which("wrk") else "python"
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        upstream: subprocess.Popen[str] | None = None
        mlserver = None
        gateway: subprocess.Popen[bytes] | None = None
        try:
            if args.mlserver:  # a real MLServer with the iris model, as bench/gateway.py runs it
                mlserver, up_grpc_address = bench.start_mlserver(workdir)
                up_http = mlserver.http_address
            else:
                up_rest, up_grpc = free_ports(2)
                upstream = subprocess.Popen([sys.executable, str(ROOT / "bench" / "gateway_cpu.py"), "--upstream",
                                             str(up_rest), str(up_grpc)], stdout=subprocess.PIPE, text=True)
                assert upstream.stdout is not None and upstream.stdout.readline().strip() == "ready"
                up_http, up_grpc_address = f"127.0.0.1:{up_rest}", f"127.0.0.1:{up_grpc}"
            table = RoutingTable(revision=1, models=[ModelRoute(
                namespace="default", name="iris", state="ModelAvailable", endpoints=[Endpoint(
                    server="stand-in", replica=0, http=up_http, grpc=up_grpc_address)])])
            routes = workdir / "routes.json"
            routes.write_text(table.model_dump_json())
            rest_port, grpc_port = free_ports(2)
            env = dict(os.environ)
            if args.source:
                env["PYTHONPATH"] = args.source
            profile = workdir / "gateway.prof"
            gateway_args = ["gateway", "--host", "127.0.0.1", "--port", str(rest_port), "--grpc-port",
                            str(grpc_port), "--control", "", "--routes", str(routes), "--log-level", "WARNING"]
            if args.tool == "strace":
                command = ["strace", "-c", "-f", "-o", str(workdir / "strace.txt"), sys.executable, "-m", "berth.main",
                           *gateway_args]
            elif args.tool == "perf":
                command = [sys.executable, "-m", "berth.main", *gateway_args]
            else:
                command = [sys.executable, __file__, "--child", str(profile), *gateway_args]
            gateway = subprocess.Popen(command, cwd=str(ROOT), env=env)
            bench._wait_http(f"http://127.0.0.1:{rest_port}/v2/health/ready", 60)
            address = f"127.0.0.1:{grpc_port if args.protocol == 'grpc' else rest_port}"
            sampler = None
            if args.tool == "perf":
                sampler = subprocess.Popen(["perf", "record", "-F", "2000", "-o", str(workdir / "perf.data"),
                                            "--pid", str(gateway.pid), "--", "sleep", str(args.duration)],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            res = bench._phase(args.protocol, address, args.concurrency, args, workdir, {"seldon-namespace": "default"})
            if sampler is not None:
                sampler.wait(60)
            if args.tool == "strace":  # the gateway is strace's child: stopping it ends strace, which writes its count
                import psutil

                for child in psutil.Process(gateway.pid).children():
                    child.send_signal(signal.SIGTERM)
            else:
                gateway.send_signal(signal.SIGTERM)
            gateway.wait(60)
            gateway = None
            calls = max(int(res["requests"]), 1)
            print(f"{args.protocol}: {res['rps']:.1f} req/s under the profiler, {calls} calls (+ warm-up), "
                  f"errors {res['errors']:.0f}")
            if args.tool == "strace":
                print(f"system calls per call ({calls} calls):")
                for line in (workdir / "strace.txt").read_text().splitlines():
                    fields = line.split()
                    if len(fields) >= 5 and fields[3].isdigit():
                        print(f"  {fields[-1]:24} {int(fields[3]) / calls:8.2f}")
                return 0
            if args.tool == "perf":
                for sort in ("dso", "dso,sym"):
                    report = subprocess.run(["perf", "report", "-i", str(workdir / "perf.data"), "--stdio",
                                             "--sort", sort, "--percent-limit", "0.5"],
                                            capture_output=True, text=True)
                    print("\n".join(line for line in report.stdout.splitlines()[:args.top + 12]
                                    if line and not line.startswith("#")))
                if args.save:
                    shutil.copy(workdir / "perf.data", args.save)
                return 0
            stats = pstats.Stats(str(profile))
            if args.save:
                shutil.copy(profile, args.save)
            stats.sort_stats("tottime").print_stats(args.top)
            stats.sort_stats("cumulative").print_stats(args.top)
        finally:
            for proc in (gateway, upstream):
                if proc is not None:
                    proc.terminate()
                    proc.wait(10)
            if mlserver is not None:
                mlserver.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
