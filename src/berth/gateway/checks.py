"""Cheap checks of a V2 REST inference request before it is forwarded.

Only a JSON body is inspected (no ``Content-Encoding``, no binary-tensor extension, a JSON or absent
``Content-Type``): it must parse, and every input whose ``shape`` is a list of non-negative integers
and whose ``data`` is a list must hold as many values as the shape needs.  The common case, flat data,
costs one ``len``; only data of another length is counted through its nested lists.  The body itself
is forwarded as received, never re-encoded.  Anything else about the request is left to the inference
server, whose own answer passes through.
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
        data = item.get("data")
        if type(shape) is not list or type(data) is not list:
            continue
        need = 1
        for dim in shape:
            if type(dim) is not int or dim < 0:
                break
            need *= dim
        else:
            if len(data) != need:
                _check_count(model, i, item.get("name"), shape, need, data)


def _check_count(model: str, index: int, name: Any, shape: list[int], need: int, data: list[Any]) -> None:
    have = _count(data)
    if have == need:
        return
    label = f'inputs[{index}] "{name}"' if isinstance(name, str) else f"inputs[{index}]"
    raise InvalidInput(
        f"request for model {model}: {label}: shape {shape} needs {need} values, data has {have}; "
        "make the shape match the data",
        details={"model": model, "input": name, "index": index, "shape": shape, "expected": need, "got": have})


def _count(data: list[Any]) -> int:
    total = 0
    for value in data:
        total += _count(value) if type(value) is list else 1
    return total
