"""HPACK header blocks (berth.gateway.http2.headerblock) checked against the ``hpack`` package and
RFC 7541 Appendix C."""

from __future__ import annotations

import hpack
import pytest
from hpack.exceptions import HPACKDecodingError
from hpack.hpack import encode_integer
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from berth.gateway.http2 import headerblock
from berth.gateway.http2.headerblock import STATIC, Decoder, Field, HeaderError

PROPS = settings(max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_STATIC_NAMES = sorted({name for name, _ in STATIC})
_STATIC_VALUES = sorted({value for _, value in STATIC if value})

names = st.one_of(
    st.sampled_from(_STATIC_NAMES),
    st.text("abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=24).map(str.encode),
    st.sampled_from([b"grpc-status", b"grpc-message", b"grpc-encoding", b"x-berth-route", b"te"]),
)
values = st.one_of(
    st.sampled_from(_STATIC_VALUES),
    st.binary(max_size=40),
    st.binary(min_size=120, max_size=400),  # lengths that need more than one byte
)
fields = st.lists(st.tuples(names, values), max_size=12)
# a field list that repeats itself, so that hpack's encoder refers back to its dynamic table
repeating = st.lists(st.tuples(names, values), min_size=1, max_size=6).flatmap(
    lambda pool: st.lists(st.sampled_from(pool), max_size=14))


def hpack_decoder() -> hpack.Decoder:
    decoder = hpack.Decoder()
    decoder.max_header_list_size = 1 << 30
    return decoder


def hpack_decode(decoder: hpack.Decoder, block: bytes) -> list[Field]:
    return [(bytes(name), bytes(value)) for name, value in decoder.decode(block, raw=True)]


def indexed(index: int) -> bytes:
    encoded = encode_integer(index, 7)
    encoded[0] |= 0x80
    return bytes(encoded)


def size_update(size: int) -> bytes:
    encoded = encode_integer(size, 5)
    encoded[0] |= 0x20
    return bytes(encoded)


def set_table_size(encoder: hpack.Encoder, size: int) -> None:
    # hpack 4.2 forgets a pending size update when the size is set again to the same value, and then writes blocks
    # for a table its peer does not have (hpack's own Decoder fails on them too): so only real changes are made
    if size != encoder.header_table_size:
        encoder.header_table_size = size


# ---- (a) blocks from hpack's encoder decode to the same fields ----

block_plans = st.lists(
    st.tuples(
        st.one_of(fields, repeating),
        st.lists(st.booleans(), max_size=14),  # which fields are sensitive (never indexed)
        st.booleans(),  # Huffman
        st.lists(st.sampled_from([0, 32, 100, 256, 1000, 4096, 8192]), max_size=2),  # table size changes before it
    ),
    min_size=1,
    max_size=6,
)


@PROPS
@given(plan=block_plans)
def test_blocks_from_hpacks_encoder_decode_to_the_same_fields(
        plan: list[tuple[list[Field], list[bool], bool, list[int]]]) -> None:
    encoder = hpack.Encoder()
    decoder = Decoder()
    for block_fields, sensitive, huffman, sizes in plan:
        for size in sizes:
            set_table_size(encoder, min(size, 4096))
        tuples = [(name, value, i < len(sensitive) and sensitive[i]) for i, (name, value) in enumerate(block_fields)]
        block = encoder.encode(tuples, huffman=huffman)
        assert decoder.decode(block) == block_fields
    # the dynamic tables agree entry for entry, and the entry past the encoder's last one is gone here too
    entries = list(encoder.header_table.dynamic_entries)
    assert [decoder.decode(indexed(62 + i))[0] for i in range(len(entries))] == entries
    with pytest.raises(HeaderError):
        decoder.decode(indexed(62 + len(entries)))


@PROPS
@given(plan=block_plans, limit=st.sampled_from([256, 1000, 8192]))
def test_a_decoder_limit_other_than_4096_follows_the_encoders_size_updates(
        plan: list[tuple[list[Field], list[bool], bool, list[int]]], limit: int) -> None:
    encoder = hpack.Encoder()
    encoder.header_table_size = min(limit, 4096)  # what an HTTP/2 encoder does after our SETTINGS_HEADER_TABLE_SIZE
    decoder = Decoder(limit)
    for block_fields, _, huffman, sizes in plan:
        for size in sizes:
            set_table_size(encoder, min(size, limit))
        assert decoder.decode(encoder.encode(block_fields, huffman=huffman)) == block_fields


@PROPS
@given(block_fields=st.lists(st.tuples(names, values), min_size=1, max_size=6), over=st.integers(1, 5000))
def test_a_size_update_above_the_limit_is_refused(block_fields: list[Field], over: int) -> None:
    encoder = hpack.Encoder()
    encoder.header_table_size = 4096 + over
    with pytest.raises(HeaderError):
        Decoder().decode(encoder.encode(block_fields))


# ---- (b) our encoder's blocks decode with hpack's decoder ----

@PROPS
@given(blocks=st.lists(st.one_of(fields, repeating), min_size=1, max_size=6))
def test_our_blocks_decode_with_hpacks_decoder(blocks: list[list[Field]]) -> None:
    theirs = hpack_decoder()
    ours = Decoder()
    fresh_table_each_time = Decoder(0)  # our blocks never need a dynamic table
    for block_fields in blocks:
        block = headerblock.encode(block_fields)
        assert block.startswith(headerblock.SIZE_ZERO)
        assert hpack_decode(theirs, block) == block_fields
        assert ours.decode(block) == block_fields
        assert fresh_table_each_time.decode(block) == block_fields
        assert theirs.header_table_size == 0
        assert len(theirs.header_table.dynamic_entries) == 0  # nothing was indexed


@PROPS
@given(field=st.tuples(names, values))
def test_encode_field_is_the_same_bytes_each_time_and_decodes_alone(field: Field) -> None:
    first = headerblock.encode_field(field)
    assert headerblock.encode_field(field) == first
    assert hpack_decode(hpack_decoder(), first) == [field]
    assert headerblock.encode([field]) == headerblock.SIZE_ZERO + first


def test_encoder_uses_the_static_table() -> None:
    assert headerblock.encode([(b":method", b"POST")]) == b"\x20\x83"
    assert headerblock.encode([(b":status", b"200")]) == b"\x20\x88"
    # name from the static table (content-type is 31), value as a plain literal, not indexed
    assert headerblock.encode([(b"content-type", b"application/grpc")]) == b"\x20\x0f\x10\x10application/grpc"
    assert headerblock.encode([(b"grpc-status", b"0")]) == b"\x20\x00\x0bgrpc-status\x010"
    assert headerblock.encode([]) == b"\x20"


# ---- (c) malformed blocks raise HeaderError and nothing else ----

@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=64))
def test_arbitrary_bytes_decode_or_raise_header_error(data: bytes) -> None:
    try:
        decoded = Decoder().decode(data)
    except HeaderError:
        decoded = None
    try:
        expected: list[Field] | None = hpack_decode(hpack_decoder(), data)
    except HPACKDecodingError:
        expected = None
    assert decoded == expected


