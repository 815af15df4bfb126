"""V2 REST input checks stay linear in the request: many dimensions, int64 overflow, shape/data mismatch and
deep nesting are each a 400 InvalidInput naming the input (never a 500), and a normal request is unchanged."""

from __future__ import annotations

import json
import time
from typing import Any

import orjson
import pytest

from berth.errors import InvalidInput
from berth.gateway.transports.checks import MAX_SHAPE_DIMS, check_infer_body


def body(*inputs: dict[str, Any]) -> bytes:
    return json.dumps({"inputs": list(inputs)}).encode()


def tensor(name: str, shape: Any, data: Any) -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": "FP64", "data": data}


def refused(raw: bytes) -> InvalidInput:
    started = time.perf_counter()
    with pytest.raises(InvalidInput) as info:
        check_infer_body(raw, "iris")
    assert time.perf_counter() - started < 0.05
    err = info.value
    assert err.http_status == 400 and err.code == "InvalidInput"
    orjson.dumps(err.to_dict())  # the answer can be written (no int beyond 64 bits, nothing unserialisable)
    return err


def test_thousands_of_dimensions_are_refused_fast() -> None:
    err = refused(body(tensor("x", [2] * 5000, [1.0] * 4)))
    assert err.message == 'request for model iris: inputs[0] "x": shape has 5000 dimensions, above the limit of 32'
    assert err.details == {"model": "iris", "input": "x", "index": 0, "dimensions": 5000, "limit": 32}
    refused(body(tensor("x", [1] * 100_000, [1.0])))  # even where the product is small
    refused(body(tensor("x", ["a"] * 5000, "nope")))  # and whatever the dimensions or the data are
    check_infer_body(body(tensor("x", [1] * MAX_SHAPE_DIMS, [1.0])), "iris")  # exactly the limit passes


def test_a_product_beyond_int64_is_refused_naming_the_input() -> None:
    err = refused(body(tensor("ok", [1], [1.0]), tensor("big", [2**32, 2**32], [1.0])))
    assert err.message == ('request for model iris: inputs[1] "big": shape [4294967296, 4294967296] holds more '
                           "than 9223372036854775807 (2**63-1) elements, the most an int64 shape can count")
    assert err.details["limit"] == 2**63 - 1 and err.details["index"] == 1
    refused(body(tensor("big", [2**63 - 1, 2], "nope")))  # data not a list: the shape is still judged
    refused(body(tensor("big", [2**64 - 1], [1.0])))  # one dimension beyond int64 (orjson reads up to uint64)
    check_infer_body(body(tensor("empty", [2**62, 2**62, 0], [])), "iris")  # a zero makes it empty, not huge


def test_shape_and_data_disagreeing_is_refused_naming_the_input() -> None:
    err = refused(body(tensor("x", [3, 2**40], [1.0] * 6)))
    assert err.message == ('request for model iris: inputs[0] "x": shape [3, 1099511627776] needs 3298534883328 '
                           "values, data has 6; make the shape match the data")
    assert err.details["expected"] == 3 * 2**40 and err.details["got"] == 6


def test_deeply_nested_data_is_counted_without_recursion() -> None:
    deep = "[" * 1000 + "1.0" + "]" * 1000  # orjson reads up to 1024 levels; Python recursion stops at 1000
    raw = ('{"inputs": [{"name": "x", "shape": [2], "datatype": "FP64", "data": ' + deep + "}]}").encode()
    with pytest.raises(InvalidInput, match=r'inputs\[0\] "x": shape \[2\] needs 2 values, data has 1'):
        check_infer_body(raw, "iris")


def test_a_normal_request_is_unchanged() -> None:
    check_infer_body(body(tensor("x", [4, 8], [[0.5] * 8] * 4), tensor("y", [32], [1] * 32)), "iris")
    check_infer_body(body(tensor("x", [-1, 4], [1.0] * 3)), "iris")  # not judged here: the server answers
