"""V2 inference requests and answers between their JSON form and their gRPC (protobuf) form.

``berth infer --inference-mode grpc`` sends what a user wrote as V2 JSON over gRPC, without MLServer's
generated classes (the CLI does not depend on MLServer).  Only the messages of ``ModelInfer`` are
covered, field numbers as in the KServe V2 ``grpc_predict_v2.proto``: a request's inputs go as typed
``contents`` (never ``raw_input_contents``), and an answer's outputs are read from ``contents`` or from
``raw_output_contents`` (little-endian, as the protocol defines them).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

from berth.errors import InvalidInput
from berth.wire.protowire import WireError, read_varint, varint

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5

# datatype -> (field of InferTensorContents, how one value is packed)
_CONTENTS: dict[str, tuple[int, str]] = {
    "BOOL": (1, "bool"), "INT8": (2, "int"), "INT16": (2, "int"), "INT32": (2, "int"), "INT64": (3, "int"),
    "UINT8": (4, "uint"), "UINT16": (4, "uint"), "UINT32": (4, "uint"), "UINT64": (5, "uint"),
    "FP32": (6, "f32"), "FP64": (7, "f64"), "BYTES": (8, "bytes"),
}
_RAW: dict[str, tuple[str, int]] = {  # datatype -> struct code and size, for raw_output_contents
    "BOOL": ("?", 1), "INT8": ("b", 1), "INT16": ("h", 2), "INT32": ("i", 4), "INT64": ("q", 8),
    "UINT8": ("B", 1), "UINT16": ("H", 2), "UINT32": ("I", 4), "UINT64": ("Q", 8),
    "FP16": ("e", 2), "FP32": ("f", 4), "FP64": ("d", 8),
}


class ProtoError(WireError):
    """Bytes that are not the protobuf message they should be."""


def _key(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def _bytes(number: int, data: bytes) -> bytes:
    return _key(number, _LEN) + varint(len(data)) + data


def _string(number: int, text: str) -> bytes:
    return _bytes(number, text.encode()) if text else b""


def _flatten(data: Any) -> Iterator[Any]:
    if isinstance(data, list | tuple):
        for item in data:
            yield from _flatten(item)
    else:
        yield data


def _parameter(value: Any) -> bytes:
    """An ``InferParameter`` (bool_param 1, int64_param 2, string_param 3, double_param 4)."""
    if isinstance(value, bool):
        return _key(1, _VARINT) + varint(int(value))
    if isinstance(value, int):
        return _key(2, _VARINT) + varint(value)
    if isinstance(value, float):
        return _key(4, _I64) + struct.pack("<d", value)
    if isinstance(value, str):
        return _bytes(3, value.encode())
    raise InvalidInput(f"parameter value {value!r}: gRPC parameters are booleans, integers, numbers or strings")


def _parameters(number: int, params: Any, where: str) -> bytes:
    if params is None:
        return b""
    if not isinstance(params, dict):
        raise InvalidInput(f"{where}.parameters must be an object")
    return b"".join(_bytes(number, _string(1, str(k)) + _bytes(2, _parameter(v))) for k, v in params.items())


def _contents(datatype: str, values: list[Any], where: str) -> bytes:
    field, kind = _CONTENTS[datatype]
    try:
        if kind == "bytes":
            return b"".join(_bytes(field, v.encode() if isinstance(v, str) else bytes(v)) for v in values)
        if kind == "f32":
            packed = struct.pack(f"<{len(values)}f", *values)
        elif kind == "f64":
            packed = struct.pack(f"<{len(values)}d", *values)
        elif kind == "bool":
            packed = bytes(1 if v else 0 for v in values)
        else:
            if kind == "uint" and any(int(v) < 0 for v in values):
                raise InvalidInput(f"{where}: {datatype} values cannot be negative")
            packed = b"".join(varint(int(v)) for v in values)
    except (TypeError, ValueError, struct.error) as exc:
        if isinstance(exc, InvalidInput):
            raise
        raise InvalidInput(f"{where}: data is not all {datatype} values ({exc})") from exc
    return _bytes(field, packed) if values else b""


def encode_infer_request(model: str, payload: dict[str, Any], version: str | None = None) -> bytes:
    """A ``ModelInferRequest`` for ``model`` from a V2 JSON request body (``{"inputs": [...], ...}``)."""
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise InvalidInput('the request needs "inputs": a list of {"name", "shape", "datatype", "data"}')
    out = [_string(1, model), _string(2, version or ""), _string(3, str(payload.get("id") or ""))]
    out.append(_parameters(4, payload.get("parameters"), "request"))
    for i, tensor in enumerate(inputs):
        where = f"inputs[{i}]"
        if not isinstance(tensor, dict):
            raise InvalidInput(f"{where} must be an object")
        name, datatype, shape = tensor.get("name"), tensor.get("datatype"), tensor.get("shape")
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"{where} needs a name")
        if datatype not in _CONTENTS:
            raise InvalidInput(f"{where} {name!r}: datatype {datatype!r} cannot be sent as gRPC contents; use one "
                               f"of {', '.join(_CONTENTS)} (or the REST mode)")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise InvalidInput(f"{where} {name!r}: shape must be a list of non-negative integers")
        values = list(_flatten(tensor.get("data", [])))
        body = [_string(1, name), _string(2, datatype)]
        if shape:
            body.append(_bytes(3, b"".join(varint(d) for d in shape)))
        body.append(_parameters(4, tensor.get("parameters"), where))
        body.append(_bytes(5, _contents(datatype, values, f"{where} {name!r}")))
        out.append(_bytes(5, b"".join(body)))
    for i, wanted in enumerate(payload.get("outputs") or []):
        if not isinstance(wanted, dict) or not isinstance(wanted.get("name"), str):
            raise InvalidInput(f"outputs[{i}] must be an object with a name")
        out.append(_bytes(6, _string(1, wanted["name"]) + _parameters(2, wanted.get("parameters"), f"outputs[{i}]")))
    return b"".join(out)


# ---- reading ----

def fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
    """(field number, wire type, value) for each top-level field: an int for varint/fixed, bytes for length."""
    pos = 0
    end = len(buf)
    while pos < end:
        key, pos = read_varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == _VARINT:
            value, pos = read_varint(buf, pos, end)
        elif wire == _I64:
            if pos + 8 > end:
                raise ProtoError("truncated 64-bit field")
            value, pos = int.from_bytes(buf[pos:pos + 8], "little"), pos + 8
        elif wire == _I32:
            if pos + 4 > end:
                raise ProtoError("truncated 32-bit field")
            value, pos = int.from_bytes(buf[pos:pos + 4], "little"), pos + 4
        elif wire == _LEN:
            length, pos = read_varint(buf, pos, end)
            if pos + length > end:
                raise ProtoError(f"field {number} runs past the end of the message")
            value, pos = buf[pos:pos + length], pos + length
        else:
            raise ProtoError(f"unsupported wire type {wire} for field {number}")
        yield number, wire, value


def _len(wire: int, value: Any, number: int) -> bytes:
    """``value`` of a length-delimited field (string, bytes, message), or ProtoError for another wire type."""
    if wire != _LEN:
        raise ProtoError(f"field {number} should be length-delimited, has wire type {wire}")
    return value  # type: ignore[no-any-return]


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _numbers(kind: str, wire: int, value: Any) -> list[Any]:
    """One occurrence of a repeated numeric field: packed (bytes) or a single value."""
    if kind in ("f32", "f64"):
        code, size, single = ("f", 4, _I32) if kind == "f32" else ("d", 8, _I64)
        packed: bytes = value.to_bytes(size, "little") if wire == single else value
        if wire not in (single, _LEN) or len(packed) % size:
            raise ProtoError(f"malformed {'float' if size == 4 else 'double'} values")
        return list(struct.unpack(f"<{len(packed) // size}{code}", packed))
    if wire not in (_LEN, _VARINT):
        raise ProtoError(f"integer values with wire type {wire}")
    raw: list[int] = []
    if wire == _LEN:
        pos = 0
        while pos < len(value):
            n, pos = read_varint(value, pos, len(value))
            raw.append(n)
    else:
        raw.append(value)
    if kind == "bool":
        return [bool(n) for n in raw]
    if kind == "int":
        return [_signed(n) for n in raw]
    return raw


def _param_value(buf: bytes) -> Any:
    for number, wire, value in fields(buf):
        if number == 3:
            return _len(wire, value, 3).decode()
        if wire == _LEN:
            raise ProtoError(f"parameter field {number} should be a number")
        if number == 1:
            return bool(value)
        if number == 2:
            return _signed(value)
        if number == 4:
            return struct.unpack("<d", value.to_bytes(8, "little"))[0]
    return None


def _read_parameters(entries: list[bytes]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for entry in entries:
        key = ""
        value: Any = None
        for number, wire, v in fields(entry):
            if number == 1:
                key = _len(wire, v, 1).decode()
            elif number == 2:
                value = _param_value(_len(wire, v, 2))
        out[key] = value
    return out


def _output(buf: bytes) -> dict[str, Any]:
    tensor: dict[str, Any] = {"name": "", "datatype": "", "shape": []}
    params: list[bytes] = []
    contents = b""
    for number, wire, value in fields(buf):
        if number == 1:
            tensor["name"] = _len(wire, value, 1).decode()
        elif number == 2:
            tensor["datatype"] = _len(wire, value, 2).decode()
        elif number == 3:
            tensor["shape"] += _numbers("int", wire, value)
        elif number == 4:
            params.append(_len(wire, value, 4))
        elif number == 5:
            contents = _len(wire, value, 5)
    data: list[Any] = []
    kind = _CONTENTS.get(tensor["datatype"], (0, ""))[1]
    for number, wire, value in fields(contents):
        if kind == "bytes" and number == 8:
            data.append(_len(wire, value, 8).decode("utf-8", "replace"))
        elif kind and number == _CONTENTS[tensor["datatype"]][0]:
            data += _numbers(kind, wire, value)
    tensor["data"] = data
    if params:
        tensor["parameters"] = _read_parameters(params)
    return tensor


def decode_infer_response(buf: bytes) -> dict[str, Any]:
    """A ``ModelInferResponse`` as the V2 JSON answer (``model_name``, ``id``, ``outputs`` with ``data``)."""
    answer: dict[str, Any] = {"model_name": "", "outputs": []}
    params: list[bytes] = []
    raw: list[bytes] = []
    try:
        for number, wire, value in fields(buf):
            if number == 1:
                answer["model_name"] = _len(wire, value, 1).decode()
            elif number == 2:
                answer["model_version"] = _len(wire, value, 2).decode()
            elif number == 3:
                answer["id"] = _len(wire, value, 3).decode()
            elif number == 4:
                params.append(_len(wire, value, 4))
            elif number == 5:
                answer["outputs"].append(_output(_len(wire, value, 5)))
            elif number == 6:
                raw.append(_len(wire, value, 6))
        if params:
            answer["parameters"] = _read_parameters(params)
        for tensor, data in zip(answer["outputs"], raw, strict=False):
            tensor["data"] = _from_raw(tensor["datatype"], data)
    except (WireError, UnicodeDecodeError, struct.error) as exc:
        raise ProtoError(f"the answer is not a ModelInferResponse: {exc}") from exc
    return answer


def _from_raw(datatype: str, data: bytes) -> list[Any]:
    if datatype == "BYTES":  # each element: 4-byte little-endian length, then the bytes
        out, pos = [], 0
        while pos + 4 <= len(data):
            n = int.from_bytes(data[pos:pos + 4], "little")
            out.append(data[pos + 4:pos + 4 + n].decode("utf-8", "replace"))
            pos += 4 + n
        return out
    code, size = _RAW.get(datatype, ("", 0))
    if not code:
        raise ProtoError(f"raw output of datatype {datatype!r}")
    return list(struct.unpack(f"<{len(data) // size}{code}", data))
