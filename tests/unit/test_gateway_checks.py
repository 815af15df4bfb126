"""Input checks of V2 JSON bodies: malformed JSON, shape against data length, what is left alone."""

from __future__ import annotations

import json
from typing import Any

import pytest

from berth.errors import InvalidInput
from berth.gateway.transports.checks import check_infer_body, is_plain_json


def body(*inputs: dict[str, Any]) -> bytes:
    return json.dumps({"inputs": list(inputs)}).encode()


def tensor(name: str, shape: Any, data: Any) -> dict[str, Any]:
    return {"name": name, "shape": shape, "datatype": "FP64", "data": data}


def test_matching_shapes_pass_flat_nested_and_scalar() -> None:
    check_infer_body(body(tensor("x", [2, 4], [1.0] * 8)), "iris")
    check_infer_body(body(tensor("x", [2, 4], [[1.0] * 4, [2.0] * 4])), "iris")
    check_infer_body(body(tensor("x", [], [3.0]), tensor("y", [0, 4], [])), "iris")
    check_infer_body(body(tensor("s", [2], ["a", "b"])), "iris")


def test_shape_and_data_disagreeing_is_400_naming_the_input() -> None:
    with pytest.raises(InvalidInput) as info:
        check_infer_body(body(tensor("ok", [1], [1]), tensor("x", [2, 4], [1.0] * 7)), "iris")
    err = info.value
    assert err.http_status == 400 and err.code == "InvalidInput"
    assert 'inputs[1] "x": shape [2, 4] needs 8 values, data has 7' in err.message
    assert err.message.startswith("request for model iris: ")
    assert err.details == {"model": "iris", "input": "x", "index": 1, "shape": [2, 4], "expected": 8, "got": 7}
    with pytest.raises(InvalidInput, match=r'inputs\[0\] "x": shape \[2, 4\] needs 8 values, data has 6'):
        check_infer_body(body(tensor("x", [2, 4], [[1.0] * 4, [2.0] * 2])), "iris")


def test_malformed_json_is_400_with_the_position() -> None:
    with pytest.raises(InvalidInput, match=r"request for model iris: the body is not valid JSON: .* at line 1 "
                                           r"column \d+"):
        check_infer_body(b'{"inputs": [', "iris")
    with pytest.raises(InvalidInput, match="not valid JSON"):
        check_infer_body(b"\xff\xfe", "iris")
    with pytest.raises(InvalidInput, match='must be a JSON object with "inputs", not a JSON list'):
        check_infer_body(b"[1, 2]", "iris")


@pytest.mark.parametrize("doc", [
    {"parameters": {}},  # no inputs: the inference server says what it needs
    {"inputs": "nope"},
    {"inputs": [1, {"name": "x"}]},
    {"inputs": [tensor("x", [2, 4], "nope")]},  # data not a list: left to the server
    {"inputs": [tensor("x", [-1, 4], [1.0] * 3)]},  # a dimension the gateway does not judge
    {"inputs": [tensor("x", ["2"], [1.0])]},
])
def test_what_the_gateway_does_not_judge_passes_to_the_server(doc: dict[str, Any]) -> None:
    check_infer_body(json.dumps(doc).encode(), "iris")


@pytest.mark.parametrize("headers, plain", [
    ({}, True),
    ({"Content-Type": "application/json"}, True),
    ({"Content-Type": "application/json; charset=utf-8", "Content-Encoding": "identity"}, True),
    ({"Content-Type": "application/octet-stream"}, False),
    ({"Content-Type": "application/json", "Content-Encoding": "gzip"}, False),
    ({"Inference-Header-Content-Length": "120"}, False),
])
def test_only_plain_json_bodies_are_inspected(headers: dict[str, str], plain: bool) -> None:
    assert is_plain_json(headers) is plain