@PROPS
@given(block_fields=st.one_of(fields, repeating), huffman=st.booleans(), data=st.data())
def test_corrupted_hpack_blocks_raise_header_error_or_decode(block_fields: list[Field], huffman: bool,
                                                             data: st.DataObject) -> None:
    block = bytearray(hpack.Encoder().encode(block_fields, huffman=huffman))
    for _ in range(data.draw(st.integers(1, 4))):
        if not block:
            break
        i = data.draw(st.integers(0, len(block) - 1))
        block[i] = data.draw(st.integers(0, 255))
    decoder = Decoder()
    try:
        decoded = decoder.decode(bytes(block))
    except HeaderError:
        return
    assert all(isinstance(n, bytes) and isinstance(v, bytes) for n, v in decoded)


@PROPS
@given(block_fields=st.lists(st.tuples(names, values), min_size=1, max_size=8), huffman=st.booleans(),
       data=st.data())
def test_a_truncated_block_decodes_to_a_prefix_of_its_fields_or_raises(block_fields: list[Field], huffman: bool,
                                                                       data: st.DataObject) -> None:
    block = hpack.Encoder().encode(block_fields, huffman=huffman)
    cut = data.draw(st.integers(0, len(block) - 1))
    try:
        decoded = Decoder().decode(block[:cut])
    except HeaderError:
        return
    assert decoded == block_fields[:len(decoded)]
    assert len(decoded) < len(block_fields)


