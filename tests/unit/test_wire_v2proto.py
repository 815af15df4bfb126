"""V2 JSON <-> ModelInfer protobuf, checked against MLServer's generated classes (the published V2 proto)."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlserver.grpc import dataplane_pb2 as pb

from berth.errors import InvalidInput
from berth.wire.v2proto import ProtoError, decode_infer_response, encode_infer_request

FIELD = {"BOOL": "bool_contents", "INT8": "int_contents", "INT32": "int_contents", "INT64": "int64_contents",
         "UINT8": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents", "FP64": "fp64_contents",
         "BYTES": "bytes_contents"}

VALUES = {
    "BOOL": st.booleans(),
    "INT8": st.integers(-128, 127),
    "INT32": st.integers(-(2**31), 2**31 - 1),
    "INT64": st.integers(-(2**63), 2**63 - 1),
    "UINT8": st.integers(0, 255),
    "UINT64": st.integers(0, 2**64 - 1),
    "FP32": st.floats(width=32, allow_nan=False),
    "FP64": st.floats(allow_nan=False),
    "BYTES": st.text(max_size=8),
}


@st.composite
def tensors(draw: Any) -> dict[str, Any]:
    datatype = draw(st.sampled_from(sorted(VALUES)))
    data = draw(st.lists(VALUES[datatype], max_size=12))
    return {"name": draw(st.text("abcdefgh-_", min_size=1, max_size=6)), "datatype": datatype,
            "shape": [len(data)], "data": data}


@settings(max_examples=150, deadline=None)
@given(inputs=st.lists(tensors(), min_size=1, max_size=3), rid=st.text("abc123", max_size=4))
def test_requests_parse_with_the_published_proto(inputs: list[dict[str, Any]], rid: str) -> None:
    payload = {"id": rid, "inputs": inputs, "parameters": {"content_type": "np", "n": 3, "flag": True}}
    msg = pb.ModelInferRequest.FromString(encode_infer_request("iris", payload, "v2"))
    assert (msg.model_name, msg.model_version, msg.id) == ("iris", "v2", rid)
    assert msg.parameters["content_type"].string_param == "np"
    assert msg.parameters["n"].int64_param == 3 and msg.parameters["flag"].bool_param is True
    for sent, got in zip(inputs, msg.inputs, strict=True):
        assert (got.name, got.datatype, list(got.shape)) == (sent["name"], sent["datatype"], sent["shape"])
        values = list(getattr(got.contents, FIELD[sent["datatype"]]))
        if sent["datatype"] == "BYTES":
            values = [v.decode() for v in values]
        elif sent["datatype"] == "FP32":
            values = [struct.unpack("<f", struct.pack("<f", v))[0] for v in values]
            sent = {**sent, "data": [struct.unpack("<f", struct.pack("<f", v))[0] for v in sent["data"]]}
        assert values == sent["data"]


def test_nested_data_is_flattened_and_input_parameters_kept() -> None:
    payload = {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP64", "data": [[1, 2], [3, 4.5]],
                           "parameters": {"content_type": "np"}}], "outputs": [{"name": "predict"}]}
    msg = pb.ModelInferRequest.FromString(encode_infer_request("m", payload))
    assert list(msg.inputs[0].contents.fp64_contents) == [1.0, 2.0, 3.0, 4.5]
    assert msg.inputs[0].parameters["content_type"].string_param == "np"
    assert msg.outputs[0].name == "predict"


@pytest.mark.parametrize(("payload", "words"), [
    ({}, '"inputs"'),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP16", "data": [1]}]}, "FP16"),
    ({"inputs": [{"name": "x", "shape": [-1], "datatype": "FP64", "data": [1]}]}, "non-negative"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": ["a"]}]}, "not all FP64"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "UINT8", "data": [-1]}]}, "cannot be negative"),
    ({"inputs": [{"shape": [1], "datatype": "FP64", "data": [1]}]}, "needs a name"),
    ({"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1]}], "parameters": {"a": [1]}},
     "parameter value"),
])
def test_bad_requests_say_what_is_wrong(payload: dict[str, Any], words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        encode_infer_request("m", payload)


def test_answers_read_contents_raw_outputs_and_parameters() -> None:
    answer = pb.ModelInferResponse(model_name="iris", model_version="1", id="r1", outputs=[
        pb.ModelInferResponse.InferOutputTensor(name="predict", datatype="INT64", shape=[3, 1],
                                                contents=pb.InferTensorContents(int64_contents=[0, -2, 2**40])),
        pb.ModelInferResponse.InferOutputTensor(name="label", datatype="BYTES", shape=[1],
                                                contents=pb.InferTensorContents(bytes_contents=[b"setosa"])),
    ])
    answer.parameters["content_type"].string_param = "np"
    got = decode_infer_response(answer.SerializeToString())
    assert got["model_name"] == "iris" and got["model_version"] == "1" and got["id"] == "r1"
    assert got["parameters"] == {"content_type": "np"}
    assert got["outputs"][0] == {"name": "predict", "datatype": "INT64", "shape": [3, 1], "data": [0, -2, 2**40]}
    assert got["outputs"][1]["data"] == ["setosa"]
    raw = pb.ModelInferResponse(model_name="m", outputs=[
        pb.ModelInferResponse.InferOutputTensor(name="y", datatype="FP32", shape=[2]),
        pb.ModelInferResponse.InferOutputTensor(name="s", datatype="BYTES", shape=[2])],
        raw_output_contents=[struct.pack("<2f", 1.5, -2.0), b"\x02\x00\x00\x00ab\x01\x00\x00\x00c"])
    got = decode_infer_response(raw.SerializeToString())
    assert got["outputs"][0]["data"] == [1.5, -2.0] and got["outputs"][1]["data"] == ["ab", "c"]


@settings(max_examples=500, deadline=None)
@given(junk=st.one_of(st.binary(max_size=40), st.builds(
    lambda tag, inner: bytes([0x2A, len(inner)]) + inner,  # field 5 (an output) holding junk
    st.none(), st.binary(max_size=60))))
def test_garbage_answers_raise_proto_error_only(junk: bytes) -> None:
    try:
        decode_infer_response(junk)
    except ProtoError:
        pass
