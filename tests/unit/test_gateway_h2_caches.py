"""The header-block caches of the gateway's HPACK code: a remembered block never outlives the dynamic table it
was decoded with, never returns a list a caller can spoil, and never lets a block past a lowered limit."""

from __future__ import annotations

import hpack
import pytest

from berth.gateway.http2 import headerblock
from berth.gateway.http2.headerblock import Decoder, HeaderListTooLarge


def test_a_repeated_block_decodes_the_same_and_each_caller_gets_its_own_list() -> None:
    encoder = hpack.Encoder()
    decoder = Decoder()
    fields = [(b":path", b"/inference.GRPCInferenceService/ModelInfer"), (b"seldon-namespace", b"default")]
    first = decoder.decode(encoder.encode(fields))  # adds seldon-namespace to both tables
    again = encoder.encode(fields)  # indexed only: the block that repeats
    assert decoder.decode(again) == first == fields
    taken = decoder.decode(again)
    taken.append((b"spoiled", b"yes"))
    assert decoder.decode(again) == fields


def test_the_same_bytes_after_the_table_changed_decode_to_what_the_table_now_holds() -> None:
    decoder = Decoder()
    add = b"\x40" + bytes((3,)) + b"key" + bytes((3,)) + b"one"  # literal with indexing: table[62] = key: one
    decoder.decode(add)
    newest = b"\xbe"  # indexed 62: the newest dynamic entry
    assert decoder.decode(newest) == [(b"key", b"one")]
    decoder.decode(b"\x40" + bytes((3,)) + b"key" + bytes((3,)) + b"two")
    assert decoder.decode(newest) == [(b"key", b"two")]
    decoder.decode(b"\x20")  # a size update to 0 empties the table: the entry is gone
    with pytest.raises(headerblock.HeaderError):
        decoder.decode(newest)


def test_a_remembered_block_is_refused_once_the_limit_is_lowered_below_it() -> None:
    decoder = Decoder()
    block = headerblock.encode([(b"x-meta", b"v" * 100)])
    assert decoder.decode(block) == [(b"x-meta", b"v" * 100)]
    decoder.max_list_size = 64
    with pytest.raises(HeaderListTooLarge):
        decoder.decode(block)


def test_blocks_over_the_limit_or_large_are_never_remembered() -> None:
    decoder = Decoder(max_list_size=64)
    block = headerblock.encode([(b"x-meta", b"v" * 100)])
    for _ in range(2):
        with pytest.raises(HeaderListTooLarge):
            decoder.decode(block)
    big = headerblock.encode([(b"x-big", b"v" * 1000)])
    roomy = Decoder()
    assert roomy.decode(big) == roomy.decode(big) == [(b"x-big", b"v" * 1000)]
    assert big not in roomy._blocks


def test_encoded_blocks_are_the_same_bytes_whether_remembered_or_not() -> None:
    fields = [(b":status", b"200"), (b"content-type", b"application/grpc"), (b"x-seldon-route", b":iris:")]
    first = headerblock.encode(fields)
    assert headerblock.encode(list(fields)) == first
    assert hpack.Decoder().decode(first, raw=True) == fields
    large = [(b"x-big", b"v" * 2000)]
    assert hpack.Decoder().decode(headerblock.encode(large), raw=True) == large
    assert tuple(large) not in headerblock._ENCODED
