"""Just enough of the protobuf wire format to route gRPC requests without decoding them (and the varints
:mod:`v2proto` builds on).

Every V2 request the gateway routes names its model in field 1 (``ModelInferRequest.model_name``,
``ModelMetadataRequest.name``, ``ModelReadyRequest.name``).  The gateway reads that one field by
walking the top-level fields (length-delimited ones are skipped in one step, so a large tensor costs
nothing) and renames the model by appending a new field 1: protobuf parsers keep the last value of a
non-repeated field, so the rest of the request is forwarded byte for byte.
"""

from __future__ import annotations

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def varint(value: int) -> bytes:
    """``value`` as a protobuf varint (a negative one as 64-bit two's complement, as protobuf writes int32/int64)."""
    value &= (1 << 64) - 1
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def string_field(number: int, text: str) -> bytes:
    """Field ``number`` holding ``text``, encoded (tag, length, UTF-8 bytes)."""
    data = text.encode()
    return varint(number << 3 | _LEN) + varint(len(data)) + data


def bool_field(number: int, value: bool) -> bytes:
    """Field ``number`` holding ``value``; a false bool is the empty encoding, as proto3 writes it."""
    return varint(number << 3 | _VARINT) + b"\x01" if value else b""


def read_varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """The varint at ``buf[pos:]`` (not past ``end``) and the position after it."""
    result = 0
    shift = 0
    while pos < end:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            break
    raise WireError("truncated or overlong varint")


def last_string(buf: bytes, number: int) -> str | None:
    """The value of string field ``number`` at the top level of ``buf`` (the last one wins), or None."""
    end = len(buf)
    pos = 0
    found: bytes | None = None
    while pos < end:
        key = buf[pos]
        if key < 0x80:
            pos += 1
        else:
            key, pos = read_varint(buf, pos, end)
        kind = key & 7
        if kind == _LEN:
            length, pos = read_varint(buf, pos, end)
            stop = pos + length
            if stop > end:
                raise WireError(f"field {key >> 3} runs past the end of the message")
            if key >> 3 == number:
                found = buf[pos:stop]
            pos = stop
        elif kind == _VARINT:
            _, pos = read_varint(buf, pos, end)
        elif kind == _I64:
            pos += 8
        elif kind == _I32:
            pos += 4
        else:
            raise WireError(f"unsupported wire type {kind} for field {key >> 3}")
    if pos > end:
        raise WireError("the last field runs past the end of the message")
    if found is None:
        return None
    try:
        return found.decode()
    except UnicodeDecodeError as exc:
        raise WireError(f"field {number} is not valid UTF-8") from exc
