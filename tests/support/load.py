"""Steady V2 traffic through a gateway for end-to-end tests: REST threads (httpx) and, given the gateway's gRPC
address, gRPC threads, each sending the iris request back to back until the block ends.  Every answer is
counted per protocol, every failure kept as one line, and (``record=True``) every answer kept as
``(sent, answered, model_name, outputs)`` so a test can tell which version answered when."""

from __future__ import annotations

import threading
import time
from types import TracebackType

import httpx

from tests.support.models import IRIS_INPUT

Row = tuple[float, float, str, list[int]]


class Traffic:
    """``with Traffic(gateway_url, model, ...) as traffic:`` runs the clients for the block's duration."""

    def __init__(self, gateway_url: str, model: str, *, namespace: str | None = None, rest_threads: int = 3,
                 grpc_address: str | None = None, grpc_threads: int = 0, pause: float = 0.005,
                 timeout: float = 10.0, record: bool = False) -> None:
        self.url = f"{gateway_url}/v2/models/{model}/infer"
        self.model = model
        self.headers = {"seldon-namespace": namespace} if namespace else {}
        self.pause = pause
        self.timeout = timeout
        self.record = record
        self.ok = 0  # REST answers with 200
        self.grpc_ok = 0
        self.failures: list[str] = []
        self.rows: list[Row] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run_rest, daemon=True) for _ in range(rest_threads)]
        if grpc_address is not None:
            self._threads += [threading.Thread(target=self._run_grpc, args=(grpc_address,), daemon=True)
                              for _ in range(grpc_threads)]

    @property
    def answers(self) -> int:
        return self.ok + self.grpc_ok

    def since(self, t: float) -> list[Row]:
        """The recorded answers to requests sent at or after ``t`` (``time.monotonic()``)."""
        return [r for r in list(self.rows) if r[0] >= t]

    def _answered(self, grpc: bool, row: Row) -> None:
        with self._lock:
            if grpc:
                self.grpc_ok += 1
            else:
                self.ok += 1
            if self.record:
                self.rows.append(row)

    def _run_rest(self) -> None:
        with httpx.Client(timeout=self.timeout) as client:
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    r = client.post(self.url, json=IRIS_INPUT, headers=self.headers)
                except httpx.HTTPError as exc:
                    self.failures.append(f"REST {type(exc).__name__}: {exc}")
                else:
                    if r.status_code != 200:
                        self.failures.append(f"REST HTTP {r.status_code}: {r.text[:300]}")
                    elif self.record:
                        body = r.json()
                        self._answered(False, (sent, time.monotonic(), body["model_name"],
                                               [int(v) for v in body["outputs"][0]["data"]]))
                    else:
                        self._answered(False, (sent, 0.0, "", []))
                if self.pause:
                    self._stop.wait(self.pause)

    def _run_grpc(self, address: str) -> None:
        import grpc
        import numpy as np
        from mlserver.grpc import dataplane_pb2_grpc as pb_grpc

        from tests.e2e.test_gateway_grpc import infer_request

        request = infer_request(self.model)
        metadata = tuple(self.headers.items())
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            while not self._stop.is_set():
                sent = time.monotonic()
                try:
                    resp = stub.ModelInfer(request, metadata=metadata, timeout=self.timeout)
                except grpc.RpcError as exc:
                    self.failures.append(f"gRPC {exc.code()}: {exc.details()}")
                else:
                    values: list[int] = []
                    if self.record:
                        raw = resp.raw_output_contents
                        values = [int(v) for v in (np.frombuffer(raw[0], dtype=np.int64).tolist() if raw
                                                   else resp.outputs[0].contents.int64_contents)]
                    self._answered(True, (sent, time.monotonic(), resp.model_name, values))
                if self.pause:
                    self._stop.wait(self.pause)

    def __enter__(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)
