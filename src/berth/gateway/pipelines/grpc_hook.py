"""Pipelines over gRPC: ``ModelInfer`` naming ``NAME.pipeline`` (in ``model_name`` or ``seldon-model``).

The request message is read into its V2 JSON form, the pipeline runs exactly as for REST
(:class:`PipelineServer`), and the answer is written back as a ``ModelInferResponse``.  The two messages
share their field numbers 1-5 (name, version, id, parameters, tensors), so :mod:`berth.wire.v2proto`'s
request encoder writes a response and its response decoder reads a request, once the request's
``outputs`` (6, which tensors to return) are set aside and its ``raw_input_contents`` (7) moved to 6.
"""

from __future__ import annotations

import time

from berth.errors import InvalidInput
from berth.gateway.pipelines.serve import PipelineServer
from berth.gateway.transports.grpcmessages import message
from berth.wire import protowire, v2proto

_LEN = 2


def _field(number: int, data: bytes) -> bytes:
    return protowire.varint(number << 3 | _LEN) + protowire.varint(len(data)) + data


def decode_request(buf: bytes) -> dict[str, object]:
    """A ``ModelInferRequest`` as a V2 JSON request (``inputs`` with ``data``, ``id``, ``parameters``)."""
    kept: list[bytes] = []
    try:
        for number, wire, value in v2proto.fields(buf):
            if number in (1, 2, 3, 4, 5) and wire == _LEN:
                kept.append(_field(number, value))
            elif number == 7 and wire == _LEN:
                kept.append(_field(6, value))
        doc = v2proto.decode_infer_response(b"".join(kept))
    except (protowire.WireError, ValueError) as exc:
        raise InvalidInput(f"ModelInfer request is not a valid ModelInferRequest: {exc}") from exc
    doc["inputs"] = doc.pop("outputs")
    return doc


async def grpc_infer(server: PipelineServer, body: bytes, encoding: bytes | None, model: str | None,
                     namespace: str | None, route: str | None, authorization: str | bytes | None,
                     max_request_bytes: int) -> tuple[bytes, str] | None:
    """The ``ModelInferResponse`` message and ``x-seldon-route`` for a call addressing a pipeline; None when
    it addresses a model (the caller forwards it as usual); a BerthError when the pipeline cannot answer."""
    if not server.router.pipelines.pipes:  # no pipeline in the table: model calls pay nothing more
        return None
    started = time.perf_counter()
    ns = namespace or "default"
    request = message(body, encoding, max_request_bytes)
    try:
        name = model or protowire.last_string(request, 1)
    except protowire.WireError as exc:
        raise InvalidInput(f"ModelInfer request is not a valid protobuf message: {exc}") from exc
    if not name or not server.handles(ns, name):
        return None
    choice = server.choose(ns, name, authorization, route)
    doc = decode_request(request)
    result, seldon_route = await server.run(ns, choice, doc, str(doc.get("id") or "") or None, "grpc")
    answer = result.response
    payload = {"inputs": answer["outputs"], "id": answer.get("id"), "parameters": answer.get("parameters")}
    encoded = v2proto.encode_infer_request(choice.dag.name, payload)
    server.observe(ns, name, choice, "grpc", "OK", False, started)
    return encoded, seldon_route
