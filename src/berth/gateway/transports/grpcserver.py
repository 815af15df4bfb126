"""The gateway's V2 gRPC endpoint (``inference.GRPCInferenceService``), forwarding messages as received.

It runs on the gateway's own HTTP/2 (:mod:`h2`), not grpcio: a call costs a few frames parsed and
written, where grpcio's Python layer cost as much per call as MLServer's whole answer.  A request's
message is never decoded.  The model comes from the ``seldon-model`` metadata key, else from field 1
of the message (``model_name``/``name``, read by :mod:`protowire`); the namespace from
``seldon-namespace``; sticky sessions from ``x-seldon-route``.  Routing is :meth:`Router.decide`, as for
REST.  When the chosen model is not the name in the request, a new field 1 naming it is appended (the
last value wins), so the rest of the message goes upstream byte for byte, over one HTTP/2 connection
per replica that carries many calls at once.  A compressed request (``grpc-encoding`` gzip or deflate)
is forwarded uncompressed; the client's other metadata goes upstream as sent.

Answers carry ``x-seldon-route`` in the initial and trailing metadata.  MLServer's own answers and statuses pass
through untouched; the gateway's failures are gRPC statuses with the same messages as the REST JSON
errors, and the error's code (``NotFound``, ``ModelNotReady``, ...) in the trailing metadata key
``berth-error-code``.  ``ServerLive``, ``ServerReady`` and ``ServerMetadata`` are answered by the
gateway itself, as is ``grpc.health.v1.Health/Check``; ``ModelStreamInfer`` is routed by its first
message and then forwarded message by message; other methods answer UNIMPLEMENTED.  A ``ModelInfer`` naming
``NAME.pipeline`` (or an experiment over pipelines) is decoded and run as a DAG
(:mod:`berth.gateway.pipelines.grpc_hook`).

In a namespace that requires inference tokens, the ``authorization`` metadata (``Bearer <token>``) is
checked before anything else of a routed call (UNAUTHENTICATED / PERMISSION_DENIED otherwise, naming no
model).  The ``authorization`` key is never forwarded to the inference server.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import Any

import berth
from berth.errors import BerthError, ConfigError, InvalidInput, PayloadTooLarge, Timeout, Unavailable
from berth.gateway.forwarding.balance import Balancer
from berth.gateway.forwarding.core import Forwarder
from berth.gateway.forwarding.failures import ConnectFailed, Disconnected, Vanished
from berth.gateway.forwarding.grpcupstream import Upstreams
from berth.gateway.forwarding.mirror import Mirrors
from berth.gateway.http2.client import ClientConnection
from berth.gateway.http2.frames import Stream
from berth.gateway.http2.headerblock import Field
from berth.gateway.http2.limits import Limits
from berth.gateway.http2.server import ServerConnection
from berth.gateway.metrics import Metrics, error_labels
from berth.gateway.pipelines.grpc_hook import grpc_infer
from berth.gateway.pipelines.serve import PipelineServer
from berth.gateway.routing.router import Decision, Router
from berth.gateway.routing.table import ModelEvicted, Target, describe_connect_error
from berth.gateway.routing.wake import held
from berth.gateway.transports.grpcmessages import (
    OK,
    SERVICE,
    STATUS_TEXT,
    UNAVAILABLE,
    UNIMPLEMENTED,
    MessageCounter,
    error_fields,
    framed,
    grpc_message,
    grpc_status,
    grpc_timeout,
    message,
    status_name,
)
from berth.wire import protowire

log = logging.getLogger("berth.gateway")
_PREFIX = f"/{SERVICE}/".encode()
ROUTED = frozenset((b"ModelInfer", b"ModelMetadata", b"ModelReady"))
_SERVER_READY = _PREFIX + b"ServerReady"
_STREAM_INFER = _PREFIX + b"ModelStreamInfer"
_HEALTH_CHECK = b"/grpc.health.v1.Health/Check"  # the standard gRPC health check (Kubernetes gRPC probes)
_READY = framed(protowire.bool_field(1, True))  # ServerReadyResponse{ready: true}
_HEAD_OK: list[Field] = [(b":status", b"200"), (b"content-type", b"application/grpc")]
_TRAILERS_OK: list[Field] = [(b"grpc-status", b"0")]
# Not passed upstream: set by the gateway (content-type, te), enforced by it (grpc-timeout), undone by it
# (grpc-encoding), or connection-specific.
# Nor is the caller's token (``authorization``): it is for the gateway, never for the inference server.
_DROPPED = frozenset((b"content-type", b"te", b"grpc-timeout", b"grpc-encoding", b"host", b"connection",
                      b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"authorization"))
# What serve reads of a call's metadata, in one look-up per key: each name it acts on, and every dropped one (0)
_DROP, _PATH, _MODEL, _NAMESPACE, _ROUTE, _TIMEOUT, _ENCODING, _AUTHORIZATION = range(8)
_READ: dict[bytes, int] = {**dict.fromkeys(_DROPPED, _DROP), b":path": _PATH, b"seldon-model": _MODEL,
                           b"seldon-namespace": _NAMESPACE, b"x-seldon-route": _ROUTE, b"grpc-timeout": _TIMEOUT,
                           b"grpc-encoding": _ENCODING, b"authorization": _AUTHORIZATION}


class GrpcGateway:
    """Routes and forwards V2 gRPC calls; one per gateway, sharing router, balancer and metrics with REST."""

    def __init__(self, router: Router, balancer: Balancer, metrics: Metrics, mirrors: Mirrors, *,
                 upstream_timeout: float = 60.0, connect_timeout: float = 5.0,
                 max_request_bytes: int = 256 << 20, limits: Limits | None = None,
                 coalesce_writes: bool = False) -> None:
        self.router = router
        self.balancer = balancer
        self.metrics = metrics
        self.mirrors = mirrors
        self.upstream_timeout = upstream_timeout
        self.max_request_bytes = max_request_bytes
        self.limits = limits or Limits()
        # one write per round of the event loop on every connection (Connection.coalesce): fewer system calls
        # when calls arrive together (a stand-in upstream), but against a real MLServer, whose answers come one
        # at a time, it cost a loop pass per write and measured no better end to end (docs/gateway.md): off
        self.coalesce_writes = coalesce_writes
        self.upstreams = Upstreams(min(connect_timeout, upstream_timeout), coalesce=coalesce_writes)
        self.core = Forwarder(balancer, " (gRPC)")  # its own ejections: a replica's gRPC port fails on its own
        self._heads: dict[tuple[bytes, str], list[Field]] = {}
        # set by run_gateway: NAME.pipeline (berth.gateway.pipelines.grpc_hook)
        self.pipelines: PipelineServer | None = None
        self.namespace = "default"  # of a call without seldon-namespace (a namespace's gateway: its own)

    def forget_unrouted(self) -> None:
        """Close the upstream connections of replicas the new table no longer holds."""
        self.upstreams.prune(self.router.grpc_addresses)

    def connection(self, on_lost: Any = None) -> ServerConnection:
        """A protocol for one client connection (the listening server's factory)."""
        conn = ServerConnection(self.on_stream, on_lost, limits=self.limits, max_body=self.max_request_bytes + 5,
                                streaming=frozenset((_STREAM_INFER,)))
        conn.coalesce = self.coalesce_writes
        return conn

    def on_stream(self, conn: ServerConnection, stream: Stream) -> None:
        # the loop's own create_task (asyncio.ensure_future's checks cost more than the task), and the crash
        # guard inside the task (a done-callback per call is one more closure and one more loop callback)
        stream.task = (conn.loop or asyncio.get_running_loop()).create_task(self._guarded(conn, stream))

    async def _guarded(self, conn: ServerConnection, stream: Stream) -> None:
        try:
            await self.serve(conn, stream)
        except Exception as exc:  # (a cancelled call is not a crash: CancelledError is not an Exception)
            self._crashed(conn, stream, exc)

    def _crashed(self, conn: ServerConnection, stream: Stream, exc: BaseException) -> None:
        """A bug, not a failure of the request: logged with its traceback, answered INTERNAL (never left hanging)."""
        log.error("gRPC call on stream %d failed inside the gateway", stream.sid, exc_info=exc)
        self._fail(conn, stream, BerthError(f"the gateway failed while handling the call: {exc!r}; this is a bug "
                                            "in Berth, please report it with the gateway's log"), time.perf_counter())

    async def serve(self, conn: ServerConnection, stream: Stream) -> None:
        started = time.perf_counter()
        path = method = b""
        model = route = encoding = authorization = None
        namespace: str | None = None
        timeout = self.upstream_timeout
        extra: list[Field] = []
        for field in stream.headers:
            name = field[0]
            kind = _READ.get(name)
            if kind is None:  # metadata the gateway passes on as sent
                if name[0] != 58:  # (b":": a pseudo-header of no use here)
                    extra.append(field)
                continue
            value = field[1]
            if kind == _PATH:
                path = value
            elif kind == _MODEL:
                model = value.decode("latin-1")
                extra.append(field)
            elif kind == _NAMESPACE:
                namespace = value.decode("latin-1")
                extra.append(field)
            elif kind == _ROUTE:
                route = value.decode("latin-1")
                extra.append(field)
            elif kind == _TIMEOUT:
                asked = grpc_timeout(value)
                if asked is not None and asked < timeout:
                    timeout = max(asked, 0.001)
            elif kind == _ENCODING:
                encoding = value
            elif kind == _AUTHORIZATION:
                authorization = value
        if path.startswith(_PREFIX):
            method = path[len(_PREFIX):]
        if namespace is None:
            namespace = self.namespace
        if stream.inbox is not None or method in ROUTED:
            try:  # first: a refused caller learns nothing of the namespace
                self.router.admit(namespace, authorization)
            except BerthError as err:
                self._fail(conn, stream, err, started)
                return
        if stream.inbox is not None:
            await self._stream(conn, stream, path, model, namespace, route, encoding, extra, timeout, started)
            return
        if method not in ROUTED:
            if path == _HEALTH_CHECK:
                self._health(conn, stream)
                return
            self._local(conn, stream, method)
            return
        if stream.cut_short:
            self._fail(conn, stream, PayloadTooLarge(
                f"the gRPC request is larger than the gateway's limit of {self.max_request_bytes} bytes; "
                "send a smaller request or raise --max-request-bytes"), started)
            return
        if self.pipelines is not None and method == b"ModelInfer" and self.router.pipelines.pipes:  # (else no await)
            try:
                piped = await grpc_infer(self.pipelines, stream.body(), encoding, model, namespace, route,
                                         authorization, self.max_request_bytes)
            except BerthError as err:
                self._fail(conn, stream, err, started)
                return
            if piped is not None:
                seldon_route = (b"x-seldon-route", piped[1].encode())
                conn.respond(stream, [*_HEAD_OK, seldon_route], framed(piped[0]), [*_TRAILERS_OK, seldon_route])
                return
        try:
            request, decision = self._route(method.decode(), stream.body(), encoding, model, namespace, route)
        except ModelEvicted as evicted:  # held while the control plane reloads it (routing/wake.py)
            try:
                request, decision = await self._held_route(evicted, method.decode(), stream.body(), encoding, model,
                                                           namespace, route)
            except BerthError as err:
                self._fail(conn, stream, err, started)
                return
        except BerthError as err:
            self._fail(conn, stream, err, started)
            return
        await self._forward(conn, stream, path, method, decision, request, extra, timeout, started)

    async def _held_route(self, evicted: ModelEvicted, method: str, body: bytes, encoding: bytes | None,
                          model: str | None, namespace: str, route: str | None) -> tuple[bytes, Decision]:
        """:meth:`_route` once the evicted model it chose is loaded again (or the wake's 503)."""
        details = evicted.details or {}
        await held(self.router, details.get("namespace") or namespace, details.get("model") or "",
                   route, evicted)
        return self._route(method, body, encoding, model, namespace, route)

    def _route(self, method: str, body: bytes, encoding: bytes | None, model: str | None, namespace: str,
               route: str | None) -> tuple[bytes, Decision]:
        """The request message to send upstream (renamed when the chosen model is not the one it names) and
        the routing decision; a BerthError saying what is wrong with the request otherwise."""
        request = message(body, encoding, self.max_request_bytes)
        try:
            asked = protowire.last_string(request, 1)
        except protowire.WireError as exc:
            raise InvalidInput(f"{method} request is not a valid protobuf message: {exc}") from exc
        wanted = model or asked
        if not wanted:
            raise InvalidInput(f"{method} request names no model: set model_name (name) or the seldon-model "
                               "metadata key")
        decision = self.router.decide(namespace, wanted, route)
        upstream = decision.target.upstream or decision.target.name  # the serving version's name upstream
        return (request if asked == upstream else request + decision.target.pb_name), decision

    async def _stream(self, conn: ServerConnection, stream: Stream, path: bytes, model: str | None,
                      namespace: str, route: str | None, encoding: bytes | None, extra: list[Field],
                      timeout: float, started: float) -> None:
        """``ModelStreamInfer``: routed by its first message (the model it names, or ``seldon-model``), then
        both directions forwarded message by message as they come.  Not retried once the first message is sent;
        ``timeout`` bounds each wait for the inference server's next event."""
        inbox = stream.inbox
        assert inbox is not None
        chunks: list[bytes] = []
        size = 0
        need = 5  # bytes up to the end of the first message, once its prefix is known
        ended = False
        limit = self.max_request_bytes
        while size < need:
            kind, payload = await inbox.get()
            if kind != "data":
                ended = True
                break
            chunks.append(payload)
            size += len(payload)
            conn.release(stream, len(payload))
            if need == 5 and size >= 5:
                prefix = chunks[0] if len(chunks[0]) >= 5 else b"".join(chunks)
                length = int.from_bytes(prefix[1:5], "big")
                if length > limit:  # refused at its prefix, before it is held
                    self._fail(conn, stream, PayloadTooLarge(
                        f"the first message of the stream is {length} bytes, over the gateway's limit of {limit} "
                        "bytes per message; send smaller messages or raise --max-request-bytes",
                        details={"limit_bytes": limit}), started)
                    return
                need = 5 + length
        if not size:
            self._fail(conn, stream, InvalidInput("ModelStreamInfer carried no request message"), started)
            return
        buffered = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        length = int.from_bytes(buffered[1:5], "big") if len(buffered) >= 5 else 0
        first, rest = buffered[:5 + length], buffered[5 + length:]
        counter = MessageCounter(limit)
        counter.messages = 1  # the first, routed here
        try:
            counter.feed(rest)
            try:
                request, decision = self._route("ModelStreamInfer", first, encoding, model, namespace, route)
            except ModelEvicted as evicted:
                request, decision = await self._held_route(evicted, "ModelStreamInfer", first, encoding, model,
                                                           namespace, route)
        except BerthError as err:
            self._fail(conn, stream, err, started)
            return
        target = decision.target
        if encoding is not None:  # the first message goes uncompressed; later ones as sent, so the server needs it
            extra = [*extra, (b"grpc-encoding", encoding)]
        address = self.core.pick(target)
        if address is None:
            self._fail(conn, stream, target.not_ready(), started, decision)
            return
        upstream_address = target.grpc[address]
        try:
            upstream = await self.upstreams.get(upstream_address)
            call = upstream.open(self._head(path, upstream_address, extra))
        except (ConnectFailed, Vanished) as exc:
            self.core.failed(address)
            self._fail(conn, stream, Unavailable(
                describe_connect_error(f"inference server {upstream_address} (gRPC)", exc) if isinstance(
                    exc, ConnectFailed) else f"inference server {upstream_address} (gRPC) went away: {exc}",
                details={"model": target.name, "namespace": target.namespace, "address": upstream_address}),
                started, decision)
            return
        upstream.push(call, None, framed(request) + rest, end=ended)
        self.balancer.acquire(address)
        answers = call.inbox
        assert answers is not None
        pump = None if ended else asyncio.ensure_future(_pump(conn, stream, upstream, call, counter))
        route_field = (b"x-seldon-route", decision.route.encode())
        head: list[Field] | None = None
        sent_head = False
        code = UNAVAILABLE
        try:
            while True:
                try:
                    kind, payload = await asyncio.wait_for(answers.get(), timeout)
                except TimeoutError:
                    kind, payload = "timeout", None
                if kind == "headers":
                    head = [*payload, route_field]
                elif kind == "data":
                    conn.respond_part(stream, None if sent_head else head or _HEAD_OK, payload)
                    sent_head = True
                elif kind == "end":
                    code = grpc_status(payload)
                    trailers = [*(payload or ()), route_field]
                    if sent_head:
                        conn.respond_end(stream, trailers)
                    elif payload is call.headers:  # trailers-only answer
                        conn.respond(stream, trailers, None, None)
                    else:
                        conn.respond_part(stream, head or _HEAD_OK, b"")
                        conn.respond_end(stream, trailers)
                    break
                elif kind == "refused":  # the client's side broke a limit: the call ends here
                    code = _end_failed(conn, stream, payload, route_field, sent_head)
                    break
                else:  # the server went away, reset the stream, or fell silent
                    broke: BerthError = Timeout(
                        f"inference server {upstream_address} sent nothing on the stream for model {target.name} "
                        f"for {timeout:g}s") if kind == "timeout" else Unavailable(
                        f"inference server {upstream_address} failed during the stream for model {target.name}: "
                        f"{payload}; the stream was not retried")
                    code = _end_failed(conn, stream, broke, route_field, sent_head)
                    break
        finally:
            self.balancer.release(address)
            if pump is not None:
                pump.cancel()
            if call.sid in upstream.streams:
                upstream.cancel(call)
            name = status_name(code)
            self.metrics.observe(decision.labels, "grpc", name, code != OK, time.perf_counter() - started)

    def _head(self, path: bytes, upstream: str, extra: list[Field]) -> list[Field]:
        key = (path, upstream)
        head = self._heads.get(key)
        if head is None:
            head = [(b":method", b"POST"), (b":scheme", b"http"), (b":path", path),
                    (b":authority", upstream.encode()), (b"content-type", b"application/grpc"), (b"te", b"trailers")]
            if len(self._heads) > 1024:
                self._heads.clear()
            self._heads[key] = head
        return head + extra if extra else head

    async def _call(self, upstream: str, head: list[Field], body: bytes, timeout: float) -> Stream:
        """One call to ``upstream``; the answered stream (or ConnectFailed, Vanished, Cut, StreamReset,
        TimeoutError)."""
        conn = self.upstreams.ready(upstream) or await self.upstreams.get(upstream)
        if not conn.has_room():
            await conn.room()
        call = conn.request(head, body, timeout)
        try:
            return await call.future  # type: ignore[misc,no-any-return]  # (set by request)
        except BaseException:
            conn.cancel(call)
            raise
        finally:
            # the answered stream is its future's result: without this, each call left a reference cycle (stream,
            # future, their lists) that only the cyclic collector frees, and its full passes walk the whole heap
            call.future = None

    async def _forward(self, conn: ServerConnection, stream: Stream, path: bytes, method: bytes, decision: Decision,
                       request: bytes, extra: list[Field], timeout: float, started: float) -> None:
        """A unary call through the forwarding core (replica choice, retry, errors: :mod:`forward`)."""
        target = decision.target
        body = framed(request)
        grpc = target.grpc

        def attempt(address: str) -> Awaitable[Stream]:
            upstream = grpc[address]
            return self._call(upstream, self._head(path, upstream, extra), body, timeout)

        try:
            answer = await self.core.call(target, attempt, grpc.__getitem__, timeout)
        except BerthError as err:
            self._fail(conn, stream, err, started, decision)
            return
        self._answer(conn, stream, answer, decision, started)
        if decision.mirror is not None and method == b"ModelInfer":
            self.mirrors.send(decision.mirror_labels, "grpc", self._copy(path, decision.mirror, request, extra))

    def _answer(self, conn: ServerConnection, stream: Stream, answer: Stream, decision: Decision,
                started: float) -> None:
        route = (b"x-seldon-route", decision.route.encode())
        trailers = answer.trailers
        code = grpc_status(trailers)
        name = status_name(code)
        self.metrics.observe(decision.labels, "grpc", name, code != OK, time.perf_counter() - started)
        if trailers is answer.headers:  # trailers-only: MLServer's own error
            conn.respond(stream, [*answer.headers, route], None, None)
        else:
            conn.respond(stream, [*answer.headers, route], answer.body(), [*(trailers or ()), route])

    async def _copy(self, path: bytes, target: Target, request: bytes, extra: list[Field]) -> str:
        body = framed(request + target.pb_name)

        async def attempt(address: str) -> bool:
            upstream = target.grpc[address]
            answer = await self._call(upstream, self._head(path, upstream, extra), body, self.upstream_timeout)
            return grpc_status(answer.trailers) == OK

        return await self.core.copy(target, attempt)

    async def probe(self, upstream: str, timeout: float) -> dict[str, Any]:
        """``ServerReady`` on one inference server's gRPC port, over the connection calls use (what
        `berth doctor` shows as gateway → replica, gRPC)."""
        started = time.perf_counter()
        error: str | None = None
        try:
            answer = await self._call(upstream, self._head(_SERVER_READY, upstream, []), framed(b""), timeout)
            code = grpc_status(answer.trailers)
            if code != OK:
                error = f"ServerReady answered {status_name(code)}: {grpc_message(answer.trailers)}"
            elif answer.body() != _READY:
                error = "ServerReady answered not ready"
        except ConnectFailed as exc:
            error = describe_connect_error("the gRPC port", exc)
        except TimeoutError:
            error = f"no answer to ServerReady within {timeout:.1f}s"
        except Disconnected as exc:
            error = str(exc)
        return {"address": upstream, "ok": error is None, "error": error,
                "latency_ms": round((time.perf_counter() - started) * 1000, 2)}

    def _health(self, conn: ServerConnection, stream: Stream) -> None:
        """``grpc.health.v1.Health/Check``: SERVING once the gateway holds a routing table (as ServerReady),
        else NOT_SERVING; the same for every ``service`` name."""
        status = 1 if self.router.ready else 2  # HealthCheckResponse.ServingStatus
        conn.respond(stream, _HEAD_OK, framed(b"\x08" + bytes((status,))), _TRAILERS_OK)

    def _local(self, conn: ServerConnection, stream: Stream, method: bytes) -> None:
        if method == b"ServerLive":
            data = protowire.bool_field(1, True)
        elif method == b"ServerReady":
            data = protowire.bool_field(1, self.router.ready)
        elif method == b"ServerMetadata":
            data = protowire.string_field(1, "berth-gateway") + protowire.string_field(2, berth.__version__)
        else:
            conn.respond(stream, [*_HEAD_OK, (b"grpc-status", STATUS_TEXT[UNIMPLEMENTED]),
                                  (b"grpc-message", b"Method not found!")], None, None)
            return
        conn.respond(stream, _HEAD_OK, framed(data), _TRAILERS_OK)

    def _fail(self, conn: ServerConnection, stream: Stream, err: BerthError, started: float,
              decision: Decision | None = None) -> None:
        code, fields = error_fields(err)
        labels = decision.labels if decision is not None else error_labels(err)
        self.metrics.observe(labels, "grpc", status_name(code), True, time.perf_counter() - started)
        head = [*_HEAD_OK, *fields]
        if decision is not None:
            head.append((b"x-seldon-route", decision.route.encode()))
        conn.respond(stream, head, None, None)


async def _pump(conn: ServerConnection, stream: Stream, upstream: ClientConnection, call: Stream,
                counter: MessageCounter) -> None:
    """The client's further messages of a streaming call, to the inference server as they come, each held to the
    per-message limit.  The client's window is given back only once the inference server's side has taken what
    came before (no more than a window is ever held for a stream that is not read)."""
    inbox = stream.inbox
    answers = call.inbox
    assert inbox is not None and answers is not None
    while True:
        kind, payload = await inbox.get()
        if upstream.streams.get(call.sid) is not call:
            return
        if kind == "data":
            try:
                counter.feed(payload)
            except PayloadTooLarge as err:
                answers.put_nowait(("refused", err))
                return
            upstream.push(call, None, payload)
            while call.sid in upstream.blocked and upstream.streams.get(call.sid) is call:
                await asyncio.sleep(0.005)  # the inference server is not reading yet
            conn.release(stream, len(payload))
        else:
            upstream.push(call, None, b"", end=True)
            return


class GrpcListener:
    """The listening socket and the client connections it accepted."""

    def __init__(self, gateway: GrpcGateway) -> None:
        self.gateway = gateway
        self.server: asyncio.AbstractServer | None = None
        self.connections: set[ServerConnection] = set()

    def _accept(self) -> ServerConnection:
        conn = self.gateway.connection(self.connections.discard)
        self.connections.add(conn)
        return conn

    async def stop(self, grace: float) -> None:
        """Stop accepting; let calls in flight finish for up to ``grace`` seconds, then close everything."""
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            conn.shutdown()
        deadline = time.monotonic() + grace
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            conn.close()
        if self.server is not None:
            await self.server.wait_closed()


async def start_grpc(gateway: GrpcGateway, host: str, port: int) -> tuple[GrpcListener, int]:
    """A started gRPC listener for ``gateway`` on ``host:port``; answers it and the bound port."""
    listener = GrpcListener(gateway)
    try:
        listener.server = await asyncio.get_running_loop().create_server(listener._accept, host, port)
    except OSError as exc:
        raise ConfigError(f"the gateway cannot listen for gRPC on {host}:{port} ({exc.strerror or exc}); choose "
                          "another port (--grpc-port) or stop what uses it") from exc
    bound = listener.server.sockets[0].getsockname()[1]
    return listener, bound


def _end_failed(conn: ServerConnection, stream: Stream, err: BerthError, route_field: Field, sent_head: bool) -> int:
    """End a streaming call with ``err`` as its gRPC status (in trailers once the head went out); its code."""
    code, failure = error_fields(err)
    failure.append(route_field)
    if sent_head:
        conn.respond_end(stream, failure)
    else:
        conn.respond(stream, [*_HEAD_OK, *failure], None, None)
    return code
