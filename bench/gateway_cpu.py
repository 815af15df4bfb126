"""The gateway's own CPU per call, REST and gRPC, against a stand-in inference server; optionally two gateway
builds side by side (A/B), so a change's cost is measured in the same conditions as its baseline.

A stand-in upstream process answers every V2 infer at once with a fixed answer (REST: HTTP/1.1 keep-alive;
gRPC: HTTP/2), so the gateway is the only real work on the path and its process's CPU time (user + system,
psutil) divided by the calls it passed is its cost per call.  With ``--before SRC`` a second gateway runs from
another source tree (``PYTHONPATH=SRC``, e.g. a copy of ``src/`` taken before a change) and the phases
alternate between the two, ``--rounds`` times, so a busy machine slows both alike.  The load generators are
bench/gateway.py's (wrk for REST, grpc.aio with a pre-encoded request for gRPC).

    .venv/bin/python bench/gateway_cpu.py [--before /tmp/src_before] [--duration 5] [--concurrency 8]
                                          [--rounds 3] [--protocols rest,grpc]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import gateway as bench  # noqa: E402  (bench/gateway.py: load generators, CPU reading)

_REST_ANSWER = json.dumps({"model_name": "iris", "id": "1", "parameters": {}, "outputs": [
    {"name": "predict", "shape": [2, 1], "datatype": "INT64", "parameters": {"content_type": "np"},
     "data": [0, 1]}]}).encode()


# ---- the stand-in inference server (its own process) ----

class _Rest(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in self.buf[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buf) < end + 4 + length:
                return
            self.buf = self.buf[end + 4 + length:]
            assert self.transport is not None
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                                 + str(len(_REST_ANSWER)).encode() + b"\r\n\r\n" + _REST_ANSWER)


async def _serve_upstream(rest_port: int, grpc_port: int) -> None:
    from mlserver.grpc import dataplane_pb2 as pb

    from berth.gateway.http2.frames import Stream
    from berth.gateway.http2.server import ServerConnection
    from berth.gateway.transports.grpcmessages import framed

    output = pb.ModelInferResponse.InferOutputTensor(name="predict", datatype="INT64", shape=[2, 1],
                                                     contents=pb.InferTensorContents(int64_contents=[0, 1]))
    answer = framed(pb.ModelInferResponse(model_name="iris", id="1", outputs=[output]).SerializeToString())
    head = [(b":status", b"200"), (b"content-type", b"application/grpc")]
    trailers = [(b"grpc-status", b"0")]

    def handle(conn: ServerConnection, stream: Stream) -> None:
        conn.respond(stream, head, answer, trailers)

    loop = asyncio.get_running_loop()
    await loop.create_server(_Rest, "127.0.0.1", rest_port)
    await loop.create_server(lambda: ServerConnection(handle), "127.0.0.1", grpc_port)
    print("ready", flush=True)
    await asyncio.Event().wait()


# ---- orchestration ----

def _gateway(src: str | None, routes: Path, workdir: Path, name: str) -> tuple[subprocess.Popen[bytes], str, str]:
    from berth.adapters.mlserver_proc import free_ports

    rest_port, grpc_port = free_ports(2)
    env = dict(os.environ)
    if src:
        env["PYTHONPATH"] = src
    log = open(workdir / f"gateway-{name}.log", "wb")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen([sys.executable, "-m", "berth.main", "gateway", "--host", "127.0.0.1", "--port",
                             str(rest_port), "--grpc-port", str(grpc_port), "--control", "", "--routes", str(routes),
                             "--log-level", "WARNING"], stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT), env=env)
    bench._wait_http(f"http://127.0.0.1:{rest_port}/v2/health/ready", 30)
    return proc, f"127.0.0.1:{rest_port}", f"127.0.0.1:{grpc_port}"


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--before", help="a source tree (a copy of src/) to run the baseline gateway from")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--protocols", default="rest,grpc")
    parser.add_argument("--upstream", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.upstream:
        try:
            import uvloop
            uvloop.run(_serve_upstream(*args.upstream))
        except ImportError:
            asyncio.run(_serve_upstream(*args.upstream))
        return 0
    from berth.adapters.mlserver_proc import free_ports
    from berth.wire.routes import Endpoint, ModelRoute, RoutingTable

    args.client = "wrk" if shutil.which("wrk") else "python"
    protocols = [p.strip() for p in args.protocols.split(",") if p.strip()]
    variants = {"before": args.before, "after": None} if args.before else {"after": None}
    procs: list[subprocess.Popen[Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        rest_port, grpc_port = free_ports(2)
        upstream = subprocess.Popen([sys.executable, __file__, "--upstream", str(rest_port), str(grpc_port)],
                                    stdout=subprocess.PIPE, text=True)
        procs.append(upstream)
        try:
            assert upstream.stdout is not None and upstream.stdout.readline().strip() == "ready"
            table = RoutingTable(revision=1, models=[ModelRoute(namespace="default", name="iris",
                                                                state="ModelAvailable", endpoints=[Endpoint(
                                                                    server="stand-in", replica=0,
                                                                    http=f"127.0.0.1:{rest_port}",
                                                                    grpc=f"127.0.0.1:{grpc_port}")])])
            routes = workdir / "routes.json"
            routes.write_text(table.model_dump_json())
            gateways = {}
            for name, src in variants.items():
                proc, rest, grpc = _gateway(src, routes, workdir, name)
                procs.append(proc)
                gateways[name] = (proc, {"rest": rest, "grpc": grpc})
            sources = ", ".join(f"{n} ({s or 'this tree'})" for n, s in variants.items())
            print(f"{args.rounds} rounds x {args.duration:g}s per phase, concurrency {args.concurrency}, "
                  f"{os.cpu_count()} CPUs, gateways: {sources}")
            results: dict[tuple[str, str], list[float]] = {}
            for protocol in protocols:
                for r in range(args.rounds):
                    order = list(variants) if r % 2 == 0 else list(reversed(variants))
                    for name in order:
                        proc, addresses = gateways[name]
                        before = bench._cpu(proc.pid)
                        res = bench._phase(protocol, addresses[protocol], args.concurrency, args, workdir,
                                           {"seldon-namespace": "default"})
                        us = (bench._cpu(proc.pid) - before) / max(res["requests"], 1) * 1e6
                        results.setdefault((protocol, name), []).append(us)
                        print(f"  round {r + 1} {protocol:4} {name:6} {res['rps']:8.1f} req/s  errors "
                              f"{res['errors']:.0f}  gateway CPU {us:6.1f} us/call", flush=True)
            print("medians")
            for protocol in protocols:
                line = f"  {protocol:4}"
                for name in variants:
                    line += f"  {name} {statistics.median(results[(protocol, name)]):6.1f} us/call"
                if args.before:
                    ratio = statistics.median(results[(protocol, "after")]) / statistics.median(
                        results[(protocol, "before")])
                    line += f"  after/before {ratio:.3f}"
                print(line)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
