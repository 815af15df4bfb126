"""The gateway's gRPC path in one process, without sockets: the CPU of its Python code per unary call.

A real :class:`GrpcGateway` (router, balancer, metrics, forwarding core, HTTP/2 cores and their asyncio adapters)
runs on uvloop; only the two sockets are replaced by in-memory transports.  The client's bytes are what a gRPC
client sends (HPACK with a dynamic table, encoded beforehand by python-hyper's ``h2``/``hpack``, metadata as
grpc.aio sends it), fed ``--concurrency`` calls at a time; the upstream answers every request at once (on the next
loop iteration) with bytes also encoded beforehand, as a gRPC server writes them.  What is measured is the
process's CPU time per call: the gateway's work and a small fixed share for the harness (scanning the frames the
gateway writes, to count answers), never the network or another process, so two trees or two versions of one
function compare to within a few percent on a busy machine.  ``--profile`` prints cProfile's view instead.

    .venv/bin/python bench/grpc_path.py [--calls 20000] [--concurrency 8] [--rounds 5] [--profile]
                                        [--before /tmp/src_before]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

UPSTREAM = "127.0.0.1:1"  # never dialled: the connection is put in place by hand
_HEAD = struct.Struct(">BHBBL")
END_STREAM, HEADERS, DATA = 0x1, 1, 0


class Sink:
    """A transport that hands what is written to a function (asyncio's write buffer is always empty)."""

    def __init__(self, on_write: Any) -> None:
        self.on_write = on_write
        self.closed = False

    def write(self, data: bytes) -> None:
        self.on_write(data)

    def get_write_buffer_size(self) -> int:
        return 0

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def _ended(data: bytes, ftype: int) -> list[int]:
    """Stream ids of the frames of type ``ftype`` with END_STREAM in ``data`` (whole frames, as the gateway writes)."""
    sids = []
    pos, end = 0, len(data)
    while pos + 9 <= end:
        hi, lo, kind, flags, sid = _HEAD.unpack_from(data, pos)
        if kind == ftype and flags & END_STREAM:
            sids.append(sid & 0x7FFFFFFF)
        pos += 9 + (hi << 16 | lo)
    return sids


def _client_bytes(calls: int) -> tuple[bytes, list[bytes]]:
    """The preface (settings, a large window) and each call's HEADERS + DATA, as a gRPC client sends them."""
    import h2.config
    import h2.connection
    import h2.settings
    from bench.gateway import _grpc_request

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.local_settings = h2.settings.Settings(client=True, initial_values={
        h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 1 << 30, h2.settings.SettingCodes.ENABLE_PUSH: 0})
    conn.initiate_connection()
    conn.increment_flow_control_window((1 << 31) - 1 - 65535)
    preface = conn.data_to_send()
    # the gateway's greeting, as far as the client's send windows go (its receive windows are larger than needed)
    conn.receive_data(_HEAD.pack(0, 6, 4, 0, 0) + struct.pack(">HL", 4, 1 << 24)
                      + _HEAD.pack(0, 4, 8, 0, 0) + struct.pack(">L", 1 << 30))
    conn.data_to_send()  # (its acknowledgement: the gateway does not wait for it)
    body = _grpc_request()
    message = b"\x00" + len(body).to_bytes(4, "big") + body
    head = [(b":scheme", b"http"), (b":method", b"POST"), (b":authority", b"127.0.0.1:50051"),
            (b":path", b"/inference.GRPCInferenceService/ModelInfer"), (b"te", b"trailers"),
            (b"content-type", b"application/grpc"), (b"user-agent", b"grpc-python-asyncio/1.85.3 grpc-c/51.0.0"),
            (b"grpc-accept-encoding", b"identity, deflate, gzip"), (b"grpc-timeout", b"29999926u"),
            (b"seldon-namespace", b"default")]
    out = []
    for i in range(calls):
        sid = 1 + 2 * i
        conn.send_headers(sid, head)
        conn.send_data(sid, message, end_stream=True)
        out.append(conn.data_to_send())
        conn.streams.pop(sid, None)  # (h2 keeps closed streams around; the encoder's table is what matters)
    return preface, out


def _upstream_bytes(calls: int) -> tuple[bytes, list[bytes]]:
    """The inference server's settings and window, and each answer (HEADERS, DATA, trailers), HPACK with a
    dynamic table as a gRPC server encodes them."""
    import hpack
    from mlserver.grpc import dataplane_pb2 as pb

    def frame(ftype: int, flags: int, sid: int, payload: bytes = b"") -> bytes:
        return _HEAD.pack(len(payload) >> 16, len(payload) & 0xFFFF, ftype, flags, sid) + payload

    output = pb.ModelInferResponse.InferOutputTensor(name="predict", datatype="INT64", shape=[2, 1],
                                                     contents=pb.InferTensorContents(int64_contents=[0, 1]))
    answer = pb.ModelInferResponse(model_name="iris", id="1", outputs=[output]).SerializeToString()
    message = b"\x00" + len(answer).to_bytes(4, "big") + answer
    encoder = hpack.Encoder()
    greeting = frame(4, 0, 0, struct.pack(">HL", 3, 1000) + struct.pack(">HL", 4, 1 << 30)) + frame(
        8, 0, 0, struct.pack(">L", (1 << 31) - 1 - 65535)) + frame(4, 1, 0)
    out = []
    for i in range(calls):
        sid = 1 + 2 * i
        head = encoder.encode([(b":status", b"200"), (b"content-type", b"application/grpc"),
                               (b"grpc-accept-encoding", b"identity, deflate, gzip")])
        trailers = encoder.encode([(b"grpc-status", b"0"), (b"grpc-message", b"")])
        out.append(frame(HEADERS, 4, sid, head) + frame(DATA, 0, sid, message) + frame(HEADERS, 5, sid, trailers))
    return greeting, out


def _round(table: Any, client: tuple[bytes, list[bytes]], upstream_bytes: tuple[bytes, list[bytes]],
           concurrency: int, profile: bool) -> float:
    """One gateway on a fresh loop, every call of ``client`` through it; the CPU microseconds per call."""
    import uvloop

    from berth.gateway.metrics import Metrics

    try:
        from berth.gateway.forwarding.balance import Balancer
        from berth.gateway.forwarding.mirror import Mirrors
        from berth.gateway.http2.client import ClientConnection
        from berth.gateway.routing.router import Router
        from berth.gateway.transports.grpcserver import GrpcGateway
    except ImportError:  # a tree from before the gateway's folders (--before: the code of 2026-11-29)
        from berth.gateway.balance import Balancer  # type: ignore[no-redef]
        from berth.gateway.grpcserver import GrpcGateway  # type: ignore[no-redef]
        from berth.gateway.h2client import ClientConnection  # type: ignore[no-redef]
        from berth.gateway.mirror import Mirrors  # type: ignore[no-redef]

        from berth.gateway.routing import Router  # type: ignore[attr-defined,no-redef,unused-ignore]  # noqa: I001

    client_preface, requests = client
    upstream_greeting, answers = upstream_bytes
    calls = len(requests)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    metrics = Metrics()
    gateway = GrpcGateway(Router(table), Balancer(), metrics, Mirrors(metrics))
    state = {"answered": 0, "sent": 0, "target": 0}
    done: list[asyncio.Future[None]] = []
    upstream = ClientConnection(UPSTREAM)

    def from_gateway(data: bytes) -> None:  # to the inference server: answer each whole request
        for _ in _ended(data, DATA):
            loop.call_soon(upstream.data_received, answers[state["sent"]])
            state["sent"] += 1

    def to_client(data: bytes) -> None:
        state["answered"] += len(_ended(data, HEADERS))
        if done and state["answered"] >= state["target"]:
            done.pop().set_result(None)

    upstream.connection_made(Sink(from_gateway))  # type: ignore[arg-type]
    upstream.data_received(upstream_greeting)
    upstream.coalesce = getattr(gateway, "coalesce_writes", False)  # (as Upstreams opens them)
    gateway.upstreams._conns[UPSTREAM] = upstream
    server = gateway.connection()
    server.connection_made(Sink(to_client))  # type: ignore[arg-type]
    server.data_received(client_preface)
    upstream.loop = server.loop = loop  # (connected outside the loop: as if inside it; older trees ignore it)

    async def drive() -> None:
        for start in range(0, calls, concurrency):
            batch = requests[start:start + concurrency]
            state["target"] = start + len(batch)
            finished = loop.create_future()
            done.append(finished)
            for chunk in batch:
                server.data_received(chunk)
            await finished

    cpu = time.process_time()
    if profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
        loop.run_until_complete(drive())
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(45)
        pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
    else:
        loop.run_until_complete(drive())
    used = (time.process_time() - cpu) / calls * 1e6
    assert state["answered"] == calls, state
    server.connection_lost(None)
    loop.close()
    return used


def run(calls: int, concurrency: int, rounds: int, profile: bool) -> list[float]:
    from berth.wire.routes import Endpoint, ModelRoute, RoutingTable

    client = _client_bytes(calls)
    upstream = _upstream_bytes(calls)
    table = RoutingTable(revision=1, models=[ModelRoute(namespace="default", name="iris", state="ModelAvailable",
                                                        endpoints=[Endpoint(server="stand-in", replica=0,
                                                                            http="127.0.0.1:2", grpc=UPSTREAM)])])
    return [_round(table, client, upstream, concurrency, profile) for _ in range(1 if profile else rounds)]


def _one(src: str | None, args: argparse.Namespace) -> float:
    """One round in a fresh process running the gateway from ``src`` (None: this tree)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([src or str(ROOT / "src"), str(ROOT)])
    out = subprocess.run([sys.executable, __file__, "--calls", str(args.calls), "--concurrency",
                          str(args.concurrency), "--rounds", "1"], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.rsplit("median ", 1)[1].split()[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--before", help="a source tree (a copy of src/) to compare with, round by round in "
                                         "alternating fresh processes")
    args = parser.parse_args()
    if args.before:
        results: dict[str, list[float]] = {"before": [], "after": []}
        for r in range(args.rounds):
            for name in (("before", "after") if r % 2 == 0 else ("after", "before")):
                results[name].append(_one(args.before if name == "before" else None, args))
                print(f"  round {r + 1} {name:6} {results[name][-1]:6.1f} us/call", flush=True)
        before, after = (statistics.median(results[n]) for n in ("before", "after"))
        print(f"gRPC unary path in process, medians: before {before:.1f} us/call, after {after:.1f} us/call, "
              f"after/before {after / before:.3f}; best of each: {min(results['before']):.1f}, "
              f"{min(results['after']):.1f} ({min(results['after']) / min(results['before']):.3f})")
        return 0
    figures = run(args.calls, args.concurrency, args.rounds, args.profile)
    print(f"gRPC unary path in process: {' '.join(f'{f:.1f}' for f in figures)} us/call; median "
          f"{statistics.median(figures):.1f} us/call ({args.calls} calls, {args.concurrency} at a time)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
