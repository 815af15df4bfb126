"""gRPC's conventions over HTTP/2, as the gateway needs them: status codes and how a gateway error becomes
one, ``grpc-timeout``, and the 5-byte framing of a message (with gzip/deflate for compressed ones)."""

from __future__ import annotations

import zlib
from urllib.parse import quote, unquote

from berth.errors import (
    BerthError,
    Forbidden,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    Timeout,
    Unauthenticated,
    Unavailable,
)
from berth.gateway.http2.headerblock import Field

SERVICE = "inference.GRPCInferenceService"
STATUS_NAMES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
                "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
                "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")
OK, INVALID_ARGUMENT, DEADLINE_EXCEEDED, NOT_FOUND, RESOURCE_EXHAUSTED = 0, 3, 4, 5, 8
PERMISSION_DENIED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, UNAUTHENTICATED = 7, 12, 13, 14, 16
STATUS_TEXT = tuple(str(i).encode() for i in range(len(STATUS_NAMES)))
_TIMEOUT_UNITS = {ord("H"): 3600.0, ord("M"): 60.0, ord("S"): 1.0, ord("m"): 1e-3, ord("u"): 1e-6, ord("n"): 1e-9}
_MESSAGE_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if c != 0x25)


def status_of(err: BerthError) -> int:
    """The gRPC status code for a gateway error (the REST answer's HTTP status, in gRPC terms)."""
    if isinstance(err, NotFound):
        return NOT_FOUND
    if isinstance(err, Unauthenticated):
        return UNAUTHENTICATED
    if isinstance(err, Forbidden):
        return PERMISSION_DENIED
    if isinstance(err, PayloadTooLarge):
        return RESOURCE_EXHAUSTED
    if isinstance(err, InvalidInput):
        return INVALID_ARGUMENT
    if isinstance(err, Unavailable):
        return UNAVAILABLE
    if isinstance(err, Timeout):
        return DEADLINE_EXCEEDED
    return INTERNAL


def grpc_timeout(value: bytes) -> float | None:
    """Seconds from a ``grpc-timeout`` header (``"100m"``, ``"29999982u"``), or None when malformed."""
    if len(value) < 2 or not value[:-1].isdigit():
        return None
    unit = _TIMEOUT_UNITS.get(value[-1])
    return None if unit is None else int(value[:-1]) * unit


def inflate(data: bytes, encoding: bytes | None, limit: int) -> bytes:
    """``data`` decompressed with ``encoding`` (gzip or deflate), a piece at a time: PayloadTooLarge as soon as
    it grows past ``limit`` bytes (what is beyond is never produced), InvalidInput when it does not inflate."""
    if encoding not in (b"gzip", b"deflate"):
        raise InvalidInput(f"the gRPC request is compressed with {(encoding or b'no grpc-encoding').decode()!r}; "
                           "the gateway takes gzip and deflate")
    inflater = zlib.decompressobj(31 if encoding == b"gzip" else 15)
    try:
        out = inflater.decompress(data, limit + 1)
        if len(out) > limit or inflater.unconsumed_tail:
            raise PayloadTooLarge(
                f"the gRPC request's message inflates ({encoding.decode()}) to more than the gateway's limit of "
                f"{limit} bytes; send a smaller request or raise --max-request-bytes",
                details={"limit_bytes": limit})
        if not inflater.eof:
            raise InvalidInput(f"the gRPC request's message does not decompress with {encoding.decode()}: "
                               "the compressed data is incomplete")
    except zlib.error as exc:
        raise InvalidInput(f"the gRPC request's message does not decompress with {encoding.decode()}: "
                           f"{exc}") from exc
    return out


def message(body: bytes, encoding: bytes | None, limit: int = 256 << 20) -> bytes:
    """The one message of a unary call's body (the 5-byte gRPC prefix removed, decompressed if it was, to at
    most ``limit`` bytes)."""
    if len(body) < 5:
        raise InvalidInput("the gRPC request holds no message (fewer than 5 bytes)")
    length = int.from_bytes(body[1:5], "big")
    if length != len(body) - 5:
        raise InvalidInput(f"the gRPC request's message prefix says {length} bytes but {len(body) - 5} came "
                           "(a unary call carries exactly one message)")
    data = body[5:]
    if not body[0]:
        return data
    return inflate(data, encoding, limit)


def framed(data: bytes) -> bytes:
    """``data`` as one uncompressed gRPC message (prefix and bytes)."""
    return b"\x00" + len(data).to_bytes(4, "big") + data


def grpc_status(fields: list[Field] | None) -> int:
    """The ``grpc-status`` in ``fields`` (UNKNOWN when absent or not a number)."""
    for name, value in fields or ():
        if name == b"grpc-status":
            return int(value) if value.isdigit() else 2
    return 2


def status_name(code: int) -> str:
    """``UNAVAILABLE`` for 14; the number itself for a code gRPC does not define."""
    return STATUS_NAMES[code] if 0 <= code < len(STATUS_NAMES) else str(code)


def error_fields(err: BerthError) -> tuple[int, list[Field]]:
    """The gRPC status of a gateway error and the trailer fields saying it: ``grpc-status``, ``grpc-message``
    (percent-encoded, as gRPC asks) and ``berth-error-code``."""
    code = status_of(err)
    return code, [(b"grpc-status", STATUS_TEXT[code]),
                  (b"grpc-message", quote(err.message, safe=_MESSAGE_SAFE).encode()),
                  (b"berth-error-code", err.code.encode())]


def grpc_message(fields: list[Field] | None) -> str:
    """The ``grpc-message`` in ``fields``, percent-decoded ("" when absent)."""
    return next((unquote(v.decode("latin-1")) for k, v in fields or () if k == b"grpc-message"), "")


class MessageCounter:
    """Follows the 5-byte prefixes of a stream of gRPC messages as its bytes pass by (never holding them):
    PayloadTooLarge as soon as a message announces more than ``limit`` bytes.  Linear in the bytes seen."""

    __slots__ = ("limit", "_head", "_left", "messages")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._head = b""  # the part of a prefix seen so far
        self._left = 0  # bytes of the current message still to come
        self.messages = 0

    def feed(self, data: bytes) -> None:
        pos = 0
        end = len(data)
        while pos < end:
            if self._left:
                step = min(self._left, end - pos)
                self._left -= step
                pos += step
                continue
            take = min(5 - len(self._head), end - pos)
            self._head += data[pos:pos + take]
            pos += take
            if len(self._head) == 5:
                length = int.from_bytes(self._head[1:5], "big")
                self._head = b""
                self.messages += 1
                if length > self.limit:
                    raise PayloadTooLarge(
                        f"message {self.messages} of the stream is {length} bytes, over the gateway's limit of "
                        f"{self.limit} bytes per message; send smaller messages or raise --max-request-bytes",
                        details={"limit_bytes": self.limit, "message": self.messages})
                self._left = length
