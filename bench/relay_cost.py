"""The agent's relay (berth.agent.relay): what it adds to one inference request, against MLServer directly.

Starts a real MLServer on loopback with the iris model loaded, and the agent's relay (on uvloop, as the agent
runs it) in a thread of this process, listening on another loopback port and forwarding to MLServer.  Then,
in alternating rounds so both see the same machine load, sends ``--requests`` V2 infer requests one at a time
over one keep-alive connection (http.client) to MLServer directly and through the relay, and prints per-request
latency medians (and p90), the ratio relayed ÷ direct, and the difference: the relay's cost per request.
``--connect`` also measures a new connection per request (the relay dials MLServer for each).

    .venv/bin/python bench/relay_cost.py [--requests 500] [--rounds 5] [--connect]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.gateway import start_mlserver  # noqa: E402
from tests.support.models import IRIS_INPUT  # noqa: E402

from berth.agent.relay import Relay  # noqa: E402


def relay_thread(target_port: int) -> tuple[int, Relay, asyncio.AbstractEventLoop]:
    try:
        import uvloop
        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    relay = Relay("127.0.0.1", 0, "127.0.0.1", target_port, name="bench relay")
    threading.Thread(target=loop.run_forever, daemon=True).start()
    port = asyncio.run_coroutine_threadsafe(relay.start(), loop).result(10)
    return port, relay, loop


def round_of(port: int, n: int, fresh: bool) -> list[float]:
    """``n`` infer requests, one at a time (http.client: the least client-side work, so the relay's share shows)."""
    body = json.dumps(IRIS_INPUT).encode()
    headers = {"Content-Type": "application/json"}
    path = "/v2/models/iris/infer"
    times: list[float] = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body, headers)  # warm the connection
        conn.getresponse().read()
        for _ in range(n):
            started = time.perf_counter()
            if fresh:
                once = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                once.request("POST", path, body, headers)
                answer = once.getresponse()
                answer.read()
                once.close()
            else:
                conn.request("POST", path, body, headers)
                answer = conn.getresponse()
                answer.read()
            times.append(time.perf_counter() - started)
            if answer.status != 200:
                raise SystemExit(f"HTTP {answer.status} from port {port}")
    finally:
        conn.close()
    return times


def p90(xs: list[float]) -> float:
    return sorted(xs)[int(len(xs) * 0.9)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--connect", action="store_true", help="also: a new connection per request")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # a timeout's SIGTERM still stops MLServer (finally)
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        proc = start_mlserver(Path(tmp) / "mlserver", "iris")
        relayed_port, relay, loop = relay_thread(proc.http_port)
        try:
            for fresh in ([False, True] if args.connect else [False]):
                direct: list[float] = []
                relayed: list[float] = []
                for _ in range(args.rounds):  # alternate, so both see the same load
                    direct += round_of(proc.http_port, args.requests, fresh)
                    relayed += round_of(relayed_port, args.requests, fresh)
                d, r = statistics.median(direct), statistics.median(relayed)
                what = "new connection per request" if fresh else "one keep-alive connection"
                print(f"\n{what}: {len(direct)} requests each way")
                print(f"  direct to MLServer   median {d * 1e6:8.0f} µs   p90 {p90(direct) * 1e6:8.0f} µs")
                print(f"  through the relay    median {r * 1e6:8.0f} µs   p90 {p90(relayed) * 1e6:8.0f} µs")
                print(f"  relayed / direct     {r / d:.3f}   relay's cost per request {(r - d) * 1e6:+.0f} µs (median)")
            print(f"\nrelay: {relay.stats}")
        finally:
            asyncio.run_coroutine_threadsafe(relay.close(), loop).result(10)
            loop.call_soon_threadsafe(loop.stop)
            proc.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
