"""Client of one MLServer: readiness, model repository (index, load, unload), model metadata, memory.

Loads go through the V2 gRPC repository extension when ``grpcio`` is importable, because MLServer's REST
load answers a bare ``500 Internal Server Error`` for a model whose runtime raised, while gRPC carries the
runtime's own message; without grpcio (or with the gRPC port unreachable) the REST API is used.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

import httpx
import psutil

from berth.errors import LoadError, Unavailable

log = logging.getLogger("berth.adapters.mlserver")

_GRPC_SERVICE = "/inference.GRPCInferenceService"


@dataclass(frozen=True)
class Probe:
    """One readiness answer: ``error`` is None when ready."""

    url: str
    error: str | None


def connect_error_text(exc: BaseException) -> str:
    """Short cause of a failed connection: ``connection refused``, ``cannot resolve host``, ..."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cur, socket.gaierror):
            return f"cannot resolve host: {cur.strerror or cur}"
        cur = cur.__cause__ or cur.__context__
    return str(exc) or type(exc).__name__


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _model_name_request(name: str) -> bytes:
    """Protobuf bytes of RepositoryModelLoadRequest/UnloadRequest{model_name = 2}."""
    raw = name.encode()
    return b"\x12" + _varint(len(raw)) + raw


class MLServerClient:
    """Async client of one MLServer's REST (and gRPC, for loads) endpoints."""

    def __init__(self, host: str, http_port: int, grpc_port: int, *, probe_timeout: float = 2.0,
                 load_timeout: float = 600.0) -> None:
        self.host = host
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.base_url = f"http://{host}:{http_port}"
        self.probe_timeout = probe_timeout
        self.load_timeout = load_timeout
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=httpx.Timeout(30.0, connect=5.0))

    @property
    def ready_url(self) -> str:
        return f"{self.base_url}/v2/health/ready"

    async def aclose(self) -> None:
        await self._http.aclose()

    def _unreachable(self, exc: httpx.HTTPError, what: str) -> Unavailable:
        return Unavailable(f"inference server {self.base_url} not reachable for {what}: "
                           f"{connect_error_text(exc)}", details={"address": self.base_url})

    async def probe(self) -> Probe:
        """GET /v2/health/ready; errors: ``connection refused``, ``timeout after 2.0s``, ``HTTP 503: ...``."""
        try:
            r = await self._http.get("/v2/health/ready", timeout=self.probe_timeout)
        except httpx.TimeoutException:
            return Probe(self.ready_url, f"timeout after {self.probe_timeout}s")
        except httpx.HTTPError as exc:
            return Probe(self.ready_url, connect_error_text(exc))
        if r.status_code == 200:
            return Probe(self.ready_url, None)
        body = r.text.strip()[:200]
        return Probe(self.ready_url, f"HTTP {r.status_code}: {body}" if body else f"HTTP {r.status_code}")

    async def index(self) -> dict[str, str]:
        """Model name -> state (READY, UNAVAILABLE, LOADING, ...) from the repository index."""
        try:
            r = await self._http.post("/v2/repository/index", json={})
        except httpx.HTTPError as exc:
            raise self._unreachable(exc, "the repository index") from exc
        if r.status_code != 200:
            raise Unavailable(f"inference server {self.base_url} answered HTTP {r.status_code} to "
                              f"POST /v2/repository/index: {r.text[:200]}")
        return {str(m.get("name")): str(m.get("state", "")) for m in r.json() if isinstance(m, dict)}

    async def load(self, name: str) -> None:
        """Load ``name`` from the repository; LoadError carries MLServer's own message."""
        if await self._load_grpc(name):
            return
        try:
            r = await self._http.post(f"/v2/repository/models/{name}/load", timeout=self.load_timeout)
        except httpx.TimeoutException as exc:
            raise LoadError(f"MLServer at {self.base_url} did not finish loading {name} within "
                            f"{self.load_timeout:.0f}s") from exc
        except httpx.HTTPError as exc:
            raise self._unreachable(exc, f"loading {name}") from exc
        if r.status_code != 200:
            raise LoadError(self._error_text(r), details={"status": r.status_code})

    async def _load_grpc(self, name: str) -> bool:
        """True when the gRPC load succeeded; False when gRPC cannot be used (REST is tried instead)."""
        try:
            import grpc
        except ImportError:
            return False
        async with grpc.aio.insecure_channel(f"{self.host}:{self.grpc_port}") as channel:
            call = channel.unary_unary(f"{_GRPC_SERVICE}/RepositoryModelLoad")
            try:
                await call(_model_name_request(name), timeout=self.load_timeout)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE:
                    log.info("gRPC %s:%s unavailable (%s); loading %s over REST", self.host, self.grpc_port,
                             exc.details(), name)
                    return False
                if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise LoadError(f"MLServer at {self.base_url} did not finish loading {name} within "
                                    f"{self.load_timeout:.0f}s") from exc
                raise LoadError(exc.details() or str(exc.code()), details={"grpc": str(exc.code())}) from exc
        return True

    async def unload(self, name: str) -> bool:
        """Unload ``name``; False when MLServer did not know it (nothing to unload)."""
        try:
            r = await self._http.post(f"/v2/repository/models/{name}/unload")
        except httpx.HTTPError as exc:
            raise self._unreachable(exc, f"unloading {name}") from exc
        if r.status_code == 404:
            return False
        if r.status_code != 200:
            raise LoadError(self._error_text(r), details={"status": r.status_code})
        return True

    async def metadata(self, name: str) -> dict[str, object]:
        """GET /v2/models/{name}; LoadError when the model does not answer 200."""
        try:
            r = await self._http.get(f"/v2/models/{name}")
        except httpx.HTTPError as exc:
            raise self._unreachable(exc, f"the metadata of {name}") from exc
        if r.status_code != 200:
            raise LoadError(f"MLServer reported {name} loaded but GET /v2/models/{name} answered "
                            f"{self._error_text(r)}")
        data = r.json()
        return data if isinstance(data, dict) else {}

    @staticmethod
    def _error_text(r: httpx.Response) -> str:
        try:
            data = r.json()
        except ValueError:
            data = None
        if isinstance(data, dict) and data.get("error"):
            return str(data["error"])
        body = r.text.strip()[:300]
        return f"HTTP {r.status_code}: {body}" if body else f"HTTP {r.status_code}"


