"""Reading and renaming the model of a gRPC request on the wire, checked against real V2 protobuf messages."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from berth.wire import protowire
from berth.wire.protowire import WireError

pb = pytest.importorskip("mlserver.grpc.dataplane_pb2")


def infer_request(name: str, *, raw: bytes = b"", version: str = "") -> bytes:
    tensor = pb.ModelInferRequest.InferInputTensor(name="input-0", datatype="FP64", shape=[2, 4],
                                                   contents=pb.InferTensorContents(fp64_contents=[1.5] * 8))
    req = pb.ModelInferRequest(model_name=name, model_version=version, id="req-1", inputs=[tensor],
                               raw_input_contents=[raw] if raw else [])
    req.parameters["content_type"].string_param = "np"
    return req.SerializeToString()  # type: ignore[no-any-return]


def test_reads_the_model_name_of_each_routed_request_kind() -> None:
    assert protowire.last_string(infer_request("iris", version="v1"), 1) == "iris"
    assert protowire.last_string(pb.ModelMetadataRequest(name="wine", version="2").SerializeToString(), 1) == "wine"
    assert protowire.last_string(pb.ModelReadyRequest(name="iris2").SerializeToString(), 1) == "iris2"
    assert protowire.last_string(pb.ModelInferRequest().SerializeToString(), 1) is None
    assert protowire.last_string(b"", 1) is None


def test_large_tensors_and_long_names_are_skipped_in_one_step() -> None:
    name = "m" * 300  # a length that needs a two-byte varint
    body = infer_request(name, raw=b"\x00" * 3_000_000)
    assert protowire.last_string(body, 1) == name


def test_appending_field_1_renames_the_model_and_keeps_everything_else() -> None:
    body = infer_request("ab.experiment", version="v3")
    renamed = body + protowire.string_field(1, "iris2")
    assert protowire.last_string(renamed, 1) == "iris2"
    parsed = pb.ModelInferRequest.FromString(renamed)
    original = pb.ModelInferRequest.FromString(body)
    assert parsed.model_name == "iris2"
    original.model_name = "iris2"
    assert parsed == original


@given(st.text(min_size=1, max_size=200))
def test_string_field_round_trips_through_protobuf(name: str) -> None:
    encoded = protowire.string_field(1, name)
    assert pb.ModelReadyRequest.FromString(encoded).name == name
    assert protowire.last_string(encoded, 1) == name


@given(st.integers(min_value=0, max_value=2**63))
def test_varint_matches_protobuf(value: int) -> None:
    from google.protobuf.internal.encoder import _VarintBytes

    assert protowire.varint(value) == _VarintBytes(value)


def test_bools_encode_as_protobuf_does() -> None:
    assert pb.ServerLiveResponse.FromString(protowire.bool_field(1, True)).live is True
    assert protowire.bool_field(1, False) == b"" == pb.ServerReadyResponse(ready=False).SerializeToString()


@pytest.mark.parametrize("garbage, problem", [
    (b"\x0a\x05ab", "runs past the end"),
    (b"\x0a", "truncated"),
    (b"\x0b", "unsupported wire type 3"),
    (b"\x08\xff\xff", "truncated"),
    (b"\x0a\x02\xff\xfe", "not valid UTF-8"),
    (b"\x11\x00\x00", "runs past the end"),
])
def test_malformed_messages_are_wire_errors(garbage: bytes, problem: str) -> None:
    with pytest.raises(WireError, match=problem):
        protowire.last_string(garbage, 1)
