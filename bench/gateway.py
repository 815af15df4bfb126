"""Through-gateway ÷ direct-MLServer: throughput and latency, REST and gRPC, side by side in one run.

One MLServer process holds a small sklearn model (iris LogisticRegression, loaded through the
repository API); a gateway process (``berth gateway`` on uvloop, static routing table) fronts it.  The
same load generator (a separate process: ``wrk`` for REST when installed, else aiohttp; grpc.aio for
gRPC, sending pre-encoded requests) drives the same concurrency for ``--duration`` seconds at each
target, at each concurrency level (1: the added latency, unqueued; 8: throughput), interleaved
direct/gateway/gateway+auth (``--rounds`` rounds, each starting at the next phase).

"gateway+auth" calls the same model in a namespace the gateway's table guards
(``berth.io/inference-auth: required``) with a valid token on every request; ``--no-auth`` leaves it
out.  Every phase sends the same headers (``seldon-namespace`` and ``Authorization: Bearer``, or the gRPC
metadata; direct MLServer and the open namespace ignore the token), so the load generator, which shares
the machine, does the same work in each, and "gateway" vs "gateway+auth" differ by the check alone.

Prints every phase with the CPU time MLServer and the gateway spent per request, then the medians:
throughput, p50 and p99 latency, the throughput ratio to direct MLServer and the added p50, with and
without auth.  Goals (under load): ratio >= 0.95 and added p50 <= 0.5 ms, with auth too.

With ``--gateway-src DIR`` a second gateway runs from another source tree (``PYTHONPATH=DIR``: a copy of ``src/``
from before a change, e.g. ``git archive 3c6b565 src | tar -x -C /tmp/base3c6``) against the same MLServer, as the
phases "base" (and "base+auth"), in the same rotation; both gateways' ratios to direct are printed side by side,
round by round and as medians, with this tree's ÷ the base's.  A change that costs something end to end shows
as a gap between the two in the same rounds; a machine that moved shows in both.

With ``--pin`` MLServer (and its workers) runs on the machine's last CPU and everything else (the gateways, the
load generator, this process) on the others, in every phase: as where the gateway has CPU of its own (its own
pod or node), so that what is measured is the forwarding, not the gateway and MLServer taking turns on the same
cores.  Without it (the default) the operating system places them: on a 2-core machine every CPU microsecond
the gateway spends is taken from MLServer or from the load generator.

    .venv/bin/python bench/gateway.py [--duration 10] [--concurrency 1,8] [--rounds 2] [--protocols rest,grpc]
                                      [--no-auth] [--gateway-src DIR] [--pin]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.models import IRIS_INPUT, train_sklearn  # noqa: E402

Result = dict[str, float]
GUARDED = "secure"  # the namespace whose table entry requires a token
BASE = "base"  # the phase of the gateway built from --gateway-src


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


# ---- load generators (run in a child process, print one JSON line) ----

async def _drive(send: Any, concurrency: int, duration: float) -> Result:
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + duration

    async def worker() -> None:
        nonlocal errors
        clock = time.perf_counter
        while True:
            started = clock()
            if started >= deadline:
                return
            ok = await send()
            latencies.append(clock() - started)
            if not ok:
                errors += 1

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - began
    return {"rps": len(latencies) / elapsed, "p50_ms": pct(latencies, 0.5) * 1e3,
            "p99_ms": pct(latencies, 0.99) * 1e3, "requests": len(latencies), "errors": errors}


async def _rest_load(address: str, concurrency: int, duration: float, extra: dict[str, str]) -> Result:
    import aiohttp

    url = f"http://{address}/v2/models/iris/infer"
    body = json.dumps(IRIS_INPUT).encode()
    headers = {"Content-Type": "application/json", **extra}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def send() -> bool:
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                return resp.status == 200

        await _drive(send, concurrency, 1.0)  # warm the connections
        return await _drive(send, concurrency, duration)


def _grpc_request() -> bytes:
    from mlserver.grpc import dataplane_pb2 as pb

    spec = IRIS_INPUT["inputs"][0]
    tensor = pb.ModelInferRequest.InferInputTensor(name=spec["name"], datatype=spec["datatype"], shape=spec["shape"],
                                                   contents=pb.InferTensorContents(fp64_contents=spec["data"]))
    return pb.ModelInferRequest(model_name="iris", inputs=[tensor]).SerializeToString()  # type: ignore[no-any-return]


async def _grpc_load(address: str, concurrency: int, duration: float, extra: dict[str, str]) -> Result:
    import grpc

    body = _grpc_request()
    metadata = tuple((k.lower(), v) for k, v in extra.items()) or None
    async with grpc.aio.insecure_channel(address) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")

        async def send() -> bool:
            try:
                await call(body, timeout=30, metadata=metadata)
                return True
            except grpc.aio.AioRpcError:
                return False

        await _drive(send, concurrency, 1.0)
        return await _drive(send, concurrency, duration)


def _wrk_load(address: str, concurrency: int, duration: float, workdir: Path, extra: dict[str, str]) -> Result:
    script = workdir / "post.lua"
    report = workdir / "wrk.json"
    body = json.dumps(json.dumps(IRIS_INPUT))
    headers = "".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}\n" for k, v in extra.items())
    script.write_text(f'wrk.method = "POST"\nwrk.body = {body}\nwrk.headers["Content-Type"] = "application/json"\n'
                      + headers +
                      "done = function(summary, latency, requests)\n"
                      f'  local f = io.open("{report}", "w")\n'
                      '  f:write(string.format(\'{"requests": %d, "seconds": %f, "errors": %d, "p50": %f, '
                      '"p99": %f}\', summary.requests, summary.duration / 1e6, summary.errors.status '
                      "+ summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout, "
                      "latency:percentile(50), latency:percentile(99)))\n  f:close()\nend\n")
    url = f"http://{address}/v2/models/iris/infer"
    subprocess.run(["wrk", "-t1", f"-c{concurrency}", "-d1s", "-s", str(script), url], capture_output=True, check=True)
    subprocess.run(["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(duration))}s", "-s", str(script), url],
                   capture_output=True, check=True)
    r = json.loads(report.read_text())
    return {"rps": r["requests"] / r["seconds"], "p50_ms": r["p50"] / 1e3, "p99_ms": r["p99"] / 1e3,
            "requests": r["requests"], "errors": r["errors"]}


def load_main(args: argparse.Namespace) -> int:
    try:
        import uvloop
        run: Any = uvloop.run
    except ImportError:
        run = asyncio.run
    extra = json.loads(args.headers or "{}")
    if args.load == "grpc":
        result = run(_grpc_load(args.address, int(args.concurrency), args.duration, extra))
    else:
        result = run(_rest_load(args.address, int(args.concurrency), args.duration, extra))
    print(json.dumps(result))
    return 0


# ---- orchestration ----

def _wait_http(url: str, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit(f"{url} not ready after {timeout:.0f}s")


def _cpu(pid: int) -> float:
    """CPU seconds used so far by ``pid`` and its children (MLServer's workers included)."""
    import psutil

    proc = psutil.Process(pid)
    total = 0.0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            times = p.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


def _phase(protocol: str, address: str, concurrency: int, args: argparse.Namespace, workdir: Path,
           extra: dict[str, str]) -> Result:
    if protocol == "rest" and args.client == "wrk":
        return _wrk_load(address, concurrency, args.duration, workdir, extra)
    cmd = [sys.executable, __file__, "--load", protocol, "--address", address, "--concurrency",
           str(concurrency), "--duration", str(args.duration), "--headers", json.dumps(extra)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=args.duration + 60)
    if out.returncode != 0:
        raise SystemExit(f"load generator failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def pin(pid: int, cpus: set[int]) -> None:
    """Run ``pid`` and its children on ``cpus``, every thread of each (Linux ``sched_setaffinity`` applies to
    the one thread whose id it is given: the process's id alone pins its main thread and leaves the threads it
    has already started, such as MLServer's gRPC threads, on every CPU)."""
    import psutil

    proc = psutil.Process(pid)
    for p in [proc, *proc.children(recursive=True)]:
        try:
            for thread in p.threads():
                with contextlib.suppress(ProcessLookupError):
                    os.sched_setaffinity(thread.id, cpus)
        except psutil.NoSuchProcess:
            continue


def start_mlserver(workdir: Path) -> tuple[Any, str]:
    """A real MLServer holding the iris model (loaded through its repository API); it and its gRPC address."""
    import httpx

    from berth.adapters.mlserver_proc import MLServerProcess

    mlserver = MLServerProcess(workdir / "mlserver")
    mlserver.start()
    mlserver.wait_ready(120)
    folder = train_sklearn(mlserver.repository / "iris")
    (folder / "model-settings.json").write_text(json.dumps({
        "name": "iris", "implementation": "mlserver_sklearn.SKLearnModel", "parameters": {"uri": "./model.joblib"}}))
    r = httpx.post(f"http://{mlserver.http_address}/v2/repository/models/iris/load", timeout=120)
    if r.status_code != 200:
        raise SystemExit(f"MLServer did not load the model: {r.text}")
    return mlserver, f"127.0.0.1:{mlserver.grpc_port}"


def start_gateway(routes: Path, workdir: Path, name: str, src: str | None = None,
                  command: list[str] | None = None) -> tuple[subprocess.Popen[bytes], str, str]:
    """``berth gateway`` serving the static table ``routes``, from this tree or from the source tree ``src``
    (``PYTHONPATH=src``, e.g. a copy of ``src/`` taken before a change); the process and its REST and gRPC
    addresses.  ``command`` runs it under another program (a profiler) instead of plain ``python -m``."""
    from berth.adapters.mlserver_proc import free_ports

    rest_port, grpc_port = free_ports(2)
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src
    args = ["gateway", "--host", "127.0.0.1", "--port", str(rest_port), "--grpc-port", str(grpc_port), "--control",
            "", "--routes", str(routes), "--log-level", "WARNING"]
    log = open(workdir / f"gateway-{name}.log", "wb")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen([*(command or [sys.executable, "-m", "berth.main"]), *args], stdout=log,
                            stderr=subprocess.STDOUT, cwd=str(ROOT), env=env)
    _wait_http(f"http://127.0.0.1:{rest_port}/v2/health/ready", 60)
    return proc, f"127.0.0.1:{rest_port}", f"127.0.0.1:{grpc_port}"


def _start(workdir: Path, token: str, sources: dict[str, str | None],
           pinned: bool = False) -> tuple[Any, dict[str, Any], dict[str, str]]:
    """MLServer, and one gateway per entry of ``sources`` (name -> source tree, None: this one) in front of it;
    the addresses of every phase (``"grpc direct"``, ``"rest gateway+auth"``, ...)."""
    from berth.resources.identity import hash_token
    from berth.wire.routes import Endpoint, ModelRoute, NamespaceAuth, RoutingTable, TableAuth

    mlserver, grpc_direct = start_mlserver(workdir)
    if pinned:
        cpus = sorted(os.sched_getaffinity(0))
        pin(os.getpid(), set(cpus[:-1]))  # this process, and so every child started from now on
        pin(mlserver.process.pid, {cpus[-1]})
    endpoints = [Endpoint(server="mlserver", replica=0, http=mlserver.http_address, grpc=grpc_direct)]
    # the same replica in an open namespace and in one whose table entry requires a token (which a few
    # other tenants' and operators' tokens share with it, as in a real table)
    others = [hash_token(f"berth_other-tenant-{i}") for i in range(20)]
    table = RoutingTable(revision=1, models=[
        ModelRoute(namespace=ns, name="iris", state="ModelAvailable", endpoints=endpoints)
        for ns in ("default", GUARDED)
    ], auth=TableAuth(namespaces=[NamespaceAuth(namespace=GUARDED, tokens=[hash_token(token), *others[:10]]),
                                  NamespaceAuth(namespace="elsewhere", tokens=others[10:])],
                      everywhere=others[:2], operators=others[:1]))
    routes = workdir / "routes.json"
    routes.write_text(table.model_dump_json())
    addresses = {"rest direct": mlserver.http_address, "grpc direct": grpc_direct}
    gateways: dict[str, Any] = {}
    try:
        for name, src in sources.items():
            proc, rest, grpc = start_gateway(routes, workdir, name, src)
            gateways[name] = proc
            for protocol, address in (("rest", rest), ("grpc", grpc)):
                addresses[f"{protocol} {name}"] = addresses[f"{protocol} {name}+auth"] = address
    except BaseException:
        _stop(mlserver, gateways)
        raise
    return mlserver, gateways, addresses


def _stop(mlserver: Any, gateways: dict[str, Any]) -> None:
    for proc in gateways.values():
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    mlserver.stop()


def bench_main(args: argparse.Namespace) -> int:
    if args.client == "auto":
        args.client = "wrk" if shutil.which("wrk") else "python"
    from berth.resources.identity import new_token

    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    levels = [int(c) for c in str(args.concurrency).split(",") if c.strip()]
    sources: dict[str, str | None] = {"gateway": None}
    if args.gateway_src:
        sources[BASE] = str(Path(args.gateway_src).resolve())
    vias = ["direct", *(f"{name}{suffix}" for name in sources for suffix in ("", "+auth") if args.auth or not suffix)]
    token = new_token()
    # every phase sends the same headers, so the load generator does the same work in each: the token, and a
    # namespace (the open "default" one, where the gateway ignores the token, or the guarded one)
    extras = {via: {"seldon-namespace": GUARDED if via.endswith("+auth") else "default",
                    "Authorization": f"Bearer {token}"} for via in vias}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if args.pin and len(os.sched_getaffinity(0)) < 2:
            raise SystemExit("--pin needs at least 2 CPUs")
        mlserver, gateways, addresses = _start(workdir, token, sources, args.pin)
        results: dict[tuple[str, int, str], list[Result]] = {}
        try:
            print(f"{args.rounds} rounds x {args.duration:g}s per phase, concurrency {levels}, "
                  f"REST client {args.client}, gRPC client grpc.aio, {os.cpu_count()} CPUs, phases {', '.join(vias)}"
                  + (f"; {BASE}: the gateway from {sources[BASE]}" if args.gateway_src else "")
                  + ("; pinned: MLServer on the last CPU, the rest on the others" if args.pin else ""))
            for rnd in range(args.rounds):
                for protocol in protocols:
                    for level in levels:
                        # each round starts at another phase, so a drift in the machine's load is not
                        # always paid by the same one
                        for via in vias[rnd % len(vias):] + vias[:rnd % len(vias)]:
                            gateway = gateways[via.split("+")[0]] if via != "direct" else None
                            before = _cpu(gateway.pid) if gateway else 0.0, _cpu(mlserver.process.pid)
                            r = _phase(protocol, addresses[f"{protocol} {via}"], level, args, workdir, extras[via])
                            gw_cpu = _cpu(gateway.pid) - before[0] if gateway else 0.0
                            ml_cpu = _cpu(mlserver.process.pid) - before[1]
                            r["gateway_cpu_us"] = gw_cpu / max(r["requests"], 1) * 1e6
                            r["mlserver_cpu_us"] = ml_cpu / max(r["requests"], 1) * 1e6
                            results.setdefault((protocol, level, via), []).append(r)
                            print(f"  round {rnd + 1} {protocol:4} c={level:<3} {via:12} {r['rps']:9.1f} req/s  "
                                  f"p50 {r['p50_ms']:7.3f} ms  p99 {r['p99_ms']:7.3f} ms  errors {int(r['errors'])}  "
                                  f"CPU/request: MLServer {r['mlserver_cpu_us']:5.0f} us"
                                  + (f", gateway {r['gateway_cpu_us']:4.0f} us" if gateway else ""), flush=True)
        finally:
            _stop(mlserver, gateways)
    print(f"\nmedians over {args.rounds} rounds{'':16}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}")
    for protocol in protocols:
        for level in levels:
            med = {via: {k: statistics.median(r[k] for r in results[(protocol, level, via)])
                         for k in ("rps", "p50_ms", "p99_ms", "gateway_cpu_us")} for via in vias}
            for via in vias:
                m = med[via]
                print(f"  {protocol:4} c={level:<3} {via:26}{m['rps']:10.1f}{m['p50_ms']:10.3f}{m['p99_ms']:10.3f}")
            for via in vias[1:]:
                ratio = med[via]["rps"] / med["direct"]["rps"]
                added = med[via]["p50_ms"] - med["direct"]["p50_ms"]
                print(f"  {protocol:4} c={level:<3} {via}/direct throughput {ratio:.3f} (goal >= 0.95), added p50 "
                      f"{added:+.3f} ms (goal <= 0.5), gateway CPU {med[via]['gateway_cpu_us']:.0f} us/request")
            if args.gateway_src:
                _side_by_side(protocol, level, vias, results)
    return 0


def _side_by_side(protocol: str, level: int, vias: list[str],
                  results: dict[tuple[str, int, str], list[Result]]) -> None:
    """This tree's gateway and the --gateway-src one, against the same MLServer in the same rounds: each round's
    ratio to that round's direct phase (the pairs closest in time), their medians, and this ÷ base."""
    for suffix in ("", "+auth"):
        mine, base = f"gateway{suffix}", f"{BASE}{suffix}"
        if mine not in vias:
            continue
        direct = results[(protocol, level, "direct")]
        ours = [r["rps"] / d["rps"] for r, d in zip(results[(protocol, level, mine)], direct, strict=True)]
        theirs = [r["rps"] / d["rps"] for r, d in zip(results[(protocol, level, base)], direct, strict=True)]
        cpu = [statistics.median(r["gateway_cpu_us"] for r in results[(protocol, level, v)]) for v in (mine, base)]
        print(f"  {protocol:4} c={level:<3} side by side{suffix}: per-round ratio to direct, this tree "
              f"{' '.join(f'{x:.3f}' for x in ours)} (median {statistics.median(ours):.3f}), {BASE} "
              f"{' '.join(f'{x:.3f}' for x in theirs)} (median {statistics.median(theirs):.3f}); this ÷ {BASE} "
              f"throughput {statistics.median(ours) / statistics.median(theirs):.3f}, gateway CPU {cpu[0]:.0f} vs "
              f"{cpu[1]:.0f} us/request ({cpu[0] / cpu[1]:.3f})")


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument("--concurrency", default="1,8", help="requests in flight; a comma list runs each level")
    parser.add_argument("--rounds", type=int, default=2, help="direct/gateway(/gateway+auth) rounds per protocol")
    parser.add_argument("--protocols", default="rest,grpc")
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto",
                        help="REST load generator (auto: wrk when installed)")
    parser.add_argument("--auth", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure a namespace that requires a token, with a valid one on every request")
    parser.add_argument("--gateway-src", metavar="DIR",
                        help="also run a second gateway from this source tree (a copy of src/, e.g. the code before a "
                             "change) against the same MLServer, as phase 'base' alternating round by round with this "
                             "tree's, and print both ratios to direct side by side")
    parser.add_argument("--pin", action="store_true",
                        help="MLServer on the last CPU, gateways and load generator on the others (see above)")
    parser.add_argument("--load", choices=("rest", "grpc"), help=argparse.SUPPRESS)
    parser.add_argument("--headers", help=argparse.SUPPRESS)
    parser.add_argument("--address", help=argparse.SUPPRESS)
    args = parser.parse_args()
    return load_main(args) if args.load else bench_main(args)


if __name__ == "__main__":
    raise SystemExit(main())