@PROPS
@given(block_fields=st.lists(st.tuples(names, values), min_size=1, max_size=8), data=st.data())
def test_our_block_cut_inside_a_field_always_raises(block_fields: list[Field], data: st.DataObject) -> None:
    parts = [headerblock.encode_field(f) for f in block_fields]
    block = headerblock.encode(block_fields)
    boundaries = {1}
    for part in parts:
        boundaries.add(max(boundaries) + len(part))
    inside = [c for c in range(1, len(block)) if c not in boundaries]
    assume(inside)
    cut = data.draw(st.sampled_from(inside))
    with pytest.raises(HeaderError):
        Decoder().decode(block[:cut])


@pytest.mark.parametrize("block", [
    pytest.param(b"\x80", id="index-0"),
    pytest.param(b"\xbe", id="index-62-with-an-empty-table"),
    pytest.param(b"\xff\x80\x80\x80\x80\x80\x80\x01", id="integer-too-long"),
    pytest.param(b"\xff", id="integer-cut-off"),
    pytest.param(b"\x7f\x00\x01a", id="indexed-literal-name-index-63-out-of-range"),
    pytest.param(b"\x0f\x30\x01a", id="never-indexed-name-index-63-out-of-range"),
    pytest.param(b"\x40", id="literal-without-its-name"),
    pytest.param(b"\x40\x05ab", id="name-longer-than-the-block"),
    pytest.param(b"\x04", id="literal-without-its-value"),
    pytest.param(b"\x04\x7f", id="value-length-cut-off"),
    pytest.param(b"\x04\x03ab", id="value-longer-than-the-block"),
    pytest.param(size_update(4097), id="size-update-above-4096"),
    pytest.param(b"\x82" + size_update(1 << 20), id="huge-size-update-after-a-field"),
    pytest.param(b"\x00\x84\xff\xff\xff\xff\x01a", id="huffman-name-holding-eos"),
    pytest.param(b"\x00\x01a\x81\x18", id="huffman-padding-not-ones"),
    pytest.param(b"\x00\x01a\x82\x1f\xff", id="huffman-padding-longer-than-7-bits"),
    pytest.param(b"\x04\x81\x00", id="huffman-value-cut-inside-a-symbol"),
])
def test_malformed_blocks_raise_header_error(block: bytes) -> None:
    with pytest.raises(HeaderError):
        Decoder().decode(block)
    with pytest.raises(HPACKDecodingError):  # hpack agrees that the block is bad
        hpack_decode(hpack_decoder(), block)


def test_dynamic_table_indexes_and_bounds() -> None:
    decoder = Decoder()
    assert decoder.decode(b"\x40\x01a\x01b" + b"\x40\x01c\x01d") == [(b"a", b"b"), (b"c", b"d")]
    assert decoder.decode(b"\xbe\xbf") == [(b"c", b"d"), (b"a", b"b")]  # newest first
    with pytest.raises(HeaderError):
        decoder.decode(b"\xc0")
    assert decoder.decode(size_update(34)) == []  # room for one 34-byte entry: the older one goes
    assert decoder.decode(b"\xbe") == [(b"c", b"d")]
    with pytest.raises(HeaderError):
        decoder.decode(b"\xbf")
    assert decoder.decode(b"\x40\x01e\x02ff") == [(b"e", b"ff")]  # 35 bytes: larger than the table, so it empties it
    with pytest.raises(HeaderError):
        decoder.decode(b"\xbe")
    assert decoder.decode(size_update(4096) + b"\x40\x01c\x01d" + b"\x7e\x01g") == [(b"c", b"d"), (b"c", b"g")]
    assert decoder.decode(b"\xbe\xbf") == [(b"c", b"g"), (b"c", b"d")]


