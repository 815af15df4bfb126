"""HPACK (RFC 7541) header blocks for the gateway's HTTP/2 data path.

The decoder is complete (static and dynamic table, size updates, Huffman strings) and fast where gRPC
traffic repeats itself: Huffman-coded strings are decoded once and remembered.  The encoder never
indexes: every block it writes starts by setting its dynamic table to size 0, names come from the
static table where they can, and values go as plain literals.  Such a block depends on no state, so
encoding a field is a dictionary look-up after the first time, and a peer's table settings never
matter.  Only the Huffman table comes from the ``hpack`` package.
"""

from __future__ import annotations

from collections import deque

from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

Field = tuple[bytes, bytes]
STATIC: tuple[Field, ...] = HeaderTable.STATIC_TABLE
_STATIC_FULL = {field: i + 1 for i, field in enumerate(STATIC) if field[1]}
_STATIC_NAME: dict[bytes, int] = {}
for _i, (_name, _) in enumerate(STATIC):
    _STATIC_NAME.setdefault(_name, _i + 1)
_ENTRY_OVERHEAD = 32
_CACHE_MAX = 4096
# Decoded blocks remembered per decoder: a peer that repeats itself (every gRPC client and server, once its dynamic
# table holds its metadata) sends the same few bytes per call.  Small blocks only, a few of them: per connection
# this holds at most _BLOCKS_MAX * _BLOCK_BYTES bytes of keys.
_BLOCKS_MAX = 32
_BLOCK_BYTES = 256


class HeaderError(ValueError):
    """A header block that does not decode (a COMPRESSION_ERROR in HTTP/2 terms)."""


