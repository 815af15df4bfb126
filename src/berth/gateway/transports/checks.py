"""Cheap checks of a V2 REST inference request before it is forwarded.

Only a JSON body is inspected (no ``Content-Encoding``, no binary-tensor extension, a JSON or absent
``Content-Type``): it must parse, no input's ``shape`` may have more than MAX_SHAPE_DIMS dimensions, and
every input whose ``shape`` is a list of non-negative integers must hold at most 2**63-1 elements (the V2
shape is int64) and, when its ``data`` is a list, exactly as many values as the shape needs.  Every check is
linear in the body: the shape is bounded before anything is multiplied, the product stops at the int64
bound, the common case, flat data, costs one ``len``, and only data of another length is counted through
its nested lists (iteratively: no depth limit).  Each refusal is a 400 ``InvalidInput`` naming the input.
The body itself is forwarded as received, never re-encoded.  Anything else about the request is left to the
inference server, whose own answer passes through.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from berth.errors import InvalidInput

try:  # orjson parses several times faster; it comes with MLServer
    import orjson

    _loads: Callable[[bytes], Any] = orjson.loads
except ImportError:  # pragma: no cover - exercised where orjson is absent
    _loads = json.loads


def is_plain_json(headers: Mapping[str, str]) -> bool:
    """Whether the body is plain JSON the gateway can read (not compressed, not binary tensors)."""
    ctype = headers.get("Content-Type")
    if ctype is not None and "json" not in ctype:
        return False
    encoding = headers.get("Content-Encoding")
    if encoding is not None and encoding != "identity":
        return False
    return "Inference-Header-Content-Length" not in headers


def check_infer_body(body: bytes, model: str) -> None:
    """Raise InvalidInput when ``body`` is not JSON, or an input's data does not fill its shape."""
    try:
        doc = _loads(body)
    except ValueError as exc:
        where = ""
        if isinstance(exc, json.JSONDecodeError):
            where = f" at line {exc.lineno} column {exc.colno}"
            reason = exc.msg
        else:
            reason = str(exc)
        raise InvalidInput(f"request for model {model}: the body is not valid JSON: {reason}{where}; send a V2 "
                           'inference request like {"inputs": [{"name": ..., "shape": ..., "datatype": ..., '
                           '"data": ...}]}', details={"model": model, "error": reason}) from None
    if not isinstance(doc, dict):
        raise InvalidInput(f"request for model {model}: the body must be a JSON object with \"inputs\", "
                           f"not a JSON {type(doc).__name__}", details={"model": model})
    inputs = doc.get("inputs")
    if not isinstance(inputs, list):
        return
    for i, item in enumerate(inputs):
        if not isinstance(item, dict):
            continue
        shape = item.get("shape")
        if type(shape) is not list:
            continue
        if len(shape) > MAX_SHAPE_DIMS:
            _refuse(model, i, item.get("name"), f"shape has {len(shape)} dimensions, above the limit of "
                    f"{MAX_SHAPE_DIMS}", {"dimensions": len(shape), "limit": MAX_SHAPE_DIMS})
        need = _elements(shape)
        if need is None:  # a dimension the gateway does not judge (-1, "2"): left to the server
            continue
        if need > MAX_ELEMENTS:
            _refuse(model, i, item.get("name"), f"shape {_text(shape)} holds more than {MAX_ELEMENTS} (2**63-1) "
                    "elements, the most an int64 shape can count", {"shape": shape, "limit": MAX_ELEMENTS})
        data = item.get("data")
        if type(data) is list and len(data) != need:
            _check_count(model, i, item.get("name"), shape, need, data)


MAX_SHAPE_DIMS = 32  # dimensions of one input's shape (numpy allows 64, most frameworks fewer)
MAX_ELEMENTS = (1 << 63) - 1  # elements of one input: the V2 shape is int64


def _elements(shape: list[Any]) -> int | None:
    """The product of a shape of at most MAX_SHAPE_DIMS non-negative integers, cut off just above
    MAX_ELEMENTS (so never a big number); None when a dimension is not a non-negative integer."""
    for dim in shape:
        if type(dim) is not int or dim < 0:
            return None
    if 0 in shape:
        return 0
    need = 1
    for dim in shape:
        need *= min(dim, MAX_ELEMENTS + 1)
        if need > MAX_ELEMENTS:
            return MAX_ELEMENTS + 1
    return need


def _text(shape: list[Any]) -> str:
    text = str(shape)
    return text if len(text) <= 200 else text[:197] + "..."


def _label(index: int, name: Any) -> str:
    return f'inputs[{index}] "{name}"' if isinstance(name, str) else f"inputs[{index}]"


def _refuse(model: str, index: int, name: Any, what: str, details: dict[str, Any]) -> None:
    raise InvalidInput(f"request for model {model}: {_label(index, name)}: {what}",
                       details={"model": model, "input": name, "index": index, **details})


def _check_count(model: str, index: int, name: Any, shape: list[int], need: int, data: list[Any]) -> None:
    have = _count(data)
    if have == need:
        return
    raise InvalidInput(
        f"request for model {model}: {_label(index, name)}: shape {_text(shape)} needs {need} values, data has "
        f"{have}; make the shape match the data",
        details={"model": model, "input": name, "index": index, "shape": shape, "expected": need, "got": have})


def _count(data: list[Any]) -> int:
    """The values in nested lists, without recursion (a deeply nested body cannot exhaust the stack)."""
    total = 0
    stack = [iter(data)]
    while stack:
        for value in stack[-1]:
            if type(value) is list:
                stack.append(iter(value))
                break
            total += 1
        else:
            stack.pop()
    return total