def test_a_name_is_taken_from_the_entry_that_its_own_insertion_evicts() -> None:
    decoder = Decoder()
    assert decoder.decode(size_update(68) + b"\x40\x01a\x01b" + b"\x40\x01c\x01d") == [(b"a", b"b"), (b"c", b"d")]
    assert decoder.decode(b"\x7f\x00\x01x") == [(b"a", b"x")]  # name of entry 63, (a, b), which goes to make room
    assert decoder.decode(b"\xbe\xbf") == [(b"a", b"x"), (b"c", b"d")]
    with pytest.raises(HeaderError):
        decoder.decode(b"\xc0")


def test_the_same_huffman_string_decodes_alike_each_time() -> None:
    encoder = hpack.Encoder()
    block = encoder.encode([(b"x-custom", b"some value")], huffman=True)
    decoder = Decoder()
    for _ in range(3):
        assert decoder.decode(bytes([0x00]) + block[1:]) == [(b"x-custom", b"some value")]


# ---- RFC 7541 Appendix C ----

REQUESTS_C3 = [
    (bytes.fromhex("828684410f7777772e6578616d706c652e636f6d"),
     [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"www.example.com")]),
    (bytes.fromhex("828684be58086e6f2d6361636865"),
     [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":authority", b"www.example.com"),
      (b"cache-control", b"no-cache")]),
    (bytes.fromhex("828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565"),
     [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/index.html"), (b":authority", b"www.example.com"),
      (b"custom-key", b"custom-value")]),
]
REQUESTS_C4 = [  # the same requests, with Huffman coding
    (bytes.fromhex("828684418cf1e3c2e5f23a6ba0ab90f4ff"), REQUESTS_C3[0][1]),
    (bytes.fromhex("828684be5886a8eb10649cbf"), REQUESTS_C3[1][1]),
    (bytes.fromhex("828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf"), REQUESTS_C3[2][1]),
]
DATE1 = b"Mon, 21 Oct 2013 20:13:21 GMT"
DATE2 = b"Mon, 21 Oct 2013 20:13:22 GMT"
COOKIE = b"foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"
RESPONSES_C5 = [  # a 256-byte table, so entries are evicted
    (b"\x48\x03302\x58\x07private\x61\x1d" + DATE1 + b"\x6e\x17https://www.example.com",
     [(b":status", b"302"), (b"cache-control", b"private"), (b"date", DATE1),
      (b"location", b"https://www.example.com")]),
    (b"\x48\x03307\xc1\xc0\xbf",
     [(b":status", b"307"), (b"cache-control", b"private"), (b"date", DATE1),
      (b"location", b"https://www.example.com")]),
    (b"\x88\xc1\x61\x1d" + DATE2 + b"\xc0\x5a\x04gzip\x77\x38" + COOKIE,
     [(b":status", b"200"), (b"cache-control", b"private"), (b"date", DATE2),
      (b"location", b"https://www.example.com"), (b"content-encoding", b"gzip"), (b"set-cookie", COOKIE)]),
]


@pytest.mark.parametrize("examples", [REQUESTS_C3, REQUESTS_C4], ids=["C3-plain", "C4-huffman"])
def test_rfc7541_request_examples(examples: list[tuple[bytes, list[Field]]]) -> None:
    ours = Decoder()
    theirs = hpack_decoder()
    for block, expected in examples:
        assert hpack_decode(theirs, block) == expected  # the example bytes are right
        assert ours.decode(block) == expected
    # the table now holds, newest first: custom-key, cache-control, :authority (RFC 7541 C.3.3)
    assert ours.decode(b"\xbe\xbf\xc0") == [(b"custom-key", b"custom-value"), (b"cache-control", b"no-cache"),
                                            (b":authority", b"www.example.com")]
    with pytest.raises(HeaderError):
        ours.decode(b"\xc1")


def test_rfc7541_response_examples_evict_from_a_256_byte_table() -> None:
    ours = Decoder(256)
    theirs = hpack_decoder()
    theirs.header_table_size = 256
    for block, expected in RESPONSES_C5:
        assert hpack_decode(theirs, block) == expected
        assert ours.decode(block) == expected
    # 215 bytes left, newest first (RFC 7541 C.5.3)
    assert ours.decode(b"\xbe\xbf\xc0") == [(b"set-cookie", COOKIE), (b"content-encoding", b"gzip"), (b"date", DATE2)]
    with pytest.raises(HeaderError):
        ours.decode(b"\xc1")