class HeaderListTooLarge(ValueError):
    """A header block that decodes to more than the decoder's ``max_list_size`` (RFC 7541 sizes).  The block
    was decoded to its end (so the dynamic table stays in step with the peer's) but no field of it was kept."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"the header list is over {limit} bytes (at least {size}; each field counts its name, "
                         "value and 32)")
        self.size = size
        self.limit = limit


def _integer(data: bytes, pos: int, bits: int) -> tuple[int, int]:
    mask = (1 << bits) - 1
    value = data[pos] & mask
    pos += 1
    if value < mask:
        return value, pos
    shift = 0
    while True:
        if pos >= len(data):
            raise HeaderError("header block ends inside an integer")
        byte = data[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift > 28:
            raise HeaderError("integer in header block is too large")


class Decoder:
    """One per connection direction: decodes the blocks a peer sends, keeping its dynamic table."""

    __slots__ = ("_table", "_size", "_max", "limit", "_huffman", "max_list_size", "_version", "_blocks")

    def __init__(self, limit: int = 4096, max_list_size: int = 1 << 30) -> None:
        self._table: deque[Field] = deque()  # newest first: index 62 is _table[0]
        self._size = 0
        self._max = limit
        self.limit = limit  # what our SETTINGS_HEADER_TABLE_SIZE allows the peer
        self.max_list_size = max_list_size  # what our SETTINGS_MAX_HEADER_LIST_SIZE allows the peer
        self._huffman: dict[bytes, bytes] = {}
        self._version = 0  # changes with every change of the dynamic table
        # block -> (the table's version it was decoded at, its list size, its fields): valid while the table is
        # unchanged
        self._blocks: dict[bytes, tuple[int, int, tuple[Field, ...]]] = {}

    def _string(self, data: bytes, pos: int) -> tuple[bytes, int]:
        if pos >= len(data):
            raise HeaderError("header block ends before a string")
        huffman = data[pos] & 0x80
        length, pos = _integer(data, pos, 7)
        end = pos + length
        if end > len(data):
            raise HeaderError("string runs past the end of the header block")
        raw = data[pos:end]
        if not huffman:
            return raw, end
        text = self._huffman.get(raw)
        if text is None:
            try:
                text = decode_huffman(raw)
            except Exception as exc:  # hpack raises its own HPACKDecodingError
                raise HeaderError(f"bad Huffman string in header block: {exc}") from exc
            if len(self._huffman) >= _CACHE_MAX:
                self._huffman.clear()
            self._huffman[raw] = text
        return text, end

    def _lookup(self, index: int) -> Field:
        if 0 < index <= 61:
            return STATIC[index - 1]
        try:
            if index > 61:
                return self._table[index - 62]
        except IndexError:
            pass
        raise HeaderError(f"header block refers to table entry {index}, which does not exist")

    def _add(self, field: Field) -> None:
        size = len(field[0]) + len(field[1]) + _ENTRY_OVERHEAD
        table = self._table
        while table and self._size + size > self._max:
            old = table.pop()
            self._size -= len(old[0]) + len(old[1]) + _ENTRY_OVERHEAD
        if size <= self._max:
            table.appendleft(field)
            self._size += size
        self._version += 1

    def _resize(self, size: int) -> None:
        if size > self.limit:
            raise HeaderError(f"dynamic table size {size} exceeds the {self.limit} allowed")
        self._max = size
        self._version += 1
        table = self._table
        while table and self._size > size:
            old = table.pop()
            self._size -= len(old[0]) + len(old[1]) + _ENTRY_OVERHEAD

    def decode(self, data: bytes) -> list[Field]:
        """The fields of one complete header block, in order; :class:`HeaderListTooLarge` when they add up to
        more than ``max_list_size`` (counted as they are decoded: an over-long list is never held).

        A block that neither changes the dynamic table nor goes over the limit is remembered with the table's
        version: the same bytes at the same version decode to the same fields, so the next time it costs one
        look-up (its size is checked against ``max_list_size`` again, in case the limit was lowered since)."""
        version = self._version
        known = self._blocks.get(data)
        if known is not None and known[0] == version and known[1] <= self.max_list_size:
            return list(known[2])
        fields: list[Field] = []
        pos = 0
        end = len(data)
        total = 0
        limit = self.max_list_size
        while pos < end:
            byte = data[pos]
            if byte & 0x80:  # indexed field
                index, pos = _integer(data, pos, 7)
                field = self._lookup(index)
                total += len(field[0]) + len(field[1]) + _ENTRY_OVERHEAD
                if total > limit:
                    fields.clear()  # keep decoding (the table must stay in step), keep nothing
                    continue
                fields.append(field)
                continue
            if byte & 0x40:  # literal, added to the table
                index, pos = _integer(data, pos, 6)
                indexed = True
            elif byte & 0x20:  # dynamic table size update
                if total:
                    raise HeaderError("dynamic table size update after a header field (RFC 7541 4.2)")
                size, pos = _integer(data, pos, 5)
                self._resize(size)
                continue
            else:  # literal, not indexed / never indexed
                index, pos = _integer(data, pos, 4)
                indexed = False
            if index:
                name = self._lookup(index)[0]
            else:
                name, pos = self._string(data, pos)
            value, pos = self._string(data, pos)
            field = (name, value)
            if indexed:
                self._add(field)
            total += len(name) + len(value) + _ENTRY_OVERHEAD
            if total > limit:
                fields.clear()
                continue
            fields.append(field)
        if total > limit:
            raise HeaderListTooLarge(total, limit)
        if self._version == version and end <= _BLOCK_BYTES:
            blocks = self._blocks
            if len(blocks) >= _BLOCKS_MAX:
                blocks.clear()
            blocks[data] = (version, total, tuple(fields))
        return fields


def _length(value: int, bits: int, flags: int) -> bytes:
    mask = (1 << bits) - 1
    if value < mask:
        return bytes((flags | value,))
    out = bytearray((flags | mask,))
    value -= mask
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_FIELDS: dict[Field, bytes] = {}
SIZE_ZERO = b"\x20"  # "dynamic table size 0": what every block from this encoder starts with


def encode_field(field: Field) -> bytes:
    """One field as this encoder writes it (indexed from the static table, or a literal never added)."""
    found = _FIELDS.get(field)
    if found is not None:
        return found
    name, value = field
    full = _STATIC_FULL.get(field)
    if full is not None:
        out = _length(full, 7, 0x80)
    else:
        index = _STATIC_NAME.get(name)
        out = _length(index, 4, 0x00) if index is not None else b"\x00" + _length(len(name), 7, 0x00) + name
        out += _length(len(value), 7, 0x00) + value
    if len(_FIELDS) >= _CACHE_MAX:
        _FIELDS.clear()
    _FIELDS[field] = out
    return out


_ENCODED: dict[tuple[Field, ...], bytes] = {}  # whole blocks: a gateway writes the same few, call after call
_ENCODED_BYTES = 1024  # larger blocks are encoded each time (and bound what the cache holds)


def encode(fields: list[Field]) -> bytes:
    """A complete header block for ``fields`` (names must be lower case, as HTTP/2 requires)."""
    key = tuple(fields)
    block = _ENCODED.get(key)
    if block is not None:
        return block
    get = _FIELDS.get
    parts = [SIZE_ZERO]
    for field in key:
        part = get(field)
        parts.append(encode_field(field) if part is None else part)
    block = b"".join(parts)
    if len(block) <= _ENCODED_BYTES:
        if len(_ENCODED) >= _CACHE_MAX // 4:
            _ENCODED.clear()
        _ENCODED[key] = block
    return block