def pid_listening_on(port: int, host: str = "127.0.0.1") -> int | None:
    """PID of the process listening on TCP ``port`` (same user only), or None."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return None
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
            return int(c.pid)
    return None


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a signal-0 check: no scan of /proc)."""
    return bool(psutil.pid_exists(pid))


def _children(pid: int) -> list[int] | None:
    """PIDs of ``pid``'s descendants from Linux's ``/proc/PID/task/TID/children``, reading only this process
    tree; None where that file does not exist (psutil then scans every process on the host, ~1 ms per 100)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except FileNotFoundError:
            if parent == pid:
                return None if not os.path.isdir("/proc/self/task") else []
            continue  # a child that exited meanwhile
        except OSError:
            return None
        for tid in tasks:
            try:
                with open(f"/proc/{parent}/task/{tid}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except FileNotFoundError:
                if not os.path.exists(f"/proc/{parent}/task/{tid}"):
                    continue  # the thread ended
                return None  # a kernel without CONFIG_PROC_CHILDREN
            except OSError:
                return None
            found += kids
            todo += kids
    return found


def rss_of(pid: int | None) -> int:
    """Resident memory of ``pid`` and all its children in bytes; 0 when unknown.  Called around load calls,
    so it reads only the process tree's files where the kernel offers them (see :func:`_children`)."""
    if pid is None:
        return 0
    try:
        proc = psutil.Process(pid)
        total = int(proc.memory_info().rss)
        kids = _children(pid)
        children: list[int | psutil.Process] = (list(kids) if kids is not None else
                                                list(proc.children(recursive=True)))
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0
    for child in children:
        try:
            total += int((psutil.Process(child) if isinstance(child, int) else child).memory_info().rss)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue  # exited meanwhile
    return total
